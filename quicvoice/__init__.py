"""quicvoice: voice sessions for AI agents over QUIC and WebTransport.

Calls survive a change of network (QUIC connection migration), route through a
stateless QUIC-LB load balancer, and keep their state outside the backend process.
"""

__version__ = "0.1.0"
