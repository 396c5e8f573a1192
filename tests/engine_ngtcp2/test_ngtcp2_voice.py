"""The real voice layer and a real App on the ngtcp2 engine, over loopback UDP: the project's
raw-QUIC client places calls to ``Ngtcp2VoiceServer`` running ``tests.app.apps:app`` (collect
the utterance, say it back in one turn).

Skipped, with the reason, where quicvoice._ngtcp2 was not built (no libngtcp2-dev)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aioquic.quic.events import ConnectionTerminated, StreamReset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgpack import packb

from quicvoice.app import App, Session, SessionEnded, session_handler
from quicvoice.asyncio.client import VoiceClient, connect
from quicvoice.asyncio.config import BackendConfig
from quicvoice.asyncio.server import VoiceServer
from quicvoice.audio.pcm import PcmEncoder
from quicvoice.engine_ngtcp2 import AVAILABLE, UNAVAILABLE
from quicvoice.errors import SessionRefusedError
from quicvoice.session.codes import ErrorCode
from quicvoice.session.events import AudioReceived, EventReceived, TurnEnded
from quicvoice.session.messages import Cancel, Hello, UplinkMode
from quicvoice.session.wire import StreamKind, encode_stream_header

from ..app import apps
from ..app.apps import tone
from ..security.raw import FRAME, RawPeer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not AVAILABLE, reason=f"ngtcp2 engine not built: {UNAVAILABLE}"),
]

if AVAILABLE:
    from quicvoice.engine_ngtcp2.endpoint import Address
    from quicvoice.engine_ngtcp2.voice_server import Ngtcp2VoiceServer

    from .harness import LB_CONFIG, RESET_KEY, SERVER_ID, UdpRelay, engine_config

CID_LEN = 17
TIMEOUT = 10.0


@asynccontextmanager
async def running_voice(app: App = apps.app) -> AsyncIterator[tuple[Ngtcp2VoiceServer, Address]]:
    """An App (the echo by default) on an ngtcp2 voice backend on a free loopback port."""
    loop = asyncio.get_running_loop()
    failures: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: failures.append(context))
    server = Ngtcp2VoiceServer(engine_config(), session_handler(app))
    address = await server.start()
    try:
        yield server, address
    finally:
        server.close()
        loop.set_exception_handler(None)
    # Nothing the endpoint or the voice layer raised went unseen into the event loop.
    assert not failures, failures


async def _utterance_and_reply(
    call: VoiceClient, frames: int, first: int = 0
) -> list[AudioReceived]:
    """Say frames ``first`` to ``frames - 1``, end the uplink, and return the reply turn's
    frames (the app's ``heard`` event must count ``frames``)."""
    for index in range(first, frames):
        call.send_audio(FRAME, index * 320)
    call.end_audio()
    reply: list[AudioReceived] = []

    async def until_turn_ends() -> None:
        while True:
            event = await call.receive()
            if isinstance(event, AudioReceived):
                reply.append(event)
            elif isinstance(event, EventReceived):
                assert event.name == "heard" and event.data["frames"] == frames
            elif isinstance(event, TurnEnded):
                return

    await asyncio.wait_for(until_turn_ends(), TIMEOUT)
    return reply


def _long_header_scid(datagram: bytes) -> bytes:
    scid_at = 6 + datagram[5]
    return datagram[scid_at + 1 : scid_at + 1 + datagram[scid_at]]


@pytest.mark.asyncio
async def test_a_call_to_a_real_app_on_ngtcp2() -> None:
    apps.HEARD.clear()
    async with running_voice() as (server, address):
        relay = UdpRelay(address)
        try:
            async with connect(*await relay.start(), verify=False, reconnect=False) as call:
                assert call.session is not None
                assert call.session.server_id == SERVER_ID.hex()
                assert call.session.codec == "L16/16000"
                reply = await _utterance_and_reply(call, 40)
                assert await call.bye(timeout=TIMEOUT) == 40
                stats = call.stats()
            (session,) = server.sessions()
            assert session.stats().uplink_frames_received == 40
            issued = server.endpoint.issued_cids()
        finally:
            relay.close()
    assert apps.HEARD == [{"frames": 40, "rates": [16000], "samples": [320], "codec": "L16/16000"}]
    # The app said the utterance back: 40 frames of silence, one turn.
    assert len(reply) == 40 and {e.turn_id for e in reply} == {0}
    assert all(e.frame.payload == FRAME for e in reply)
    assert stats.downlink_frames_received == 40
    # Every CID on the wire and every CID the endpoint holds decodes to the server ID.
    handshake_scids = {_long_header_scid(d) for d in relay.downlink if d[0] & 0x80}
    used_dcids = {d[1 : 1 + CID_LEN] for d in relay.uplink if not d[0] & 0x80}
    assert len(handshake_scids) == 1 and used_dcids
    for cid in handshake_scids | used_dcids:
        assert LB_CONFIG.decode(cid) == SERVER_ID, cid.hex()
    for cid in issued:
        if len(cid) == CID_LEN:  # not the client's own original DCID
            assert LB_CONFIG.decode(cid) == SERVER_ID, cid.hex()
    assert server.endpoint.stats.failed == 0


@pytest.mark.asyncio
async def test_a_malformed_frame_closes_only_that_call_with_frame_error() -> None:
    async with running_voice() as (server, address):
        async with connect(*address, verify=False, reconnect=False) as good:
            bad = RawPeer(address)
            try:
                await bad.start_session()
                uplink = bad.quic.get_next_available_stream_id(is_unidirectional=True)
                # A frame length of 16383: beyond the protocol's 8 + 4096.
                bad.send(uplink, encode_stream_header(StreamKind.UPLINK) + b"\x7f\xff" + bytes(8))
                assert await bad.run(5.0, ConnectionTerminated)
                assert bad.close_code() == ErrorCode.FRAME_ERROR
                # The error message went out before the close, on the control stream.
                assert b"error" in bad.stream_data.get(0, b"")
            finally:
                bad.close()
            reply = await _utterance_and_reply(good, 10)
            assert len(reply) == 10
            assert await good.bye(timeout=TIMEOUT) == 10
    assert server.endpoint.stats.accepted == 2


@pytest.mark.asyncio
async def test_without_a_session_store_a_resume_is_refused_clearly() -> None:
    async with running_voice() as (_, address):
        hello = Hello(resume_token=b"\x01" * 40)
        with pytest.raises(SessionRefusedError) as refused:
            async with connect(*address, verify=False, reconnect=False, hello=hello):
                pass
    assert refused.value.error_code == ErrorCode.RESUME_REFUSED
    assert "ngtcp2" in str(refused.value)


async def _talk(session: Session) -> None:
    await apps.talker(session, pace=0.1)  # 10 s of tone in real time


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["stop_sending", "cancel_message"])
async def test_a_barge_in_resets_the_turn_and_interrupts_the_app(how: str) -> None:
    """STOP_SENDING reaches the voice layer through the extension's ``take_aborts``; a
    ``cancel`` message alone makes the server reset the stream through ``reset_stream``
    (ngtcp2 would answer STOP_SENDING with RESET_STREAM by itself)."""
    async with running_voice(App(_talk, sample_rate=16000)) as (_, address):
        peer = RawPeer(address)
        try:
            await peer.start_session()
            turn_stream = 3  # the server's first unidirectional stream
            loop = asyncio.get_running_loop()
            deadline = loop.time() + TIMEOUT
            while len(peer.stream_data.get(turn_stream, b"")) < 4000 and loop.time() < deadline:
                await peer.run(0.05)
            assert len(peer.stream_data.get(turn_stream, b"")) >= 4000, "no turn audio"
            if how == "stop_sending":
                peer.quic.stop_stream(turn_stream, ErrorCode.CANCELLED)
            else:
                peer.send_message(Cancel(turn_id=0))
            assert await peer.run(5.0, StreamReset)
            (reset,) = [e for e in peer.events if isinstance(e, StreamReset)]
            assert (reset.stream_id, reset.error_code) == (turn_stream, ErrorCode.CANCELLED)
            # The app learnt at once that its turn was interrupted (talker reports it).
            talked = packb({"interrupted": True})[1:]
            while b"talked" not in peer.stream_data[0] and loop.time() < deadline:
                await peer.run(0.05)
            assert b"talked" in peer.stream_data[0] and talked in peer.stream_data[0]
            assert loop.time() < deadline - 3, "the app wrote its whole turn"
        finally:
            peer.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("after", [20, 0], ids=["frames_after", "fin_alone_after"])
