"""The asyncio client around the call machine, on real loopback sockets: events the app skips
stay readable, a goodbye said while reconnecting reaches the connection that carries the call
on, an ended call says so with its own error, and the shell's wait for the machine misses no
change."""

from __future__ import annotations

import asyncio
import time

import pytest
from aioquic.quic.configuration import QuicConfiguration

from quicvoice.asyncio.client import VoiceClient, connect
from quicvoice.asyncio.server import ServerSession
from quicvoice.errors import CallEndedError
from quicvoice.session.codes import ErrorCode
from quicvoice.session.events import EventReceived, SessionClosed
from quicvoice.session.messages import Hello

from .voice_harness import FRAME, running_server

pytestmark = pytest.mark.integration


@pytest.mark.asyncio
async def test_wait_event_leaves_the_events_it_skips_for_receive_in_order() -> None:
    async with running_server() as server:
        async with connect(*server.address, verify=False) as call:
            call.send_event("order.add", {"item": "taro milk tea"})
            call.send_event("session.info")
            call.send_event("order.add", {"item": "matcha latte"})
            info = await call.wait_event("session.info")
            assert info.name == "session.info"
            carts = []
            while len(carts) < 2:
                event = await asyncio.wait_for(call.receive(), 5)
                if isinstance(event, EventReceived):
                    carts.append(event)
            assert [c.name for c in carts] == ["order.cart", "order.cart"]
            assert [len(c.data["items"]) for c in carts] == [1, 2]  # in the order sent


@pytest.mark.asyncio
async def test_bye_while_reconnecting_is_said_on_the_resumed_connection() -> None:
    """The old path goes dark for good and the resume is slowed so that the app says goodbye
    while the call reconnects: the goodbye (and the end of the uplink) wait for the resumed
    connection, whose server counts every frame."""
    first_peer: tuple[str, int] | None = None
    dark = False

    def accept(data: bytes, address: tuple[str, int]) -> bool:
        nonlocal first_peer
        if first_peer is None:
            first_peer = address
        return not (dark and address == first_peer)

    async with running_server(accept_datagram=accept) as server:
        send = server.send

        def send_unless_dark(data: bytes, address: tuple[str, int]) -> None:
            if not (dark and address == first_peer):
                send(data, address)

        server.send = send_unless_dark  # type: ignore[method-assign]
        load = server.store.load

        async def slow_load(session_id: str) -> object:
            await asyncio.sleep(1.0)
            return await load(session_id)

        server.store.load = slow_load  # type: ignore[method-assign,assignment]
        async with connect(
            *server.address, verify=False, liveness_timeout=0.3, reconnect_timeout=5.0
        ) as call:
            for _ in range(10):
                call.send_audio(FRAME)
                await asyncio.sleep(0.02)
            dark = True
            deadline = time.monotonic() + 3.0
            while not call.reconnecting:
                assert time.monotonic() < deadline, "the client never declared the path dead"
                call.send_audio(FRAME)
                await asyncio.sleep(0.02)
            # Said on the dying attempt (as before), the goodbye broke the resumed session's
            # protocol or was lost, and bye() timed out.
            frames = await call.bye(timeout=10)
            [resumption] = call.resumptions
            # The resumed session counts what it received: every frame the dark connection
            # left unacknowledged, and those captured meanwhile.
            assert frames >= resumption.frames_resent > 0


@pytest.mark.asyncio
async def test_an_ended_call_raises_call_ended_error() -> None:
    async with running_server() as server:
        async with connect(*server.address, verify=False) as call:
            pass
        with pytest.raises(CallEndedError):
            call.send_audio(FRAME)
        with pytest.raises(ConnectionError):  # compatible with what apps caught before
            call.send_event("order.list")
        with pytest.raises(CallEndedError):
            await call.receive()
        with pytest.raises(CallEndedError):
            await call.migrate("127.0.0.3")


@pytest.mark.asyncio
async def test_the_servers_close_is_received_then_receive_says_the_call_ended() -> None:
    async def closes_when_asked(session: ServerSession) -> None:
        async for event in session:
            if isinstance(event, EventReceived) and event.name == "hang.up":
                session.close(ErrorCode.NO_ERROR, "asked to")

    async with running_server(closes_when_asked) as server:
        async with connect(*server.address, verify=False) as call:
            call.send_event("hang.up")
            closed = await asyncio.wait_for(call.receive(), 5)
            assert isinstance(closed, SessionClosed)
            with pytest.raises(CallEndedError):
                await call.receive()
            with pytest.raises(CallEndedError):
                call.send_audio(FRAME)


@pytest.mark.asyncio
async def test_a_change_just_after_the_wait_begins_wakes_it_at_once() -> None:
    """The shell's wait for the machine (``open()`` waits on it for ``welcome`` or a refusal):
    a change reported after the waiting task suspended but before anything else ran, as when
    the refusal's datagram is already queued, must end the wait, not leave it to its timeout
    (under load this made a refused ``connect`` time out instead of raising)."""
    client = VoiceClient(
        ("127.0.0.1", 9),
        QuicConfiguration(is_client=True),
        webtransport=False,
        hello=Hello(),
        limits=None,
        authority="localhost",
        reconnect=False,
        liveness_timeout=1.0,
        reconnect_timeout=1.0,
    )
    changed = False
    started = time.monotonic()
    waiting = asyncio.create_task(client._until(lambda: changed, 3.0))  # noqa: SLF001
    await asyncio.sleep(0)  # the wait starts and suspends
    changed = True
    client._notify()  # noqa: SLF001 - what every drain of the machine's actions ends with
    assert await asyncio.wait_for(waiting, 5.0)
    assert time.monotonic() - started < 1.0
