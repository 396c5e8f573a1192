"""A phone call as Twilio places it on a ``<Connect><Stream>`` WebSocket, written from Twilio's
public Media Streams documentation (not from the gateway's code).

It plays Twilio's part: ``connected`` then ``start``, then one ``media`` message every 20 ms
for as long as the call lasts (the caller's voice, or µ-law silence), ``dtmf`` when a key
is pressed, ``stop`` to hang up. What the server sends back is played as Twilio would play
it: audio in real time from when it arrives, one message after another; a ``mark`` is
returned once the audio sent before it has played; ``clear`` drops the audio not yet played
and returns every pending mark at once. Everything is recorded with its arrival time on the
event loop's clock, for the tests' assertions.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from quicvoice.audio.g711 import ulaw_decode, ulaw_encode

from . import twilio_wire as wire
from .audio import Samples

CHUNK = 160  # 20 ms of µ-law at 8 kHz
PERIOD = 0.02
SILENCE = b"\xff" * CHUNK


@dataclass
class Played:
    """One ``media`` message from the server and when the line plays it."""

    arrived: float
    starts: float
    ulaw: bytes
    #: Set when a ``clear`` came before it had finished playing.
    cut_at: float | None = None

    @property
    def ends(self) -> float:
        return self.starts + len(self.ulaw) / 8000


@dataclass
class MarkRecord:
    name: str
    arrived: float
    #: When the audio before it has played (the line's clock at arrival).
    due: float
    #: When it was returned to the server, and whether because of a ``clear``.
    returned: float | None = None
    by_clear: bool = False
    #: How many media messages had arrived before it.
    after_media: int = 0


@dataclass
class CallLog:
    """What the caller saw, in order."""

    played: list[Played] = field(default_factory=list)
    marks: list[MarkRecord] = field(default_factory=list)
    clears: list[float] = field(default_factory=list)
    media_sent: int = 0
    messages: list[tuple[float, str]] = field(default_factory=list)
    closed: tuple[int | None, str] | None = None


class TwilioCaller:
    """One call's WebSocket, Twilio's side. Use :meth:`dial`."""

    def __init__(self, ws: ClientConnection, stream_sid: str) -> None:
        self.ws = ws
        self.stream_sid = stream_sid
        self.log = CallLog()
        self._loop = asyncio.get_running_loop()
        self._outbox: deque[bytes | str] = deque()  # µ-law chunks, or a DTMF digit
        self._seq = 0
        self._lock = asyncio.Lock()
        self._busy_until = 0.0
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._hanging_up = False

    @classmethod
    @asynccontextmanager
    async def dial(
        cls, url: str, *, custom_parameters: dict[str, str] | None = None
    ) -> AsyncIterator[TwilioCaller]:
        """Open the stream: ``connected``, ``start``, then 20 ms media until hang-up."""
        async with connect(url, compression=None, max_size=2**16) as ws:
            caller = cls(ws, wire.sid("MZ"))
            await caller._send(wire.connected())
            await caller._send_numbered(
                lambda seq: wire.start(
                    seq,
                    caller.stream_sid,
                    call_sid=wire.sid("CA"),
                    account_sid=wire.sid("AC"),
                    custom_parameters=custom_parameters,
                )
            )
            caller._tasks = [
                asyncio.create_task(caller._speak()),
                asyncio.create_task(caller._listen()),
            ]
            try:
                yield caller
            finally:
                for task in caller._tasks:
                    task.cancel()
                await asyncio.gather(*caller._tasks, return_exceptions=True)

    # -- the caller's side ---------------------------------------------------------------

    def say(self, samples: Samples) -> None:
        """Queue 8 kHz speech; it goes out in 20 ms chunks after what is queued."""
        ulaw = ulaw_encode(samples)
        for start in range(0, len(ulaw), CHUNK):
            self._outbox.append(ulaw[start : start + CHUNK].ljust(CHUNK, b"\xff"))

    def pause(self, seconds: float) -> None:
        """Queue silence."""
        self._outbox.extend([SILENCE] * round(seconds / PERIOD))

    def press(self, digit: str) -> None:
        """Queue a key press (sent between the media around it, as Twilio detects it)."""
        self._outbox.append(digit)

    async def hang_up(self) -> None:
        """Send ``stop`` (the caller hung up) and wait for the server to close."""
        self._hanging_up = True
        await self._tasks[0]  # the media already sent are all counted
        await self._send_numbered(lambda seq: wire.stop(seq, self.stream_sid))
        await self.wait_until(lambda: self.log.closed is not None, 5.0)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until ``predicate()`` holds after something arrived; at most ``timeout`` s."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def heard_since(self, since: float) -> list[Played]:
        """Media that arrived after ``since`` and played at least in part."""
        return [p for p in self.log.played if p.arrived >= since and p.cut_at != p.starts]

    @staticmethod
    def samples(played: list[Played]) -> Samples:
        if not played:
            return np.zeros(0, dtype=np.int16)
        return ulaw_decode(b"".join(p.ulaw for p in played))

    # -- Twilio's side -------------------------------------------------------------------

    async def _send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def _send_numbered(self, make: Callable[[int], dict[str, Any]]) -> None:
        async with self._lock:  # sequence numbers go out in order
            self._seq += 1
            await self._send(make(self._seq))

    async def _speak(self) -> None:
        """One media message per 20 ms tick, drift-free; DTMF between them."""
        start = self._loop.time()
        chunk = 0
        while not self._hanging_up:
            while self._outbox and isinstance(self._outbox[0], str):
                digit = self._outbox.popleft()
                await self._send_numbered(lambda seq, d=digit: wire.dtmf(seq, self.stream_sid, d))
            payload = self._outbox.popleft() if self._outbox else SILENCE
            assert isinstance(payload, bytes)
            chunk += 1
            await self._send_numbered(
                lambda seq, c=chunk, p=payload: wire.media(seq, self.stream_sid, c, (c - 1) * 20, p)
            )
            self.log.media_sent += 1
            delay = start + chunk * PERIOD - self._loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

    async def _listen(self) -> None:
        try:
            async for text in self.ws:
                now = self._loop.time()
                assert isinstance(text, str), "Twilio takes text messages only"
                message = json.loads(text)
                self.log.messages.append((now, message["event"]))
                assert message["streamSid"] == self.stream_sid
                if message["event"] == "media":
                    self._on_media(message, now)
                elif message["event"] == "mark":
                    self._on_mark(message, now)
                elif message["event"] == "clear":
                    self._on_clear(now)
                else:
                    raise AssertionError(f"not a message Twilio takes: {message['event']}")
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            self.log.closed = (self.ws.close_code, self.ws.close_reason or "")
            self._changed.set()

    def _on_media(self, message: dict[str, Any], now: float) -> None:
        assert set(message) == {"event", "streamSid", "media"}
        ulaw = base64.b64decode(message["media"]["payload"], validate=True)
        assert ulaw, "an empty media payload"
        starts = max(now, self._busy_until)
        self._busy_until = starts + len(ulaw) / 8000
        self.log.played.append(Played(arrived=now, starts=starts, ulaw=ulaw))

    def _on_mark(self, message: dict[str, Any], now: float) -> None:
        name = message["mark"]["name"]
        record = MarkRecord(
            name=name,
            arrived=now,
            due=max(now, self._busy_until),
            after_media=len(self.log.played),
        )
        self.log.marks.append(record)
        self._loop.call_at(record.due, lambda: self._return_mark(record, by_clear=False))

    def _return_mark(self, record: MarkRecord, *, by_clear: bool) -> None:
        if record.returned is not None:
            return
        record.returned = self._loop.time()
        record.by_clear = by_clear
        self._changed.set()
        task = asyncio.create_task(
            self._send_numbered(lambda seq: wire.mark(seq, self.stream_sid, record.name))
        )
        self._tasks.append(task)

    def _on_clear(self, now: float) -> None:
        self.log.clears.append(now)
        for played in self.log.played:
            if played.ends > now and played.cut_at is None:
                played.cut_at = max(now, played.starts)
        self._busy_until = now
        for record in self.log.marks:
            if record.returned is None:
                self._return_mark(record, by_clear=True)


async def close_quietly(caller: TwilioCaller) -> None:
    with contextlib.suppress(Exception):
        await caller.ws.close()
