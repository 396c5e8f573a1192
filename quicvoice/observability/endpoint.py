"""``GET /metrics`` over HTTP/1.1, served from the backend's own event loop.

The loop, not a thread: the metrics are read from state that only the loop touches (sessions,
counters), so a thread would have to hand every scrape back to the loop anyway, and the
loop answers a scrape in well under a millisecond per hundred sessions (specs/observability.md).
The server only reads: one request per connection, a bounded request head with a deadline,
a bounded number of connections; anything it cannot parse gets a 4xx and the connection is
closed. No input makes it raise, and nothing it does blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from ..settings import Address
from .exposition import CONTENT_TYPE

logger = logging.getLogger("quicvoice.metrics")


#: The path Prometheus scrapes.
METRICS_PATH = "/metrics"
#: The largest request head (request line and headers) read before answering 431.
MAX_REQUEST_HEAD = 8192
#: Seconds a client has to send its request head, and a response has to drain.
REQUEST_TIMEOUT = 5.0
#: Connections served at once; more get 503 at once.
MAX_CONNECTIONS = 16
#: After answering, how long and how much of the client's leftover input is read and dropped.
LINGER_TIMEOUT = 0.5
LINGER_BYTES = 65536
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


class MetricsEndpoint:
    """An HTTP server answering ``GET``/``HEAD /metrics`` with ``render()``."""

    def __init__(self, render: Callable[[], str]) -> None:
        self._render = render
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Requests answered, by status code.
        self.counters: dict[int, int] = {}

    @property
    def address(self) -> Address | None:
        """The bound TCP address (the real port when 0 was asked for); ``None`` until started."""
        if self._server is None or not self._server.sockets:
            return None
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self, listen: Address) -> None:
        """Bind ``listen`` and start answering."""
        self._server = await asyncio.start_server(
            self._on_connection, listen[0], listen[1], limit=MAX_REQUEST_HEAD
        )

    def close(self) -> None:
        """Stop listening and abort the requests being served."""
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

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            if len(self._tasks) >= MAX_CONNECTIONS:
                self._answer(writer, 503, b"", head_only=False)
            else:
                self._tasks.add(task)
                await self._serve(reader, writer)
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await writer.drain()
            await _linger(reader, writer)
        except (asyncio.CancelledError, ConnectionError, TimeoutError):
            pass
        except Exception:  # a bug here must not take the backend down
            logger.exception("metrics: request failed")
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            self._answer(writer, 431, b"", head_only=False)
            return
        except asyncio.IncompleteReadError as error:
            if error.partial:
                self._answer(writer, 400, b"", head_only=False)
            return
        except TimeoutError:
            self._answer(writer, 408, b"", head_only=False)
            return
        status, method, path = _parse_request_line(head)
        head_only = method == "HEAD"
        if status != 200:
            self._answer(writer, status, b"", head_only=head_only)
        elif path != METRICS_PATH:
            self._answer(writer, 404, b"", head_only=head_only)
        else:
            try:
                body = self._render().encode()
            except Exception:
                logger.exception("metrics: rendering failed")
                self._answer(writer, 500, b"", head_only=head_only)
                return
            self._answer(writer, 200, body, head_only=head_only)

    def _answer(
        self, writer: asyncio.StreamWriter, status: int, body: bytes, *, head_only: bool
    ) -> None:
        self.counters[status] = self.counters.get(status, 0) + 1
        if status != 200:
            body = f"{status} {REASONS[status]}\n".encode()
        extra = "Allow: GET, HEAD\r\n" if status == 405 else ""
        head = (
            f"HTTP/1.1 {status} {REASONS[status]}\r\n"
            f"Content-Type: {CONTENT_TYPE if status == 200 else 'text/plain; charset=utf-8'}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Cache-Control: no-store\r\n{extra}"
            "Connection: close\r\n\r\n"
        ).encode("ascii")
        writer.write(head if head_only else head + body)


def _parse_request_line(head: bytes) -> tuple[int, str, str]:
    """``(status, method, path)`` of a request head: 200 when it can be served."""
    line, _, _ = head.partition(b"\r\n")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return 400, "", ""
    parts = text.split(" ")
    if len(parts) != 3:
        return 400, "", ""
    method, target, version = parts
    if not method.isalpha() or not method.isupper():
        return 400, "", ""
    if not target.startswith("/") or any(not 33 <= ord(c) <= 126 for c in target):
        return 400, "", ""
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        return (505 if version.startswith("HTTP/") else 400), "", ""
    if method not in ("GET", "HEAD"):
        return 405, method, ""
    return 200, method, target.split("?", 1)[0]


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Closing with unread request bytes makes the kernel send RST, which can destroy the
    # answer before the client reads it: half-close, then drain briefly (RFC 9112 §9.6).
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
