"""A minimal HTTP/1.1 server for the browser demo: the static files and ``/config.json``.

The page needs a secure context for WebTransport, AudioWorklet and the microphone; browsers
treat ``http://127.0.0.1`` and ``http://localhost`` as secure, so plain HTTP on loopback is
enough for development. The server only reads: ``GET`` and ``HEAD`` of a fixed set of paths.
The request handling (one request per connection, a bounded request head under a deadline,
bounded connections, 4xx for anything that does not parse) is ``quicvoice.asyncio.http1``'s;
this module is the routing, the limits and the page's configuration.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
from collections.abc import Mapping
from importlib import resources
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import InvalidStateError
from ..http1 import Request, Response
from ..settings import Address
from .http1 import Http1Server, ServingLimits
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
#: Connections served at once; more get 503 at once.
MAX_CONNECTIONS = 64
#: All of the above, as the HTTP server takes them.
LIMITS = ServingLimits(
    max_request_head=MAX_REQUEST_HEAD,
    head_timeout=REQUEST_TIMEOUT,
    write_timeout=WRITE_TIMEOUT,
    max_connections=MAX_CONNECTIONS,
    linger_timeout=LINGER_TIMEOUT,
    linger_bytes=LINGER_BYTES,
)
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
#: ``Cache-Control`` of the page's files: the browser revalidates, so a new version shows.
STATIC_CACHE_CONTROL = "no-cache"


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
        self._http = Http1Server(self._route, LIMITS, logger)

    @property
    def counters(self) -> dict[int, int]:
        """Requests answered, by status code."""
        return self._http.counters

    @property
    def address(self) -> Address:
        """The bound TCP address."""
        address = self._http.address
        if address is None:
            raise InvalidStateError("the web server is not started")
        return address

    async def start(self, listen: Address) -> None:
        """Bind and start accepting connections."""
        await self._http.start(listen)

    def close(self) -> None:
        """Stop listening and abort the connections being served."""
        self._http.close()

    async def wait_closed(self) -> None:
        """Wait until the listener and every connection are gone."""
        await self._http.wait_closed()

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

    def _route(self, request: Request) -> Response:
        if request.path == "/config.json":
            body = json.dumps(self.config(_host_of(request.header("host")))).encode()
            return Response(status=200, body=body, content_type=CONTENT_TYPES[".json"])
        name = STATIC_FILES.get(request.path)
        if name is None:
            return Response(status=404, body=b"not found\n", cache_control=STATIC_CACHE_CONTROL)
        return Response(
            status=200,
            body=self._files[name],
            content_type=CONTENT_TYPES["." + name.rsplit(".", 1)[1]],
            cache_control=STATIC_CACHE_CONTROL,
        )


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


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
