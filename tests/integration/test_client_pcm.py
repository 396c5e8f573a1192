"""The client's PCM API on real loopback sockets: a client at 16 kHz (``connect(sample_rate=)``,
``send_pcm``, ``play``) and a server app at 24 kHz, over Opus/48000 and PCMU/8000; a tone keeps
its frequency and level both ways, and what the client plays is what its ``played`` report
counts."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from quicvoice.app import App, Session, SessionEnded, session_handler
from quicvoice.asyncio.client import VoiceClient, connect
from quicvoice.errors import UplinkEndedError
from quicvoice.session.events import (
    AudioReceived,
    ClientEvent,
    SessionClosed,
    TurnEnded,
    TurnStarted,
)
from quicvoice.session.messages import Hello

from .voice_harness import running_server

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

TIMEOUT = 10.0
CLIENT_RATE = 16000
SERVER_RATE = 24000
AMPLITUDE = 0.5
UP_HZ = 440.0
DOWN_HZ = 660.0


def tone(freq: float, rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(AMPLITUDE * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1.0 / rate)[np.argmax(spectrum)])


def level(samples: np.ndarray) -> float:
    """RMS relative to the test tone's (1.0: the level it was sent at)."""
    rms = np.sqrt(np.mean(samples.astype(np.float64) ** 2))
    return float(rms / (AMPLITUDE * 32767 / np.sqrt(2)))


