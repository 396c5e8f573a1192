"""A caller for the LiveKit tests: a real quicvoice client whose "audio device" pulls the
playout buffer once per frame period, and which records the turns and events it gets."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from quicvoice.asyncio.client import VoiceClient
from quicvoice.audio.pcm import PcmDecoder, PcmEncoder
from quicvoice.session.events import (
    AudioReceived,
    EventReceived,
    TurnCancelled,
    TurnStarted,
    VoiceEvent,
)

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "livekit_agent.py"
#: Upper bound on any wait in these tests, in seconds.
TIMEOUT = 20.0


def load_example() -> ModuleType:
    """``examples/livekit_agent.py`` as a module (the examples folder is not a package)."""
    name = "livekit_agent_example"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def tone(hz: float, rate: int, seconds: float, level: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (level * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1.0 / rate)[np.argmax(spectrum)])


@dataclass
class Caller:
    """Drives ``client``: plays its turns out in real time and keeps what it heard."""

    client: VoiceClient
    codec: str
    rate: int
    #: Samples played per turn ID, in order.
    played: dict[int, list[np.ndarray]] = field(default_factory=dict)
    #: Every event received.
    events: list[VoiceEvent] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def conversation(self) -> list[dict[str, object]]:
        return [
            e.data
            for e in self.events
            if isinstance(e, EventReceived) and e.name == "livekit.conversation_item"
        ]

    def turns_started(self) -> list[int]:
        return [e.turn_id for e in self.events if isinstance(e, TurnStarted)]

    def cancelled(self) -> list[TurnCancelled]:
        return [e for e in self.events if isinstance(e, TurnCancelled)]

    def played_ms(self, turn_id: int) -> int:
        return sum(len(x) for x in self.played.get(turn_id, [])) * 1000 // self.rate

    def audio_of(self, turn_id: int) -> np.ndarray:
        return np.concatenate(self.played.get(turn_id, [np.zeros(0, np.int16)]))

    async def wait_for(self, condition: object, what: str, timeout: float = TIMEOUT) -> None:
        """Wait until ``condition()`` holds (re-checked on every event and played frame)."""
        assert callable(condition)

        async def wait() -> None:
            while not condition():
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            events = [e for e in self.events if not isinstance(e, AudioReceived)]
            raise AssertionError(f"timed out waiting for {what}; events: {events}") from None

    async def say(self, pcm: np.ndarray, *, paced: bool = True) -> None:
        """Send ``pcm`` (at ``rate``) as the uplink, one frame per 20 ms when ``paced``."""
        encoder = PcmEncoder(self.codec, self.rate)
        loop = asyncio.get_running_loop()
        due = loop.time()
        for frame in encoder.write(pcm) + encoder.flush():
            self.client.send_audio(frame.payload, frame.timestamp)
            if paced:
                due += 0.02
                await asyncio.sleep(max(0.0, due - loop.time()))

    async def _receive(self) -> None:
        while True:
            event = await self.client.receive()
            self.events.append(event)
            self.changed.set()

    async def _play(self) -> None:
        decoder = PcmDecoder(self.codec, self.rate)
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:  # the audio device: one frame per 20 ms, drift-free
            due += 0.02
            await asyncio.sleep(max(0.0, due - loop.time()))
            playout = self.client.playout
            item = playout.pull() if playout is not None else None
            if item is not None:
                turn_id, payload = item
                self.played.setdefault(turn_id, []).append(decoder.decode(payload).samples)
                self.changed.set()


@contextlib.asynccontextmanager
async def calling(client: VoiceClient, codec: str) -> AsyncIterator[Caller]:
    caller = Caller(client=client, codec=codec, rate=int(codec.split("/")[1]))
    tasks = [asyncio.create_task(caller._receive()), asyncio.create_task(caller._play())]
    try:
        yield caller
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
