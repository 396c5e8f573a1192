"""The ngtcp2 prototype on real loopback UDP: the project's aioquic client gets its uplink
echoed, and every CID and stateless-reset token the engine issues comes from the QUIC-LB
generator and the shared reset key, as seen on the wire.

Skipped, with the reason, where quicvoice._ngtcp2 was not built (no libngtcp2-dev)."""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Any

import pytest

from quicvoice.asyncio.client import VoiceClient, connect
from quicvoice.engine_ngtcp2 import AVAILABLE, UNAVAILABLE
from quicvoice.quiclb import stateless_reset_token
from quicvoice.session.events import AudioReceived

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not AVAILABLE, reason=f"ngtcp2 engine not built: {UNAVAILABLE}"),
]

if AVAILABLE:
    from quicvoice.engine_ngtcp2.endpoint import EngineConfig, Ngtcp2Endpoint
    from quicvoice.engine_ngtcp2.server import Ngtcp2Server

    from .harness import (
        LB_CONFIG,
        RESET_KEY,
        SERVER_ID,
        UdpRelay,
        engine_config,
        running_ngtcp2,
    )

CID_LEN = 17  # LB_CONFIG.cid_len: first octet and a 16-octet block


def _payload(index: int) -> bytes:
    return bytes((index + offset) % 256 for offset in range(640))


async def _echo(call: VoiceClient, first: int, count: int) -> list[AudioReceived]:
    """Send ``count`` frames, numbered from ``first``; return the echoes, waited for."""
    for index in range(first, first + count):
        call.send_audio(_payload(index), index * 320)
    echoes: list[AudioReceived] = []
    while len(echoes) < count:
        event = await asyncio.wait_for(call.receive(), 5)
        if isinstance(event, AudioReceived):
            echoes.append(event)
    return echoes


@pytest.mark.asyncio
async def test_the_aioquic_client_gets_its_uplink_echoed() -> None:
    async with running_ngtcp2() as (server, address):
        async with connect(*address, verify=False, reconnect=False) as call:
            assert call.session is not None and call.session.server_id == SERVER_ID.hex()
            echoes = await _echo(call, 0, 50)
        assert [(e.frame.timestamp, e.frame.payload) for e in echoes] == [
            (index * 320, _payload(index)) for index in range(50)
        ]
        assert all(e.turn_id == 0 for e in echoes)
        assert server.endpoint.stats.accepted == 1
        assert server.endpoint.stats.failed == 0


def _long_header_scid(datagram: bytes) -> bytes:
    dcid_len = datagram[5]
    scid_at = 6 + dcid_len
    return datagram[scid_at + 1 : scid_at + 1 + datagram[scid_at]]


@pytest.mark.asyncio
async def test_every_cid_and_reset_token_comes_from_quic_lb_and_the_shared_key() -> None:
    async with running_ngtcp2() as (server, address):
        relay = UdpRelay(address)
        try:
            async with connect(*await relay.start(), verify=False, reconnect=False) as call:
                await _echo(call, 0, 10)
                quic = call._link.quic
                # Move to a CID the server issued in a NEW_CONNECTION_ID frame; the server
                # answers the client's RETIRE_CONNECTION_ID with another one.
                quic.change_connection_id()
                await _echo(call, 10, 10)
                pool = [quic._peer_cid, *quic._peer_cid_available]
                issued = server.endpoint.issued_cids()
        finally:
            relay.close()

    handshake_scids = {_long_header_scid(d) for d in relay.downlink if d[0] & 0x80}
    used_dcids = {d[1 : 1 + CID_LEN] for d in relay.uplink if not d[0] & 0x80}
    assert len(handshake_scids) == 1
    assert len(used_dcids) >= 2, "the client never used a NEW_CONNECTION_ID CID"
    assert len(pool) >= 3
    for cid in handshake_scids | used_dcids | {c.cid for c in pool} | issued - {b""}:
        if cid in issued and len(cid) != CID_LEN:
            continue  # the client's own original DCID, routed to the connection until the
            # client switched: not one the engine issued
        assert len(cid) == CID_LEN and LB_CONFIG.decode(cid) == SERVER_ID, cid.hex()
    for entry in pool:
        assert entry.stateless_reset_token == stateless_reset_token(RESET_KEY, entry.cid)


