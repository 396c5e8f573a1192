"""A backend with the demo agent on a free loopback port, inside the test's event loop."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aioquic.h3.connection import H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import HandshakeCompleted

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
    accept_datagram: Callable[[bytes, tuple[str, int]], bool] | None = None,
    **kwargs: object,
) -> AsyncIterator[VoiceServer]:
    """A backend on a free loopback port; ``on_datagram`` sees every datagram arriving, and
    ``accept_datagram`` returning false drops it (a network or a backend gone quiet)."""
    config = BackendConfig(listen=("127.0.0.1", 0), server_id=SERVER_ID, configs=configs)
    server = VoiceServer(config, handler, **kwargs)  # type: ignore[arg-type]
    if on_datagram is not None or accept_datagram is not None:
        original = server._on_datagram

        def recording(data: bytes, address: tuple[str, int], tos: int | None = None) -> None:
            if on_datagram is not None:
                on_datagram(data, address)
            if accept_datagram is None or accept_datagram(data, address):
                original(data, address, tos)

        server._on_datagram = recording  # type: ignore[method-assign]
    await server.start()
    try:
        yield server
    finally:
        server.close()
        await asyncio.sleep(0)


async def http3_get_status(
    host: str, port: int, local_host: str = "127.0.0.1", timeout: float = 5.0
) -> dict[str, Any]:
    """A plain aioquic HTTP/3 client: GET / and return the JSON body (and the server CIDs)."""
    quic = QuicConnection(
        configuration=QuicConfiguration(is_client=True, alpn_protocols=["h3"], verify_mode=0)
    )
    h3 = H3Connection(quic)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((local_host, 0))
    sock.setblocking(False)
    quic.connect((host, port), loop.time())
    body = b""
    status = b""
    deadline = loop.time() + timeout
    try:
        while loop.time() < deadline and not (status and body.endswith(b"}")):
            for data, addr in quic.datagrams_to_send(loop.time()):
                sock.sendto(data, addr)
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 0.05)
                quic.receive_datagram(data, (host, port), loop.time())
            except TimeoutError:
                quic.handle_timer(loop.time())
            event = quic.next_event()
            while event is not None:
                for h3_event in h3.handle_event(event):
                    if isinstance(h3_event, DataReceived):
                        body += h3_event.data
                    elif isinstance(h3_event, HeadersReceived):
                        status = dict(h3_event.headers)[b":status"]
                if isinstance(event, HandshakeCompleted):
                    stream_id = quic.get_next_available_stream_id()
                    h3.send_headers(
                        stream_id,
                        [
                            (b":method", b"GET"),
                            (b":scheme", b"https"),
                            (b":authority", b"localhost"),
                            (b":path", b"/"),
                        ],
                        end_stream=True,
                    )
                event = quic.next_event()
    finally:
        sock.close()
    if status != b"200":
        raise AssertionError(f"GET / answered {status!r}")
    result: dict[str, Any] = json.loads(body)
    result["_peer_cid"] = quic._peer_cid.cid
    return result
