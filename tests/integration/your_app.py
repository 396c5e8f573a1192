"""An application of the end-to-end test's own (not the demo agent), for ``quicvoice serve --app``.

It listens to the caller's whole utterance as PCM at 16 kHz, reports what it heard (frames,
rate, frame size, the dominant frequency, the codec on the wire, who called and with what
metadata) as a ``heard`` event, and answers with a 660 Hz tone. Its accept hook admits only
callers whose metadata names room 7.
"""

from __future__ import annotations

import numpy as np

import quicvoice
from quicvoice.auth import CallRequest, Refuse

RATE = 16000
REPLY_HZ = 660.0
WRONG_ROOM = 0x1007


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    """The strongest frequency of ``samples`` (Hann-windowed FFT), in Hz."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def admit(request: CallRequest) -> Refuse | None:
    """Only callers for room 7."""
    if request.metadata.get("room") != "7":
        return Refuse(code=WRONG_ROOM, reason="this agent serves room 7")
    return None


async def listener(session: quicvoice.Session) -> None:
    """Hear the utterance, say what was heard, answer with a tone."""
    frames = [frame async for frame in session.audio()]
    samples = np.concatenate([frame.samples for frame in frames]).astype(np.float64)
    caller = session.caller
    session.send_event(
        "heard",
        {
            "frames": len(frames),
            "rates": sorted({frame.sample_rate for frame in frames}),
            "samples_per_frame": sorted({len(frame) for frame in frames}),
            "dominant_hz": dominant_hz(samples[RATE // 10 :], RATE),
            "codec": session.codec,
            "caller": caller.subject if caller is not None else None,
            "metadata": dict(session.metadata),
        },
    )
    t = np.arange(RATE // 2) / RATE
    async with session.turn() as turn:
        await turn.write(np.rint(8000 * np.sin(2 * np.pi * REPLY_HZ * t)).astype(np.int16))
    async for event in session.events():
        if isinstance(event, quicvoice.SessionEnded):
            break


app = quicvoice.App(listener, sample_rate=RATE, accept=admit)