@pytest.mark.asyncio
async def test_a_restarted_backend_resets_with_the_token_the_client_holds() -> None:
    async with running_ngtcp2() as (_, address):
        async with connect(*address, verify=False, reconnect=False) as call:
            await _echo(call, 0, 3)
            quic = call._link.quic
            pool = [quic._peer_cid, *quic._peer_cid_available]
            held = {entry.cid: entry.stateless_reset_token for entry in pool}
    # A backend that never saw the connection, with the same server ID and reset key.
    loop = asyncio.get_running_loop()
    async with running_ngtcp2() as (restarted, address):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            for cid, token in held.items():
                await loop.sock_sendto(sock, b"\x40" + cid + bytes(60), address)
                reset, _ = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), 5)
                assert 21 <= len(reset) < 1 + CID_LEN + 60
                assert reset[0] & 0xC0 == 0x40
                assert reset[-16:] == token
            # Another backend's CID of this deployment gets a reset with its token too (as on
            # the aioquic engine: a client misrouted to a live backend learns at once).
            other = LB_CONFIG.encode(bytes.fromhex("0a0b0c0e"), bytes(12))
            await loop.sock_sendto(sock, b"\x40" + other + bytes(60), address)
            reset, _ = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), 5)
            assert reset[-16:] == stateless_reset_token(RESET_KEY, other)
            # A CID of no live configuration, or an unroutable one, gets nothing.
            for first in (0x40, 0xE0):  # config 2 (not configured), 0b111
                cid = bytes([first]) + bytes(CID_LEN - 1)
                await loop.sock_sendto(sock, b"\x40" + cid + bytes(60), address)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), 0.3)
        assert restarted.endpoint.stats.resets_sent == len(held) + 1


@pytest.mark.asyncio
async def test_a_call_migrates_127_0_0_2_to_127_0_0_3_without_losing_a_frame() -> None:
    class _RecordingEndpoint(Ngtcp2Endpoint):
        """The engine's endpoint, noting every client address it hears from."""

        def __init__(self, config: EngineConfig) -> None:
            super().__init__(config)
            self.clients: list[Any] = []

        def receive_batch(
            self, datagrams: list[tuple[bytes, Any]], now: int, wall: float | None = None
        ) -> Any:
            for _, remote in datagrams:
                if remote not in self.clients:
                    self.clients.append(remote)
            return super().receive_batch(datagrams, now, wall)

    config = engine_config()
    endpoint = _RecordingEndpoint(config)
    server = Ngtcp2Server(config, endpoint)
    address = await server.start()
    try:
        async with connect(
            *address, verify=False, reconnect=False, local_address="127.0.0.2"
        ) as call:
            before = await _echo(call, 0, 10)
            await call.migrate("127.0.0.3")
            after = await _echo(call, 10, 10)
    finally:
        server.close()
    frames = [(e.frame.timestamp, e.frame.payload) for e in before + after]
    assert frames == [(index * 320, _payload(index)) for index in range(20)]
    assert [host for host, _ in endpoint.clients] == ["127.0.0.2", "127.0.0.3"]
    assert server.endpoint.stats.failed == 0


@pytest.mark.asyncio
async def test_garbage_over_udp_leaves_a_live_call_and_the_server_running() -> None:
    rng = random.Random(14)
    loop = asyncio.get_running_loop()
    async with running_ngtcp2() as (server, address):
        async with connect(*address, verify=False, reconnect=False) as call:
            await _echo(call, 0, 3)
            live = call._link.quic._peer_cid.cid
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.bind(("127.0.0.4", 0))
                for index in range(300):
                    size = rng.randrange(0, 1400)
                    junk = rng.randbytes(size)
                    shapes = (
                        junk,
                        b"\x40" + live + junk,
                        b"\xc0\x00\x00\x00\x01" + bytes([len(live)]) + live + junk,
                        b"\xc3\x00\x00\x00\x01\x08" + rng.randbytes(8) + b"\x00" + bytes(1200),
                    )
                    await loop.sock_sendto(sock, shapes[index % len(shapes)], address)
            echoes = await _echo(call, 3, 3)
        assert [e.frame.timestamp for e in echoes] == [3 * 320, 4 * 320, 5 * 320]
        assert server.endpoint.stats.dropped > 0
