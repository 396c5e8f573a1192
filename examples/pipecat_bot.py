"""A Pipecat voice bot on quicvoice that needs no cloud service (``quicvoice[pipecat]``).

The pipeline is Pipecat's own, with scripted stand-ins for the three models:

    transport.input() -> VADProcessor(EnergyVAD) -> ScriptedSTT -> user aggregator
        -> RecallingLLM -> ToneTTS -> transport.output() -> assistant aggregator

- ``EnergyVAD``: Pipecat's ``VADAnalyzer`` deciding speech by loudness (no model);
- ``ScriptedSTT``: each utterance the VAD hears becomes the text ``"utterance N"``;
- ``RecallingLLM``: answers from the ``LLMContext`` alone, naming what was said before
  ("you said utterance 3; before that: utterance 1, utterance 2"), so a reply shows
  whether the conversation survived;
- ``ToneTTS``: one short tone per word, a pitch per word.

The conversation (the context's messages and the utterance counter) is checkpointed into
the session after every turn, so when its backend dies the call resumes on another backend
and the bot there goes on where it was, without greeting again. Run it behind a forwarder
with a shared Redis, and kill a backend mid-call:

    redis-server --port 6379 --save '' &
    # lb.toml: examples/lb.toml plus  session_store = "redis://127.0.0.1:6379/0"
    quicvoice-lb --config lb.toml &
    quicvoice serve --config lb.toml --server-id 0a000001 --app examples.pipecat_bot:app &
    quicvoice serve --config lb.toml --server-id 0a000002 --app examples.pipecat_bot:app &
    python examples/pipecat_bot.py call 127.0.0.1:4433 --migrate-after 3 --utterances 4

``call`` speaks a few tone "utterances", moves from 127.0.0.2 ("Wi-Fi") to 127.0.0.3 ("5G")
and prints what the bot said (the client's downlink carries the tones; the bot's words come
as ``bot.said`` events too). Kill the backend that holds the call (``kill -9``) between two
utterances: the next reply still lists every earlier utterance.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from typing import Any

import numpy as np
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams
from pipecat.frames.frames import (
    Frame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMRunFrame,
    LLMTextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    VADUserStoppedSpeakingFrame,
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
from pipecat.utils.time import time_now_iso8601

import quicvoice
from quicvoice.integrations.pipecat import (
    ContextCheckpoint,
    QuicVoiceTransport,
    pipeline_app,
)

#: The pipeline's audio rate (both directions), Hz.
SAMPLE_RATE = 16000
#: The greeting of a new call (never repeated on a resumed one).
GREETING = "hello"
SYSTEM_PROMPT = "You are a scripted bot that recalls every utterance of the call."
#: One tone per word: its length and the gap after it, seconds.
WORD_SECONDS = 0.12
GAP_SECONDS = 0.03


class EnergyVAD(VADAnalyzer):
    """Speech is whatever is louder than ``threshold`` (RMS of int16 samples) - tones too."""

    def __init__(self, *, threshold: float = 500.0, params: VADParams | None = None) -> None:
        super().__init__(
            params=params or VADParams(confidence=0.5, start_secs=0.1, stop_secs=0.2, min_volume=0)
        )
        self._threshold = threshold

    def num_frames_required(self) -> int:
        return int(self.sample_rate * 0.02)

    def voice_confidence(self, buffer: bytes) -> float:
        samples = np.frombuffer(buffer, dtype="<i2").astype(np.float64)
        rms = math.sqrt(float(np.mean(samples * samples))) if len(samples) else 0.0
        return 1.0 if rms >= self._threshold else 0.0


class ScriptedSTT(FrameProcessor):
    """Turns each utterance the VAD heard into the text ``"utterance N"`` (N from 1)."""

    def __init__(self, state: dict[str, Any]) -> None:
        super().__init__()
        self._state = state

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, VADUserStoppedSpeakingFrame):
            self._state["utterances"] = int(self._state.get("utterances", 0)) + 1
            text = f"utterance {self._state['utterances']}"
            await self.push_frame(
                TranscriptionFrame(text, "caller", time_now_iso8601(), finalized=True)
            )


def recall(messages: list[Any]) -> str:
    """The scripted reply to a context: the last utterance, and every one before it."""
    said = [
        m["content"]
        for m in messages
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str)
    ]
    if not said:
        return GREETING
    reply = f"you said {said[-1]}"
    if len(said) > 1:
        reply += "; before that: " + ", ".join(said[:-1])
    return reply


class RecallingLLM(FrameProcessor):
    """An LLM stand-in: answers each context with :func:`recall` of its messages."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            await self.push_frame(LLMFullResponseStartFrame())
            await self.push_frame(LLMTextFrame(recall(frame.context.get_messages())))
            await self.push_frame(LLMFullResponseEndFrame())
        else:
            await self.push_frame(frame, direction)


def pitch(word: str) -> float:
    """The tone of ``word``, Hz (from its letters)."""
    return 300.0 + (sum(word.encode()) % 40) * 20.0


def tone(word: str, sample_rate: int, seconds: float = WORD_SECONDS, channels: int = 1) -> bytes:
    """A tone for ``word`` and the gap after it, s16le with ``channels`` interleaved."""
    count = int(sample_rate * seconds)
    times = np.arange(count) / sample_rate
    voiced = (8000 * np.sin(2 * math.pi * pitch(word) * times)).astype("<i2")
    mono = np.concatenate((voiced, np.zeros(int(sample_rate * GAP_SECONDS), dtype="<i2")))
    return np.repeat(mono, channels).tobytes()


