"""The ``/metrics`` HTTP endpoint on a real loopback socket: good scrapes and hostile input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicvoice.observability.endpoint import MAX_CONNECTIONS, MAX_REQUEST_HEAD, MetricsEndpoint

BODY = "# HELP quicvoice_test_up Up.\n# TYPE quicvoice_test_up gauge\nquicvoice_test_up 1\n"
STATUSES = {b"200", b"400", b"404", b"405", b"408", b"431", b"503", b"505"}


@pytest_asyncio.fixture
async def endpoint() -> AsyncIterator[MetricsEndpoint]:
    endpoint = MetricsEndpoint(lambda: BODY)
    await endpoint.start(("127.0.0.1", 0))
    try:
        yield endpoint
    finally:
        endpoint.close()
        await endpoint.wait_closed()


async def exchange(endpoint: MetricsEndpoint, request: bytes, timeout: float = 5.0) -> bytes:
    """Send ``request``, half-close, read the whole answer."""
    assert endpoint.address is not None
    reader, writer = await asyncio.open_connection(*endpoint.address)
    try:
        writer.write(request)
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def status_of(answer: bytes) -> bytes:
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    return answer[9:12]


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
        (b"GET /metrics HTTP/2.0\r\n\r\n", b"505"),
        (b"GET /metrics\r\n\r\n", b"400"),
        (b"get /metrics HTTP/1.1\r\n\r\n", b"400"),
        (b"GET metrics HTTP/1.1\r\n\r\n", b"400"),
        (b"GET /m\xe9trics HTTP/1.1\r\n\r\n", b"400"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", b"400"),  # TLS hello
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * MAX_REQUEST_HEAD + b"\r\n\r\n", b"431"),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n", b"400"),  # ended inside the head
    ],
)
async def test_hostile_requests_get_a_clear_answer(
    endpoint: MetricsEndpoint, request_bytes: bytes, status: bytes
) -> None:
    answer = await exchange(endpoint, request_bytes)
    assert status_of(answer) == status
    if request_bytes.startswith(b"HEAD"):
        assert answer.endswith(b"\r\n\r\n")  # no body
    again = await exchange(endpoint, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert status_of(again) == b"200"


@pytest.mark.asyncio
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage=st.binary(max_size=600) | st.text(max_size=300).map(str.encode))
async def test_any_bytes_get_an_http_answer_or_none(garbage: bytes) -> None:
    endpoint = MetricsEndpoint(lambda: BODY)
    await endpoint.start(("127.0.0.1", 0))
    try:
        answer = await exchange(endpoint, garbage)
        if answer:  # a client that sent nothing at all gets nothing
            assert status_of(answer) in STATUSES
        assert status_of(await exchange(endpoint, b"GET /metrics HTTP/1.1\r\n\r\n")) == b"200"
    finally:
        endpoint.close()
        await endpoint.wait_closed()


@pytest.mark.asyncio
async def test_idle_connections_beyond_the_bound_are_turned_away(
    endpoint: MetricsEndpoint,
) -> None:
    assert endpoint.address is not None
    idle = [await asyncio.open_connection(*endpoint.address) for _ in range(MAX_CONNECTIONS)]
    try:
        # The endpoint takes the idle connections in order; then the next one is turned away.
        async def turned_away() -> None:
            while status_of(await exchange(endpoint, b"GET /metrics HTTP/1.1\r\n\r\n")) != b"503":
                await asyncio.sleep(0.01)

        await asyncio.wait_for(turned_away(), 5)
        assert endpoint.counters.get(503, 0) >= 1
    finally:
        for _, writer in idle:
            writer.close()
    # Once they are gone, scrapes are served again.
    deadline = asyncio.get_running_loop().time() + 5
    while status_of(await exchange(endpoint, b"GET /metrics HTTP/1.1\r\n\r\n")) != b"200":
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)


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