def steady(samples: np.ndarray, rate: int) -> np.ndarray:
    """The middle of a one-second tone: no onset, no resampler or codec edges."""
    return samples[rate // 10 : rate * 8 // 10]


async def listen_then_answer(session: Session) -> None:
    """Measure what the caller said (at the app's 24 kHz), then say a tone back in one turn
    and report how much of it the caller heard."""
    frames = [frame async for frame in session.audio()]
    heard = np.concatenate([frame.samples for frame in frames] or [np.zeros(0, np.int16)])
    if len(heard) < SERVER_RATE:
        session.send_event("heard", {"samples": len(heard)})
        async for event in session.events():
            if isinstance(event, SessionEnded):
                break
        return
    session.send_event(
        "heard",
        {
            "samples": len(heard),
            "hz": dominant_hz(steady(heard, SERVER_RATE), SERVER_RATE),
            "level": level(steady(heard, SERVER_RATE)),
            "rates": sorted({frame.sample_rate for frame in frames}),
        },
    )
    pcm = tone(DOWN_HZ, SERVER_RATE, 1.0)
    async with session.turn() as turn:
        for start in range(0, len(pcm), 1000):
            await turn.write(pcm[start : start + 1000])
    played = await turn.wait_played(timeout=TIMEOUT)
    session.send_event("played", {"played_ms": played, "complete": turn.complete})
    async for event in session.events():
        if isinstance(event, SessionEnded):
            break


async def next_of(call: VoiceClient, kind: type, seen: list[ClientEvent]) -> ClientEvent:
    async def wait() -> ClientEvent:
        while True:
            event = await call.receive()
            seen.append(event)
            if isinstance(event, kind):
                return event
            assert not isinstance(event, SessionClosed), event

    return await asyncio.wait_for(wait(), TIMEOUT)


@pytest.mark.parametrize("codec", ["opus/48000", "PCMU/8000"])
async def test_a_16khz_client_and_a_24khz_app_hear_each_others_tone(codec: str) -> None:
    app = App(listen_then_answer, sample_rate=SERVER_RATE)
    async with running_server(session_handler(app)) as server:
        async with connect(
            *server.address, hello=Hello(codecs=(codec,)), verify=False, sample_rate=CLIENT_RATE
        ) as call:
            assert call.session is not None and call.session.codec == codec
            assert call.sample_rate == CLIENT_RATE
            # Pieces of odd sizes, as arrays and as bytes, one byte split across two calls.
            pcm = tone(UP_HZ, CLIENT_RATE, 1.0)
            sent = 0
            for index, start in enumerate(range(0, len(pcm), 777)):
                piece = pcm[start : start + 777]
                sent += call.send_pcm(piece if index % 2 else piece.astype("<i2").tobytes()[:-1])
                if not index % 2:
                    sent += call.send_pcm(piece.astype("<i2").tobytes()[-1:])
            assert sent == len(pcm) // 320  # whole 20 ms frames so far; the rest is held
            call.end_audio()  # sends the held remainder, padded
            heard = (await call.wait_event("heard", TIMEOUT)).data
            assert heard["rates"] == [SERVER_RATE]
            assert abs(heard["hz"] - UP_HZ) < 5.0
            assert 0.8 < heard["level"] < 1.2

            seen: list[ClientEvent] = []
            started = await next_of(call, TurnStarted, seen)
            await next_of(call, TurnEnded, seen)
            assert isinstance(started, TurnStarted)
            # The app's audio clock: one play() per frame period (no need to wait here: the
            # whole turn is buffered).
            assert call.playout is not None
            frames = []
            while call.playout.buffered_frames:
                frames.append(call.play())
                assert call.playing_turn == started.turn_id
            silence = call.play()
            assert silence.concealed and call.playing_turn is None
            assert silence.data == bytes(640) and silence.timestamp == 320 * len(frames)
            assert all(f.sample_rate == CLIENT_RATE and len(f) == 320 for f in frames)
            assert not any(f.concealed for f in frames)
            assert [f.timestamp for f in frames] == [320 * i for i in range(len(frames))]
            # The events carried the same PCM the playout buffer held.
            event_pcm = b"".join(
                e.pcm for e in seen if isinstance(e, AudioReceived) and e.pcm is not None
            )
            assert event_pcm == b"".join(f.data for f in frames)
            reply = np.concatenate([f.samples for f in frames])
            assert len(reply) >= CLIENT_RATE  # the whole second arrived
            assert abs(dominant_hz(steady(reply, CLIENT_RATE), CLIENT_RATE) - DOWN_HZ) < 5.0
            assert 0.8 < level(steady(reply, CLIENT_RATE)) < 1.2
            # Everything was played: the server hears the whole turn was.
            played = (await call.wait_event("played", TIMEOUT)).data
            assert played == {"played_ms": 20 * len(frames), "complete": True}
            assert call.audio_decode_errors == 0


async def test_pcm_misuse_raises_its_own_errors() -> None:
    app = App(listen_then_answer, sample_rate=SERVER_RATE)
    with pytest.raises(ValueError, match="sample_rate"):
        async with connect("127.0.0.1", 9, verify=False, sample_rate=12345):
            pass  # refused before anything is sent
    async with running_server(session_handler(app)) as server:
        async with connect(*server.address, verify=False) as raw:
            assert raw.sample_rate is None
            with pytest.raises(ValueError, match="sample_rate"):
                raw.send_pcm(b"\x00\x00")
            with pytest.raises(ValueError, match="sample_rate"):
                raw.play()
        async with connect(*server.address, verify=False, sample_rate=CLIENT_RATE) as call:
            with pytest.raises(ValueError):
                call.send_pcm(np.zeros(320, dtype=np.float32))
            with pytest.raises(ValueError):
                call.send_pcm(np.zeros((2, 320), dtype=np.int16))
            with pytest.raises(TypeError):
                call.send_pcm("not audio")  # type: ignore[arg-type]
            assert call.send_pcm(np.zeros(700, dtype=np.int16)) == 2
            call.end_audio()
            with pytest.raises(UplinkEndedError):
                call.send_pcm(np.zeros(10, dtype=np.int16))
            heard = await call.wait_event("heard", TIMEOUT)
            # 700 samples at 16 kHz: two frames, and the held 60 padded to a third; 1080 at
            # 24 kHz, give or take the resamplers' delays.
            assert heard.data["samples"] == 3 * 480
