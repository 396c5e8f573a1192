"""Authenticated health probes: what the forwarder sends and what a backend checks (sans-I/O).

A probe is a short-header packet, encapsulated "from" ``PROBE_CLIENT``, to a CID of the backend
that no connection owns; after the DCID it carries a proof::

    first octet | DCID (server ID + random nonce) | timestamp (8, ms since the epoch) | proof (16)

``proof = HMAC-SHA256(probe_key, DCID | timestamp)[:16]``, ``probe_key`` derived from the
deployment's shared ``reset_key`` under its own label, so a probe key never doubles as a reset
token. A backend answers a valid probe with a stateless reset outside the allowance it keeps for
strangers, so no flood of unknown short headers can starve the answers; a stranger without the
key cannot make a probe. Replays are bounded: a probe is valid for ``PROBE_LIFETIME`` seconds
either side of the backend's clock, and ``ProbeVerifier`` accepts each DCID once.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict

from .settings import Address

#: The client address probes claim to come from: 0.0.0.0 is never a real peer's source.
PROBE_CLIENT: Address = ("0.0.0.0", 9)
#: Label of the probe key, derived from the shared reset key.
PROBE_KEY_LABEL = b"quicvoice health probe v1"
TIMESTAMP_LEN = 8
PROOF_LEN = 16
#: Octets after the DCID that carry the timestamp and the proof.
PROBE_TRAILER_LEN = TIMESTAMP_LEN + PROOF_LEN
#: A probe is accepted this many seconds either side of the backend's clock (hosts' clocks
#: are NTP-synchronised far better than that).
PROBE_LIFETIME = 10.0
#: DCIDs of accepted probes a verifier remembers (replays of older ones fail the lifetime).
MAX_REMEMBERED_PROBES = 4096


def probe_key(reset_key: bytes) -> bytes:
    """The key probes are signed with, derived from the deployment's shared reset key."""
    return hmac.new(reset_key, PROBE_KEY_LABEL, hashlib.sha256).digest()


def _proof(key: bytes, dcid: bytes, timestamp: bytes) -> bytes:
    return hmac.new(key, dcid + timestamp, hashlib.sha256).digest()[:PROOF_LEN]


def probe_trailer(key: bytes, dcid: bytes, now: float) -> bytes:
    """The timestamp and proof that follow ``dcid`` in a probe sent at wall-clock ``now``."""
    timestamp = int(now * 1000).to_bytes(TIMESTAMP_LEN, "big")
    return timestamp + _proof(key, dcid, timestamp)


def is_authentic_probe(
    key: bytes, packet: bytes, dcid_len: int, now: float, lifetime: float = PROBE_LIFETIME
) -> bool:
    """Whether the short-header ``packet`` carries a valid proof under ``key`` and a timestamp
    within ``lifetime`` seconds of wall-clock ``now`` (no replay check: see ``ProbeVerifier``)."""
    end = 1 + dcid_len + PROBE_TRAILER_LEN
    if dcid_len <= 0 or len(packet) < end:
        return False
    dcid = packet[1 : 1 + dcid_len]
    timestamp = packet[1 + dcid_len : 1 + dcid_len + TIMESTAMP_LEN]
    proof = packet[1 + dcid_len + TIMESTAMP_LEN : end]
    if not hmac.compare_digest(proof, _proof(key, dcid, timestamp)):
        return False
    return abs(now - int.from_bytes(timestamp, "big") / 1000) <= lifetime


class ProbeVerifier:
    """Checks probes for one backend: proof (constant time), lifetime, and once per DCID."""

    def __init__(self, reset_key: bytes) -> None:
        self._key = probe_key(reset_key)
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def verify(self, packet: bytes, dcid_len: int, now: float) -> bool:
        """Whether the short-header ``packet`` is a fresh, authentic probe (``now``: wall clock)."""
        if not is_authentic_probe(self._key, packet, dcid_len, now):
            return False
        dcid = packet[1 : 1 + dcid_len]
        seen = self._seen
        while seen and (len(seen) >= MAX_REMEMBERED_PROBES or next(iter(seen.values())) < now):
            seen.popitem(last=False)
        if dcid in seen:
            return False
        seen[dcid] = now + 2 * PROBE_LIFETIME
        return True
