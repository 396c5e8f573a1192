"""A backend with the demo agent on a free loopback port, inside the test's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from quicvoice.agent import demo_agent
from quicvoice.asyncio.config import BackendConfig
from quicvoice.asyncio.server import SessionHandler, VoiceServer
from quicvoice.quiclb import LoadBalancerConfig

LB_CONFIG = LoadBalancerConfig(0, 4, 12, bytes(range(16)))
SERVER_ID = bytes.fromhex("0a0b0c0d")
FRAME = bytes(640)


@asynccontextmanager
async def running_server(
    handler: SessionHandler = demo_agent,
    *,
    configs: tuple[LoadBalancerConfig, ...] = (LB_CONFIG,),
    on_datagram: Callable[[bytes, tuple[str, int]], None] | None = None,
    **kwargs: object,
) -> AsyncIterator[VoiceServer]:
    config = BackendConfig(listen=("127.0.0.1", 0), server_id=SERVER_ID, configs=configs)
    server = VoiceServer(config, handler, **kwargs)  # type: ignore[arg-type]
    if on_datagram is not None:
        original = server._on_datagram

        def recording(data: bytes, address: tuple[str, int]) -> None:
            on_datagram(data, address)
            original(data, address)

        server._on_datagram = recording  # type: ignore[method-assign]
    await server.start()
    try:
        yield server
    finally:
        server.close()
        await asyncio.sleep(0)