class ToneTTS(FrameProcessor):
    """A TTS stand-in: one tone per word, in 20 ms frames, then the text it spoke."""

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        *,
        channels: int = 1,
        word_seconds: float = WORD_SECONDS,
    ) -> None:
        super().__init__()
        self._rate = sample_rate
        self._channels = channels
        self._word_seconds = word_seconds

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if not isinstance(frame, LLMTextFrame):
            await self.push_frame(frame, direction)
            return
        await self.push_frame(TTSStartedFrame())
        chunk = 2 * self._channels * self._rate // 50
        for word in frame.text.split():
            audio = tone(word, self._rate, self._word_seconds, self._channels)
            for start in range(0, len(audio), chunk):
                await self.push_frame(
                    TTSAudioRawFrame(audio[start : start + chunk], self._rate, self._channels)
                )
            await self.push_frame(TTSTextFrame(word, text_type="word"))
        await self.push_frame(TTSStoppedFrame())


class SaidReporter(FrameProcessor):
    """Tells the caller the bot's words as ``bot.said`` events (the tones carry no text)."""

    def __init__(self, session: quicvoice.Session) -> None:
        super().__init__()
        self._session = session
        self._words: list[str] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSTextFrame):
            self._words.append(frame.text)
        elif isinstance(frame, LLMFullResponseEndFrame) and self._words:
            self._session.send_event("bot.said", {"text": " ".join(self._words)})
            self._words = []
        await self.push_frame(frame, direction)


def build(transport: QuicVoiceTransport, session: quicvoice.Session) -> PipelineWorker:
    """The bot's pipeline for one call (or for the rest of a resumed one)."""
    context = LLMContext([{"role": "system", "content": SYSTEM_PROMPT}])
    state: dict[str, Any] = {"utterances": 0}
    checkpoint = ContextCheckpoint(session, context, app_state=state, over_limit="trim")
    transport.observers.append(checkpoint)
    aggregators = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            user_turn_strategies=UserTurnStrategies(
                start=[VADUserTurnStartStrategy()],
                stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.2)],
            ),
        ),
    )
    pipeline = Pipeline(
        [
            transport.input(),
            VADProcessor(vad_analyzer=EnergyVAD()),
            ScriptedSTT(state),
            aggregators.user(),
            RecallingLLM(),
            ToneTTS(SAMPLE_RATE),
            SaidReporter(session),
            transport.output(),
            aggregators.assistant(),
        ]
    )
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=SAMPLE_RATE, audio_out_sample_rate=SAMPLE_RATE),
        enable_rtvi=False,
        idle_timeout_secs=None,
    )

    @transport.event_handler("on_client_connected")
    async def greet(transport: QuicVoiceTransport, session: quicvoice.Session) -> None:
        await worker.queue_frames([LLMRunFrame()])

    return worker


#: ``quicvoice serve --app examples.pipecat_bot:app``
app = pipeline_app(build, sample_rate=SAMPLE_RATE)


# -- a caller for trying it out ---------------------------------------------------------


def utterance(seconds: float, rate: int = 16000) -> list[bytes]:
    """20 ms L16 big-endian frames: a loud 440 Hz tone for ``seconds``."""
    count = int(rate * seconds)
    samples = (9000 * np.sin(2 * math.pi * 440.0 * np.arange(count) / rate)).astype(">i2")
    step = rate // 50
    return [samples[i : i + step].tobytes() for i in range(0, count - step + 1, step)]


async def call(args: argparse.Namespace) -> None:
    host, port = args.target.rsplit(":", 1)
    silence = bytes(640)
    async with quicvoice.connect(
        host, int(port), local_address=args.local_address, verify=False
    ) as voice:
        said: list[str] = []
        loop = asyncio.get_running_loop()

        async def listen() -> None:
            while True:
                event = await voice.receive()
                name = getattr(event, "name", None)
                if name == "bot.said":
                    said.append(event.data["text"])  # type: ignore[attr-defined]
                    print(json.dumps({"bot": event.data["text"]}))  # type: ignore[attr-defined]

        async def play() -> None:  # the device clock: one frame per 20 ms
            while True:
                if voice.playout is not None:
                    voice.playout.pull()
                await asyncio.sleep(0.02)

        tasks = [loop.create_task(listen()), loop.create_task(play())]
        started = loop.time()
        migrated = False
        for _ in range(args.utterances):
            for frame in utterance(0.6) + [silence] * 100:
                voice.send_audio(frame)
                await asyncio.sleep(0.02)
                if not migrated and loop.time() - started > args.migrate_after:
                    migration = await voice.migrate(args.migrate_to)
                    print(json.dumps({"migrated": str(migration)}))
                    migrated = True
        for task in tasks:
            task.cancel()
        print(json.dumps({"said": said, "resumptions": len(voice.resumptions)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    caller = sub.add_parser("call", help="call the bot: tone utterances, a move mid-call")
    caller.add_argument("target", help="HOST:PORT of the forwarder or a backend")
    caller.add_argument("--utterances", type=int, default=4)
    caller.add_argument("--local-address", default="127.0.0.2")
    caller.add_argument("--migrate-to", default="127.0.0.3")
    caller.add_argument("--migrate-after", type=float, default=3.0)
    args = parser.parse_args()
    asyncio.run(call(args))


if __name__ == "__main__":
    main()
