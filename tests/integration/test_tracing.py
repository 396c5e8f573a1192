"""OpenTelemetry spans of real calls on loopback, caught by the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from quicvoice.asyncio.client import connect
from quicvoice.asyncio.server import ServerSession
from quicvoice.session.events import (
    AudioReceived,
    SessionClosed,
    TurnCancelled,
    TurnEnded,
    TurnStarted,
    UplinkEnded,
)

from .voice_harness import FRAME, SERVER_ID, running_server

pytestmark = pytest.mark.integration


async def two_turns(session: ServerSession) -> None:
    """Answer the first frame with a 3-frame turn, then open a turn the client cancels;
    say when the cancel arrived."""
    async for event in session:
        if isinstance(event, AudioReceived) and session.stats().turns == 0:
            turn = session.start_turn()
            for index in range(3):
                session.send_turn_audio(turn, FRAME, index * 320)
            session.end_turn(turn)
            second = session.start_turn()
            session.send_turn_audio(second, FRAME, 0)
        elif isinstance(event, TurnCancelled):
            session.send_event("cancel.seen")
        elif isinstance(event, UplinkEnded | SessionClosed):
            return


def finished(exporter: InMemorySpanExporter, name: str, count: int) -> list[ReadableSpan]:
    found = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(found) == count, [s.name for s in exporter.get_finished_spans()]
    return found


async def wait_for_spans(exporter: InMemorySpanExporter, name: str, timeout: float = 5) -> None:
    """The session span ends when the server's connection has drained (3 PTOs after the
    close): wait for it, bounded."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not any(s.name == name for s in exporter.get_finished_spans()):
        assert asyncio.get_running_loop().time() < deadline, "the span never ended"
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_a_session_span_with_its_turns_and_a_migration(
    spans: InMemorySpanExporter,
) -> None:
    async with running_server(two_turns) as server:
        host, port = server.address
        async with connect(host, port, local_address="127.0.0.2", verify=False) as client:
            session_id = client.session.session_id if client.session else None
            client.send_audio(FRAME)
            turns: list[int] = []
            ended = False
            while not (ended and len(turns) == 2):
                event = await asyncio.wait_for(client.receive(), 5)
                if isinstance(event, TurnStarted):
                    turns.append(event.turn_id)
                elif isinstance(event, TurnEnded):
                    ended = True
            client.cancel_turn(turns[1])
            await client.wait_event("cancel.seen")
            await client.migrate("127.0.0.3")
            client.end_audio()
        await wait_for_spans(spans, "quicvoice.session")

    (session,) = finished(spans, "quicvoice.session", 1)
    assert session.kind is SpanKind.SERVER
    attributes = dict(session.attributes or {})
    assert attributes["conversation.id"] == session_id
    assert attributes["quicvoice.server_id"] == SERVER_ID.hex()
    assert attributes["quicvoice.codec"] == "L16/16000"
    assert attributes["quicvoice.uplink"] == "reliable"
    assert attributes["quicvoice.resumed"] is False
    assert attributes["quicvoice.close.name"] == "NO_ERROR"
    assert attributes["quicvoice.migrations"] == 1
    assert session.status.status_code is StatusCode.UNSET
    (migration,) = [e for e in session.events if e.name == "quicvoice.migration"]
    assert str((migration.attributes or {})["quicvoice.migration.to"]).startswith("127.0.0.3:")

    first, second = sorted(
        finished(spans, "quicvoice.turn", 2),
        key=lambda span: int((span.attributes or {})["quicvoice.turn.id"]),  # type: ignore[arg-type]
    )
    for turn in (first, second):
        assert turn.parent is not None and turn.parent.span_id == session.context.span_id
        assert turn.context.trace_id == session.context.trace_id
    assert dict(first.attributes or {}) == {
        "quicvoice.turn.id": turns[0],
        "quicvoice.turn.frames": 3,
        "quicvoice.turn.cancelled": False,
    }
    assert dict(second.attributes or {}) == {
        "quicvoice.turn.id": turns[1],
        "quicvoice.turn.frames": 1,
        "quicvoice.turn.cancelled": True,
        "quicvoice.turn.cancelled_by": "client",
    }


@pytest.mark.asyncio
async def test_a_failing_handler_marks_its_span(spans: InMemorySpanExporter) -> None:
    async def failing(session: ServerSession) -> None:
        await session.receive()
        raise ValueError("the application broke")

    async with running_server(failing) as server:
        host, port = server.address
        async with connect(host, port, verify=False) as client:
            client.send_audio(FRAME)
            while not isinstance(await asyncio.wait_for(client.receive(), 5), SessionClosed):
                pass
        await wait_for_spans(spans, "quicvoice.session")

    (session,) = finished(spans, "quicvoice.session", 1)
    assert session.status.status_code is StatusCode.ERROR
    assert (session.attributes or {})["quicvoice.close.name"] == "INTERNAL_ERROR"
    (exception,) = [e for e in session.events if e.name == "exception"]
    assert (exception.attributes or {})["exception.type"] == "ValueError"
