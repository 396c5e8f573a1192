"""A real Pipecat pipeline over a real quicvoice session through the forwarder.

One call exercises the transport end to end: the caller's 16 kHz audio reaches the
pipeline at its own 24 kHz; the bot's 48 kHz stereo TTS reaches the caller as 16 kHz mono
at the right pitch; the caller barges in (a Pipecat interruption follows, with how much it
heard); the caller talks over the bot (Pipecat's VAD interrupts and the quicvoice turn is
cancelled); garbled frames are refused with an error and never reach the caller; the caller
moves to another address (``on_client_migrated``, no disconnect) and the conversation goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMRunFrame,
    OutputAudioRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.turns.user_start.vad_user_turn_start_strategy import VADUserTurnStartStrategy
from pipecat.turns.user_stop.speech_timeout_user_turn_stop_strategy import (
    SpeechTimeoutUserTurnStopStrategy,
)
from pipecat.turns.user_turn_strategies import UserTurnStrategies

import quicvoice
from examples.pipecat_bot import (
    GREETING,
    EnergyVAD,
    RecallingLLM,
    SaidReporter,
    ScriptedSTT,
    ToneTTS,
    pitch,
)
from quicvoice.app import session_handler
from quicvoice.asyncio.client import connect
from quicvoice.integrations.pipecat import (
    ContextCheckpoint,
    QuicVoiceTransport,
    TurnPlayedFrame,
    pipeline_app,
)

from ...integration.deployment import Deployment, backends
from .caller import RATE, Caller, dominant_hz

pytestmark = pytest.mark.integration

#: The pipeline's own rates, unlike the session's 16 kHz.
PIPELINE_RATE = 24000
TTS_RATE = 48000


@dataclass
class Record:
    """What the pipeline of the call saw."""

    input_rates: set[int] = field(default_factory=set)
    input_audio: list[bytes] = field(default_factory=list)
    interruptions: int = 0
    events: list[tuple[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    worker: PipelineWorker | None = None
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    #: Called on every change, so a waiting caller looks again.
    notify: Callable[[], None] = lambda: None

    def named(self, name: str) -> list[Any]:
        return [value for event, value in self.events if event == name]


class Probe(FrameProcessor):
    """Notes the caller's audio as the pipeline gets it, and interruptions."""

    def __init__(self, record: Record) -> None:
        super().__init__()
        self._record = record

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self._record.input_rates.add(frame.sample_rate)
            self._record.input_audio.append(frame.audio)
        elif isinstance(frame, InterruptionFrame):
            self._record.interruptions += 1
            self._record.notify()
        await self.push_frame(frame, direction)


def recording_app(record: Record) -> quicvoice.App:
    def build(transport: QuicVoiceTransport, session: quicvoice.Session) -> PipelineWorker:
        context = LLMContext([{"role": "system", "content": "test"}])
        state: dict[str, Any] = {"utterances": 0}
        transport.observers.append(ContextCheckpoint(session, context, app_state=state))
        pair = LLMContextAggregatorPair(
            context,
            user_params=LLMUserAggregatorParams(
                user_turn_strategies=UserTurnStrategies(
                    start=[VADUserTurnStartStrategy()],
                    stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.2)],
                )
            ),
        )
        pipeline = Pipeline(
            [
                transport.input(),
                Probe(record),
                VADProcessor(vad_analyzer=EnergyVAD()),
                ScriptedSTT(state),
                pair.user(),
                RecallingLLM(),
                ToneTTS(TTS_RATE, channels=2, word_seconds=0.25),
                SaidReporter(session),
                transport.output(),
                pair.assistant(),
            ]
        )
        worker = PipelineWorker(
            pipeline,
            params=PipelineParams(
                audio_in_sample_rate=PIPELINE_RATE, audio_out_sample_rate=PIPELINE_RATE
            ),
            enable_rtvi=False,
            idle_timeout_secs=None,
        )
        record.worker = worker

        def note(name: str) -> Any:
            async def handler(_: QuicVoiceTransport, value: Any) -> None:
                record.events.append((name, value))
                record.notify()
                if name == "on_client_disconnected":
                    record.disconnected.set()

            return handler

        for name in (
            "on_client_connected",
            "on_session_resumed",
            "on_client_migrated",
            "on_client_disconnected",
            "on_bot_interrupted",
            "on_turn_played",
        ):
            transport.add_event_handler(name, note(name))

        @transport.event_handler("on_client_connected")
        async def greet(_: QuicVoiceTransport, __: quicvoice.Session) -> None:
            await worker.queue_frames([LLMRunFrame()])

        @transport.event_handler("on_client_message")
        async def garble(_: QuicVoiceTransport, event: quicvoice.UserEvent) -> None:
            if event.name == "test.garble":
                await worker.queue_frames(
                    [
                        OutputAudioRawFrame(b"\x01" * 7, PIPELINE_RATE, 1),  # half a sample
                        OutputAudioRawFrame(b"\x01" * 6, TTS_RATE, 2),  # 1.5 stereo frames
                        OutputAudioRawFrame(b"\x01" * 8, TTS_RATE, 9),  # nine channels
                    ]
                )

        @worker.event_handler("on_pipeline_error")
        async def on_error(_: PipelineWorker, frame: ErrorFrame) -> None:
            record.errors.append(frame.error)
            record.notify()

        return worker

    return pipeline_app(build, sample_rate=RATE)


