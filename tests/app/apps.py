"""Small applications of the tests' own, for ``VoiceServer`` and ``quicvoice serve --app``."""

from __future__ import annotations

import asyncio

import numpy as np

import quicvoice
from quicvoice.app import App, Session

#: What ``echo`` saw, for tests that run it in their own process.
HEARD: list[dict[str, object]] = []


async def echo(session: quicvoice.Session) -> None:
    """Collect the caller's utterance, then say it back in one turn, in odd-sized pieces."""
    frames = [frame async for frame in session.audio()]
    HEARD.append(
        {
            "frames": len(frames),
            "rates": sorted({frame.sample_rate for frame in frames}),
            "samples": sorted({len(frame) for frame in frames}),
            "codec": session.codec,
        }
    )
    session.send_event("heard", {"frames": len(frames), "rate": session.sample_rate})
    pcm = b"".join(frame.data for frame in frames)
    async with session.turn() as turn:
        for start in range(0, len(pcm), 1234):
            await turn.write(pcm[start : start + 1234])
    session.state["echoed"] = session.state.get("echoed", 0) + 1
    async for event in session.events():
        if isinstance(event, quicvoice.SessionEnded):
            break


#: ``quicvoice serve --app tests.app.apps:app``: the echo at 16 kHz.
app = App(echo, sample_rate=16000)


def tone(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    """A sine as int16 samples."""
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


async def talker(session: Session, pace: float = 0.0) -> None:
    """Say 10 s of a 1 kHz tone in 100 ms pieces, ``pace`` s apart, and report the outcome."""
    pcm = tone(1000.0, session.sample_rate, 10.0)
    async with session.turn() as turn:
        for start in range(0, len(pcm), 1600):
            await turn.write(pcm[start : start + 1600])
            if pace:
                await asyncio.sleep(pace)
    played = await turn.wait_played(timeout=2.0)
    session.send_event("talked", {"interrupted": turn.interrupted, "played_ms": played})
    async for event in session.events():
        if isinstance(event, quicvoice.SessionEnded):
            break


def not_async(session: Session) -> None:
    """A synchronous function: not an application."""


async def two_arguments(session: Session, other: int) -> None:
    """Takes two arguments: not an application."""


CONSTANT = 42
