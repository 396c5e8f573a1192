"""The Opus encoders of a call follow their congestion response, on real loopback sockets: the
client's uplink (``send_pcm``) and the app's downlink turns encode at the bitrate that the
ECN feedback given to ``congestion`` asks for (specs/l4s.md)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from quicvoice.app import App, Session, SessionEnded, session_handler
from quicvoice.asyncio.client import connect
from quicvoice.session.congestion import CongestionResponse
from quicvoice.session.events import AudioReceived, SessionClosed, TurnEnded
from quicvoice.session.messages import Hello

from .voice_harness import running_server

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

TIMEOUT = 10.0
RATE = 16000


def noisy_tone(rate: int, seconds: float) -> np.ndarray:
    """A tone with noise: Opus spends whatever bitrate it is given on it."""
    t = np.arange(int(rate * seconds)) / rate
    noise = np.random.default_rng(7).normal(0, 3000, len(t))
    return np.clip(8000 * np.sin(2 * np.pi * 440 * t) + noise, -32768, 32767).astype(np.int16)


def heavy_marking(response: CongestionResponse, rounds: int = 12) -> None:
    """ECN feedback with every packet CE-marked, one report per 100 ms round from now on
    the loop's clock (the call's own feedback goes on feeding the same response)."""
    start = asyncio.get_running_loop().time()
    for step in range(rounds):
        response.on_ecn_feedback(now=start + step * 0.1, acked=5, ce=5, rtt=0.1)


async def two_turns(session: Session) -> None:
    """A turn at the default bitrate, then heavy CE feedback, then the same turn again."""
    pcm = noisy_tone(RATE, 1.0)
    for turn_index in range(2):
        if turn_index == 1:
            heavy_marking(session.congestion)
        async with session.turn() as turn:
            await turn.write(pcm)
    async for event in session.events():
        if isinstance(event, SessionEnded):
            break


async def test_uplink_and_downlink_opus_follow_the_congestion_response() -> None:
    app = App(two_turns, sample_rate=RATE)
    async with running_server(session_handler(app)) as server:
        async with connect(
            *server.address, hello=Hello(codecs=("opus/48000",)), verify=False, sample_rate=RATE
        ) as call:
            # Uplink: the encoder follows call.congestion from the next send_pcm on.
            call.send_pcm(noisy_tone(RATE, 0.2))
            # The call's own (unmarked) feedback may have raised it already: never lowered.
            assert call.uplink_bitrate == call.congestion.target_bitrate >= 32_000
            heavy_marking(call.congestion)
            assert call.congestion.target_bitrate == 6_000
            call.send_pcm(noisy_tone(RATE, 0.2))
            assert call.uplink_bitrate == 6_000

            # Downlink: payload octets of the two turns the app wrote.
            octets: dict[int, int] = {}
            ended: list[int] = []

            async def collect() -> None:
                while len(ended) < 2:
                    event = await call.receive()
                    assert not isinstance(event, SessionClosed), event
                    if isinstance(event, AudioReceived) and event.turn_id is not None:
                        octets[event.turn_id] = octets.get(event.turn_id, 0) + len(
                            event.frame.payload
                        )
                    elif isinstance(event, TurnEnded):
                        ended.append(event.turn_id)

            await asyncio.wait_for(collect(), TIMEOUT)
            first, second = (octets[turn] for turn in ended)
            # 1 s at 32 kbit/s is ~4000 octets; at the 6 kbit/s floor ~750 (+ overheads).
            assert 3000 < first < 5000
            assert second < first / 3
