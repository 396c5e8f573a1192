"""A blackout longer than the liveness timeout, 3 backends, ``memory://``: every call resumes
on the backend that holds its session (the resume goes to its home CID), none is lost.

The client's path goes through a ``BlackoutRelay`` (a UDP relay that drops everything both ways
for a while) to a real forwarder process; backends are ``VoiceServer``s in this event loop,
each with its own in-memory store.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from quicvoice.asyncio.client import VoiceClient, connect
from quicvoice.asyncio.server import ServerSession
from quicvoice.netlab.blackout import BlackoutRelay
from quicvoice.session.events import AudioReceived, SessionClosed, SessionResumed

from .deployment import Deployment, backends
from .voice_harness import FRAME

pytestmark = pytest.mark.integration

CALLS = 3
BLACKOUT = 2.0


def arrivals_agent(arrivals: dict[str, list[tuple[int, float]]]) -> object:
    """Records when each uplink frame of each session arrived (loop time)."""

    async def agent(session: ServerSession) -> None:
        loop = asyncio.get_running_loop()
        async for event in session:
            if isinstance(event, AudioReceived):
                arrivals[session.session_id].append((event.frame.seq, loop.time()))
            elif isinstance(event, SessionClosed):
                return

    return agent


async def speak(call: VoiceClient, stop: asyncio.Event) -> int:
    sent = 0
    for _ in range(2000):
        if stop.is_set():
            break
        call.send_audio(FRAME)
        sent += 1
        await asyncio.sleep(0.02)
    return sent


def test_a_blackout_longer_than_the_liveness_timeout_loses_no_call_with_memory_store(
    tmp_path: Path,
) -> None:
    deployment = Deployment(tmp_path, session_store="memory://")
    deployment.start_forwarder()
    arrivals: dict[str, list[tuple[int, float]]] = defaultdict(list)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        relay = BlackoutRelay(deployment.vip)
        entry = await relay.start()
        async with backends(deployment, arrivals_agent(arrivals)) as servers:  # type: ignore[arg-type]
            async with AsyncExitStack() as stack:
                calls = [
                    await stack.enter_async_context(
                        connect(*entry, verify=False, liveness_timeout=0.5)
                    )
                    for _ in range(CALLS)
                ]
                homes = {}
                for call in calls:
                    assert call.session is not None
                    homes[call.session.session_id] = call.session.server_id
                stop = asyncio.Event()
                speaking = [loop.create_task(speak(call, stop)) for call in calls]
                await asyncio.sleep(0.5)
                ends = relay.black_out(BLACKOUT)
                resumed = await asyncio.gather(
                    *(call.wait_resumed(timeout=BLACKOUT + 8) for call in calls)
                )
                await asyncio.sleep(0.5)
                stop.set()
                await asyncio.gather(*speaking)
                for call, event in zip(calls, resumed, strict=True):
                    assert isinstance(event, SessionResumed)
                    assert call.session is not None
                    # The same backend, with the session in its own memory.
                    assert event.server_id == homes[event.session_id]
                    assert call.resumptions[-1].to_server == homes[event.session_id]
                after = []
                for session_id in homes:
                    later = [t for _, t in arrivals[session_id] if t > ends]
                    assert later, f"no audio after the blackout for {session_id}"
                    after.append(min(later) - ends)
                # The path came back: audio flows again well before a reconnect back-off.
                assert max(after) < 1.0, after
                assert relay.counters.dropped_up > 0 and relay.counters.dropped_down >= 0
                assert len(servers) == 3
        relay.close()

    try:
        asyncio.run(scenario())
    finally:
        deployment.stop()
