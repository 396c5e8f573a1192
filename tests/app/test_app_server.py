"""The application API over real UDP sockets on loopback: apps of the tests' own under
``VoiceServer``, a real client, PCM both ways, barge-in, backpressure, events, failures."""

from __future__ import annotations

import asyncio
import functools
import logging

import numpy as np
import pytest

from quicvoice.app import (
    App,
    CallerMigrated,
    Session,
    SessionEnded,
    TurnPlayed,
    UserEvent,
    session_handler,
)
from quicvoice.asyncio.client import VoiceClient, connect
from quicvoice.audio.pcm import PcmDecoder, PcmEncoder
from quicvoice.errors import SessionRefusedError
from quicvoice.session.codes import ErrorCode
from quicvoice.session.events import (
    AudioReceived,
    EventReceived,
    SessionClosed,
    TurnEnded,
    TurnStarted,
    VoiceEvent,
)
from quicvoice.session.messages import Hello, UplinkMode

from ..integration.voice_harness import running_server
from . import apps
from .apps import tone

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]
TIMEOUT = 10.0


async def next_of(client: VoiceClient, kind: type, timeout: float = TIMEOUT) -> VoiceEvent:
    async def wait() -> VoiceEvent:
        while True:
            event = await client.receive()
            if isinstance(event, kind):
                return event
            if isinstance(event, SessionClosed) and kind is not SessionClosed:
                raise AssertionError(f"closed while waiting for {kind.__name__}: {event}")

    return await asyncio.wait_for(wait(), timeout)


async def speak(client: VoiceClient, codec: str, pcm: np.ndarray, rate: int) -> int:
    """Send ``pcm`` (at ``rate``) as the client's uplink in 20 ms frames; return the count."""
    encoder = PcmEncoder(codec, rate)
    frames = encoder.write(pcm) + encoder.flush()
    for index, frame in enumerate(frames):
        client.send_audio(frame.payload, frame.timestamp)
        if index % 10 == 9:
            await asyncio.sleep(0.01)  # pace a little: the realtime uplink drops stale frames
    return len(frames)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1.0 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("codec", ["L16/48000", "opus/48000", "PCMU/8000"])
