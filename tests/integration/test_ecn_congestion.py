"""The L4S loop closed on real loopback sockets: a relay CE-marks a share of what the client
sends (or of what the backend sends), the peer's ACK_ECN counts come back, and the Opus encoder
of the realtime uplink (or of the app's turns) follows the congestion response: down promptly,
back up slowly once marking stops; halving for classic ECN; untouched without marks or with
ECN off (specs/l4s.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import numpy as np
import pytest

from quicvoice.app import App, Session, SessionEnded, session_handler
from quicvoice.asyncio.client import VoiceClient, connect
from quicvoice.asyncio.server import ServerSession
from quicvoice.ecn import Validation
from quicvoice.session.congestion import MIN_ROUND
from quicvoice.session.events import SessionClosed
from quicvoice.session.messages import Hello, UplinkMode

from .ecn_relay import EcnRelay
from .voice_harness import running_server

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

RATE = 16000
FRAME_SECONDS = 0.02
#: One 20 ms frame of a noisy tone (Opus spends whatever bitrate it is given on it).
_T = np.arange(int(RATE * FRAME_SECONDS)) / RATE
FRAME = np.clip(
    8000 * np.sin(2 * np.pi * 440 * _T) + np.random.default_rng(7).normal(0, 3000, len(_T)),
    -32768,
    32767,
).astype(np.int16)
#: Frames streamed at most in any one phase of a call (5 s of audio).
MAX_FRAMES = 250
REALTIME_OPUS = Hello(codecs=("opus/48000",), uplink=UplinkMode.REALTIME)


async def listening(session: ServerSession) -> None:
    """A backend that only listens, until the call ends."""
    async for _ in session:
        pass


@asynccontextmanager
async def call_through_relay(ecn: str) -> AsyncIterator[tuple[VoiceClient, EcnRelay]]:
    async with running_server(listening) as server:
        relay = EcnRelay(server.address, bleach=lambda host: False)
        try:
            host, port = relay.address
            async with connect(
                host, port, verify=False, hello=REALTIME_OPUS, sample_rate=RATE, ecn=ecn
            ) as call:
                yield call, relay
        finally:
            relay.close()


class Uplink:
    """Streams frames in real time and records the encoder's bitrate after each one."""

    def __init__(self, call: VoiceClient) -> None:
        self.call = call
        self.bitrates: list[int] = []
        #: The response's loss reductions after each frame (a loaded loopback loses some).
        self.loss_reductions: list[int] = []

    def ce_cuts(self) -> list[tuple[int, int]]:
        """(before, after) of every cut between two frames that no loss explains."""
        steps = zip(self.bitrates, self.bitrates[1:], self.loss_reductions[1:], strict=False)
        losses = iter(self.loss_reductions)
        return [
            (before, after)
            for (before, after, lost_after), lost_before in zip(steps, losses, strict=False)
            if after < before and lost_after == lost_before
        ]

    async def stream_until(self, done: Callable[[], bool], *, max_frames: int = MAX_FRAMES) -> int:
        """Send frames (one per 20 ms) until ``done()`` is true; return how many were sent."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for sent in range(1, max_frames + 1):
            self.call.send_pcm(FRAME)
            self.bitrates.append(self.call.congestion.target_bitrate)
            self.loss_reductions.append(self.call.congestion.statistics().loss_reductions)
            if done():
                return sent
            # Real-time pacing of the audio, not synchronisation: the call is the clock.
            await asyncio.sleep(max(0.0, start + sent * FRAME_SECONDS - loop.time()))
        return max_frames


async def test_l4s_marks_lower_the_uplink_bitrate_promptly_and_it_recovers_slowly() -> None:
    async with call_through_relay("l4s") as (call, relay):
        uplink = Uplink(call)
        congestion = call.congestion
        # Unmarked: the call settles (validation) and the bitrate only grows.
        await uplink.stream_until(lambda: call.stats().ecn[-1].validation is Validation.CAPABLE)
        await uplink.stream_until(lambda: False, max_frames=10)
        assert congestion.mode == "l4s"
        assert congestion.statistics().ce_reductions == 0
        before = congestion.target_bitrate
        low_enough = max(before // 4, congestion.config.min_bitrate)

        # Every ECT(1) datagram marked: a few rounds take the bitrate down to a quarter.
        relay.ce_uplink = 1.0
        marking = Uplink(call)
        frames = await marking.stream_until(lambda: congestion.target_bitrate <= low_enough)
        assert congestion.target_bitrate <= low_enough, marking.bitrates[-20:]
        assert frames <= 50, f"took {frames} frames"
        assert len(marking.ce_cuts()) >= 1
        assert congestion.statistics().ce_reductions >= 1
        assert call.stats().ecn[-1].validation is Validation.CAPABLE
        assert call.stats().ecn[-1].l4s_bottleneck_seen
        # The Opus encoder of the uplink encodes at it.
        call.send_pcm(FRAME)
        assert call.uplink_bitrate == congestion.target_bitrate

        # Marking stops: the bitrate climbs back, by at most 1 kbit/s per round (≥ 20 ms).
        relay.ce_uplink = 0.0
        marked = relay.ce_marked[0]
        low = congestion.target_bitrate
        loop = asyncio.get_running_loop()
        started = loop.time()
        await uplink.stream_until(lambda: congestion.target_bitrate > low + 2_000)
        elapsed = loop.time() - started
        risen = congestion.target_bitrate - low
        assert 0 < risen <= (elapsed / MIN_ROUND + 2) * 1_000
        # Marked datagrams still in flight when marking stopped may cut once more, no further.
        assert relay.ce_marked[0] == marked
        assert congestion.target_bitrate < before


async def test_light_l4s_marking_trims_the_bitrate_less_than_a_halving() -> None:
    async with call_through_relay("l4s") as (call, relay):
        uplink = Uplink(call)
        congestion = call.congestion
        await uplink.stream_until(lambda: call.stats().ecn[-1].validation is Validation.CAPABLE)
        relay.ce_uplink = 0.2
        marking = Uplink(call)
        await marking.stream_until(lambda: congestion.statistics().ce_reductions >= 1)
        cuts = [after / before for before, after in marking.ce_cuts()]
        # alpha starts from the marked fraction (~0.2): rate *= 1 - alpha/2 ≈ 0.9.
        assert cuts and 0.75 <= cuts[0] < 1.0, cuts


async def test_classic_marks_halve_the_uplink_bitrate() -> None:
    async with call_through_relay("classic") as (call, relay):
        uplink = Uplink(call)
        congestion = call.congestion
        await uplink.stream_until(lambda: call.stats().ecn[-1].validation is Validation.CAPABLE)
        assert congestion.mode == "classic"
        relay.ce_uplink = 0.2
        marking = Uplink(call)
        await marking.stream_until(lambda: congestion.statistics().ce_reductions >= 1)
        relay.ce_uplink = 0.0
        cuts = marking.ce_cuts()
        assert cuts, marking.bitrates
        before, after = cuts[0]
        # A halving, to the floor at most (a cut by loss is a halving too: they are skipped).
        assert abs(after - max(before / 2, 6_000)) <= 1_000, cuts
        assert call.stats().ecn[-1].validation is Validation.CAPABLE


@pytest.mark.parametrize("ecn", ["l4s", "off"])
async def test_without_marks_the_uplink_bitrate_is_never_cut(ecn: str) -> None:
    async with call_through_relay(ecn) as (call, relay):
        uplink = Uplink(call)
        await uplink.stream_until(lambda: False, max_frames=40)
        statistics = call.congestion.statistics()
        assert call.congestion.mode == ecn
        assert statistics.acked > 0
        assert statistics.ce == statistics.ce_reductions == 0
        # Nothing but a loss (a loaded loopback drops a datagram now and then) ever cuts it.
        assert uplink.ce_cuts() == []
        assert relay.ce_marked == [0, 0]


async def test_a_bleaching_path_turns_the_response_off() -> None:
    async with running_server(listening) as server:
        relay = EcnRelay(server.address, bleach=lambda host: True)
        try:
            host, port = relay.address
            async with connect(
                host, port, verify=False, hello=REALTIME_OPUS, sample_rate=RATE
            ) as call:
                uplink = Uplink(call)
                await uplink.stream_until(
                    lambda: call.stats().ecn[-1].validation is Validation.BLEACHED
                )
                await uplink.stream_until(lambda: False, max_frames=5)
                assert call.stats().ecn[-1].validation is Validation.BLEACHED
                assert call.congestion.mode == "off"
                assert call.congestion.statistics().mode_changes == 1
        finally:
            relay.close()


async def test_ce_marks_on_the_downlink_lower_the_app_turns_bitrate() -> None:
    bitrates: list[int] = []
    congested = asyncio.Event()

    async def speak(session: Session) -> None:
        # One long turn written 20 ms at a time, so each frame is encoded at the bitrate of
        # the moment; the client's ACKs carry the CE counts back meanwhile.
        async with session.turn() as turn:
            for _ in range(MAX_FRAMES):
                await turn.write(FRAME)
                bitrates.append(session.congestion.target_bitrate)
                if session.congestion.target_bitrate <= 8_000:
                    congested.set()
                    break
                await asyncio.sleep(FRAME_SECONDS)
        async for event in session.events():
            if isinstance(event, SessionEnded):
                break

    async with running_server(session_handler(App(speak, sample_rate=RATE))) as server:
        relay = EcnRelay(server.address, bleach=lambda host: False)
        relay.ce_downlink = 1.0
        try:
            host, port = relay.address
            async with connect(host, port, verify=False, hello=REALTIME_OPUS) as call:

                async def drain() -> None:
                    while not congested.is_set():
                        event = await call.receive()
                        assert not isinstance(event, SessionClosed), event

                await asyncio.wait_for(drain(), 10.0)
        finally:
            relay.close()
    assert relay.ce_marked[1] > 0
    assert bitrates[0] >= 16_000 and bitrates[-1] <= 8_000
    assert len(bitrates) <= 100


async def test_losses_found_by_quic_halve_the_uplink_bitrate_in_every_mode() -> None:
    async with call_through_relay("off") as (call, relay):
        uplink = Uplink(call)
        await uplink.stream_until(lambda: False, max_frames=10)
        relay.drop_uplink = 0.2
        await uplink.stream_until(lambda: call.congestion.statistics().loss_reductions >= 1)
        relay.drop_uplink = 0.0
        assert relay.dropped > 0
        statistics = call.congestion.statistics()
        assert statistics.loss_reductions >= 1 and statistics.lost >= 1
        assert statistics.ce_reductions == 0
        cuts = [
            (before, after)
            for before, after in zip(uplink.bitrates, uplink.bitrates[1:], strict=False)
            if after < before
        ]
        assert cuts and abs(cuts[0][1] - cuts[0][0] / 2) <= 1_000, cuts


async def test_a_migration_onto_a_bleaching_path_turns_the_response_off_there() -> None:
    async with running_server(listening) as server:
        relay = EcnRelay(server.address, bleach=lambda host: host == "127.0.0.2")
        try:
            host, port = relay.address
            async with connect(
                host,
                port,
                verify=False,
                hello=REALTIME_OPUS,
                sample_rate=RATE,
                local_address="127.0.0.1",
            ) as call:
                uplink = Uplink(call)
                congestion = call.congestion
                await uplink.stream_until(
                    lambda: call.stats().ecn[-1].validation is Validation.CAPABLE
                )
                # Settle first, as the other migration tests do: a migration at once after
                # the handshake gets no answer on the new path (not looked into).
                await uplink.stream_until(lambda: False, max_frames=15)
                assert congestion.mode == "l4s"
                await call.migrate("127.0.0.2")
                await uplink.stream_until(
                    lambda: call.stats().ecn[-1].validation is Validation.BLEACHED
                )
                await uplink.stream_until(lambda: congestion.mode == "off", max_frames=10)
                assert congestion.statistics().mode == "off"
                # Marks the relay sets on the new path are bleached with the rest: nothing cuts.
                relay.ce_uplink = 1.0
                cuts = congestion.statistics().ce_reductions
                await uplink.stream_until(lambda: False, max_frames=15)
                assert congestion.statistics().ce_reductions == cuts
                assert congestion.statistics().mode_changes == 1
        finally:
            relay.close()
