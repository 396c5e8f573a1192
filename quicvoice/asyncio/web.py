"""A minimal HTTP/1.1 server for the browser demo: the static files and ``/config.json``.

The page needs a secure context for WebTransport, AudioWorklet and the microphone; browsers
treat ``http://127.0.0.1`` and ``http://localhost`` as secure, so plain HTTP on loopback is
enough for development. The server only reads: ``GET`` and ``HEAD`` of a fixed set of paths,
one request per connection, with a bounded request head and a deadline for it. Anything it
cannot parse gets ``400`` and the connection is closed; no input makes it raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import InvalidStateError
from ..settings import Address
from .server import VoiceServer

logger = logging.getLogger("quicvoice.web")


#: The largest request head (request line and headers) read before answering 400/431.
MAX_REQUEST_HEAD = 8192
#: Seconds a client has to send its whole request head.
REQUEST_TIMEOUT = 10.0
#: Seconds a response may take to drain to a slow reader.
WRITE_TIMEOUT = 10.0
#: After answering, how long and how much of the client's leftover input is read and dropped.
LINGER_TIMEOUT = 1.0
LINGER_BYTES = 65536
#: Connections served at once; more wait in the listen backlog.
MAX_CONNECTIONS = 64
#: WebTransport pins a certificate by hash only if it is valid for at most this long.
MAX_PINNED_VALIDITY = datetime.timedelta(days=14)

#: Files of the ``quicvoice/web`` folder that are served, by URL path.
STATIC_FILES: Mapping[str, str] = {
    "/": "index.html",
    "/index.html": "index.html",
    "/quicvoice.js": "quicvoice.js",
    "/msgpack.js": "msgpack.js",
    "/resampler.js": "resampler.js",
    "/capture-worklet.js": "capture-worklet.js",
    "/playback-worklet.js": "playback-worklet.js",
}
CONTENT_TYPES: Mapping[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
}
REASONS: Mapping[int, str] = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    505: "HTTP Version Not Supported",
}


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    cache: str = "no-cache"
    extra: tuple[tuple[str, str], ...] = ()


class _BadRequest(Exception):
    """The request cannot be served; ``status`` says why."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def load_static_files() -> dict[str, bytes]:
    """Read the demo's files from the package (``quicvoice/web``), by file name."""
    folder = resources.files("quicvoice").joinpath("web")
    return {name: folder.joinpath(name).read_bytes() for name in set(STATIC_FILES.values())}


def pinnable_certificate_sha256(pem: bytes, now: datetime.datetime | None = None) -> bytes | None:
    """SHA-256 of the first certificate in ``pem`` if browsers can pin it, else ``None``.

    WebTransport's ``serverCertificateHashes`` accepts only ECDSA P-256 certificates valid for
    at most 14 days (and currently valid): anything else must be trusted the usual way.
    """
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    key = certificate.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return None
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    moment = now or datetime.datetime.now(datetime.UTC)
    if end - start > MAX_PINNED_VALIDITY or not start <= moment <= end:
        return None
    return certificate.fingerprint(hashes.SHA256())


def _certificate_sha256(server: VoiceServer) -> bytes | None:
    if server.certificate_sha256 is not None:
        return server.certificate_sha256
    path = server.config.certificate
    if path is None:
        return None
    try:
        return pinnable_certificate_sha256(path.read_bytes())
    except OSError:
        return None


