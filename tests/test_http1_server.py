"""The HTTP/1.1 serving shell (quicvoice.asyncio.http1) on real loopback sockets.

What /metrics and the browser demo's server share is tested here once, with a small route:
the answers the shell gives by itself, the deadline, the connection bound, the linger, and
any bytes from a client (the socket halves of both servers' former garbage tests).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings

from quicvoice.asyncio.http1 import Http1Server, ServingLimits
from quicvoice.http1 import Request, Response

from . import http1_helpers
from .http1_helpers import hostile_heads, status_of, wait_for_status

pytestmark = pytest.mark.integration

LOGGER = logging.getLogger("quicvoice.test_http1")
LIMITS = ServingLimits(
    max_request_head=1024,
    head_timeout=5.0,
    write_timeout=5.0,
    max_connections=4,
    linger_timeout=1.0,
)
#: Every status the shell or the test route can answer.
STATUSES = {b"200", b"400", b"404", b"405", b"408", b"413", b"431", b"500", b"503", b"505"}


class FailingOnce:
    """A route that raises on ``/boom`` the first time, as a bug in a server's routing would."""

    def __init__(self) -> None:
        self.failed = False

    def __call__(self, request: Request) -> Response:
        if request.path == "/":
            return Response(status=200, body=b"hello")
        if request.path == "/boom" and not self.failed:
            self.failed = True
            raise ValueError("a bug in the route")
        return Response(status=404)


async def started(limits: ServingLimits = LIMITS) -> Http1Server:
    server = Http1Server(FailingOnce(), limits, LOGGER)
    await server.start(("127.0.0.1", 0))
    return server


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Http1Server]:
    server = await started()
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()


async def exchange(server: Http1Server, request: bytes, *, half_close: bool = True) -> bytes:
    """Send ``request`` (then half-close unless told not to) and read the whole answer."""
    return await http1_helpers.exchange(server.address, request, half_close=half_close)


@pytest.mark.asyncio
async def test_get_and_head(server: Http1Server) -> None:
    answer = await exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(answer) == b"200" and answer.endswith(b"\r\n\r\nhello")
    answer = await exchange(server, b"HEAD /?q HTTP/1.0\r\n\r\n")
    assert status_of(answer) == b"200" and answer.endswith(b"Connection: close\r\n\r\n")
    assert b"Content-Length: 5\r\n" in answer


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /nope HTTP/1.1\r\n\r\n", b"404"),
        # Read-only: another method is 405 before its body is looked at.
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", b"405"),
        (b"get / HTTP/1.1\r\n\r\n", b"405"),
        (b"M-SEARCH / HTTP/1.1\r\n\r\n", b"405"),
        (b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", b"413"),
        (b"GET / HTTP/1.1\r\nContent-Length: " + b"9" * 600 + b"\r\n\r\n", b"413"),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * LIMITS.max_request_head + b"\r\n\r\n", b"431"),
        (b"GET / HTTP/2.0\r\n\r\n", b"505"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n", b"400"),  # the client half-closed inside the head
        (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", b"400"),
    ],
)
async def test_the_shell_answers_what_no_route_should_see(
    server: Http1Server, request_bytes: bytes, status: bytes
) -> None:
    answer = await exchange(server, request_bytes)
    assert status_of(answer) == status
    if status == b"405":
        assert b"\r\nAllow: GET, HEAD\r\n" in answer
    assert server.counters[int(status)] == 1
    assert status_of(await exchange(server, b"GET / HTTP/1.1\r\n\r\n")) == b"200"


@pytest.mark.asyncio
async def test_a_silent_client_gets_nothing(server: Http1Server) -> None:
    assert await exchange(server, b"") == b""
    assert server.counters == {}


@pytest.mark.asyncio
async def test_a_head_not_sent_in_time_is_answered_408() -> None:
    server = await started(
        ServingLimits(head_timeout=0.2, write_timeout=5, max_connections=4, linger_timeout=0.2)
    )
    try:
        started_at = asyncio.get_running_loop().time()
        answer = await exchange(server, b"GET / HTTP/1.1\r\n", half_close=False)
        assert status_of(answer) == b"408"
        assert asyncio.get_running_loop().time() - started_at < 5
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_a_failing_route_answers_500_is_logged_and_the_server_goes_on(
    server: Http1Server, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger=LOGGER.name):
        assert status_of(await exchange(server, b"HEAD /boom HTTP/1.1\r\n\r\n")) == b"500"
    assert [record.getMessage() for record in caplog.records] == ["answering /boom failed"]
    assert status_of(await exchange(server, b"GET /boom HTTP/1.1\r\n\r\n")) == b"404"


@pytest.mark.asyncio
async def test_the_answer_survives_unread_input(server: Http1Server) -> None:
    # Without the linger the unread body would make the kernel reset the connection, and the
    # reset can destroy the answer before the client reads it.
    answer = await exchange(
        server,
        b"GET / HTTP/1.1\r\nContent-Length: 500000\r\n\r\n" + b"x" * 500_000,
        half_close=False,
    )
    assert status_of(answer) == b"413"


@pytest.mark.asyncio
async def test_idle_connections_beyond_the_bound_are_turned_away_at_once(
    server: Http1Server,
) -> None:
    assert server.address is not None
    idle = [await asyncio.open_connection(*server.address) for _ in range(LIMITS.max_connections)]
    try:
        await wait_for_status(server.address, b"GET / HTTP/1.1\r\n\r\n", b"503")
    finally:
        for _, writer in idle:
            writer.close()
    assert server.counters[503] >= 1
    await wait_for_status(server.address, b"GET / HTTP/1.1\r\n\r\n", b"200")  # once gone


@pytest.mark.asyncio
async def test_close_ends_idle_connections(server: Http1Server) -> None:
    assert server.address is not None
    reader, writer = await asyncio.open_connection(*server.address)
    try:
        writer.write(b"GET / HTTP/1.1\r\n")  # and then nothing: the head deadline is 5 s
        await writer.drain()
        while not server._connections:  # the server has taken it
            await asyncio.sleep(0.01)
        server.close()
        await asyncio.wait_for(server.wait_closed(), 2)
        try:  # the connection ends: with a FIN, or a reset for the request bytes left unread
            assert await asyncio.wait_for(reader.read(), 2) == b""
        except ConnectionResetError:
            pass
    finally:
        writer.close()


@pytest.mark.asyncio
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(request_bytes=hostile_heads)
async def test_any_bytes_get_one_well_formed_answer_or_none(
    request_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    server = await started()
    try:
        with caplog.at_level(logging.ERROR, logger=LOGGER.name):
            answer = await exchange(server, request_bytes)
        assert not [r for r in caplog.records if r.name == LOGGER.name]
        if not answer:
            assert request_bytes == b""  # only a client that sent nothing gets nothing back
        else:
            head, _, body = answer.partition(b"\r\n\r\n")
            assert status_of(answer) in STATUSES
            assert f"\r\nContent-Length: {len(body)}\r\n".encode() in head
        assert status_of(await exchange(server, b"GET / HTTP/1.1\r\n\r\n")) == b"200"
    finally:
        server.close()
        await server.wait_closed()


def test_limits_must_be_positive() -> None:
    for wrong in ({"max_connections": 0}, {"head_timeout": 0.0}, {"linger_timeout": -1.0}):
        values = {"head_timeout": 1.0, "write_timeout": 1.0, "max_connections": 1}
        values |= {"linger_timeout": 1.0, **wrong}
        with pytest.raises(ValueError):
            ServingLimits(**values)  # type: ignore[arg-type]
