"""A UDP relay that can black a path out: every datagram both ways dropped for a while.

Clients send to the relay instead of the server; each client gets its own upstream socket
(so the server sees one address per client, as behind a NAT), and answers come back to the
client from the relay's address. ``black_out(seconds)`` drops everything, both ways, until
the time is up: what a caller sees when a radio link or a Wi-Fi access point goes silent
without the interface going away (no error, no ICMP, the address stays).

    relay = BlackoutRelay(server=("127.0.0.1", 4433))
    address = await relay.start()
    ...
    relay.black_out(5.0)

Loopback only in tests and benchmarks; the number of clients is bounded (``max_clients``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast

Address = tuple[str, int]

#: Clients a relay serves at most; datagrams from further ones are dropped.
MAX_CLIENTS = 1024
#: Datagrams held for a client while its upstream socket opens.
MAX_HELD = 64


@dataclass(slots=True)
class RelayCounters:
    """What the relay did with the datagrams it got."""

    #: Datagrams passed on, client to server and server to client.
    forwarded_up: int = 0
    forwarded_down: int = 0
    #: Datagrams dropped during a blackout, each way.
    dropped_up: int = 0
    dropped_down: int = 0
    #: Datagrams from clients beyond ``max_clients``.
    refused: int = 0


class _Upstream(asyncio.DatagramProtocol):
    """The socket that speaks to the server for one client."""

    def __init__(self, relay: BlackoutRelay, client: Address) -> None:
        self.relay = relay
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.relay.from_server(data, self.client)


class _Downstream(asyncio.DatagramProtocol):
    """The socket clients send to."""

    def __init__(self, relay: BlackoutRelay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.relay.from_client(data, (addr[0], addr[1]))


class BlackoutRelay:
    """Relays UDP between clients and ``server``; ``black_out`` drops everything for a while."""

    def __init__(
        self, server: Address, *, listen: Address = ("127.0.0.1", 0), max_clients: int = MAX_CLIENTS
    ) -> None:
        self.server = server
        self.listen = listen
        self.max_clients = max_clients
        self.counters = RelayCounters()
        self._dark_until = 0.0
        self._downstream: asyncio.DatagramTransport | None = None
        self._upstreams: dict[Address, _Upstream] = {}
        self._opening: dict[Address, list[bytes]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> Address:
        """Bind the clients' side; return its address."""
        self._loop = asyncio.get_running_loop()
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _Downstream(self), local_addr=self.listen
        )
        self._downstream = transport
        host, port = transport.get_extra_info("sockname")[:2]
        return host, port

    @property
    def dark(self) -> bool:
        """Whether the path is blacked out now."""
        return self._loop is not None and self._loop.time() < self._dark_until

    def black_out(self, seconds: float) -> float:
        """Drop every datagram both ways for ``seconds`` from now; return when it ends (loop
        time)."""
        if not seconds >= 0:
            raise ValueError("a blackout lasts zero seconds or more")
        if self._loop is None:
            raise ValueError("the relay is not started")
        self._dark_until = self._loop.time() + seconds
        return self._dark_until

    def close(self) -> None:
        """Close every socket."""
        if self._downstream is not None:
            self._downstream.close()
        for upstream in self._upstreams.values():
            if upstream.transport is not None:
                upstream.transport.close()
        self._upstreams.clear()

    def from_client(self, data: bytes, client: Address) -> None:
        if self.dark:
            self.counters.dropped_up += 1
            return
        upstream = self._upstreams.get(client)
        if upstream is not None and upstream.transport is not None:
            self.counters.forwarded_up += 1
            upstream.transport.sendto(data, self.server)
            return
        waiting = self._opening.get(client)
        if waiting is not None:
            if len(waiting) < MAX_HELD:
                waiting.append(data)
            return
        if len(self._upstreams) + len(self._opening) >= self.max_clients:
            self.counters.refused += 1
            return
        self._opening[client] = [data]
        assert self._loop is not None
        self._loop.create_task(self._open_upstream(client))

    async def _open_upstream(self, client: Address) -> None:
        assert self._loop is not None
        try:
            _, protocol = await self._loop.create_datagram_endpoint(
                lambda: _Upstream(self, client), local_addr=(self.listen[0], 0)
            )
        except OSError:
            self._opening.pop(client, None)
            return
        self._upstreams[client] = protocol
        for data in self._opening.pop(client, []):
            self.from_client(data, client)

    def from_server(self, data: bytes, client: Address) -> None:
        if self.dark:
            self.counters.dropped_down += 1
            return
        if self._downstream is not None and not self._downstream.is_closing():
            self.counters.forwarded_down += 1
            self._downstream.sendto(data, client)
