"""The demo's HTTP server (quicvoice.asyncio.web) over real sockets: files, config, bad input."""

from __future__ import annotations

import datetime
import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicvoice.agent import demo_agent
from quicvoice.asyncio.config import BackendConfig
from quicvoice.asyncio.server import VoiceServer
from quicvoice.asyncio.web import WebServer, pinnable_certificate_sha256, start_web
from quicvoice.certificates import generate_certificate

from .harness import LoopThread

pytestmark = pytest.mark.integration

STATUSES = {200, 400, 404, 405, 408, 413, 431, 505}


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
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET http://x/ HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 413),
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET /\xff HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n", 400),  # the client half-closed inside the head
    ],
)
def test_bad_or_unknown_requests(servers: Servers, request_bytes: bytes, expected: int) -> None:
    status, _, _ = parse(exchange(servers.web.address, request_bytes))
    assert status == expected


def test_a_silent_client_gets_no_answer_and_no_error(servers: Servers) -> None:
    assert exchange(servers.web.address, b"") == b""


request_lines = st.builds(
    lambda method, target, version, headers, tail: (
        f"{method} {target} {version}\r\n".encode("utf-8", "surrogatepass")
        + b"".join(headers)
        + tail
    ),
    st.sampled_from(["GET", "HEAD", "POST", "get", "", "G ET", "\x00"]),
    st.text(max_size=40),
    st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/9", "", "HTTP/1.1 x"]),
    st.lists(st.binary(max_size=60).map(lambda b: b + b"\r\n"), max_size=5),
    st.sampled_from([b"\r\n", b"", b"\r\n\r\n", b"\n\n"]),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=st.one_of(st.binary(max_size=3000), request_lines))
def test_garbage_gets_a_well_formed_answer_never_a_crash(
    servers: Servers, request: bytes, caplog: Any
) -> None:
    with caplog.at_level(logging.ERROR, logger="quicvoice.web"):
        response = exchange(servers.web.address, request)
    assert not [r for r in caplog.records if r.name == "quicvoice.web"]
    if not response:
        assert request == b""  # only a client that sent nothing gets nothing back
        return
    status, _, _ = parse(response)
    assert status in STATUSES
    if status == 200:
        assert request[:4] in (b"GET ", b"HEAD")


def test_still_serving_after_the_garbage(servers: Servers) -> None:
    assert get(servers, "/config.json")[0] == 200


def test_pinnable_certificates_are_short_lived_p256() -> None:
    now = datetime.datetime.now(datetime.UTC)
    good = generate_certificate(validity=datetime.timedelta(days=10))
    assert pinnable_certificate_sha256(good.certificate_pem(), now) == good.sha256
    assert pinnable_certificate_sha256(b"not a certificate") is None
    later = now + datetime.timedelta(days=11)
    assert pinnable_certificate_sha256(good.certificate_pem(), later) is None
