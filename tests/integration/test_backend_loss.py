"""A call survives the loss of its backend: state in a real Redis, resume through the forwarder.

Backends are ``VoiceServer``s in this event loop; "losing" one closes its socket and stops its
timers without a word to anyone, as a crash would. The forwarder is a real process and Redis a
real ``redis-server``.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import pytest

from quicvoice.agent import handle_order
from quicvoice.asyncio.client import connect
from quicvoice.asyncio.server import ServerSession, VoiceServer
from quicvoice.errors import SessionRefusedError
from quicvoice.session.codes import ErrorCode
from quicvoice.session.events import (
    AudioReceived,
    ByeReceived,
    EventReceived,
    SessionClosed,
    SessionResumed,
    UplinkEnded,
)
from quicvoice.session.messages import Hello

from ..conftest import RedisServer
from .deployment import Deployment, backends
from .voice_harness import FRAME

pytestmark = pytest.mark.integration

A, B = "0a000001", "0a000002"
FRAMES = 100


def recording_agent(received: dict[str, list[int]]) -> object:
    """Takes orders like the demo agent and records which uplink frames each backend got."""

    async def agent(session: ServerSession) -> None:
        home = session.started.server_id
        uplink_ended = bye_asked = False
        async for event in session:
            if isinstance(event, AudioReceived):
                received[home].append(event.frame.seq)
            elif isinstance(event, EventReceived) and event.name.startswith("order."):
                handle_order(session, event.name, event.data)
            elif isinstance(event, UplinkEnded):
                uplink_ended = True
            elif isinstance(event, ByeReceived):
                bye_asked = True
            elif isinstance(event, SessionClosed):
                return
            # The uplink stream and the control stream are not ordered with each other:
            # answer the goodbye once every frame has arrived.
            if bye_asked and uplink_ended:
                session.send_bye()
                bye_asked = False

    return agent


def crash(server: VoiceServer) -> None:
    """Stop answering at once, telling nobody: what a killed backend looks like."""
    assert server._transport is not None
    server._transport.close()
    for connection in set(server._connections.values()):
        connection.cancel_timers()


@pytest.mark.parametrize("detection", ["stateless-reset", "liveness"])
def test_the_cart_and_the_audio_survive_the_backend(
    tmp_path: Path, redis_server: RedisServer, detection: str
) -> None:
    deployment = Deployment(
        tmp_path, server_ids=[A, B], session_store=redis_server.unique_url(), down={B}
    )
    deployment.start_forwarder()
    received: dict[str, list[int]] = defaultdict(list)

    async def scenario() -> None:
        async with backends(deployment, recording_agent(received)) as servers:  # type: ignore[arg-type]
            async with connect(*deployment.vip, verify=False, liveness_timeout=0.5) as call:
                assert call.session is not None and call.session.server_id == A
                call.send_event("order.add", {"item": "large taro milk tea", "milk": "oat"})
                await call.wait_event("order.cart")
                loop = asyncio.get_running_loop()

                async def speak() -> None:
                    for _ in range(FRAMES):
                        call.send_audio(FRAME)
                        await asyncio.sleep(0.02)

                speaking = loop.create_task(speak())
                await asyncio.sleep(0.6)
                crash(servers[A])
                if detection == "stateless-reset":
                    # The orchestrator notices and marks A down: the forwarder then answers
                    # A's packets with stateless resets and sends new connections to B.
                    deployment.write(down={A})
                    deployment.reload()
                else:
                    # Nobody tells the forwarder: the client notices the silence itself, and
                    # first flights keep landing on A until one lands on B.
                    deployment.write(down=set())
                    deployment.reload()
                resumed = await call.wait_resumed(timeout=15)
                assert isinstance(resumed, SessionResumed) and resumed.server_id == B
                await speaking
                call.send_event("order.list")
                cart = await call.wait_event("order.cart")
                assert cart.data == {"items": [{"item": "large taro milk tea", "milk": "oat"}]}
                call.end_audio()
                assert await call.bye(timeout=10) >= 1
                assert call.resumptions[0].to_server == B
                # B had never seen this client: the TLS ticket came from A through Redis, so
                # the hello and the kept audio went in 0-RTT.
                assert call.resumptions[0].zero_rtt
                if detection == "stateless-reset":
                    assert call.resumptions[0].gap_ms < 1000

    try:
        asyncio.run(scenario())
    finally:
        deployment.stop()
    assert set(received[A]) | set(received[B]) == set(range(FRAMES))
    assert received[B], "the resumed call reached the second backend"


def test_a_call_with_no_state_yet_survives_its_backend(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """No conversational event yet (nothing the application checkpointed): the session was
    stored empty when it started, so it resumes on B instead of being refused."""
    deployment = Deployment(
        tmp_path, server_ids=[A, B], session_store=redis_server.unique_url(), down={B}
    )
    deployment.start_forwarder()

    async def scenario() -> None:
        async with backends(deployment) as servers:
            async with connect(*deployment.vip, verify=False, liveness_timeout=0.5) as call:
                assert call.session is not None and call.session.server_id == A

                async def speak() -> None:  # a silent client would notice nothing
                    while True:
                        call.send_audio(FRAME)
                        await asyncio.sleep(0.02)

                speaking = asyncio.get_running_loop().create_task(speak())
                await asyncio.sleep(0.2)
                crash(servers[A])
                deployment.write(down={A})
                deployment.reload()
                resumed = await call.wait_resumed(timeout=15)
                speaking.cancel()
                assert resumed.server_id == B
                call.send_event("order.list")
                cart = await call.wait_event("order.cart")
                assert cart.data == {"items": []}

    try:
        asyncio.run(scenario())
    finally:
        deployment.stop()


def test_a_forged_or_foreign_token_is_refused(redis_server: RedisServer, tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, server_ids=[A], session_store=redis_server.unique_url())
    deployment.start_forwarder()

    async def scenario() -> None:
        async with backends(deployment):
            async with connect(*deployment.vip, verify=False) as call:
                assert call.session is not None and call.session.resume_token is not None
                token = call.session.resume_token
            forged = token[:-1] + bytes([token[-1] ^ 1])
            for bad in (forged, b"", b"\x01" * 80, token[:20]):
                with pytest.raises(SessionRefusedError, match="refused") as refused:
                    async with connect(
                        *deployment.vip, verify=False, hello=Hello(resume_token=bad)
                    ):
                        pass
                assert refused.value.error_code == ErrorCode.RESUME_REFUSED

    try:
        asyncio.run(scenario())
    finally:
        deployment.stop()


def test_calls_go_on_while_redis_is_down_and_state_catches_up(
    own_redis_server: RedisServer,
) -> None:
    """Redis frozen mid-call: audio and orders go on, checkpoints fail and are retried, and the
    store has the latest cart once Redis answers again."""
    from quicvoice.asyncio.config import BackendConfig
    from quicvoice.quiclb import LoadBalancerConfig
    from quicvoice.store import open_store, unpack_state


    url = own_redis_server.unique_url(timeout="0.2")
    stats: list[object] = []

    async def agent(session: ServerSession) -> None:
        async for event in session:
            if isinstance(event, EventReceived) and event.name.startswith("order."):
                handle_order(session, event.name, event.data)
            elif isinstance(event, EventReceived) and event.name == "checkpoint.stats":
                stats.append(session.checkpoint_stats())
                session.send_event("checkpoint.stats")
            elif isinstance(event, ByeReceived):
                session.send_bye()
            elif isinstance(event, SessionClosed):
                return

    async def scenario() -> None:
        config = BackendConfig(
            listen=("127.0.0.1", 0),
            configs=(LoadBalancerConfig(0, 4, 12, bytes(16)),),
            session_store=url,
        )
        server = VoiceServer(config, agent)
        await server.start()
        try:
            async with connect(*server.address, verify=False) as call:
                assert call.session is not None
                call.send_event("order.add", {"item": "taro milk tea"})
                await call.wait_event("order.cart")
                own_redis_server.pause()
                for _ in range(25):
                    call.send_audio(FRAME)
                    await asyncio.sleep(0.02)
                call.send_event("order.add", {"item": "matcha latte"})
                cart = await call.wait_event("order.cart", timeout=2)
                assert len(cart.data["items"]) == 2  # the conversation went on
                await asyncio.sleep(0.5)
                call.send_event("checkpoint.stats")
                await call.wait_event("checkpoint.stats")
                own_redis_server.resume()
                await asyncio.sleep(1.5)  # the checkpointer retries with backoff
                store = open_store(url)
                record = await store.load(call.session.session_id)
                await store.aclose()
                assert record is not None
                items = unpack_state(record.state)["cart"]
                assert [i["item"] for i in items] == ["taro milk tea", "matcha latte"]
                assert await call.bye() == 25
        finally:
            await server.aclose()

    asyncio.run(scenario())
    failed = stats[0]
    assert failed is not None and failed.failures >= 1  # type: ignore[attr-defined]
