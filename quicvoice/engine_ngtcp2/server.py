"""The ngtcp2 prototype's I/O: one asyncio UDP socket and one timer around ``Ngtcp2Endpoint``.

server = Ngtcp2Server(config)
address = await server.start()
...
server.close()
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..errors import InvalidStateError
from .endpoint import Address, Datagrams, EngineConfig, Ngtcp2Endpoint

NS = 1_000_000_000


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: Ngtcp2Server) -> None:
        self._server = server

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._server.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        """An ICMP error for an earlier send: QUIC's loss recovery deals with it."""

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.socket_closed.set()


class Ngtcp2Server:
    """Serves ``config.alpn`` with the ngtcp2 prototype endpoint on ``config.local``."""

    def __init__(self, config: EngineConfig, endpoint: Ngtcp2Endpoint | None = None) -> None:
        self._config = config
        #: The sans-I/O endpoint (its ``stats``, ``generator`` and CIDs are public).
        self.endpoint = endpoint if endpoint is not None else Ngtcp2Endpoint(config)
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: int | None = None
        #: Set once the socket is closed (it closes on the loop's next turn after ``close``).
        self.socket_closed = asyncio.Event()

    async def start(self) -> Address:
        """Bind ``config.local`` and serve; return the bound address."""
        if self._transport is not None:
            raise InvalidStateError("the server is already started")
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=self._config.local
        )
        self._transport = transport
        host, port = transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Hand one datagram to the endpoint and send what it answers."""
        self._send(self.endpoint.datagram_received(data, addr, time.monotonic_ns(), time.time()))

    def send(self, datagrams: Datagrams) -> None:
        """Send ``datagrams`` (the endpoint's answer to something outside a datagram's
        handling) and re-arm the timer."""
        self._send(datagrams)

    def _send(self, datagrams: Datagrams) -> None:
        transport = self._transport
        if transport is not None:
            for datagram, addr in datagrams:
                transport.sendto(datagram, addr)
        self._arm()

    def _arm(self) -> None:
        when = self.endpoint.next_timer()
        if when is None or (self._timer_at is not None and self._timer_at <= when):
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, (when - time.monotonic_ns()) / NS)
        self._timer_at = when
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._send(self.endpoint.handle_timers(time.monotonic_ns()))

    def abort(self) -> None:
        """Close the socket without a word to any peer, as a crash would (failover drills)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self.endpoint.close_all(time.monotonic_ns())  # frees the connections; sends nothing

    def close(self) -> None:
        """Close every connection and the socket."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            for datagram, addr in self.endpoint.close_all(time.monotonic_ns()):
                self._transport.sendto(datagram, addr)
            self._transport.close()
            self._transport = None
