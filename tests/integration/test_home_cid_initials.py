"""A backend accepts Initials sent to a CID it issued (a session's home CID), and keeps apart
several client connections that chose the same one: each first Initial's (DCID, SCID) is its
own connection. Real UDP sockets on loopback, aioquic clients."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import HandshakeCompleted

from quicvoice.asyncio.config import BackendConfig
from quicvoice.asyncio.server import ServerSession, VoiceServer
from quicvoice.quic import VoiceQuicConnection, use_initial_destination_cid
from quicvoice.session.transport import ALPN_VOICE

from .deployment import Deployment

pytestmark = pytest.mark.integration


async def idle(session: ServerSession) -> None:
    async for _ in session:
        pass


async def handshake(server: tuple[str, int], dcid: bytes) -> tuple[bytes, VoiceQuicConnection]:
    """Open a QUIC connection whose first Initial goes to ``dcid``; return the server's CID."""
    configuration = QuicConfiguration(is_client=True, alpn_protocols=[ALPN_VOICE])
    configuration.verify_mode = 0  # ssl.CERT_NONE: the backend's development certificate
    quic = VoiceQuicConnection(configuration=configuration)
    use_initial_destination_cid(quic, dcid)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    try:
        quic.connect(server, now=loop.time())
        deadline = loop.time() + 5.0
        while loop.time() < deadline:
            for data, address in quic.datagrams_to_send(now=loop.time()):
                sock.sendto(data, address)
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 2048), 0.2)
            except TimeoutError:
                quic.handle_timer(now=loop.time())
                continue
            quic.receive_datagram(data, server, now=loop.time())
            event = quic.next_event()
            while event is not None:
                if isinstance(event, HandshakeCompleted):
                    return quic._peer_cid.cid, quic
                event = quic.next_event()
        raise AssertionError("no handshake")
    finally:
        sock.close()


def test_two_connections_to_the_same_home_cid_each_get_their_own(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, server_ids=["0a000001"], session_store="memory://")

    async def scenario() -> None:
        config = BackendConfig.load(deployment.path, server_id=bytes.fromhex("0a000001"))
        server = VoiceServer(config, idle)
        await server.start()
        try:
            home = server.home_cid()
            assert home is not None and len(home) >= 8
            assert server._decoder.decode(home) == bytes.fromhex("0a000001")
            (first_cid, first), (second_cid, second) = await asyncio.gather(
                handshake(server.address, home), handshake(server.address, home)
            )
            assert server.counters["new_connections"] == 2
            assert first_cid != second_cid  # two server connections, one per client
            for cid in (first_cid, second_cid):
                assert server._decoder.decode(cid) == bytes.fromhex("0a000001")
            # Another home CID each time: none is registered to a connection.
            assert server.home_cid() != home
            assert home not in {c for c in (first_cid, second_cid)}
        finally:
            await server.aclose()

    asyncio.run(scenario())
