"""The ``/metrics`` HTTP endpoint on a real loopback socket: its routing and its limits.

Hostile input in general is tested once for both HTTP servers: the parser in
tests/test_http1.py, the serving shell in tests/test_http1_server.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from quicvoice.observability.endpoint import MAX_CONNECTIONS, MAX_REQUEST_HEAD, MetricsEndpoint

from .. import http1_helpers
from ..http1_helpers import status_of, wait_for_status

SCRAPE = b"GET /metrics HTTP/1.1\r\n\r\n"
BODY = "# HELP quicvoice_test_up Up.\n# TYPE quicvoice_test_up gauge\nquicvoice_test_up 1\n"


@pytest_asyncio.fixture
async def endpoint() -> AsyncIterator[MetricsEndpoint]:
    endpoint = MetricsEndpoint(lambda: BODY)
    await endpoint.start(("127.0.0.1", 0))
    try:
        yield endpoint
    finally:
        endpoint.close()
        await endpoint.wait_closed()


async def exchange(endpoint: MetricsEndpoint, request: bytes) -> bytes:
    """Send ``request``, half-close, read the whole answer."""
    return await http1_helpers.exchange(endpoint.address, request)


@pytest.mark.asyncio
async def test_get_metrics(endpoint: MetricsEndpoint) -> None:
    answer = await exchange(endpoint, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert status_of(answer) == b"200"
    assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in head
    assert body.decode() == BODY


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"HEAD /metrics HTTP/1.0\r\n\r\n", b"200"),
        (b"GET /metrics?name[]=x HTTP/1.1\r\n\r\n", b"200"),
        (b"GET / HTTP/1.1\r\n\r\n", b"404"),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", b"405"),
        # A method is a case-sensitive token (RFC 9110 §9.1): "get" is another method, not
        # garbage; this endpoint answered 400 before it shared the parser with the demo's.
        (b"get /metrics HTTP/1.1\r\n\r\n", b"405"),
        # The header fields were not read before: a space before the colon must be 400
        # (RFC 9112 §5.1), and a body is refused rather than left unread.
        (b"GET /metrics HTTP/1.1\r\nHost : x\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", b"413"),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * MAX_REQUEST_HEAD + b"\r\n\r\n", b"431"),
        (b"GET /metrics HTTP/2.0\r\n\r\n", b"505"),
    ],
)
async def test_answers_by_path_method_and_limits(
    endpoint: MetricsEndpoint, request_bytes: bytes, status: bytes
) -> None:
    answer = await exchange(endpoint, request_bytes)
    assert status_of(answer) == status
    if request_bytes.startswith(b"HEAD"):
        assert answer.endswith(b"\r\n\r\n")  # no body
    again = await exchange(endpoint, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert status_of(again) == b"200"


@pytest.mark.asyncio
async def test_idle_connections_beyond_the_bound_are_turned_away(
    endpoint: MetricsEndpoint,
) -> None:
    assert endpoint.address is not None
    idle = [await asyncio.open_connection(*endpoint.address) for _ in range(MAX_CONNECTIONS)]
    try:
        await wait_for_status(endpoint.address, SCRAPE, b"503")
    finally:
        for _, writer in idle:
            writer.close()
    await wait_for_status(endpoint.address, SCRAPE, b"200")  # once they are gone


@pytest.mark.asyncio
async def test_a_failing_render_answers_500_and_the_endpoint_goes_on() -> None:
    calls = 0

    def render() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("a bug")
        return BODY

    endpoint = MetricsEndpoint(render)
    await endpoint.start(("127.0.0.1", 0))
    try:
        assert status_of(await exchange(endpoint, b"GET /metrics HTTP/1.1\r\n\r\n")) == b"500"
        assert status_of(await exchange(endpoint, b"GET /metrics HTTP/1.1\r\n\r\n")) == b"200"
    finally:
        endpoint.close()
        await endpoint.wait_closed()
