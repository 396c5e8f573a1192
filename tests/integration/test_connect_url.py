"""``connect`` by URL over real loopback sockets, against backends presenting certificates of
a CA made in the test: SNI, verification by CA and by pinned hash, each failure named, and
the hello's credentials."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from quicvoice.asyncio.client import VoiceClient, connect
from quicvoice.asyncio.server import VoiceServer
from quicvoice.errors import (
    CertificateVerificationError,
    ConfigurationError,
    InvalidURLError,
    QuicVoiceError,
    SessionRefusedError,
)
from quicvoice.session.events import TurnEnded

from ..conftest import RedisServer
from ..pki import DAY, NOW, make_ca, make_leaf
from .tls_harness import tls_server
from .voice_harness import FRAME, SERVER_ID

pytestmark = pytest.mark.integration

CA = make_ca()
LEAF = make_leaf(CA)


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    return CA.write(tmp_path, "ca")[0]


async def round_trip(client: VoiceClient, frames: int = 10) -> None:
    """Speak, hear the demo agent's reply, say goodbye: the session really works."""
    for _ in range(frames):
        client.send_audio(FRAME)
    client.end_audio()

    async def reply() -> None:
        while not isinstance(await client.receive(), TurnEnded):
            pass

    await asyncio.wait_for(reply(), 5)
    assert await client.bye() == frames


@pytest.mark.asyncio
async def test_quic_url_by_name_verifies_against_the_ca_and_sends_the_host_as_sni(
    tmp_path: Path, ca_file: Path
) -> None:
    async with tls_server(tmp_path, LEAF) as (server, seen):
        port = server.address[1]
        async with connect(f"quic://localhost:{port}", ca_file=ca_file) as client:
            assert client.session is not None and client.session.server_id == SERVER_ID.hex()
            await round_trip(client)
        assert seen.server_name(server.cid_generator.cid_length) == "localhost"
        assert not seen.only_handshake_packets()  # the check below can tell


@pytest.mark.asyncio
async def test_webtransport_url_opens_the_session_at_its_path(
    tmp_path: Path, ca_file: Path
) -> None:
    async with tls_server(tmp_path, LEAF) as (server, seen):
        port = server.address[1]
        async with connect(f"https://localhost:{port}/voice", cafile=str(ca_file)) as client:
            await round_trip(client)
        with pytest.raises(SessionRefusedError):
            async with connect(f"https://localhost:{port}/elsewhere", ca_file=ca_file):
                pass
        assert len(seen.hellos) == 1


@pytest.mark.asyncio
async def test_an_ip_literal_is_checked_against_the_certificates_addresses(
    tmp_path: Path, ca_file: Path
) -> None:
    async with tls_server(tmp_path, LEAF) as (server, seen):
        port = server.address[1]
        async with connect(f"quic://127.0.0.1:{port}", ca_file=ca_file) as client:
            await round_trip(client, 3)
        # RFC 6066 §3: no IP literal in SNI.
        assert seen.server_name(server.cid_generator.cid_length) is None
        # The keyword form still works, and verifies too.
        async with connect("127.0.0.1", port, ca_file=ca_file) as client:
            await round_trip(client, 3)


async def refused_certificate(url: str, **options: object) -> str:
    started = time.monotonic()
    with pytest.raises(CertificateVerificationError) as caught:
        async with connect(url, timeout=5.0, **options):  # type: ignore[arg-type]
            pass
    # Refused by the handshake at once, not when some timeout ran out.
    assert time.monotonic() - started < 2.0
    assert isinstance(caught.value, ConnectionError) and isinstance(caught.value, QuicVoiceError)
    return caught.value.check


@pytest.mark.asyncio
async def test_a_leaf_of_another_ca_fails_the_trust_check_before_any_hello(
    tmp_path: Path,
) -> None:
    other_ca_file = make_ca("not the server's CA").write(tmp_path, "other-ca")[0]
    async with tls_server(tmp_path, LEAF) as (server, seen):
        url = f"quic://localhost:{server.address[1]}"
        assert await refused_certificate(url, ca_file=other_ca_file) == "trust"
        # The system trust store, by default, does not know the test CA either.
        assert await refused_certificate(url) == "trust"
        assert seen.datagrams and seen.only_handshake_packets()
        assert seen.hellos == []


@pytest.mark.asyncio
async def test_a_leaf_for_another_name_fails_the_name_check(tmp_path: Path, ca_file: Path) -> None:
    async with tls_server(tmp_path, make_leaf(CA, ("voice.example",))) as (server, seen):
        url = f"quic://localhost:{server.address[1]}"
        assert await refused_certificate(url, ca_file=ca_file) == "name"
        # server_name checks (and sends) another name than the URL's host.
        async with connect(url, ca_file=ca_file, server_name="voice.example") as client:
            await round_trip(client, 3)
        assert seen.server_name(server.cid_generator.cid_length) == "localhost"


@pytest.mark.asyncio
async def test_an_expired_leaf_fails_the_validity_check(tmp_path: Path, ca_file: Path) -> None:
    expired = make_leaf(CA, not_before=NOW - 3 * DAY, not_after=NOW - 2 * DAY)
    async with tls_server(tmp_path, expired) as (server, _):
        url = f"quic://localhost:{server.address[1]}"
        assert await refused_certificate(url, ca_file=ca_file) == "validity"


