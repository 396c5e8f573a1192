"""QUIC-LB connection IDs (draft-ietf-quic-load-balancers-21), shared by backends and the forwarder.

Sans-I/O: the standard library and ``cryptography`` only.
"""

from .config import (
    MAX_CONFIG_ID,
    UNROUTABLE_CONFIG_ID,
    Algorithm,
    LoadBalancerConfig,
)
from .decoder import LoadBalancerDecoder, Unroutable
from .generator import (
    STATELESS_RESET_TOKEN_LEN,
    ConnectionIdGenerator,
    QuicLbConnectionIdGenerator,
    stateless_reset_token,
)

__all__ = [
    "MAX_CONFIG_ID",
    "STATELESS_RESET_TOKEN_LEN",
    "UNROUTABLE_CONFIG_ID",
    "Algorithm",
    "ConnectionIdGenerator",
    "LoadBalancerConfig",
    "LoadBalancerDecoder",
    "QuicLbConnectionIdGenerator",
    "Unroutable",
    "stateless_reset_token",
]
