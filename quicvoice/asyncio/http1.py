"""The asyncio shell of quicvoice's read-only HTTP/1.1 servers (``quicvoice.http1`` parses).

``Http1Server`` owns what ``/metrics`` and the browser demo's server share: one request per
connection, a bounded request head under a deadline, a bound on connections served at once
(more are answered 503 at once rather than queued, so idle connections cannot pile up file
descriptors), ``GET``/``HEAD`` only with no body, and the linger after the answer. Each server
keeps only its routing: a function from ``Request`` to ``Response``. No input makes it raise,
and a route that raises is answered 500 and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ..http1 import HEAD_END, BadRequest, Request, Response, encode_response, parse_request_head
from ..settings import Address

#: The methods served: these servers only read.
METHODS = ("GET", "HEAD")
#: Octets read from a connection at once while lingering.
_LINGER_CHUNK = 4096
#: Seconds ``close()`` leaves a connection's transport to finish closing.
_CLOSE_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ServingLimits:
    """How much one ``Http1Server`` lets a client take."""

    #: The largest request head (request line and header fields) read before answering 431.
    max_request_head: int = 8192
    #: Seconds a client has to send its whole request head (then 408).
    head_timeout: float
    #: Seconds an answer may take to drain to a slow reader.
    write_timeout: float
    #: Connections served at once; more are answered 503 at once.
    max_connections: int
    #: After answering, seconds spent reading and dropping the client's leftover input.
    linger_timeout: float
    #: After answering, octets of leftover input read and dropped at most.
    linger_bytes: int = 65536

    def __post_init__(self) -> None:
        for name in ("max_request_head", "max_connections", "linger_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("head_timeout", "write_timeout", "linger_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")


class Http1Server:
    """An HTTP/1.1 server answering ``GET``/``HEAD`` requests with ``route(request)``."""

    def __init__(
        self, route: Callable[[Request], Response], limits: ServingLimits, logger: logging.Logger
    ) -> None:
        self._route = route
        self._limits = limits
        self._logger = logger
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._serving = 0
        #: Answers sent, by status code.
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
            self._on_connection, listen[0], listen[1], limit=self._limits.max_request_head
        )

    def close(self) -> None:
        """Stop listening and abort the connections being served."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()

    async def wait_closed(self) -> None:
        """Wait until the listener and every connection are gone."""
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        response: Response | None
        try:
            if self._serving >= self._limits.max_connections:
                response, head_only = Response(status=503), False
            else:
                self._serving += 1
                try:
                    response, head_only = await self._read_and_answer(reader)
                finally:
                    self._serving -= 1
            if response is not None:
                self.counters[response.status] = self.counters.get(response.status, 0) + 1
                writer.write(encode_response(response, head_only=head_only))
                async with asyncio.timeout(self._limits.write_timeout):
                    await writer.drain()
                await self._linger(reader, writer)
        except (asyncio.CancelledError, ConnectionError, TimeoutError):
            pass
        except Exception:  # a bug here must not take the process down
            self._logger.exception("HTTP connection failed")
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT)

    async def _read_and_answer(self, reader: asyncio.StreamReader) -> tuple[Response | None, bool]:
        """The answer to the connection's request and whether it is to ``HEAD``; ``None``
        when the client left without sending anything."""
        try:
            async with asyncio.timeout(self._limits.head_timeout):
                head = await reader.readuntil(HEAD_END)
        except asyncio.LimitOverrunError:
            return Response(status=431), False
        except asyncio.IncompleteReadError as error:
            return (Response(status=400) if error.partial else None), False
        except TimeoutError:
            return Response(status=408), False
        request = parse_request_head(head)
        if isinstance(request, BadRequest):
            return Response(status=request.status), False
        head_only = request.method == "HEAD"
        if request.method not in METHODS:
            return Response(status=405, headers=(("Allow", ", ".join(METHODS)),)), head_only
        if request.content_length > 0:
            return Response(status=413), head_only
        try:
            return self._route(request), head_only
        except Exception:
            self._logger.exception("answering %s failed", request.path)
            return Response(status=500), head_only

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Closing with unread request bytes makes the kernel send RST, which can destroy the
        # answer before the client reads it: half-close, then drain briefly (RFC 9112 §9.6).
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(self._limits.linger_timeout):
                drained = 0
                while drained < self._limits.linger_bytes:
                    chunk = await reader.read(_LINGER_CHUNK)
                    if not chunk:
                        break
                    drained += len(chunk)
