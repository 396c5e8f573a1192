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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from .asyncio.server import ServerSession
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


async def _speak(
    session: ServerSession, frames: list[MediaFrame], frame_seconds: float, speedup: float
) -> None:
    turn_id = session.start_turn()
    for frame in frames:
        if not session.send_turn_audio(turn_id, frame.payload, frame.timestamp):
            return  # barge-in: the turn was cancelled
        await asyncio.sleep(frame_seconds / speedup)
    session.end_turn(turn_id)


async def demo_agent(session: ServerSession, speedup: float = DEFAULT_SPEEDUP) -> None:
    """Run the demo agent for one session until it closes."""
    frame_seconds = session.started.frame_ms / 1000
    heard: list[MediaFrame] = []
    speaking: asyncio.Task[None] | None = None
    realtime = session.started.uplink is UplinkMode.REALTIME
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
                answer()
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
