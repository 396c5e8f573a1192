"""A backend never sends more than 3x what it received on a path it has not validated
(RFC 9000 §8): a real ``VoiceServer`` on loopback, clients on raw UDP sockets."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from quicvoice.agent import demo_agent
from quicvoice.asyncio.config import BackendConfig
from quicvoice.asyncio.server import ServerSession, VoiceServer
from quicvoice.certificates import generate_certificate
from quicvoice.session.messages import Hello
from tests.integration.voice_harness import LB_CONFIG, SERVER_ID, running_server

from .raw import RawPeer

pytestmark = pytest.mark.integration


def test_handshake_that_never_completes_gets_at_most_three_times_its_bytes(
    tmp_path: Path,
) -> None:
    """One Initial, then silence: the server's first flight, with a certificate chain too big
    for the budget (~8 KiB), and every retransmission over 4 s stay within 3x."""
    names = tuple(f"backend-{index:03d}.voice.example.test" for index in range(250))
    certificate = generate_certificate(names=names)
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(certificate.certificate_pem())
    key_path.write_bytes(certificate.private_key_pem())
    assert len(certificate.certificate_pem()) > 8000

    async def scenario() -> None:
        config = BackendConfig(
            listen=("127.0.0.1", 0),
            server_id=SERVER_ID,
            configs=(LB_CONFIG,),
            certificate=cert_path,
            private_key=key_path,
        )
        server = VoiceServer(config, demo_agent)
        await server.start()
        peer = RawPeer(server.address, "127.0.0.2")
        try:
            peer.quic.connect(server.address, asyncio.get_running_loop().time())
            peer.flush(asyncio.get_running_loop().time())  # the client's first flight only
            peer.sending = False
            peer.reading = False
            await peer.run(4.0)
            print(f"\nunvalidated handshake: in {peer.bytes_sent} B, out {peer.bytes_received} B")
            assert peer.bytes_sent >= 1200
            assert 0 < peer.bytes_received <= 3 * peer.bytes_sent, (
                peer.bytes_sent,
                peer.bytes_received,
            )
        finally:
            peer.close()
            await server.aclose()

    asyncio.run(scenario())


async def talkative(session: ServerSession) -> None:
    """One long turn: 1920-octet frames every 5 ms, so the server always has data to send."""
    turn = session.start_turn()
    for index in range(2000):
        if not session.send_turn_audio(turn, bytes(1920), index * 960):
            return
        await asyncio.sleep(0.005)


def test_migration_to_an_unvalidated_address_is_bounded() -> None:
    """An attacker replays a client packet from a victim's address (a spoofed migration): the
    server, busy sending a turn, sends the victim at most 3x what came from there until the
    path is validated, which never happens."""

    async def scenario() -> None:
        async with running_server(talkative) as server:
            peer = RawPeer(server.address, "127.0.0.2")
            victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            victim.bind(("127.0.0.3", 0))
            victim.setblocking(False)
            loop = asyncio.get_running_loop()
            try:
                await peer.start_session(Hello())
                await peer.run(0.3)  # the turn is flowing
                peer.sending = False
                peer.reading = False
                sent_from_victim = 0
                peer.quic.send_ping(1)
                for data, address in peer.quic.datagrams_to_send(loop.time()):
                    victim.sendto(data, address)
                    sent_from_victim += len(data)
                assert sent_from_victim > 0
                received = 0
                deadline = loop.time() + 2.0
                while loop.time() < deadline:
                    try:
                        data = await asyncio.wait_for(loop.sock_recv(victim, 65536), 0.05)
                        received += len(data)
                    except TimeoutError:
                        pass
                print(f"\nspoofed migration: in {sent_from_victim} B, out {received} B")
                assert 0 < received <= 3 * sent_from_victim, (sent_from_victim, received)
            finally:
                peer.close()
                victim.close()

    asyncio.run(scenario())
