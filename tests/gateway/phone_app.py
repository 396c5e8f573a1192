"""The backend app of the gateway's end-to-end tests (``quicvoice serve --app
tests.gateway.phone_app:app``): an IVR-style echo at 8 kHz.

- The caller speaks, then presses ``#``: the app says back what it heard (its voiced frames)
  and counts the utterance in the session's state (which survives a backend loss).
- ``9`` starts a 3 s 660 Hz announcement; the caller speaking over any reply still playing
  is a barge-in: the app cancels it (the gateway then clears the line).
- ``0`` ends the call from the app's side.
- Each fact is one JSON line on stdout (``{"phone": kind, ...}``), read by the test.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import quicvoice
from quicvoice.app import SessionEnded, TurnPlayed, UserEvent

RATE = 8000
#: A frame louder than this (RMS, sample units) is the caller speaking; µ-law silence is 0.
VOICED_RMS = 1000.0
#: After ``#``, how long the last frames of the utterance may take to arrive (they travel
#: on the uplink stream, the key press on the control stream; after a resume both come
#: in one burst, in either order).
SETTLE = 0.3
ANNOUNCEMENT_HZ = 660.0
ANNOUNCEMENT_SECONDS = 3.0

Record = Callable[[dict[str, Any]], None]


def print_record(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)
    sys.stdout.flush()


def make_app(record: Record = print_record) -> quicvoice.App:
    """The app, reporting each fact to ``record``."""

    def note(kind: str, session: quicvoice.Session, **data: Any) -> None:
        record({"phone": kind, "session": session.id, "server": session.server_id,
                "at": time.time(), **data})  # fmt: skip

    async def agent(session: quicvoice.Session) -> None:
        note(
            "start",
            session,
            resumed=session.resumed,
            codec=session.codec,
            metadata=dict(session.metadata),
            caller=session.caller.subject if session.caller else None,
            utterances=session.state.get("utterances", 0),
        )
        heard: list[bytes] = []
        playing: dict[int, quicvoice.Turn] = {}
        replies: set[asyncio.Task[None]] = set()

        async def listen() -> None:
            async for frame in session.audio():
                level = float(np.sqrt(np.mean(frame.samples.astype(np.float64) ** 2)))
                if level < VOICED_RMS:
                    continue
                heard.append(frame.data)
                for turn_id, turn in list(playing.items()):
                    if not turn.interrupted:
                        turn.cancel()
                        note("barge-in", session, turn=turn_id)

        async def say(kind: str, pcm: bytes, **data: Any) -> None:
            async with session.turn() as turn:
                if turn.turn_id is not None:
                    playing[turn.turn_id] = turn
                    note(kind, session, turn=turn.turn_id, ms=len(pcm) // 16, **data)
                await turn.write(pcm)

        async def reply() -> None:
            await asyncio.sleep(SETTLE)
            utterance = b"".join(heard)
            heard.clear()
            count = session.state["utterances"] = session.state.get("utterances", 0) + 1
            session.save()
            await say("reply", utterance, utterance=count)

        def later(work: Any) -> None:
            task = asyncio.create_task(work)
            replies.add(task)
            task.add_done_callback(replies.discard)

        listener = asyncio.create_task(listen())
        try:
            async for event in session.events():
                if isinstance(event, UserEvent) and event.name == "dtmf":
                    digit = event.data.get("digit") if isinstance(event.data, dict) else None
                    note("dtmf", session, digit=digit)
                    if digit == "#":
                        later(reply())
                    elif digit == "0":  # "goodbye": the app ends the call
                        break
                    elif digit == "9":
                        t = np.arange(int(RATE * ANNOUNCEMENT_SECONDS)) / RATE
                        tone = (0.5 * 32767 * np.sin(2 * np.pi * ANNOUNCEMENT_HZ * t)).astype("<i2")
                        later(say("announcement", tone.tobytes()))
                elif isinstance(event, TurnPlayed):
                    playing.pop(event.turn_id, None)
                    note("played", session, turn=event.turn_id, played_ms=event.played_ms,
                         complete=event.complete)  # fmt: skip
                elif isinstance(event, quicvoice.Bye):
                    note("bye", session, uplink_frames=event.uplink_frames)
                elif isinstance(event, SessionEnded):
                    note("end", session, code=event.code)
                    break
        finally:
            listener.cancel()
            for task in replies:
                task.cancel()

    return quicvoice.App(agent, sample_rate=RATE)


app = make_app()
