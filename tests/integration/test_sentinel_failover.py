"""A call survives the loss of the Redis primary: Sentinel promotes the replica, no session lost.

Real processes on loopback: a Redis primary, one replica and three sentinels
(``tests/redis_sentinel.py``), a ``quicvoice-lb`` forwarder, and two backends (``VoiceServer``s in
this event loop) whose ``session_store`` is a ``redis+sentinel://`` URL with ``replicas=1``. The
call orders, its checkpoint is confirmed by the replica, the primary is SIGKILLed mid-call, the
caller keeps talking and orders again while there is no primary; once the replica is promoted the
new order is on it; then the call's backend dies too, and the call resumes on the other backend
with its whole cart and every uplink frame.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from quicvoice.agent import handle_order
from quicvoice.asyncio.client import VoiceClient, connect
from quicvoice.asyncio.server import ServerSession
from quicvoice.session.events import (
    AudioReceived,
    ByeReceived,
    EventReceived,
    SessionClosed,
    UplinkEnded,
)

from ..redis_sentinel import SentinelGroup, started_group
from .deployment import Deployment, backends
from .test_backend_loss import crash
from .voice_harness import FRAME

pytestmark = pytest.mark.integration

A, B = "0a000001", "0a000002"
FRAMES = 300  # 6 s of talking at 20 ms
FAILOVER_LIMIT = 15.0


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    yield from started_group(tmp_path)


def agent(arrivals: dict[str, list[tuple[int, float]]]) -> Callable[[ServerSession], object]:
    """Takes orders like the demo agent, records each uplink frame's arrival, and answers
    ``sync`` with ``synced`` once the session's checkpoints have reached the store."""

    async def run(session: ServerSession) -> None:
        home = session.started.server_id
        uplink_ended = bye_asked = False
        settling: set[asyncio.Task[None]] = set()

        async def settle() -> None:
            deadline = time.monotonic() + FAILOVER_LIMIT
            while time.monotonic() < deadline:
                stats = session.checkpoint_stats()
                if stats is not None and not stats.pending:
                    session.send_event("synced", {"version": stats.version})
                    return
                await asyncio.sleep(0.01)  # no event says "written"; polled, bounded

        async for event in session:
            if isinstance(event, AudioReceived):
                arrivals[home].append((event.frame.seq, time.monotonic()))
            elif isinstance(event, EventReceived) and event.name.startswith("order."):
                handle_order(session, event.name, event.data)
            elif isinstance(event, EventReceived) and event.name == "sync":
                task = asyncio.get_running_loop().create_task(settle())
                settling.add(task)
                task.add_done_callback(settling.discard)
            elif isinstance(event, UplinkEnded):
                uplink_ended = True
            elif isinstance(event, ByeReceived):
                bye_asked = True
            elif isinstance(event, SessionClosed):
                return
            if bye_asked and uplink_ended:
                session.send_bye()
                bye_asked = False

    return run


