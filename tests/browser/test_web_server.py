"""The demo's HTTP server (quicvoice.asyncio.web) over real sockets: files, config, bad input."""

from __future__ import annotations

import datetime
import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicvoice.agent import demo_agent
from quicvoice.asyncio.config import BackendConfig
from quicvoice.asyncio.server import VoiceServer
from quicvoice.asyncio.web import (
    MAX_CONNECTIONS,
    WebServer,
    pinnable_certificate_sha256,
    start_web,
)
from quicvoice.certificates import generate_certificate

from .harness import LoopThread

pytestmark = pytest.mark.integration


class Servers:
    def __init__(self, loop: LoopThread, voice: VoiceServer, web: WebServer) -> None:
        self.loop = loop
        self.voice = voice
        self.web = web


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    loop = LoopThread()

    async def start() -> tuple[VoiceServer, WebServer]:
        voice = VoiceServer(BackendConfig(listen=("127.0.0.1", 0)), demo_agent)
        await voice.start()
        web = await start_web(voice, ("127.0.0.1", 0), public_address=("127.0.0.1", 4433))
        return voice, web

    voice, web = loop.run(start())
    try:
        yield Servers(loop, voice, web)
    finally:

        async def stop() -> None:
            web.close()
            await web.wait_closed()
            voice.close()

        loop.run(stop())
        loop.close()


def exchange(address: tuple[str, int], request: bytes, timeout: float = 5.0) -> bytes:
    """Send ``request``, half-close, and read the whole answer."""
    with socket.create_connection(address, timeout=timeout) as connection:
        connection.sendall(request)
        connection.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    version, status, _ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    assert int(headers["content-length"]) == len(body) or not body
    return int(status), headers, body


def get(servers: Servers, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    return parse(exchange(servers.web.address, request))


def test_serves_the_page_and_modules_with_their_types(servers: Servers) -> None:
    status, headers, body = get(servers, "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert b"quicvoice.js" in body
    for name in (
        "quicvoice.js",
        "msgpack.js",
        "resampler.js",
        "capture-worklet.js",
        "playback-worklet.js",
    ):
        status, headers, body = get(servers, f"/{name}?v=1")
        assert status == 200 and headers["content-type"] == "text/javascript; charset=utf-8"
        assert body and headers["x-content-type-options"] == "nosniff"


def test_head_has_no_body(servers: Servers) -> None:
    status, headers, body = get(servers, "/quicvoice.js", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 1000


def test_config_names_the_public_address_and_the_pinned_certificate(servers: Servers) -> None:
    status, headers, body = get(servers, "/config.json")
    assert status == 200 and headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    config = json.loads(body)
    assert config["url"] == "https://127.0.0.1:4433/voice"
    assert servers.voice.certificate_sha256 is not None
    assert config["certificate_sha256"] == servers.voice.certificate_sha256.hex()
    assert config["server_id"] == servers.voice.config.server_id.hex()


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"GET /nope HTTP/1.1\r\n\r\n", 404),
        (b"GET /../quicvoice/asyncio/web.py HTTP/1.1\r\n\r\n", 404),
        (b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        # A method no server here takes is 405 whatever its body (413 before the shared shell).
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 405),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET http://x/ HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 413),
        # int() refuses over 4300 digits: this raised inside the server, which then closed the
        # connection without an answer (and logged a traceback) before the shared parser.
        (b"GET / HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 413),
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n", 400),  # the client half-closed inside the head
    ],
)
def test_bad_or_unknown_requests(servers: Servers, request_bytes: bytes, expected: int) -> None:
    status, _, _ = parse(exchange(servers.web.address, request_bytes))
    assert status == expected


def test_a_silent_client_gets_no_answer_and_no_error(servers: Servers) -> None:
    assert exchange(servers.web.address, b"") == b""


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(["/", "/config.json", "/quicvoice.js", "/nope"]),
    query=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30),
    host=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
)
def test_any_host_and_query_are_routed_never_a_crash(
    servers: Servers, path: str, query: str, host: str, caplog: Any
) -> None:
    # Hostile heads in general: tests/test_http1.py and tests/test_http1_server.py.
    request = f"GET {path}?{query} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    with caplog.at_level(logging.ERROR, logger="quicvoice.web"):
        status, _, body = parse(exchange(servers.web.address, request))
    assert not [r for r in caplog.records if r.name == "quicvoice.web"]
    assert status == (404 if path == "/nope" else 200)
    if path == "/config.json":
        assert json.loads(body)["url"] == "https://127.0.0.1:4433/voice"


def test_idle_connections_beyond_the_bound_are_turned_away_at_once(servers: Servers) -> None:
    # Before the shared shell the 65th connection waited, with no deadline, for a slot: idle
    # connections could pile up without bound and take file descriptors from the voice server.
    idle = [socket.create_connection(servers.web.address) for _ in range(MAX_CONNECTIONS)]
    try:
        for _ in range(500):  # the server takes the idle connections in order, then turns away
            if parse(exchange(servers.web.address, b"GET / HTTP/1.1\r\n\r\n"))[0] == 503:
                break
            time.sleep(0.01)
        else:
            pytest.fail("no 503 with every connection taken")
    finally:
        for connection in idle:
            connection.close()
    for _ in range(500):  # once they are gone, the page is served again
        if get(servers, "/")[0] == 200:
            break
        time.sleep(0.01)
    else:
        pytest.fail("not serving again after the idle connections left")


def test_still_serving_after_the_garbage(servers: Servers) -> None:
    assert get(servers, "/config.json")[0] == 200


def test_pinnable_certificates_are_short_lived_p256() -> None:
    now = datetime.datetime.now(datetime.UTC)
    good = generate_certificate(validity=datetime.timedelta(days=10))
    assert pinnable_certificate_sha256(good.certificate_pem(), now) == good.sha256
    assert pinnable_certificate_sha256(b"not a certificate") is None
    later = now + datetime.timedelta(days=11)
    assert pinnable_certificate_sha256(good.certificate_pem(), later) is None
