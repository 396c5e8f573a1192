"""``SessionAudioOutput`` and ``SessionAudioInput`` on their own over a real session on
loopback (no ``AgentSession``): what LiveKit would hand them, and what the caller gets."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("livekit.agents", reason="needs the livekit extra")

from livekit import rtc  # noqa: E402
from livekit.agents.voice.io import PlaybackFinishedEvent  # noqa: E402

from quicvoice.app import App, Session, session_handler  # noqa: E402
from quicvoice.asyncio.client import connect  # noqa: E402
from quicvoice.integrations.livekit import (  # noqa: E402
    FrameFormatError,
    SessionAudioInput,
    SessionAudioOutput,
)

from ...integration.voice_harness import running_server  # noqa: E402
from .caller import calling, dominant_hz, tone  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


async def test_stereo_44k_speech_reaches_the_caller_as_mono_at_its_rate() -> None:
    finished: list[PlaybackFinishedEvent] = []
    refused: list[str] = []

    async def speaker(session: Session) -> None:
        output = SessionAudioOutput(session)
        output.on("playback_finished", finished.append)
        with pytest.raises(FrameFormatError) as error:  # LiveKit would log it and flush
            await output.capture_frame(rtc.AudioFrame(bytes(160), 4000, 1, 80))
        refused.append(str(error.value))
        output.flush()
        left = tone(880.0, 44100, 1.0)
        stereo = np.stack([left, left], axis=1).reshape(-1)
        for offset in range(0, len(stereo), 882):  # 10 ms stereo frames
            chunk = stereo[offset : offset + 882]
            await output.capture_frame(rtc.AudioFrame(chunk.tobytes(), 44100, 2, len(chunk) // 2))
        output.flush()
        await asyncio.wait_for(output.wait_for_playout(), 10)

    async with running_server(session_handler(App(speaker))) as server:
        async with connect(*server.address, verify=False) as client:
            async with calling(client, "L16/16000") as caller:
                await caller.wait_for(lambda: len(finished) == 2, "both segments finished")
    assert refused and "4000 Hz cannot be resampled to 16000 Hz" in refused[0]
    empty, spoken = finished
    assert empty.playback_position == 0 and not empty.interrupted
    turn = caller.turns_started()[-1]
    heard = caller.audio_of(turn)
    assert abs(len(heard) - 16000) <= 320 + 16000 * 0.01  # a second, whole frames
    steady = heard[1600:14400]
    assert abs(dominant_hz(steady, 16000) - 880.0) < 3
    level = np.sqrt(np.mean(steady.astype(np.float64) ** 2)) / (0.5 * 32767 / np.sqrt(2))
    assert 0.97 < level < 1.03
    assert not spoken.interrupted
    assert spoken.playback_position == pytest.approx(caller.played_ms(turn) / 1000, abs=1e-9)


async def test_the_input_yields_the_callers_audio_then_silence_in_the_gap() -> None:
    heard: list[rtc.AudioFrame] = []
    done = asyncio.Event()

    async def listener(session: Session) -> None:
        audio = SessionAudioInput(session, silence_after_ms=100)
        async for frame in audio:
            heard.append(frame)
            if audio.silent_frames_yielded >= 10:
                break
        await audio.aclose()
        done.set()

    async with running_server(session_handler(App(listener, sample_rate=24000))) as server:
        async with connect(*server.address, verify=False) as client:
            async with calling(client, "L16/16000") as caller:
                await caller.say(tone(440.0, 16000, 0.4))
                await asyncio.wait_for(done.wait(), 10)
    assert {(f.sample_rate, f.num_channels, f.samples_per_channel) for f in heard} == {
        (24000, 1, 480)
    }
    real, silent = heard[:-10], heard[-10:]
    assert len(real) == 20  # 0.4 s of the caller's 20 ms frames, then the gap
    samples = np.concatenate([np.frombuffer(f.data, np.int16) for f in real])
    assert abs(dominant_hz(samples[2400:], 24000) - 440.0) < 5
    assert not any(np.frombuffer(f.data, np.int16).any() for f in silent)
