"""quicvoice-lb: a stateless UDP forwarder routing QUIC packets by their QUIC-LB Connection ID."""
