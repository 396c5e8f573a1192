"""The demo voice agent: it echoes each utterance back as a response turn and takes orders.

It stands in for a real speech-to-text -> model -> text-to-speech pipeline with the same
timing shape: the reply turn is produced faster than real time (``speedup``), so the client
buffers ahead, and a barge-in stops it mid-turn. Control events make a conversation with
state worth keeping:

- ``order.add`` ``{"item": str, ...}`` adds an item, ``order.remove`` ``{"index": int}``
  removes one, ``order.list`` asks; each is answered with ``order.cart`` ``{"items": [...]}``.
- ``utterance.end`` (or the end of the reliable uplink) makes the agent answer what it heard.
- ``session.info`` is answered with ``session.info`` ``{"server_id", "peer", "frames"}``: which
  backend holds the call, the client address it sees, and uplink frames received so far.
- ``session.arrivals`` is answered with ``session.arrivals`` ``{"seq": [...], "at": [...]}``:
  the sequence number and arrival time (Unix seconds) of the last uplink frames, for plots.

In realtime mode the agent listens to the uplink as a speech pipeline would: it pulls the
session's jitter buffer once per frame period (:class:`UplinkListener`), so losses are
concealed (Opus: FEC, then PLC) and the buffer adapts its delay. ``utterance.end`` may carry
``{"frames": N}``, the number of frames the client sent: the utterance is over once the
buffer has played (or concealed) all of them. ``session.playout`` is answered, once the
utterance is over (or after 10 s), with ``session.playout``: the jitter buffer's report
(:meth:`quicvoice.audio.quality.PlayoutReport.as_dict`: frames played, concealment ratio,
FEC/PLC/expanded frames, loss, lateness, waiting time) plus ``final`` and ``recording``:
with ``record_dir`` (``quicvoice serve --record-uplink DIR``) the played-out audio is written
to ``DIR/<session_id>.wav`` (mono 16-bit at the codec rate) and the report next to it as
``DIR/<session_id>.json``; ``recording`` is the WAV's path, else ``None``.

It works with codec payloads (it echoes them unchanged), so as an application
(``quicvoice serve --app quicvoice.agent:demo``, the default) it takes the lower-level
session over at once (``Session.detach()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import wave
from collections import deque
from pathlib import Path
from typing import Any

from .app import App, Session
from .asyncio.server import ServerSession
from .audio.quality import PlayoutRecorder
from .errors import InvalidStateError
from .session.events import (
    AudioReceived,
    ByeReceived,
    EventReceived,
    SessionClosed,
    TurnCancelled,
    UplinkEnded,
)
from .session.messages import UplinkMode
from .session.wire import MediaFrame

logger = logging.getLogger("quicvoice.agent")

#: How much faster than real time the agent "speaks" its reply.
DEFAULT_SPEEDUP = 5.0
#: Uplink arrivals remembered for ``session.arrivals`` (one minute of 20 ms frames).
MAX_ARRIVALS = 3000
MAX_CART_ITEMS = 100
MAX_ITEM_FIELDS = 16
#: How long a ``session.playout`` request waits for the utterance to end, in seconds.
PLAYOUT_REPLY_TIMEOUT = 10.0
#: Most played-out uplink audio recorded per session, in seconds.
MAX_RECORDED_SECONDS = 600.0


def _cart(session: ServerSession) -> list[dict[str, Any]]:
    cart = session.state.setdefault("cart", [])
    assert isinstance(cart, list)
    return cart


def _valid_item(data: Any) -> dict[str, Any] | None:
    if not isinstance(data, dict) or not isinstance(data.get("item"), str):
        return None
    if len(data) > MAX_ITEM_FIELDS or not all(isinstance(k, str) for k in data):
        return None
    allowed = (str, int, float, bool)
    if not all(isinstance(v, allowed) for v in data.values()):
        return None
    return dict(data)


def handle_order(session: ServerSession, name: str, data: Any) -> None:
    """Apply one order event to the session's cart and answer with the cart."""
    cart = _cart(session)
    if name == "order.add":
        item = _valid_item(data)
        if item is None or len(cart) >= MAX_CART_ITEMS:
            session.send_event("order.rejected", {"reason": "bad item or cart full"})
            return
        cart.append(item)
    elif name == "order.remove":
        index = data.get("index") if isinstance(data, dict) else None
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(cart):
            cart.pop(index)
    session.checkpoint()
    session.send_event("order.cart", {"items": list(cart)})


