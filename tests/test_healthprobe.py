"""Authenticated health probes (quicvoice/healthprobe.py): only the key holder makes one, once."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from quicvoice.healthprobe import (
    MAX_REMEMBERED_PROBES,
    PROBE_LIFETIME,
    PROBE_TRAILER_LEN,
    ProbeVerifier,
    probe_key,
    probe_trailer,
)

RESET_KEY = bytes(range(32))
NOW = 1_800_000_000.0
CID_LEN = 17


def probe(dcid: bytes, now: float = NOW, key: bytes = RESET_KEY) -> bytes:
    return b"\x41" + dcid + probe_trailer(probe_key(key), dcid, now) + os.urandom(40)


def test_a_probe_from_the_key_holder_is_accepted_once() -> None:
    verifier = ProbeVerifier(RESET_KEY)
    packet = probe(os.urandom(CID_LEN))
    assert verifier.verify(packet, CID_LEN, NOW + 0.01)
    assert not verifier.verify(packet, CID_LEN, NOW + 0.02)  # a replay


def test_other_keys_stale_probes_and_tampering_are_refused() -> None:
    verifier = ProbeVerifier(RESET_KEY)
    dcid = os.urandom(CID_LEN)
    assert not verifier.verify(probe(dcid, key=bytes(32)), CID_LEN, NOW)
    assert not verifier.verify(probe(dcid, now=NOW - PROBE_LIFETIME - 1), CID_LEN, NOW)
    assert not verifier.verify(probe(dcid, now=NOW + PROBE_LIFETIME + 1), CID_LEN, NOW)
    packet = bytearray(probe(dcid))
    packet[3] ^= 1  # another CID under the same proof
    assert not verifier.verify(bytes(packet), CID_LEN, NOW)
    assert verifier.verify(probe(dcid), CID_LEN, NOW)


def test_the_probe_key_is_not_the_reset_key() -> None:
    assert probe_key(RESET_KEY) != RESET_KEY
    assert len(probe_key(RESET_KEY)) == 32


def test_remembered_probes_are_bounded() -> None:
    verifier = ProbeVerifier(RESET_KEY)
    for index in range(MAX_REMEMBERED_PROBES + 100):
        assert verifier.verify(probe(os.urandom(CID_LEN)), CID_LEN, NOW + index * 1e-4)
    assert len(verifier._seen) <= MAX_REMEMBERED_PROBES


@given(st.binary(max_size=200), st.integers(min_value=-5, max_value=40))
def test_arbitrary_packets_never_verify_and_never_raise(packet: bytes, dcid_len: int) -> None:
    assert not ProbeVerifier(RESET_KEY).verify(packet, dcid_len, NOW)


@given(st.binary(min_size=1 + CID_LEN + PROBE_TRAILER_LEN, max_size=120))
def test_forged_trailers_never_verify(packet: bytes) -> None:
    assert not ProbeVerifier(RESET_KEY).verify(packet, CID_LEN, NOW)
