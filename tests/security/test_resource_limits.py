"""Per-peer resource limits (SessionLimits, specs/protocol.md) on a real loopback server: each
bad peer hits its documented limit, is closed with the documented code, and a well-behaved
call on the same server, afterwards, works end to end. On every engine (issue 14: the same
answer to the same bad input), except the realtime datagram queue, which only the aioquic
engine sends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import pytest
from aioquic.buffer import encode_uint_var
from aioquic.quic.events import ConnectionTerminated

from quicvoice.agent import demo_agent
from quicvoice.asyncio.client import connect
from quicvoice.asyncio.config import BackendConfig
from quicvoice.asyncio.server import ServerSession
from quicvoice.engine_ngtcp2 import AVAILABLE, UNAVAILABLE
from quicvoice.quic import pending_datagrams
from quicvoice.session.codes import ErrorCode
from quicvoice.session.connection import SessionLimits, State
from quicvoice.session.messages import MAX_MESSAGE_LEN, Hello, UplinkMode
from quicvoice.session.wire import MediaFrame, StreamKind, encode_frame, encode_stream_header
from tests.integration.voice_harness import LB_CONFIG, SERVER_ID, running_server

from .raw import FRAME, RawPeer, normal_call

pytestmark = pytest.mark.integration
LIMITS = SessionLimits()
#: The marker codec of a "talkative" session (see ``handler``).
FLOOD_CODEC = "PCMU/8000"
flooded: list[tuple[int, State]] = []


async def handler(session: ServerSession) -> None:
    """The demo agent, except for sessions asking for ``FLOOD_CODEC``: those get one endless
    turn of 4 KiB frames written as fast as the server accepts them."""
    if session.hello.codecs[0] != FLOOD_CODEC:
        await demo_agent(session)
        return
    turn = session.start_turn()
    frames = 0
    while session.send_turn_audio(turn, bytes(4096), frames * 160):
        frames += 1
        if frames % 64 == 0:
            await asyncio.sleep(0)
    flooded.append((frames, session._connection.voice_connection().state))


ENGINES = [
    "aioquic",
    pytest.param(
        "ngtcp2",
        marks=pytest.mark.skipif(not AVAILABLE, reason=f"ngtcp2 engine not built: {UNAVAILABLE}"),
    ),
]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param


class _Backend:
    """What these tests use of a running backend, whatever its engine."""

    def __init__(self, address: tuple[str, int], server: Any) -> None:
        self.address = address
        self._server = server

    def sessions(self) -> list[ServerSession]:
        return list(self._server.sessions())


@asynccontextmanager
async def running_backend(engine: str) -> AsyncIterator[_Backend]:
    """A backend on ``engine`` running ``handler`` on a free loopback port."""
    if engine == "aioquic":
        async with running_server(handler) as server:
            yield _Backend(server.address, server)
        return
    from quicvoice.engine_ngtcp2.backend import voice_server

    config = BackendConfig(
        listen=("127.0.0.1", 0), server_id=SERVER_ID, configs=(LB_CONFIG,), engine="ngtcp2"
    )
    ngtcp2, _ = voice_server(config, handler)
    address = await ngtcp2.start()
    try:
        yield _Backend(address, ngtcp2)
    finally:
        ngtcp2.close()
        if ngtcp2.services is not None:
            await ngtcp2.services.aclose()


def run(scenario: object) -> None:
    asyncio.run(asyncio.wait_for(scenario, 60))  # type: ignore[arg-type]


async def _bad_peer_closed_with(server_address: tuple[str, int], peer: RawPeer) -> int | None:
    await peer.run(3.0, ConnectionTerminated)
    return peer.close_code()


def test_too_many_unexpected_streams(engine: str) -> None:
    async def scenario() -> None:
        async with running_backend(engine) as server:
            peer = RawPeer(server.address)
            try:
                await peer.start_session()
                for index in range(LIMITS.max_unexpected_streams + 1):
                    peer.send(4 * (index + 1), b"x")  # client bidirectional streams 4, 8, ...
                code = await _bad_peer_closed_with(server.address, peer)
                assert code == ErrorCode.LIMIT_EXCEEDED
            finally:
                peer.close()
            await normal_call(*server.address)

    run(scenario())


def test_too_many_open_unidirectional_streams(engine: str) -> None:
    async def scenario() -> None:
        async with running_backend(engine) as server:
            peer = RawPeer(server.address)
            try:
                await peer.start_session()
                for index in range(LIMITS.max_open_peer_streams + 1):
                    # The first octet of a two-octet varint: the header never completes.
                    peer.send(2 + 4 * index, b"\x40")
                assert await _bad_peer_closed_with(server.address, peer) == ErrorCode.LIMIT_EXCEEDED
            finally:
                peer.close()
            await normal_call(*server.address)

    run(scenario())


def _event_body(size: int) -> bytes:
    """An ``event`` message body of exactly ``size`` octets."""
    padding = size - 40
    while True:
        body: bytes = msgpack.packb(
            {"type": "event", "name": "x", "data": bytes(padding)}, use_bin_type=True
        )
        if len(body) == size:
            return body
        padding += size - len(body)


def test_control_message_size(engine: str) -> None:
    """A message of exactly 64 KiB is read; a longer length prefix closes at once."""

    async def scenario() -> None:
        async with running_backend(engine) as server:
            peer = RawPeer(server.address)
            try:
                await peer.start_session()
                largest = _event_body(MAX_MESSAGE_LEN)
                peer.send(0, encode_uint_var(len(largest)) + largest)
                await peer.run(0.5)
                assert peer.close_code() is None
                # Only the prefix: the server must refuse before any of the body arrives.
                peer.send(0, encode_uint_var(MAX_MESSAGE_LEN + 1))
                assert await _bad_peer_closed_with(server.address, peer) == ErrorCode.MESSAGE_ERROR
            finally:
                peer.close()
            await normal_call(*server.address)

    run(scenario())


def test_early_media_is_bounded(engine: str) -> None:
    """Uplink frames before ``hello`` are held up to max_early_events, then the session closes."""

    async def scenario() -> None:
        async with running_backend(engine) as server:
            peer = RawPeer(server.address)
            try:
                await peer.handshake()
                frames = b"".join(
                    encode_frame(MediaFrame(seq, seq * 320, b"\x00" * 8))
                    for seq in range(LIMITS.max_early_events + 1)
                )
                peer.send(2, encode_stream_header(StreamKind.UPLINK) + frames)
                assert await _bad_peer_closed_with(server.address, peer) == ErrorCode.LIMIT_EXCEEDED
            finally:
                peer.close()
            await normal_call(*server.address)

    run(scenario())


def test_early_media_within_the_bound_is_delivered(engine: str) -> None:
    async def scenario() -> None:
        async with running_backend(engine) as server:
            peer = RawPeer(server.address)
            try:
                await peer.handshake()
                # Whole 20 ms frames of L16/16000, the hello's codec: anything else is a
                # FRAME_MISMATCH once the session is accepted.
                frames = b"".join(
                    encode_frame(MediaFrame(seq, seq * 320, bytes(640)))
                    for seq in range(LIMITS.max_early_events)
                )
                peer.send(2, encode_stream_header(StreamKind.UPLINK) + frames)
                await peer.run(0.3)
                peer.send_message(Hello())
                await peer.run(0.5)
                assert peer.close_code() is None
                assert b"welcome" in peer.stream_data.get(0, b"")
            finally:
                peer.close()

    run(scenario())


def test_peer_that_never_reads_is_cut_off_at_max_unacked_bytes(engine: str) -> None:
    """The client stops acknowledging after ``welcome``; the server's turn backlog stops at
    8 MiB (SessionLimits.max_unacked_bytes) and the session closes; others carry on."""

    async def scenario() -> None:
        flooded.clear()
        async with running_backend(engine) as server:
            peer = RawPeer(server.address)
            try:
                await peer.start_session(Hello(codecs=(FLOOD_CODEC,)))
                peer.reading = False  # datagrams are counted, never processed nor acknowledged
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 20
                while not flooded and loop.time() < deadline:
                    await peer.run(0.1)
                assert flooded, "the server never stopped writing"
                frames, state = flooded[0]
                written = frames * len(encode_frame(MediaFrame(0, 0, bytes(4096))))
                # What the peer read (and so may have acknowledged) before it stopped reading.
                read = sum(len(v) for stream, v in peer.stream_data.items() if stream % 4 == 3)
                assert state is State.CLOSED, (frames, state)
                assert written >= LIMITS.max_unacked_bytes - 8192, (written, read)
                assert written - read <= LIMITS.max_unacked_bytes + 8192, (written, read)
                # The connection goes once its closing period (3 PTO, RFC 9000 §10.2) ends.
                deadline = loop.time() + 10
                while any(s.hello.codecs[0] == FLOOD_CODEC for s in server.sessions()):
                    assert loop.time() < deadline, "the closed session is still held"
                    await asyncio.sleep(0.1)
            finally:
                peer.close()
            await normal_call(*server.address)

    run(scenario())


def test_realtime_datagram_queue_is_bounded_on_the_sending_side() -> None:
    """100 frames queued in one go: at most max_datagram_queue wait in aioquic, the oldest are
    dropped and counted, and the session goes on."""

    async def scenario() -> None:
        async with running_server(handler) as server:
            hello = Hello(uplink=UplinkMode.REALTIME)
            async with connect(*server.address, verify=False, hello=hello) as call:
                quic = call._link.quic
                for _ in range(100):
                    call.send_audio(FRAME)  # no await: nothing is transmitted meanwhile
                    assert pending_datagrams(quic) <= LIMITS.max_datagram_queue
                assert call.stats().uplink_frames_dropped == 100 - LIMITS.max_datagram_queue
                await asyncio.sleep(0.1)
                for _ in range(5):
                    call.send_audio(FRAME)
                    await asyncio.sleep(0.02)
                assert await call.bye(timeout=10) >= 5 + LIMITS.max_datagram_queue - 2
            await normal_call(*server.address)

    run(scenario())