@pytest.mark.asyncio
async def test_a_pipecat_pipeline_over_a_call_through_the_forwarder(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, server_ids=["0a000001"])
    deployment.start_forwarder()
    record = Record()
    try:
        async with backends(deployment, session_handler(recording_app(record))):
            async with connect(*deployment.vip, local_address="127.0.0.2", verify=False) as call:
                caller = Caller(call)
                record.notify = caller.poke
                try:
                    await scenario(caller, record)
                except BaseException:
                    print("the pipeline saw:", record.events, record.errors)
                    raise
                finally:
                    caller.close()
            await asyncio.wait_for(record.disconnected.wait(), 5)
    finally:
        deployment.stop()
    # The caller hung up: one disconnect, after one connect, and no resume.
    assert len(record.named("on_client_connected")) == 1
    assert record.named("on_session_resumed") == []
    assert len(record.named("on_client_disconnected")) == 1


async def scenario(caller: Caller, record: Record) -> None:
    # A new call: the greeting (on_client_connected), a turn of its own.
    assert await caller.wait_said(1) == GREETING
    greeting = await caller.wait(lambda: caller.turns.get(0) if 0 in caller.turns else None)
    await caller.wait(lambda: greeting.ended)

    # Audio in: 16 kHz on the wire, 24 kHz in the pipeline, still a 440 Hz tone.
    await caller.speak(0.6)
    assert await caller.wait_said(2) == "you said utterance 1"
    assert record.input_rates == {PIPELINE_RATE}
    heard = np.frombuffer(b"".join(record.input_audio), dtype="<i2")
    loud = heard[np.abs(heard) > 4000]
    assert len(loud) > PIPELINE_RATE // 4
    assert abs(dominant_hz(heard, PIPELINE_RATE) - 440.0) < 10

    # Audio out: 48 kHz stereo from the TTS, 16 kHz mono at the caller, each word's pitch.
    reply = caller.turns[max(caller.turns)]
    await caller.wait(lambda: reply.ended)
    samples = reply.samples()
    word = int(0.25 * RATE)
    first = samples[word // 5 : word - word // 5]  # inside the first word's tone
    assert abs(dominant_hz(first, RATE) - pitch("you")) < 20
    second = samples[int(0.28 * RATE) + word // 5 : int(0.28 * RATE) + word - word // 5]
    assert abs(dominant_hz(second, RATE) - pitch("said")) < 20

    # The caller barges in a moment into the next reply: the pipeline is interrupted and
    # hears how much the caller heard.
    interruptions = record.interruptions
    turn = await next_turn(caller, 0.6)
    await caller.wait(lambda: len(caller.turns[turn].audio) >= 40)  # 0.8 s; ~0.5 s played
    caller.call.cancel_turn(turn)
    report = await caller.wait(
        lambda: next((f for f in record.named("on_bot_interrupted") if f.turn_id == turn), None)
    )
    assert isinstance(report, TurnPlayedFrame)
    assert report.interrupted_by == "caller" and not report.complete
    assert 0 < report.played_ms < 3000
    await caller.wait(lambda: record.interruptions > interruptions)
    assert not caller.turns[turn].ended  # nothing more of it came

    # The caller talks over the bot: Pipecat's VAD interrupts, the quicvoice turn is cancelled.
    turn = await next_turn(caller, 0.6)
    await caller.wait(lambda: len(caller.turns[turn].audio) >= 10)
    await caller.speak(0.5, silence=0.0)
    await caller.wait(lambda: caller.turns[turn].cancelled_by_server)
    report = await caller.wait(
        lambda: next((f for f in record.named("on_bot_interrupted") if f.turn_id == turn), None)
    )
    assert report.interrupted_by == "pipeline" and 0 < report.played_ms
    await caller.send([bytes(640)] * 25)
    assert (await caller.wait_said(5)).startswith("you said utterance 4")

    # Garbled frames: refused with an error each, none reaches the caller.
    await caller.wait(lambda: max(caller.turns) > turn)  # the reply to utterance 4
    await caller.quiet()
    turns = len(caller.turns)
    caller.call.send_event("test.garble")
    await caller.wait(lambda: len(record.errors) >= 3)
    assert any("not whole samples" in e for e in record.errors), record.errors
    assert any("2 channel(s)" in e for e in record.errors), record.errors
    assert any("9 channels" in e for e in record.errors), record.errors
    await asyncio.sleep(0.3)  # time for a turn to start, if one wrongly did
    assert len(caller.turns) == turns

    # The caller moves from 127.0.0.2 to 127.0.0.3: a migration, not a disconnect.
    await caller.call.migrate("127.0.0.3")
    moved = await caller.wait(lambda: record.named("on_client_migrated"))
    assert moved[0].to_address.startswith("127.0.0.3:")
    assert record.named("on_client_disconnected") == []
    await caller.speak(0.6)
    said = await caller.wait_said(6)
    assert said.startswith("you said utterance 5; before that: utterance 1, utterance 2")
    assert record.named("on_client_connected") and not record.named("on_session_resumed")


async def next_turn(caller: Caller, seconds: float) -> int:
    """Speak an utterance of ``seconds``; return the turn of the bot's reply."""
    before = max(caller.turns)
    await caller.speak(seconds, silence=0.3)
    return int(await caller.wait(lambda: max(caller.turns) if max(caller.turns) > before else 0))
