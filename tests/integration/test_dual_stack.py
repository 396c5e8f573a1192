"""Happy eyeballs for real: a name resolving to ``::1`` and ``127.0.0.1`` through the real
resolver (``/etc/hosts`` of a mount namespace the test makes; root), real UDP sockets.

- IPv6 answers: IPv6 wins, IPv4 is not bothered.
- IPv6 is silent: IPv4 takes over one attempt delay later, well under a second, and the
  silent attempt is closed with CONNECTION_CLOSE.
- A name not in that file fails as a name that does not resolve (no DNS query leaves).
- IPv6 completes its handshake and the backend opens a session, but the welcome never comes
  back: IPv4 wins, and the loser's session is closed on the backend (no half-session).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import QuicFrameType, QuicPacketType, pull_ack_frame, pull_quic_header

from ..pki import make_ca, make_leaf
from .private_hosts import ClientProcess, needs_private_hosts, with_private_hosts
from .tls_harness import tls_server
from .voice_harness import SERVER_ID

pytestmark = [pytest.mark.integration, needs_private_hosts]

CA = make_ca()
LEAF = make_leaf(CA)
V6_SERVER_ID = bytes.fromhex("0a0b0c06")
Address = tuple[str, int]


@asynccontextmanager
async def dialer(directory: Path, url: str, ca_file: Path) -> AsyncIterator[ClientProcess]:
    """``tests/integration/dialer.py`` dialing ``url`` with the private hosts file."""
    async with with_private_hosts(
        directory, "tests.integration.dialer", url, "--ca-file", str(ca_file)
    ) as client:
        yield client


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: object) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.on_datagram(data, addr)  # type: ignore[operator]


@asynccontextmanager
async def black_hole(address: Address) -> AsyncIterator[list[bytes]]:
    """A UDP socket on ``address`` that receives and never answers (nor does the kernel)."""
    received: list[bytes] = []
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Socket(lambda data, addr: received.append(data)), local_addr=address
    )
    try:
        yield received
    finally:
        transport.close()


@asynccontextmanager
async def welcome_eating_relay(listen: Address, server: Address) -> AsyncIterator[list[bytes]]:
    """Relays one client on ``listen`` to ``server`` and back, except that short-header
    packets from the server (1-RTT: HANDSHAKE_DONE, welcome, ...) are dropped: the client
    completes its handshake, the backend opens the session, the welcome never arrives."""
    loop = asyncio.get_running_loop()
    client: list[Address] = []
    dropped: list[bytes] = []
    front: _Socket
    back: _Socket

    def from_client(data: bytes, addr: Address) -> None:
        if not client:
            client.append(addr)
        assert back.transport is not None
        back.transport.sendto(data, server)

    def from_server(data: bytes, addr: Address) -> None:
        if data and not data[0] & 0x80:
            dropped.append(data)
            return
        if client and front.transport is not None:
            front.transport.sendto(data, client[0])

    front_transport, front = await loop.create_datagram_endpoint(
        lambda: _Socket(from_client), local_addr=listen
    )
    back_transport, back = await loop.create_datagram_endpoint(
        lambda: _Socket(from_server), local_addr=("127.0.0.1", 0)
    )
    try:
        yield dropped
    finally:
        front_transport.close()
        back_transport.close()


def closes_in_initial(data: bytes) -> bool:
    """Whether ``data`` is a client Initial carrying CONNECTION_CLOSE (RFC 9000 §19.19)."""
    buf = Buffer(data=data)
    header = pull_quic_header(buf, host_cid_length=8)
    if header.packet_type != QuicPacketType.INITIAL or header.version is None:
        return False
    crypto = CryptoPair()
    crypto.setup_initial(cid=header.destination_cid, is_client=False, version=header.version)
    _, payload, _ = crypto.decrypt_packet(data[: header.packet_length], buf.tell(), 0)
    frames = Buffer(data=payload)
    while not frames.eof():
        frame_type = frames.pull_uint_var()
        if frame_type == QuicFrameType.TRANSPORT_CLOSE:
            return True
        if frame_type in (QuicFrameType.ACK, QuicFrameType.ACK_ECN):
            pull_ack_frame(frames)
            if frame_type == QuicFrameType.ACK_ECN:
                for _ in range(3):
                    frames.pull_uint_var()
        elif frame_type == QuicFrameType.CRYPTO:
            frames.pull_uint_var()
            frames.pull_bytes(frames.pull_uint_var())
        elif frame_type not in (QuicFrameType.PADDING, QuicFrameType.PING):
            return False
    return False


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    return CA.write(tmp_path, "ca")[0]


async def wait_until(condition: object, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if condition():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.02)
    return bool(condition())  # type: ignore[operator]


@pytest.mark.asyncio
async def test_ipv6_answering_wins(tmp_path: Path, ca_file: Path) -> None:
    async with tls_server(tmp_path, LEAF) as (v4, v4_seen):
        port = v4.address[1]
        async with tls_server(tmp_path, LEAF, listen=("::1", port), server_id=V6_SERVER_ID) as (
            _,
            v6_seen,
        ):
            async with dialer(tmp_path, f"quic://localhost:{port}", ca_file) as client:
                report = await client.report()
                assert report["ok"], report
                assert report["server_id"] == V6_SERVER_ID.hex()
                assert ":" in str(report["local_host"])
                await client.hang_up()
            assert v6_seen.server_name(v4.cid_generator.cid_length) == "localhost"
            assert await wait_until(lambda: not v4.sessions(), 2.0)


@pytest.mark.asyncio
async def test_silent_ipv6_falls_back_to_ipv4_within_a_second(
    tmp_path: Path, ca_file: Path
) -> None:
    async with tls_server(tmp_path, LEAF) as (v4, v4_seen):
        port = v4.address[1]
        async with black_hole(("::1", port)) as v6_received:
            async with dialer(tmp_path, f"quic://localhost:{port}", ca_file) as client:
                report = await client.report()
                assert report["ok"], report
                assert report["server_id"] == SERVER_ID.hex()
                assert ":" not in str(report["local_host"])
                # IPv6 was tried first, IPv4 one attempt delay (250 ms) later.
                elapsed = float(report["elapsed_ms"])  # type: ignore[arg-type]
                assert 250 <= elapsed < 1000, elapsed
                assert v6_received, "the IPv6 attempt was made"
                # The abandoned attempt said goodbye in its Initial space.
                assert await wait_until(lambda: any(map(closes_in_initial, v6_received)), 2.0)
                await client.hang_up()


@pytest.mark.asyncio
async def test_a_losing_attempt_with_a_session_is_closed_on_the_backend(
    tmp_path: Path, ca_file: Path
) -> None:
    async with tls_server(tmp_path, LEAF) as (server, seen):
        port = server.address[1]
        async with welcome_eating_relay(("::1", port), server.address) as dropped:
            async with dialer(tmp_path, f"quic://localhost:{port}", ca_file) as client:
                report = await client.report()
                assert report["ok"], report
                assert ":" not in str(report["local_host"])
                # Both attempts reached the backend and got a session; the IPv6 one lost
                # (its welcome was eaten) and was closed, so only the winner's is left.
                assert len(seen.hellos) == 2 and dropped
                winner = report["session_id"]
                assert await wait_until(
                    lambda: [s.session_id for s in server.sessions()] == [winner], 3.0
                ), [s.session_id for s in server.sessions()]
                assert sum(1 for s in seen.sessions if s.closed) == 1
                await client.hang_up()


@pytest.mark.asyncio
async def test_a_name_that_does_not_resolve_says_so(tmp_path: Path, ca_file: Path) -> None:
    async with dialer(tmp_path, "quic://nonexistent.invalid:4433", ca_file) as client:
        report = await client.report()
        assert not report["ok"]
        assert report["error"] == "NameResolutionError", report
        assert "nonexistent.invalid" in str(report["message"])
        assert float(report["elapsed_ms"]) < 1000  # type: ignore[arg-type]