async def test_a_call_migrates_127_0_0_2_to_127_0_0_3_and_the_app_hears_every_frame(
    after: int,
) -> None:
    """Frames before and after the move all reach the app; with none after, the uplink's end
    travels as a STREAM frame with FIN and no data."""
    apps.HEARD.clear()
    async with running_voice() as (server, address):
        async with connect(
            *address, verify=False, reconnect=False, local_address="127.0.0.2"
        ) as call:
            for index in range(20):
                call.send_audio(FRAME, index * 320)
            await call.migrate("127.0.0.3")
            reply = await _utterance_and_reply(call, 20 + after, first=20)
            assert await call.bye(timeout=TIMEOUT) == 20 + after
        (session,) = server.sessions()
        (migration,) = session.migrations
    assert migration.from_address.startswith("127.0.0.2:")
    assert migration.to_address.startswith("127.0.0.3:")
    assert apps.HEARD[0]["frames"] == 20 + after and len(reply) == 20 + after


@pytest.mark.asyncio
async def test_the_realtime_uplink_reaches_the_app_through_the_jitter_buffer() -> None:
    frames: list[tuple[int, int, bool]] = []

    async def ear(session: Session) -> None:
        async for frame in session.audio():
            frames.append((frame.sample_rate, len(frame), frame.concealed))
            if len(frames) == 40:
                session.send_event("heard", len(frames))

    hello = Hello(codecs=("opus/48000",), uplink=UplinkMode.REALTIME)
    async with running_voice(App(ear, sample_rate=16000)) as (_, address):
        async with connect(*address, hello=hello, verify=False, reconnect=False) as call:
            encoder = PcmEncoder("opus/48000", 48000)
            for frame in encoder.write(tone(440.0, 48000, 1.2)):
                call.send_audio(frame.payload, frame.timestamp)
                await asyncio.sleep(0.02)  # a live microphone
            heard = await asyncio.wait_for(call.wait_event("heard"), TIMEOUT)
    assert heard.data == 40
    assert {(rate, size) for rate, size, _ in frames} == {(16000, 320)}
    # As in tests/app: on a loaded machine some of it is concealed; most is the caller's.
    assert sum(not concealed for _, _, concealed in frames) >= 0.75 * len(frames)


