"""A caller for the Pipecat tests: speaks tone utterances, plays the bot's turns out in real
time (so the client reports how much it played), and records turns and events."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quicvoice.asyncio.client import VoiceClient
from quicvoice.session.events import (
    AudioReceived,
    EventReceived,
    SessionResumed,
    TurnCancelled,
    TurnEnded,
    TurnStarted,
    VoiceEvent,
)

RATE = 16000
FRAME_SAMPLES = RATE // 50
SILENCE = bytes(2 * FRAME_SAMPLES)


def tone_frames(seconds: float, hz: float = 440.0) -> list[bytes]:
    """20 ms L16 big-endian frames of a loud tone (the bots' VAD hears it as speech)."""
    count = int(RATE * seconds)
    samples = (9000 * np.sin(2 * math.pi * hz * np.arange(count) / RATE)).astype(">i2")
    return [
        samples[i : i + FRAME_SAMPLES].tobytes()
        for i in range(0, count - FRAME_SAMPLES + 1, FRAME_SAMPLES)
    ]


def dominant_hz(samples: np.ndarray[Any, Any], rate: int) -> float:
    """The strongest frequency of ``samples``."""
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


@dataclass
class Turn:
    """One bot turn as the caller received it."""

    turn_id: int
    audio: list[bytes] = field(default_factory=list)
    ended: bool = False
    cancelled: bool = False
    cancelled_by_server: bool = False

    @property
    def done(self) -> bool:
        """It ended, or was cancelled (by either side)."""
        return self.ended or self.cancelled

    def samples(self) -> np.ndarray[Any, Any]:
        return np.frombuffer(b"".join(self.audio), dtype=">i2").astype(np.int16)


class Caller:
    """Listens and plays out in the background; ``speak`` sends utterances in real time."""

    def __init__(self, call: VoiceClient) -> None:
        self.call = call
        self.turns: dict[int, Turn] = {}
        self.said: list[str] = []
        self.events: list[VoiceEvent] = []
        self.resumed: list[SessionResumed] = []
        self._changed = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._play())]

    def poke(self) -> None:
        """Something the caller waits on changed elsewhere (e.g. in the server's pipeline)."""
        self._changed.set()

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def speak(self, seconds: float, *, silence: float = 0.5) -> None:
        """An utterance of ``seconds``, then ``silence`` seconds of silence, in real time."""
        frames = tone_frames(seconds) + [SILENCE] * int(silence * 50)
        await self.send(frames)

    async def send(self, frames: list[bytes]) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        for frame in frames:
            self.call.send_audio(frame)
            due += 0.02
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def wait(self, condition: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Wait until ``condition()`` is truthy; return it."""

        async def waiting() -> Any:
            while not (result := condition()):
                self._changed.clear()
                await self._changed.wait()
            return result

        return await asyncio.wait_for(waiting(), timeout)

    async def quiet(self, timeout: float = 10.0) -> None:
        """Wait until every bot turn so far is done (ended or cancelled)."""
        await self.wait(lambda: self.turns and all(t.done for t in self.turns.values()), timeout)

    async def wait_said(self, count: int, timeout: float = 10.0) -> str:
        """The bot's ``count``-th sentence (``bot.said`` events, counted from 1)."""
        await self.wait(lambda: len(self.said) >= count, timeout)
        return self.said[count - 1]

    async def _listen(self) -> None:
        while True:
            event = await self.call.receive()
            if isinstance(event, AudioReceived):
                if event.turn_id is not None and event.turn_id in self.turns:
                    self.turns[event.turn_id].audio.append(event.frame.payload)
                    self._changed.set()
                continue
            self.events.append(event)
            if isinstance(event, TurnStarted):
                self.turns[event.turn_id] = Turn(event.turn_id)
            elif isinstance(event, TurnEnded) and event.turn_id in self.turns:
                self.turns[event.turn_id].ended = True
            elif isinstance(event, TurnCancelled) and event.turn_id in self.turns:
                self.turns[event.turn_id].cancelled = True
                self.turns[event.turn_id].cancelled_by_server = event.by_peer
            elif isinstance(event, EventReceived) and event.name == "bot.said":
                self.said.append(str(event.data["text"]))
            elif isinstance(event, SessionResumed):
                self.resumed.append(event)
            self._changed.set()

    async def _play(self) -> None:
        """The caller's audio device: one frame per 20 ms from the playout buffer."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            if self.call.playout is not None:
                self.call.playout.pull()
            due += 0.02
            await asyncio.sleep(max(0.0, due - loop.time()))
