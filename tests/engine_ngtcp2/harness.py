"""Shared parts of the ngtcp2 prototype's tests: its configuration, a running server, a relay."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from quicvoice.certificates import generate_certificate
from quicvoice.engine_ngtcp2.endpoint import Address, EngineConfig
from quicvoice.engine_ngtcp2.server import Ngtcp2Server
from quicvoice.quiclb import LoadBalancerConfig

LB_CONFIG = LoadBalancerConfig(0, 4, 12, bytes(range(16)))
SERVER_ID = bytes.fromhex("0a0b0c0d")
RESET_KEY = bytes(range(100, 132))


@functools.cache
def certificate_pem() -> tuple[bytes, bytes]:
    """A development certificate and its key, PEM."""
    certificate = generate_certificate()
    return (
        certificate.certificate_pem(),
        certificate.private_key_pem(),
    )


def engine_config(local: Address = ("127.0.0.1", 0), **overrides: Any) -> EngineConfig:
    """The prototype's configuration for this test backend."""
    pem, key = certificate_pem()
    values: dict[str, Any] = {
        "local": local,
        "server_id": SERVER_ID,
        "lb_config": LB_CONFIG,
        "reset_key": RESET_KEY,
        "certificate": pem,
        "private_key": key,
    }
    values.update(overrides)
    return EngineConfig(**values)


@asynccontextmanager
async def running_ngtcp2(**overrides: Any) -> AsyncIterator[tuple[Ngtcp2Server, Address]]:
    """A prototype server on a free loopback port, closed on exit."""
    server = Ngtcp2Server(engine_config(**overrides))
    address = await server.start()
    try:
        yield server, address
    finally:
        server.close()


class _Side(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay, toward_server: bool) -> None:
        self._relay = relay
        self._toward_server = toward_server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._relay.forward(data, addr, self._toward_server)


class UdpRelay:
    """A UDP relay between one client and a server that records every datagram it carries."""

    def __init__(self, server: Address) -> None:
        self._server = server
        self._client: Any = None
        self._front: _Side | None = None
        self._back: _Side | None = None
        #: Datagrams client to server, and server to client, in order.
        self.uplink: list[bytes] = []

        self.downlink: list[bytes] = []

    async def start(self) -> Address:
        """Bind the relay's client-facing socket; return its address."""
        loop = asyncio.get_running_loop()
        _, self._front = await loop.create_datagram_endpoint(
            lambda: _Side(self, True), local_addr=("127.0.0.1", 0)
        )
        _, self._back = await loop.create_datagram_endpoint(
            lambda: _Side(self, False), local_addr=("127.0.0.1", 0)
        )
        assert self._front.transport is not None
        host, port = self._front.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def forward(self, data: bytes, addr: Any, toward_server: bool) -> None:
        assert self._front is not None and self._back is not None
        assert self._front.transport is not None and self._back.transport is not None
        if toward_server:
            self._client = addr
            self.uplink.append(data)
            self._back.transport.sendto(data, self._server)
        elif self._client is not None:
            self.downlink.append(data)
            self._front.transport.sendto(data, self._client)

    def close(self) -> None:
        """Close both sockets."""
        for side in (self._front, self._back):
            if side is not None and side.transport is not None:
                side.transport.close()