class UplinkListener:
    """Realtime mode: the agent's ear. Plays the uplink's jitter buffer once per frame period.

    A task ticks a :class:`~quicvoice.audio.quality.PlayoutRecorder` on the event loop's
    clock (the one the server stamps arrivals with), drift-free: tick *k* is due at
    start + *k* periods, and a late loop catches up, one tick per loop iteration. When the
    utterance is over, the report is final (:attr:`finished`) and, with ``record_dir``, the
    audio and report are written.
    """

    def __init__(self, session: ServerSession, record_dir: Path | None = None) -> None:
        jitter = session.jitter_buffer
        if jitter is None:
            raise ValueError("the session has no jitter buffer (reliable uplink)")
        self._session = session
        self._record_dir = record_dir
        self.recorder = PlayoutRecorder(
            jitter, keep_audio=record_dir is not None, max_seconds=MAX_RECORDED_SECONDS
        )
        loop = asyncio.get_running_loop()
        #: The ``session.playout`` data, set once the utterance is over.
        self.finished: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._period = jitter.config.frame_duration
        self._task = loop.create_task(self._run())

    def end(self, frames: int | None) -> None:
        """The client's utterance is over; it sent ``frames`` frames (``None``: not said)."""
        self.recorder.end(frames)

    def snapshot(self) -> dict[str, Any]:
        """The report so far (not final)."""
        return {**self.recorder.report().as_dict(), "final": False, "recording": None}

    async def close(self) -> None:
        """Stop listening; finish the report (and the recording) if the utterance had not."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if not self.finished.done():
            self.recorder.close()
            await self._finish()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += self._period
            # Sleep even when late (0 s): after a stall the loop reads one queued datagram per
            # iteration, so catching up frame by frame lets each packet in before its frame.
            await asyncio.sleep(max(0.0, due - loop.time()))
            self.recorder.tick(loop.time())
            if self.recorder.done and not self.finished.done():
                await self._finish()

    async def _finish(self) -> None:
        data = {**self.recorder.report().as_dict(), "final": True, "recording": None}
        if self._record_dir is not None:
            base = self._record_dir / self._session.session_id
            data["recording"] = str(base.with_suffix(".wav"))
            try:
                await asyncio.to_thread(self._write, base, data)
            except OSError as error:
                data["recording"] = None
                logger.warning("session %s: recording not written: %s", base.name, error)
        if not self.finished.done():
            self.finished.set_result(data)

    def _write(self, base: Path, data: dict[str, Any]) -> None:
        samples = self.recorder.audio()
        with wave.open(str(base.with_suffix(".wav")), "wb") as writer:
            writer.setnchannels(1)
            writer.setsampwidth(2)
            writer.setframerate(self.recorder.report().rate)
            writer.writeframes(samples.astype("<i2").tobytes())
        base.with_suffix(".json").write_text(json.dumps(data) + "\n")


async def _reply_playout(session: ServerSession, listener: UplinkListener | None) -> None:
    if listener is None:
        data: dict[str, Any] = {"uplink": session.started.uplink.value, "final": True}
    else:
        try:
            data = await asyncio.wait_for(asyncio.shield(listener.finished), PLAYOUT_REPLY_TIMEOUT)
        except TimeoutError:
            data = listener.snapshot()
    with contextlib.suppress(InvalidStateError):  # the session closed meanwhile
        session.send_event("session.playout", data)


def _frame_count(data: Any) -> int | None:
    frames = data.get("frames") if isinstance(data, dict) else None
    if isinstance(frames, int) and not isinstance(frames, bool) and 0 <= frames < 1 << 32:
        return frames
    return None


async def _speak(
    session: ServerSession, frames: list[MediaFrame], frame_seconds: float, speedup: float
) -> None:
    turn_id = session.start_turn()
    for frame in frames:
        if not session.send_turn_audio(turn_id, frame.payload, frame.timestamp):
            return  # barge-in: the turn was cancelled
        await asyncio.sleep(frame_seconds / speedup)
    session.end_turn(turn_id)


async def demo_agent(
    session: ServerSession, speedup: float = DEFAULT_SPEEDUP, record_dir: Path | None = None
) -> None:
    """Run the demo agent for one session until it closes.

    ``record_dir``: in realtime mode, write the played-out uplink of each session there.
    """
    frame_seconds = session.started.frame_ms / 1000
    heard: list[MediaFrame] = []
    speaking: asyncio.Task[None] | None = None
    realtime = session.started.uplink is UplinkMode.REALTIME
    listener = UplinkListener(session, record_dir) if realtime else None
    replies: set[asyncio.Task[None]] = set()
    uplink_ended = bye_asked = False
    arrivals: deque[tuple[int, float]] = deque(maxlen=MAX_ARRIVALS)
    frames = 0

    def answer() -> None:
        nonlocal heard, speaking
        if heard:
            speaking = asyncio.get_running_loop().create_task(
                _speak(session, heard, frame_seconds, speedup)
            )
            heard = []

    async for event in session:
        if isinstance(event, AudioReceived):
            heard.append(event.frame)
            frames += 1
            arrivals.append((event.frame.seq, time.time()))
        elif isinstance(event, EventReceived):
            if event.name.startswith("order."):
                handle_order(session, event.name, event.data)
            elif event.name == "utterance.end":
                if listener is not None:
                    listener.end(_frame_count(event.data))
                answer()
            elif event.name == "session.playout":
                reply = asyncio.get_running_loop().create_task(_reply_playout(session, listener))
                replies.add(reply)
                reply.add_done_callback(replies.discard)
            elif event.name == "session.info":
                peer = session.peer_address
                session.send_event(
                    "session.info",
                    {
                        "server_id": session.started.server_id,
                        "peer": f"{peer[0]}:{peer[1]}" if peer else None,
                        "frames": frames,
                    },
                )
            elif event.name == "session.arrivals":
                session.send_event(
                    "session.arrivals",
                    {"seq": [a[0] for a in arrivals], "at": [a[1] for a in arrivals]},
                )
        elif isinstance(event, UplinkEnded):
            uplink_ended = True
            answer()
        elif isinstance(event, ByeReceived):
            bye_asked = True
        if bye_asked and (uplink_ended or realtime):
            # The uplink and control streams are not ordered with each other: the count in
            # our goodbye must include every frame sent before the client's.
            if speaking is not None:
                await speaking
            session.send_bye()
            bye_asked = False
        if isinstance(event, TurnCancelled):
            logger.info("session %s: turn %d cancelled", session.session_id, event.turn_id)
        elif isinstance(event, SessionClosed):
            break
    if speaking is not None and not speaking.done():
        speaking.cancel()
    for reply in list(replies):
        reply.cancel()
    if listener is not None:
        await listener.close()


def make_demo(*, speedup: float = DEFAULT_SPEEDUP, record_dir: Path | None = None) -> App:
    """The demo agent as an application (``record_dir``: see :func:`demo_agent`)."""

    async def demo_app(session: Session) -> None:
        await demo_agent(session.detach(), speedup=speedup, record_dir=record_dir)

    return App(demo_app)


#: ``quicvoice serve --app quicvoice.agent:demo`` (the default application).
demo = make_demo()