async def until(condition: Callable[[], bool], limit: float) -> float:
    """Poll a quick synchronous check without blocking the loop; seconds until it held."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < limit, "timed out"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def test_the_call_survives_a_sentinel_failover(
    tmp_path: Path, sentinel_group: SentinelGroup
) -> None:
    group = sentinel_group
    deployment = Deployment(
        tmp_path,
        server_ids=[A, B],
        session_store=group.url(timeout="0.3", replicas="1", wait_ms="100"),
        down={B},
    )
    deployment.start_forwarder()
    arrivals: dict[str, list[tuple[int, float]]] = defaultdict(list)
    figures: dict[str, object] = {}

    async def scenario() -> None:
        async with backends(deployment, agent(arrivals)) as servers:  # type: ignore[arg-type]
            async with connect(*deployment.vip, verify=False, liveness_timeout=0.5) as call:
                assert call.session is not None and call.session.server_id == A
                call.send_event("order.add", {"item": "large taro milk tea", "milk": "oat"})
                await call.wait_event("order.cart")
                call.send_event("sync")
                await call.wait_event("synced", timeout=5)
                store = servers[A].store
                assert store.statistics().unreplicated == 0  # the replica confirmed it

                speaking = asyncio.get_running_loop().create_task(speak(call, FRAMES))
                await asyncio.sleep(0.5)
                group.kill(group.primary_port)
                killed = time.monotonic()
                # The conversation goes on without a primary: the store is not in the path.
                call.send_event("order.add", {"item": "matcha latte"})
                cart = await call.wait_event("order.cart", timeout=2)
                assert len(cart.data["items"]) == 2
                figures["promoted_s"] = await until(group.failover_done, FAILOVER_LIMIT)
                call.send_event("sync")
                await call.wait_event("synced", timeout=FAILOVER_LIMIT)
                figures["state_on_new_primary_s"] = time.monotonic() - killed
                figures["outage_ends_s"] = outage_end = time.monotonic()
                # Now lose the backend too: the call resumes on B from the new primary.
                crash(servers[A])
                deployment.write(down={A})
                deployment.reload()
                resumed = await call.wait_resumed(timeout=15)
                assert resumed.server_id == B
                call.send_event("order.list")
                cart = await call.wait_event("order.cart")
                assert cart.data == {
                    "items": [
                        {"item": "large taro milk tea", "milk": "oat"},
                        {"item": "matcha latte"},
                    ]
                }
                await speaking
                call.end_audio()
                assert await call.bye(timeout=10) >= 1
                figures["resume_gap_ms"] = round(call.resumptions[0].gap_ms)
                during = [t for _, t in arrivals[A] if killed <= t <= outage_end]
                gaps = [b - a for a, b in zip(during, during[1:], strict=False)]
                figures["frames_during_outage"] = len(during)
                figures["longest_uplink_gap_during_outage_ms"] = round(max(gaps) * 1000)
                figures["unreplicated_saves"] = servers[B].store.statistics().unreplicated
                figures["failovers_seen"] = store.statistics().failovers

    try:
        asyncio.run(scenario())
    finally:
        deployment.stop()
    received = {seq for home in (A, B) for seq, _ in arrivals[home]}
    assert received == set(range(FRAMES)), f"{FRAMES - len(received)} uplink frames lost"
    assert arrivals[B], "the resumed call reached the second backend"
    assert figures["failovers_seen"] == 1
    figures.pop("outage_ends_s")
    print("\nsentinel failover:", json.dumps(figures))


def test_a_backend_lost_while_there_is_no_primary(
    tmp_path: Path, sentinel_group: SentinelGroup
) -> None:
    """The backend dies in the second or two between the primary's death and the replica's
    promotion: the resume can only load the session once the store answers again, so the
    call should keep trying (within its reconnect timeout) rather than end."""
    group = sentinel_group
    deployment = Deployment(
        tmp_path,
        server_ids=[A, B],
        session_store=group.url(timeout="0.3", replicas="1", wait_ms="100"),
        down={B},
    )
    deployment.start_forwarder()
    arrivals: dict[str, list[tuple[int, float]]] = defaultdict(list)

    async def scenario() -> None:
        async with backends(deployment, agent(arrivals)) as servers:  # type: ignore[arg-type]
            async with connect(*deployment.vip, verify=False, liveness_timeout=0.5) as call:
                call.send_event("order.add", {"item": "large taro milk tea"})
                await call.wait_event("order.cart")
                call.send_event("sync")
                await call.wait_event("synced", timeout=5)
                speaking = asyncio.get_running_loop().create_task(speak(call, 150))
                try:
                    await asyncio.sleep(0.3)
                    group.kill(group.primary_port)
                    crash(servers[A])
                    deployment.write(down={A})
                    deployment.reload()
                    resumed = await call.wait_resumed(timeout=15)
                    assert resumed.server_id == B
                    call.send_event("order.list")
                    cart = await call.wait_event("order.cart")
                    assert cart.data == {"items": [{"item": "large taro milk tea"}]}
                    await speaking
                finally:
                    speaking.cancel()
                    await asyncio.gather(speaking, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        deployment.stop()


async def speak(call: VoiceClient, frames: int) -> None:
    for _ in range(frames):
        call.send_audio(FRAME)
        await asyncio.sleep(0.02)
