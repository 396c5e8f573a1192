"""The gateway's WebSocket endpoint: one bridged call per carrier connection.

The only module importing ``websockets`` (the ``gateway`` extra). Messages are bounded by
the WebSocket layer before anything is buffered (``max_size``: a frame over
``CarrierLimits.max_message_bytes`` closes that connection with 1009), compression is off
(a compressed bomb cannot get past the bound either way), and the connection is handed to
:class:`~quicvoice.gateway.bridge.CallBridge` through a small adapter. ``GET /healthz``
answers 200 with the number of calls, for the load balancer in front.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from quicvoice.errors import CarrierProtocolError, InvalidStateError
from quicvoice.gateway.bridge import (
    CLOSE_SERVER_ERROR,
    CLOSE_TRY_AGAIN,
    CallOutcome,
    CarrierSocket,
    close_reason,
    run_bridge,
)
from quicvoice.gateway.config import GatewayConfig
from quicvoice.settings import Address

logger = logging.getLogger("quicvoice.gateway")

#: Close codes the WebSocket layer sends for a carrier's protocol fault (RFC 6455 §7.4.1).
_FAULTS = {
    1002: "a WebSocket protocol error",
    1003: "a message type the stream does not take",
    1007: "a text message that is not UTF-8",
    1009: "a message over the size bound",
}
#: Frames read ahead of the bridge before the socket stops reading (TCP backpressure).
MAX_QUEUE = 64
HEALTH_PATH = "/healthz"

BridgeRunner = Callable[[CarrierSocket, GatewayConfig], Awaitable[CallOutcome]]


class WebSocketCarrier:
    """A ``websockets`` server connection as the bridge's :class:`CarrierSocket`."""

    def __init__(self, connection: ServerConnection) -> None:
        self._connection = connection

    async def receive(self) -> str | bytes | None:
        """The next message, ``None`` once closed; a close for a protocol fault raises."""
        try:
            return await self._connection.recv()
        except ConnectionClosed as closed:
            sent = closed.sent
            if sent is not None and sent.code in _FAULTS:
                raise CarrierProtocolError(_FAULTS[sent.code]) from None
            return None

    async def send(self, message: str) -> bool:
        """Send a text message; ``False`` once closed."""
        try:
            await self._connection.send(message)
        except ConnectionClosed:
            return False
        return True


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayStats:
    """Counters of a gateway."""

    #: Calls bridged now.
    active_calls: int
    #: Carrier connections accepted since start.
    calls: int
    #: Connections turned away because ``max_calls`` were active.
    refused: int
    #: Calls ended by how they ended (``CallOutcome.kind``).
    ended: dict[str, int]


class Gateway:
    """The WebSocket endpoint: ``await start()``, then ``address``; ``aclose()`` at the end."""

    def __init__(self, config: GatewayConfig, *, runner: BridgeRunner = run_bridge) -> None:
        self.config = config
        self._runner = runner
        self._server: Server | None = None
        self._active = 0
        self._calls = 0
        self._refused = 0
        self._ended: dict[str, int] = {}

    async def start(self) -> None:
        """Listen on ``config.listen``."""
        host, port = self.config.listen
        self._server = await serve(
            self._handle,
            host,
            port,
            max_size=self.config.limits.max_message_bytes,
            max_queue=MAX_QUEUE,
            compression=None,
            ping_interval=None,  # a live stream sends every 20 ms: the idle timeout decides
            process_request=self._process_request,
        )

    @property
    def address(self) -> Address:
        """The address listened on (with the port chosen when ``listen`` had port 0)."""
        if self._server is None:
            raise InvalidStateError("the gateway is not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return (host, port)

    def stats(self) -> GatewayStats:
        """A snapshot of the counters."""
        return GatewayStats(
            active_calls=self._active,
            calls=self._calls,
            refused=self._refused,
            ended=dict(self._ended),
        )

    async def aclose(self) -> None:
        """Stop listening and end every call (their WebSockets close with 1001)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def serve_forever(self) -> None:
        """Run until cancelled."""
        if self._server is None:
            raise InvalidStateError("the gateway is not started")
        await self._server.serve_forever()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?", 1)[0] == HEALTH_PATH:
            body = json.dumps({"ok": True, "active_calls": self._active}) + "\n"
            return connection.respond(HTTPStatus.OK, body)
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        if self._active >= self.config.max_calls:
            self._refused += 1
            logger.warning("gateway full (%d calls): a stream turned away", self._active)
            await connection.close(CLOSE_TRY_AGAIN, "the gateway is full")
            return
        self._active += 1
        self._calls += 1
        try:
            outcome = await self._runner(WebSocketCarrier(connection), self.config)
        except asyncio.CancelledError:
            raise
        except Exception:  # the bridge catches everything; this is the last guard
            logger.exception("a call's bridge raised")
            self._ended["failed"] = self._ended.get("failed", 0) + 1
            await connection.close(CLOSE_SERVER_ERROR, "gateway error")
        else:
            self._ended[outcome.kind] = self._ended.get(outcome.kind, 0) + 1
            if outcome.close_code is not None:
                await connection.close(outcome.close_code, close_reason(outcome))
        finally:
            self._active -= 1
