"""Connection IDs do not link a client across a migration (RFC 9000 §9.5, draft-21 §9):
with the single-pass config the CIDs carry no visible server ID and consecutive CIDs are
statistically unrelated; with the plaintext config the server ID is visible by design, so
the backend issues no spare CIDs and an active migration keeps its (linkable) CID.

CIDs are read where an observer sees them: the DCIDs of the datagrams arriving at the
backend's socket, plus the client's pool of CIDs (aioquic internals, read-only)."""

from __future__ import annotations

import asyncio

import pytest

from quicvoice.asyncio.client import VoiceClient, connect
from quicvoice.quiclb import LoadBalancerConfig
from tests.integration.voice_harness import LB_CONFIG, SERVER_ID, running_server

from .raw import FRAME

pytestmark = pytest.mark.integration
CID_LEN = LB_CONFIG.cid_len  # 17: first octet, 16-octet block
PLAINTEXT = LoadBalancerConfig(0, 4, 12)


def _bits(a: bytes, b: bytes) -> int:
    return sum(bin(x ^ y).count("1") for x, y in zip(a, b, strict=True))


def _shared_prefix(a: bytes, b: bytes) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


def _pool(call: VoiceClient) -> list[bytes]:
    """The CIDs the server gave this client, in sequence-number order."""
    quic = call._link.quic
    cids = [quic._peer_cid, *quic._peer_cid_available]
    return [c.cid for c in sorted(cids, key=lambda c: c.sequence_number)]


async def _call_with_migration(
    configs: tuple[LoadBalancerConfig, ...],
) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """One call that migrates 127.0.0.2 -> 127.0.0.3: DCIDs seen from each address, and the pool."""
    seen: list[tuple[str, bytes]] = []

    def record(data: bytes, address: tuple[str, int]) -> None:
        if not data[0] & 0x80:
            seen.append((address[0], data[1 : 1 + CID_LEN]))

    async with running_server(configs=configs, on_datagram=record) as server:
        async with connect(*server.address, verify=False, local_address="127.0.0.2") as call:
            for _ in range(5):
                call.send_audio(FRAME)
                await asyncio.sleep(0.01)
            pool = _pool(call)
            await call.migrate("127.0.0.3")
            for _ in range(5):
                call.send_audio(FRAME)
                await asyncio.sleep(0.01)
    before = [cid for host, cid in seen if host == "127.0.0.2"]
    after = [cid for host, cid in seen if host == "127.0.0.3"]
    return before, after, pool


def test_single_pass_cids_are_unlinkable_across_a_migration() -> None:
    before, after, pool = asyncio.run(_call_with_migration((LB_CONFIG,)))
    old, new = before[-1], after[0]
    assert old != new
    # The plaintext server ID appears nowhere, in any CID the client may use.
    for cid in {*before, *after, *pool}:
        assert SERVER_ID not in cid
        assert LB_CONFIG.decode(cid) == SERVER_ID  # ... yet the forwarder routes them all
    # Beyond the first octet (config bits and length, the same by design) nothing is shared.
    assert old[0] == new[0] == (LB_CONFIG.config_id << 5 | (CID_LEN - 1))
    assert _shared_prefix(old[1:], new[1:]) <= 1
    assert 0.25 * 128 <= _bits(old[1:], new[1:]) <= 0.75 * 128
    # Under the encryption the nonces are a counter: the unlinkability is the cipher's work.
    nonces = [int.from_bytes(LB_CONFIG.decode_nonce(cid) or b"", "big") for cid in pool]
    assert all(b - a == 1 for a, b in zip(nonces[1:], nonces[2:], strict=False)), nonces


def test_consecutive_single_pass_cids_are_statistically_unrelated() -> None:
    """Over the CID pools of 6 connections (about 48 CIDs, 40 consecutive pairs): the mean
    Hamming distance of consecutive blocks is 50 % +- 5 % (7 sigma), and no pair shares more
    than two leading octets of its block."""

    async def pools() -> list[list[bytes]]:
        out = []
        async with running_server() as server:
            for _ in range(6):
                async with connect(*server.address, verify=False) as call:
                    await asyncio.sleep(0.05)
                    out.append(_pool(call))
        return out

    distances = []
    for pool in asyncio.run(pools()):
        assert len(pool) >= 4, pool
        for a, b in zip(pool, pool[1:], strict=False):
            assert _shared_prefix(a[1:], b[1:]) <= 2
            distances.append(_bits(a[1:], b[1:]) / 128)
    mean = sum(distances) / len(distances)
    print(f"\n{len(distances)} consecutive pairs: mean Hamming distance {mean:.3f}")
    assert len(distances) >= 20
    assert 0.45 <= mean <= 0.55, mean


def test_plaintext_config_shows_the_server_id_and_issues_no_spare_cids() -> None:
    before, after, pool = asyncio.run(_call_with_migration((PLAINTEXT,)))
    assert len(pool) == 1, "a plaintext backend issued spare CIDs (draft-21 §9)"
    for cid in {*before, *after, *pool}:
        assert cid[1:5] == SERVER_ID  # visible: that is what plaintext means
    # migrate() found no fresh CID: the call moved with its old one, like a NAT rebinding.
    assert before and after and set(before) == set(after) == {pool[0]}