async def test_an_app_hears_pcm_at_its_rate_and_its_turn_arrives(codec: str) -> None:
    apps.HEARD.clear()
    async with running_server(session_handler(apps.app)) as server:
        host, port = server.address
        hello = Hello(codecs=(codec,))
        async with connect(host, port, hello=hello, verify=False) as client:
            client_rate = int(codec.split("/")[1])
            sent = await speak(client, codec, tone(440.0, client_rate, 1.0), client_rate)
            client.end_audio()
            heard = await next_of(client, EventReceived)
            assert isinstance(heard, EventReceived) and heard.name == "heard"
            assert heard.data == {"frames": sent, "rate": 16000}
            decoder = PcmDecoder(codec, client_rate)
            await next_of(client, TurnStarted)
            reply = []
            while True:
                event = await next_of(client, VoiceEvent)
                if isinstance(event, AudioReceived):
                    reply.append(decoder.decode(event.frame.payload).samples)
                elif isinstance(event, TurnEnded):
                    break
    assert apps.HEARD == [
        {"frames": sent, "rates": [16000], "samples": [320], "codec": codec}
    ]
    answer = np.concatenate(reply)
    assert len(answer) >= client_rate  # the whole second came back (flush pads the rest)
    steady = answer[client_rate // 10 : client_rate // 10 * 8]
    assert abs(dominant_hz(steady, client_rate) - 440.0) < 5.0
    level = np.sqrt(np.mean(steady.astype(np.float64) ** 2)) / (0.5 * 32767 / np.sqrt(2))
    assert 0.8 < level < 1.2


@pytest.mark.parametrize("pace", [0.0, 0.02], ids=["sent-in-full", "cut-mid-write"])
async def test_barge_in_ends_the_turn_and_reports_what_the_caller_heard(pace: float) -> None:
    app = App(functools.partial(apps.talker, pace=pace))
    async with running_server(session_handler(app)) as server:
        host, port = server.address
        async with connect(host, port, verify=False) as client:
            started = await next_of(client, TurnStarted)
            assert isinstance(started, TurnStarted) and client.playout is not None
            pulled = 0
            for _ in range(15):  # the caller's audio device: one frame per 20 ms
                await asyncio.sleep(0.02)
                item = client.playout.pull()
                if item is not None and item[0] == started.turn_id:
                    pulled += 1
            client.cancel_turn(started.turn_id)
            talked = await next_of(client, EventReceived)
    assert isinstance(talked, EventReceived) and talked.name == "talked"
    assert pulled >= 10
    assert talked.data == {"interrupted": True, "played_ms": pulled * 20}


async def test_write_waits_while_the_turn_is_unacknowledged_beyond_the_bound() -> None:
    gate = {"open": True}
    progress: list[float] = []
    done = asyncio.Event()
    stalled = asyncio.Event()

    async def writer(session: Session) -> None:
        async with session.turn() as turn:
            gate["open"] = False  # from now on, nothing the client sends reaches the server
            for _ in range(200):  # 4 s of audio in 20 ms writes
                await turn.write(np.zeros(320, dtype=np.int16))
                progress.append(turn.outstanding_ms)
                if turn.outstanding_ms >= app.turn_buffer_ms:
                    stalled.set()
        done.set()

    app = App(writer, turn_buffer_ms=300)
    async with running_server(
        session_handler(app), accept_datagram=lambda data, address: gate["open"]
    ) as server:
        host, port = server.address
        async with connect(host, port, verify=False, reconnect=False) as client:
            await next_of(client, TurnStarted)
            await asyncio.wait_for(stalled.wait(), TIMEOUT)
            blocked_at = len(progress)
            await asyncio.sleep(0.3)  # nothing to await: the writer must stay put meanwhile
            assert len(progress) == blocked_at  # the writer waits: no ACKs, no room
            assert 14 <= blocked_at <= 16 and max(progress) <= 300
            gate["open"] = True  # ACKs flow again (the client retransmits them)
            await asyncio.wait_for(done.wait(), TIMEOUT)
    assert len(progress) == 200


async def test_a_failing_handler_ends_only_its_own_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fragile(session: Session) -> None:
        if session.metadata.get("fail") == "yes":
            raise ValueError("the model fell over")
        await apps.echo(session)

    caplog.set_level(logging.ERROR, logger="quicvoice.server")
    async with running_server(session_handler(App(fragile))) as server:
        host, port = server.address
        good_hello = Hello(codecs=("L16/16000",))
        bad_hello = Hello(codecs=("L16/16000",), metadata={"fail": "yes"})
        async with connect(host, port, hello=good_hello, verify=False) as good:
            # The failure may close the session before the client's connect() returns.
            try:
                async with connect(
                    host, port, hello=bad_hello, verify=False, reconnect=False
                ) as bad:
                    closed = await next_of(bad, SessionClosed)
                    assert isinstance(closed, SessionClosed)
                    code = closed.error_code
            except SessionRefusedError as refusal:
                code = refusal.error_code
            assert code == ErrorCode.INTERNAL_ERROR
            await speak(good, "L16/16000", tone(440.0, 16000, 0.4), 16000)
            good.end_audio()
            await next_of(good, TurnEnded)
    failures = [r for r in caplog.records if "handler failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert "the model fell over" in caplog.text


async def test_events_arrive_as_a_typed_union_in_order() -> None:
    seen: list[object] = []
    ended = asyncio.Event()

    async def listener(session: Session) -> None:
        async with session.turn() as turn:
            await turn.write(np.zeros(3200, dtype=np.int16))  # 200 ms
        async for event in session.events():
            seen.append(event)
            match event:
                case UserEvent(name="ping", data=data):
                    session.send_event("pong", data)
                case SessionEnded():
                    ended.set()
                    break

    async with running_server(session_handler(App(listener))) as server:
        host, port = server.address
        async with connect(
            host, port, local_address="127.0.0.2", verify=False, reconnect=False
        ) as client:
            started = await next_of(client, TurnStarted)
            await next_of(client, TurnEnded)
            assert client.playout is not None
            while client.playout.pull() is not None:  # plays it out: a complete report
                pass
            await client.migrate("127.0.0.3")
            client.send_event("ping", {"n": 1})
            pong = await next_of(client, EventReceived)
            assert isinstance(pong, EventReceived) and pong.data == {"n": 1}
        await asyncio.wait_for(ended.wait(), TIMEOUT)
    assert isinstance(started, TurnStarted)
    kinds = [type(event) for event in seen]
    assert kinds[:3] == [TurnPlayed, CallerMigrated, UserEvent]
    assert seen[0] == TurnPlayed(turn_id=started.turn_id, played_ms=200, complete=True)
    migrated = seen[1]
    assert isinstance(migrated, CallerMigrated) and migrated.to_address.startswith("127.0.0.3:")
    assert isinstance(seen[-1], SessionEnded)


async def test_an_app_that_leaves_its_events_unread_is_cut_off_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def deaf(session: Session) -> None:
        session.send_event("ready")  # takes the session over, then never reads events
        await asyncio.sleep(TIMEOUT)

    async with running_server(session_handler(App(deaf, max_pending_events=5))) as server:
        host, port = server.address
        async with connect(host, port, verify=False, reconnect=False) as client:
            await next_of(client, EventReceived)
            for index in range(6):
                client.send_event("chatter", index)
            closed = await next_of(client, SessionClosed)
    assert isinstance(closed, SessionClosed) and closed.error_code == ErrorCode.LIMIT_EXCEEDED
    assert "left 5 events unread" in caplog.text


async def test_the_realtime_uplink_reaches_the_app_as_concealed_pcm_at_its_rate() -> None:
    frames: list[tuple[int, int, bool]] = []

    async def ear(session: Session) -> None:
        async for frame in session.audio():
            frames.append((frame.sample_rate, len(frame), frame.concealed))
            if len(frames) == 40:
                session.send_event("heard", len(frames))

    hello = Hello(codecs=("opus/48000",), uplink=UplinkMode.REALTIME)
    async with running_server(session_handler(App(ear, sample_rate=16000))) as server:
        host, port = server.address
        async with connect(host, port, hello=hello, verify=False) as client:
            encoder = PcmEncoder("opus/48000", 48000)
            for frame in encoder.write(tone(440.0, 48000, 1.2)):
                client.send_audio(frame.payload, frame.timestamp)
                await asyncio.sleep(0.02)  # a live microphone
            await next_of(client, EventReceived)
    assert {(rate, size) for rate, size, _ in frames} == {(16000, 320)}
    # Concealment depends on how late the loaded event loop delivers (a shared 2-core VM): the
    # check is that the caller's own audio makes up most of what the app hears.
    assert sum(not concealed for _, _, concealed in frames) >= 0.75 * len(frames)