@pytest.mark.asyncio
async def test_a_pinned_hash_needs_no_ca_and_a_wrong_one_fails_before_any_hello(
    tmp_path: Path,
) -> None:
    # Pinning is how a browser reaches a backend with a short-lived self-signed certificate.
    self_signed = make_leaf(make_ca("throwaway"), ("localhost",))
    async with tls_server(tmp_path, self_signed) as (server, seen):
        url = f"quic://localhost:{server.address[1]}"
        async with connect(url, certificate_hashes=[self_signed.sha256()]) as client:
            await round_trip(client, 3)
        async with connect(
            f"https://localhost:{server.address[1]}",
            certificate_hashes=[self_signed.sha256().hex()],
        ) as client:
            await round_trip(client, 3)
    async with tls_server(tmp_path, self_signed) as (server, seen):
        url = f"quic://localhost:{server.address[1]}"
        assert await refused_certificate(url, certificate_hashes=[LEAF.sha256()]) == "hash"
        assert seen.datagrams and seen.only_handshake_packets()
        assert seen.hellos == []


@pytest.mark.asyncio
async def test_verify_false_accepts_anything(tmp_path: Path) -> None:
    async with tls_server(tmp_path, make_leaf(make_ca("unknown"), ("elsewhere",))) as (server, _):
        async with connect(f"quic://localhost:{server.address[1]}", verify=False) as client:
            await round_trip(client, 3)


@pytest.mark.asyncio
async def test_bad_arguments_fail_before_any_packet(tmp_path: Path) -> None:
    with pytest.raises(InvalidURLError, match="unknown scheme"):
        async with connect("wss://localhost:4433"):
            pass
    with pytest.raises(InvalidURLError, match="port"):
        async with connect("quic://localhost:4433", 4433):
            pass
    with pytest.raises(ConfigurationError, match="missing.pem"):
        async with connect("quic://localhost:4433", ca_file=tmp_path / "missing.pem"):
            pass
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    with pytest.raises(ConfigurationError, match="not.pem"):
        async with connect("quic://localhost:4433", ca_file=not_pem):
            pass
    with pytest.raises(ValueError, match="not both"):
        async with connect(
            "quic://localhost:4433", ca_file=not_pem, certificate_hashes=[bytes(32)]
        ):
            pass
    with pytest.raises(ValueError, match="verify=False"):
        async with connect("quic://localhost:4433", verify=False, certificate_hashes=[bytes(32)]):
            pass
    with pytest.raises(ValueError):
        async with connect("quic://localhost:4433", verify=False, token="x" * 100_000):
            pass


@pytest.mark.asyncio
async def test_token_and_metadata_ride_in_the_hello(tmp_path: Path, ca_file: Path) -> None:
    async with tls_server(tmp_path, LEAF) as (server, seen):
        async with connect(
            f"quic://localhost:{server.address[1]}",
            ca_file=ca_file,
            token="bearer-token",
            metadata={"room": "7", "caller": "test"},
        ) as client:
            await round_trip(client, 3)
    assert seen.hellos[0].token == "bearer-token"
    assert dict(seen.hellos[0].metadata) == {"room": "7", "caller": "test"}


@pytest.mark.asyncio
async def test_token_and_metadata_ride_in_the_resume_hello_too(
    tmp_path: Path, ca_file: Path, redis_server: RedisServer
) -> None:
    # Backend A dies; backend B, same address, same Redis, same keys, takes the call over.
    store = redis_server.unique_url()
    async with tls_server(tmp_path, LEAF, session_store=store) as (first, seen_first):
        address = first.address
        async with connect(
            f"quic://localhost:{address[1]}",
            ca_file=ca_file,
            token="bearer-token",
            metadata={"room": "7"},
            liveness_timeout=0.3,
        ) as client:
            await round_trip_without_bye(client)
            await crash(first)
            async with tls_server(
                tmp_path, LEAF, listen=address, session_store=store, server_id=OTHER_SERVER_ID
            ) as (_, seen_second):
                speaking = asyncio.get_running_loop().create_task(speak(client, 50))
                resumed = await client.wait_resumed(timeout=10)
                speaking.cancel()
                assert resumed.server_id == OTHER_SERVER_ID.hex()
                hello = seen_second.hellos[0]
                assert hello.resume_token is not None
                assert hello.token == "bearer-token" and dict(hello.metadata) == {"room": "7"}
    assert seen_first.hellos[0].resume_token is None


OTHER_SERVER_ID = bytes.fromhex("0a0b0c0e")


async def round_trip_without_bye(client: VoiceClient) -> None:
    client.send_event("order.list")
    await client.wait_event("order.cart")


async def speak(client: VoiceClient, frames: int) -> None:
    for _ in range(frames):
        client.send_audio(FRAME)
        await asyncio.sleep(0.02)


async def crash(server: VoiceServer) -> None:
    """Stop answering at once, telling nobody; return once the port is free."""
    assert server._transport is not None
    server._transport.close()
    for connection in set(server._connections.values()):
        connection.cancel_timers()
    for _ in range(10):  # the transport releases its socket on a later loop iteration
        await asyncio.sleep(0)
        if server._transport.get_extra_info("socket").fileno() < 0:
            break


@pytest.mark.asyncio
@pytest.mark.parametrize("scheme", ["quic", "https"])
async def test_ipv6_literal_urls(tmp_path: Path, ca_file: Path, scheme: str) -> None:
    async with tls_server(tmp_path, LEAF, listen=("::1", 0)) as (server, seen):
        async with connect(f"{scheme}://[::1]:{server.address[1]}", ca_file=ca_file) as client:
            assert ":" in client.local_address[0]
            await round_trip(client, 3)
        assert len(seen.hellos) == 1