def _format_host(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def _host_of(header: str | None) -> str | None:
    """The host part of a ``Host`` header, if it is a plausible one."""
    if not header:
        return None
    if header.startswith("["):
        host, _, _ = header[1:].partition("]")
    else:
        host = header.rsplit(":", 1)[0] if header.count(":") == 1 else header
    if not host or any(c in host for c in "/\\@ \t?#"):
        return None
    return host


class WebServer:
    """The demo page's HTTP server; made by ``start_web``."""

    def __init__(
        self,
        voice_server: VoiceServer,
        files: Mapping[str, bytes],
        public_address: Address | None,
    ) -> None:
        self._voice_server = voice_server
        self._files = files
        self._public_address = public_address
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        #: Requests answered, by status code.
        self.counters: dict[int, int] = {}

    @property
    def address(self) -> Address:
        """The bound TCP address."""
        if self._server is None or not self._server.sockets:
            raise InvalidStateError("the web server is not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def start(self, listen: Address) -> None:
        """Bind and start accepting connections."""
        self._server = await asyncio.start_server(
            self._on_connection, listen[0], listen[1], limit=MAX_REQUEST_HEAD
        )

    def close(self) -> None:
        """Stop listening and abort the connections being served."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()

    async def wait_closed(self) -> None:
        """Wait until the listener and every connection are gone."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def config(self, request_host: str | None = None) -> dict[str, Any]:
        """The JSON served at ``/config.json``: where and how the page reaches the backend."""
        server = self._voice_server
        host, port = self._public_address or server.address
        if _is_unspecified(host):
            host = request_host or "127.0.0.1"
        fingerprint = _certificate_sha256(server)
        return {
            "url": f"https://{_format_host(host)}:{port}/voice",
            "certificate_sha256": fingerprint.hex() if fingerprint is not None else None,
            "server_id": server.config.server_id.hex(),
        }

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            async with self._slots:
                await self._serve(reader, writer)
        except (asyncio.CancelledError, ConnectionError, TimeoutError):
            pass
        except Exception:  # a bug here must not take the server down
            logger.exception("web: request failed")
        finally:
            self._tasks.discard(task)
            await _linger(reader, writer)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head_only = False
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method, target, headers = _parse_head(head)
            head_only = method == "HEAD"
            response = self._respond(method, target, headers)
        except asyncio.LimitOverrunError:
            response = _Response(431)
        except asyncio.IncompleteReadError as error:
            if not error.partial:
                return  # the client connected and left: nothing to answer
            response = _Response(400)
        except TimeoutError:
            response = _Response(408)
        except _BadRequest as error:
            response = _Response(error.status)
        self.counters[response.status] = self.counters.get(response.status, 0) + 1
        writer.write(_encode(response, head_only))
        async with asyncio.timeout(WRITE_TIMEOUT):
            await writer.drain()

    def _respond(self, method: str, target: str, headers: Mapping[str, str]) -> _Response:
        if method not in ("GET", "HEAD"):
            return _Response(405, b"GET and HEAD only\n", extra=(("Allow", "GET, HEAD"),))
        path = target.split("?", 1)[0]
        if path == "/config.json":
            body = json.dumps(self.config(_host_of(headers.get("host")))).encode()
            return _Response(200, body, CONTENT_TYPES[".json"], cache="no-store")
        name = STATIC_FILES.get(path)
        if name is None:
            return _Response(404, b"not found\n")
        content_type = CONTENT_TYPES["." + name.rsplit(".", 1)[1]]
        return _Response(200, self._files[name], content_type)


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Closing with unread request bytes makes the kernel send RST, which can destroy the
    # response before the client reads it: half-close, then drain briefly (RFC 9112 §9.6).
    with contextlib.suppress(Exception):
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(LINGER_TIMEOUT):
            drained = 0
            while drained < LINGER_BYTES:
                chunk = await reader.read(4096)
                if not chunk:
                    break
                drained += len(chunk)


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _token(text: str) -> bool:
    return bool(text) and all(33 <= ord(c) <= 126 and c not in '()<>@,;:\\"/[]?={}' for c in text)


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Split a request head into method, target and headers (lower-case names)."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise _BadRequest(400) from None
    lines = text[:-4].split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _token(parts[0]):
        raise _BadRequest(400)
    method, target, version = parts
    if not target.startswith("/") or any(not 33 <= ord(c) <= 126 for c in target):
        raise _BadRequest(400)
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _BadRequest(505 if version.startswith("HTTP/") and version[5:6].isdigit() else 400)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _token(name) or any(c in value for c in "\r\n\0"):
            raise _BadRequest(400)
        key = name.lower()
        if key in headers and key in ("host", "content-length"):
            raise _BadRequest(400)  # RFC 9112 §3.2, §6.3: ambiguous framing or target
        headers[key] = value.strip(" \t")
    if "transfer-encoding" in headers:
        raise _BadRequest(400)
    length = headers.get("content-length")
    if length is not None and (not length.isdigit() or not length.isascii()):
        raise _BadRequest(400)
    if length is not None and int(length) > 0:
        raise _BadRequest(413)
    return method, target, headers


def _encode(response: _Response, head_only: bool) -> bytes:
    body = response.body
    if response.status >= 400 and not body:
        body = f"{response.status} {REASONS.get(response.status, '')}\n".encode()
    lines = [
        f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Unknown')}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(body)}",
        f"Cache-Control: {response.cache}",
        "X-Content-Type-Options: nosniff",
        "Connection: close",
        *(f"{name}: {value}" for name, value in response.extra),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + body


async def start_web(
    server: VoiceServer, listen: Address, *, public_address: Address | None = None
) -> WebServer:
    """Serve the browser demo for ``server`` over HTTP at ``listen``.

    ``public_address`` is where browsers reach the voice server over WebTransport (the
    forwarder's VIP); by default, the voice server's own address.
    """
    web = WebServer(server, load_static_files(), public_address)
    await web.start(listen)
    return web