async def _garbage_call(where: str, garbage: bytes) -> None:
    async with running_voice() as (server, address):
        async with connect(*address, verify=False, reconnect=False) as good:
            bad = RawPeer(address)
            try:
                await bad.start_session()
                if where == "control":
                    bad.send(0, garbage)
                else:
                    uplink = bad.quic.get_next_available_stream_id(is_unidirectional=True)
                    bad.send(uplink, encode_stream_header(StreamKind.UPLINK) + garbage)
                await bad.run(0.5, ConnectionTerminated)
                code = bad.close_code()
            finally:
                bad.close()
            # Whatever the bytes did to that call, this one goes on to the end.
            reply = await _utterance_and_reply(good, 5)
            assert len(reply) == 5 and await good.bye(timeout=TIMEOUT) == 5
    protocol_codes = {int(c) for c in ErrorCode} - {ErrorCode.INTERNAL_ERROR}
    assert code is None or code in protocol_codes, hex(code)
    assert server.endpoint.stats.accepted == 2


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    where=st.sampled_from(["control", "uplink"]),
    garbage=st.one_of(
        st.binary(min_size=1, max_size=300),
        # A frame header announcing more than the protocol allows, or a truncated message.
        st.binary(min_size=1, max_size=40).map(lambda tail: b"\x7f\xff" + tail),
    ),
)
def test_any_bytes_a_caller_sends_close_at_most_that_call_with_a_protocol_code(
    where: str, garbage: bytes
) -> None:
    asyncio.run(_garbage_call(where, garbage))


async def _count_calls(session: Session) -> None:
    """Count this session's connections in its state, say the count, then listen."""
    calls = int(session.state.get("calls", 0)) + 1
    session.state["calls"] = calls
    session.save()
    session.send_event("calls", calls)
    async for event in session.events():
        if isinstance(event, SessionEnded):
            break


@pytest.mark.asyncio
async def test_a_call_resumes_its_state_on_a_restarted_ngtcp2_backend() -> None:
    """The backend dies without a word; its successor (same address, server ID, keys and
    store) resets the old connection and the client resumes there with its token."""
    handler = session_handler(App(_count_calls, sample_rate=16000))
    services = VoiceServer(
        BackendConfig(server_id=SERVER_ID, configs=(LB_CONFIG,), reset_key=RESET_KEY), handler
    )
    first = Ngtcp2VoiceServer(engine_config(), handler, services=services)
    address = await first.start()
    second: Ngtcp2VoiceServer | None = None
    try:
        async with connect(*address, verify=False, liveness_timeout=0.3) as call:
            assert (await call.wait_event("calls")).data == 1
            assert call.session is not None and not call.session.resumed
            first.abort()
            await asyncio.wait_for(first.wait_closed(), TIMEOUT)
            second = Ngtcp2VoiceServer(engine_config(local=address), handler, services=services)
            await second.start()

            async def speak() -> None:
                for index in range(500):
                    if not call.reconnecting:
                        call.send_audio(FRAME, index * 320)
                    await asyncio.sleep(0.02)

            speaking = asyncio.get_running_loop().create_task(speak())
            try:
                resumed = await call.wait_resumed(timeout=TIMEOUT)
                counted = await call.wait_event("calls")
            finally:
                speaking.cancel()
            assert resumed.server_id == SERVER_ID.hex()
            assert counted.data == 2  # the state of the first connection came back
            assert second.endpoint.stats.resets_sent >= 1
    finally:
        first.close()
        if second is not None:
            second.close()
        await services.aclose()
