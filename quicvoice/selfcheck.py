"""``quicvoice selfcheck``: issue and decode CIDs in every QUIC-LB mode; check a known answer."""

from __future__ import annotations

import os
from typing import TextIO

from .quiclb import LoadBalancerConfig, LoadBalancerDecoder, QuicLbConnectionIdGenerator

DEMO_KEY = bytes.fromhex("8f95f09245765f80256934e50c66207f")
# draft-ietf-quic-load-balancers-21 §5.4.2.4: server ID 31441a, nonce 9c69c275 -> this CID.
KNOWN_ANSWER = (
    LoadBalancerConfig(0, 3, 4, bytes.fromhex("fdf726a9893ec05c0632d3956680baf0")),
    bytes.fromhex("31441a"),
    bytes.fromhex("9c69c275"),
    bytes.fromhex("0767947d29be054a"),
)
MODES = [
    ("plaintext", LoadBalancerConfig(0, 4, 8)),
    ("single-pass", LoadBalancerConfig(1, 4, 12, DEMO_KEY)),
    ("four-pass", LoadBalancerConfig(2, 3, 5, DEMO_KEY)),
    ("four-pass, long server ID", LoadBalancerConfig(3, 10, 5, DEMO_KEY)),
]
CIDS_PER_MODE = 3


def run_selfcheck(out: TextIO) -> bool:
    """Print CIDs of every mode with their decoded server IDs; return whether all checks held."""
    ok = True
    decoder = LoadBalancerDecoder(config for _, config in MODES)
    reset_key = os.urandom(32)
    for name, config in MODES:
        server_id = bytes(range(0xA1, 0xA1 + config.server_id_len))
        generator = QuicLbConnectionIdGenerator(server_id, config, reset_key)
        out.write(
            f"{name}: config {config.config_id}, server ID {server_id.hex()} "
            f"({config.server_id_len}+{config.nonce_len} octets, {config.cid_len}-octet CIDs)\n"
        )
        for _ in range(CIDS_PER_MODE):
            cid = generator.generate()
            decoded = decoder.decode(cid)
            good = decoded == server_id
            ok &= good
            shown = decoded.hex() if isinstance(decoded, bytes) else decoded.name
            out.write(
                f"  CID {cid.hex():<40} -> server ID {shown} {'ok' if good else 'MISMATCH'}\n"
            )
    config, server_id, nonce, expected = KNOWN_ANSWER
    good = config.encode(server_id, nonce) == expected and config.decode(expected) == server_id
    ok &= good
    out.write(f"draft-21 §5.4.2.4 example: {expected.hex()} {'ok' if good else 'MISMATCH'}\n")
    out.write("self-check passed\n" if ok else "self-check FAILED\n")
    return ok
