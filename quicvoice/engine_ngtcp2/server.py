"""The ngtcp2 engine's I/O: one UDP socket read and written in batches, and one timer.

server = Ngtcp2Server(config)
address = await server.start()
...
server.close()

The socket is the loop's reader: each time it is readable, ``quicvoice._udpbatch`` reads what
waits with one ``recvmmsg`` (up to ``BATCH`` datagrams, at most ``ROUNDS`` times), the endpoint
handles each datagram, and everything the batch made the connections send leaves with one
``sendmmsg``. At voice rates a wake-up finds few datagrams; under load it finds many, and the
per-datagram system calls and loop wake-ups are what this saves (specs/engine.md).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from ..asyncio.udp import enlarge_buffers
from ..errors import InvalidStateError
from . import require_udpbatch
from .endpoint import Address, Datagrams, EngineConfig, Ngtcp2Endpoint

NS = 1_000_000_000
#: Datagrams read per ``recvmmsg``, and reads per wake-up (bounds the time one wake-up takes).
BATCH = 64
ROUNDS = 4

logger = logging.getLogger(__name__)


class Ngtcp2Server:
    """Serves ``config.alpn`` with the ngtcp2 endpoint on ``config.local``."""

    def __init__(self, config: EngineConfig, endpoint: Ngtcp2Endpoint | None = None) -> None:
        self._config = config
        self._batch = require_udpbatch()
        #: The sans-I/O endpoint (its ``stats``, ``generator`` and CIDs are public).
        self.endpoint = endpoint if endpoint is not None else Ngtcp2Endpoint(config)
        self._socket: socket.socket | None = None
        self._family = int(socket.AF_INET)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: int | None = None
        #: Datagrams the kernel refused to send (full socket buffer, a peer's ICMP error).
        self.send_failures = 0
        #: Batches read (``recvmmsg`` calls that returned datagrams), and the datagrams in them.
        self.reads = 0
        self.datagrams_received = 0
        #: Datagrams sent.
        self.datagrams_sent = 0
        #: Set once the socket is closed (``close`` or ``abort``): its port is free.
        self.socket_closed = asyncio.Event()

    async def start(self) -> Address:
        """Bind ``config.local`` and serve; return the bound address."""
        if self._socket is not None or self.socket_closed.is_set():
            raise InvalidStateError("the server is already started")
        loop = asyncio.get_running_loop()
        host, port = self._config.local
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, kind, protocol, _, address = infos[0]
        sock = socket.socket(family, kind, protocol)
        try:
            enlarge_buffers(sock)  # as the aioquic engine's (the default dropped at 100 calls)
            sock.setblocking(False)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        # As a plain int: ``socket.family`` makes an enum member on every read.
        self._family = int(sock.family)
        self._loop = loop
        loop.add_reader(sock.fileno(), self._on_readable)
        bound_host, bound_port = sock.getsockname()[:2]
        return str(bound_host), int(bound_port)

    def _on_readable(self) -> None:
        sock = self._socket
        if sock is None:
            return
        fd = sock.fileno()
        receive = self._batch.receive
        endpoint = self.endpoint
        for _ in range(ROUNDS):
            try:
                batch = receive(fd, BATCH)
            except OSError as error:
                # A pending error of the socket (an earlier send's ICMP): QUIC's loss
                # recovery deals with what it was about.
                logger.debug("ngtcp2 engine: receive: %s", error)
                continue
            if not batch:
                break
            self.reads += 1
            self.datagrams_received += len(batch)
            self._send(endpoint.receive_batch(batch, time.monotonic_ns(), time.time()))
            if len(batch) < BATCH:
                break

    def send(self, datagrams: Datagrams) -> None:
        """Send ``datagrams`` (the endpoint's answer to something outside a datagram's
        handling) and re-arm the timer."""
        self._send(datagrams)

    def _send(self, datagrams: Datagrams) -> None:
        sock = self._socket
        if sock is not None and datagrams:
            sent, failed = self._batch.send(sock.fileno(), self._family, datagrams)
            self.datagrams_sent += sent
            self.send_failures += failed
        self._arm()

    def _arm(self) -> None:
        loop = self._loop
        when = self.endpoint.next_timer()
        if loop is None or when is None or (self._timer_at is not None and self._timer_at <= when):
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, (when - time.monotonic_ns()) / NS)
        self._timer_at = when
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._send(self.endpoint.handle_timers(time.monotonic_ns()))

    def _close_socket(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sock = self._socket
        if sock is not None:
            self._socket = None
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
            self.socket_closed.set()

    def abort(self) -> None:
        """Close the socket without a word to any peer, as a crash would (failover drills)."""
        self._close_socket()
        self.endpoint.close_all(time.monotonic_ns())  # frees the connections; sends nothing

    def close(self) -> None:
        """Close every connection and the socket."""
        if self._socket is not None:
            goodbyes = self.endpoint.close_all(time.monotonic_ns())
            self._send(goodbyes)
        self._close_socket()
