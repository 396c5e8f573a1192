"""``GET /metrics`` over HTTP/1.1, served from the backend's own event loop.

The loop, not a thread: the metrics are read from state that only the loop touches (sessions,
counters), so a thread would have to hand every scrape back to the loop anyway, and the
loop answers a scrape in well under a millisecond per hundred sessions (specs/observability.md).
The request handling (bounded head under a deadline, bounded connections, 4xx for anything
that does not parse, 500 for a render that raises) is ``quicvoice.asyncio.http1``'s; this
module is the routing and the limits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..asyncio.http1 import Http1Server, ServingLimits
from ..http1 import Request, Response
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
#: All of the above, as the HTTP server takes them.
LIMITS = ServingLimits(
    max_request_head=MAX_REQUEST_HEAD,
    head_timeout=REQUEST_TIMEOUT,
    write_timeout=REQUEST_TIMEOUT,
    max_connections=MAX_CONNECTIONS,
    linger_timeout=LINGER_TIMEOUT,
    linger_bytes=LINGER_BYTES,
)


class MetricsEndpoint:
    """An HTTP server answering ``GET``/``HEAD /metrics`` with ``render()``."""

    def __init__(self, render: Callable[[], str]) -> None:
        self._render = render
        self._http = Http1Server(self._route, LIMITS, logger)

    @property
    def counters(self) -> dict[int, int]:
        """Requests answered, by status code."""
        return self._http.counters

    @property
    def address(self) -> Address | None:
        """The bound TCP address (the real port when 0 was asked for); ``None`` until started."""
        return self._http.address

    async def start(self, listen: Address) -> None:
        """Bind ``listen`` and start answering."""
        await self._http.start(listen)

    def close(self) -> None:
        """Stop listening and abort the requests being served."""
        self._http.close()

    async def wait_closed(self) -> None:
        """Wait until the listener and every connection are gone."""
        await self._http.wait_closed()

    def _route(self, request: Request) -> Response:
        if request.path != METRICS_PATH:
            return Response(status=404)
        return Response(status=200, body=self._render().encode(), content_type=CONTENT_TYPE)
