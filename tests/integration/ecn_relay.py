"""A tiny userspace UDP relay on loopback that sees (and may clear) each datagram's ECN bits.

Clients talk to ``relay.address``; each client address gets its own upstream socket towards
the server (so a client that moves looks moved to the server too). ``bleach(client_host)``
decides per client host whether the relay clears the ECN bits in both directions; otherwise
it copies them. With ``drop_marked`` it drops every marked client datagram instead. Every
TOS seen from each client host is recorded, as it arrived. ``ce_uplink`` / ``ce_downlink``
(fractions, changeable mid-call) CE-mark that share of the ECN-capable datagrams relayed in
that direction, spread evenly (every fourth at 0.25), as a congested AQM would;
``drop_uplink`` drops that share of the client's datagrams.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from quicvoice.asyncio.udp import (
    ANCILLARY_SIZE,
    RECEIVE_SIZE,
    bind_udp_socket,
    received_tos,
    tos_ancillary,
)

Address = tuple[str, int]


class EcnRelay:
    def __init__(
        self, server: Address, bleach: Callable[[str], bool], *, drop_marked: bool = False
    ) -> None:
        self._server = server
        self._bleach = bleach
        #: Drop every client datagram that arrives ECN-marked (a network dropping ECT).
        self._drop_marked = drop_marked
        self._loop = asyncio.get_running_loop()
        self._front = bind_udp_socket(("127.0.0.1", 0))
        self._upstream: dict[Address, socket.socket] = {}
        #: TOS octets of the datagrams each client host sent, in order of arrival.
        self.client_tos: dict[str, list[int | None]] = {}
        #: TOS octets of the datagrams the server sent, in order of arrival.
        self.server_tos: list[int | None] = []
        #: Fractions of ECT datagrams CE-marked client -> server and server -> client.
        self.ce_uplink = 0.0
        self.ce_downlink = 0.0
        self._ce_credit = [0.0, 0.0]
        #: Fraction of client datagrams dropped (spread evenly), changeable mid-call.
        self.drop_uplink = 0.0
        self._drop_credit = 0.0
        #: Client datagrams dropped by ``drop_uplink``.
        self.dropped = 0
        #: Datagrams CE-marked so far, client -> server and server -> client.
        self.ce_marked = [0, 0]
        self._loop.add_reader(self._front.fileno(), self._from_client)

    @property
    def address(self) -> Address:
        host, port = self._front.getsockname()[:2]
        return host, port

    def _from_client(self) -> None:
        for _ in range(64):
            try:
                data, ancdata, _, addr = self._front.recvmsg(RECEIVE_SIZE, ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            client = (addr[0], addr[1])
            tos = received_tos(ancdata)
            self.client_tos.setdefault(client[0], []).append(tos)
            if self._drop_marked and tos is not None and tos & 0x03:
                continue
            if self.drop_uplink > 0.0:
                self._drop_credit += self.drop_uplink
                if self._drop_credit >= 1.0:
                    self._drop_credit -= 1.0
                    self.dropped += 1
                    continue
            upstream = self._upstream.get(client)
            if upstream is None:
                upstream = self._upstream[client] = bind_udp_socket(("127.0.0.1", 0))
                self._loop.add_reader(upstream.fileno(), self._from_server, client, upstream)
            self._send(upstream, data, self._server, self._congest(tos, 0), client[0])

    def _from_server(self, client: Address, upstream: socket.socket) -> None:
        for _ in range(64):
            try:
                data, ancdata, _, _ = upstream.recvmsg(RECEIVE_SIZE, ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            tos = received_tos(ancdata)
            self.server_tos.append(tos)
            self._send(self._front, data, client, self._congest(tos, 1), client[0])

    def _congest(self, tos: int | None, direction: int) -> int | None:
        """``tos``, CE-marked when this ECN-capable datagram's turn to be marked has come."""
        if tos is None or not tos & 0x03:
            return tos
        fraction = self.ce_downlink if direction else self.ce_uplink
        if fraction <= 0.0:
            self._ce_credit[direction] = 0.0
            return tos
        self._ce_credit[direction] += fraction
        if self._ce_credit[direction] < 1.0:
            return tos
        self._ce_credit[direction] -= 1.0
        self.ce_marked[direction] += 1
        return tos | 0x03

    def _send(
        self, sock: socket.socket, data: bytes, to: Address, tos: int | None, client_host: str
    ) -> None:
        value = 0 if tos is None or self._bleach(client_host) else tos
        try:
            sock.sendmsg([data], tos_ancillary(sock, to[0], value), 0, to)
        except OSError:
            pass

    def close(self) -> None:
        for sock in (self._front, *self._upstream.values()):
            self._loop.remove_reader(sock.fileno())
            sock.close()
