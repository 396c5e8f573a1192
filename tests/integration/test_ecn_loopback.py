"""ECN on real loopback sockets: marking seen by a plain receiver, ECN read back, ACK_ECN
feedback validating a client <-> backend path, and a bleaching relay (also after a migration)
turning marking off on its path only."""

from __future__ import annotations

import asyncio
import socket

import pytest

from quicvoice.agent import demo_agent
from quicvoice.asyncio.call import CallOptions, run_call
from quicvoice.asyncio.client import VoiceClient, connect
from quicvoice.asyncio.config import BackendConfig
from quicvoice.asyncio.server import VoiceServer
from quicvoice.asyncio.udp import (
    ANCILLARY_SIZE,
    ECN_MASK,
    RECEIVE_SIZE,
    UdpEndpoint,
    bind_udp_socket,
    received_tos,
)
from quicvoice.ecn import EcnCounts, Validation
from quicvoice.session.events import TurnEnded

from .ecn_relay import EcnRelay
from .metrics_scrape import Samples, scrape_until, value
from .voice_harness import FRAME, LB_CONFIG, SERVER_ID, running_server

pytestmark = pytest.mark.integration

#: Frames streamed at most while waiting for a validation outcome (50 per second).
MAX_FRAMES = 150


def receive_tos(receiver: socket.socket) -> tuple[bytes, int | None]:
    receiver.settimeout(2.0)
    data, ancdata, _, _ = receiver.recvmsg(RECEIVE_SIZE, ANCILLARY_SIZE)
    return data, received_tos(ancdata)


@pytest.mark.parametrize(
    ("host", "codepoint"),
    [("127.0.0.1", 0b01), ("127.0.0.1", 0b10), ("::1", 0b01), ("::1", 0b00)],
    ids=["ipv4-ect1", "ipv4-ect0", "ipv6-ect1", "ipv6-not-ect"],
)
def test_a_socket_marks_what_it_sends_and_the_receiver_reads_it(host: str, codepoint: int) -> None:
    with bind_udp_socket((host, 0), codepoint) as sender, bind_udp_socket((host, 0)) as receiver:
        sender.sendto(b"marked", receiver.getsockname()[:2])
        data, tos = receive_tos(receiver)
    assert data == b"marked"
    assert tos is not None and tos & ECN_MASK == codepoint


def test_a_dual_stack_socket_marks_ipv4_mapped_peers_too() -> None:
    with bind_udp_socket(("::", 0), 0b01) as sender, bind_udp_socket(("127.0.0.1", 0)) as receiver:
        port = receiver.getsockname()[1]
        sender.sendto(b"mapped", ("::ffff:127.0.0.1", port))
        _, tos = receive_tos(receiver)
    assert tos is not None and tos & ECN_MASK == 0b01


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("sender_host", "receiver_host", "target_host"),
    [
        ("127.0.0.1", "127.0.0.1", "127.0.0.1"),
        ("::1", "::1", "::1"),
        ("::", "127.0.0.1", "::ffff:127.0.0.1"),
    ],
    ids=["ipv4", "ipv6", "dual-stack-to-ipv4"],
)
async def test_one_datagram_can_leave_unmarked_while_the_socket_stays_marked(
    sender_host: str, receiver_host: str, target_host: str
) -> None:
    received: list[tuple[bytes, int | None]] = []
    arrived = asyncio.Event()

    def on_datagram(data: bytes, address: tuple[str, int], tos: int | None) -> None:
        received.append((data, tos))
        if len(received) == 3:
            arrived.set()

    receiver = UdpEndpoint(bind_udp_socket((receiver_host, 0)), on_datagram, 0)
    sender = UdpEndpoint(bind_udp_socket((sender_host, 0), 0b01), lambda *_: None, 0b01)
    target = (target_host, receiver.local_address[1])
    try:
        sender.sendto(b"a", target)
        sender.send_marked(b"b", target, 0b00)
        sender.send_marked(b"c", target, 0b11)
        await asyncio.wait_for(arrived.wait(), 2.0)
    finally:
        sender.close()
        receiver.close()
    assert [(data, (tos or 0) & ECN_MASK) for data, tos in received] == [
        (b"a", 0b01),
        (b"b", 0b00),
        (b"c", 0b11),
    ]


async def stream_until(client: VoiceClient, done: object) -> None:
    """Send frames every 20 ms until ``done()`` is true (at most ``MAX_FRAMES``)."""
    assert callable(done)
    for _ in range(MAX_FRAMES):
        if done():
            return
        client.send_audio(FRAME)
        await asyncio.sleep(0.02)
    raise AssertionError("no ECN outcome after streaming for 3 s")


def server_paths(server: VoiceServer) -> list[Validation]:
    return [path.validation for s in server.sessions() for path in s.stats().ecn]


@pytest.mark.asyncio
@pytest.mark.parametrize("webtransport", [False, True], ids=["raw", "webtransport"])
async def test_a_call_on_loopback_validates_ecn_capable_both_ways(webtransport: bool) -> None:
    async with running_server() as server:
        host, port = server.address
        async with connect(host, port, webtransport=webtransport, verify=False) as client:

            def capable() -> bool:
                mine = client.stats().ecn
                return (
                    bool(mine)
                    and mine[-1].validation is Validation.CAPABLE
                    and (server_paths(server) == [Validation.CAPABLE])
                )

            await stream_until(client, capable)
            stats = client.stats()
            assert stats.ecn_mode == "l4s"
            path = stats.ecn[-1]
            assert path.received_ect1 > 0 and path.received_not_ect == 0
            assert path.sent_marked > 0 and path.sent_unmarked == 0
            assert not path.l4s_bottleneck_seen  # loopback marks nothing CE
            backend = server.sessions()[0].stats().ecn[-1]
            assert backend.received_ect1 > 0 and backend.received_unknown == 0


@pytest.mark.asyncio
async def test_a_classic_client_is_counted_as_ect0_and_an_off_client_as_not_ect() -> None:
    async with running_server() as server:
        host, port = server.address
        async with connect(host, port, verify=False, ecn="classic") as client:
            await stream_until(
                client, lambda: client.stats().ecn[-1].validation is Validation.CAPABLE
            )
            assert server.sessions()[0].stats().ecn[-1].received_ect0 > 0
        async with connect(host, port, verify=False, ecn="off") as client:
            for _ in range(10):
                client.send_audio(FRAME)
                await asyncio.sleep(0.02)
            assert client.stats().ecn[-1].validation is Validation.DISABLED
            assert client.session is not None
            session_id = client.session.session_id
            backend = [s for s in server.sessions() if s.session_id == session_id]
            received = backend[0].stats().ecn[-1]
            assert received.received_not_ect > 0 and received.received_marked == 0
            # The backend still marks; the client reports what arrived in ACK_ECN frames.
            assert client.stats().ecn[-1].received_ect1 > 0


@pytest.mark.asyncio
async def test_the_call_report_has_the_ecn_outcome() -> None:
    async with running_server() as server:
        host, port = server.address
        report = await run_call(
            CallOptions(target=host, port=port, verify=False, seconds=0.6, ecn="l4s")
        )
    ecn = report["ecn"]
    assert ecn["mode"] == "l4s" and ecn["validation"] == "capable"
    assert ecn["received"]["ect1"] > 0 and ecn["ce_ratio"] == 0.0
    assert ecn["paths"][0]["validation"] == "capable"


@pytest.mark.asyncio
async def test_a_bleaching_path_turns_marking_off_both_ways() -> None:
    async with running_server() as server:
        relay = EcnRelay(server.address, bleach=lambda host: True)
        try:
            host, port = relay.address
            async with connect(host, port, verify=False) as client:

                def bleached() -> bool:
                    return client.stats().ecn[-1].validation is Validation.BLEACHED and (
                        server_paths(server) == [Validation.BLEACHED]
                    )

                await stream_until(client, bleached)
                seen = len(relay.client_tos["127.0.0.1"])
                for _ in range(5):
                    client.send_audio(FRAME)
                    await asyncio.sleep(0.02)
                later = relay.client_tos["127.0.0.1"][seen:]
                assert later and all(tos is not None and tos & ECN_MASK == 0 for tos in later)
                assert client.stats().ecn[-1].received_not_ect > 0
        finally:
            relay.close()
    # Before the outcome, the client did mark: the relay saw ECT(1) arrive.
    assert any(tos is not None and tos & ECN_MASK == 0b01 for tos in relay.client_tos["127.0.0.1"])


@pytest.mark.asyncio
async def test_a_migration_onto_a_bleaching_path_revalidates_and_stops_marking_there_only() -> None:
    async with running_server() as server:
        relay = EcnRelay(server.address, bleach=lambda host: host == "127.0.0.2")
        try:
            host, port = relay.address
            async with connect(host, port, verify=False, local_address="127.0.0.1") as client:
                await stream_until(
                    client, lambda: client.stats().ecn[-1].validation is Validation.CAPABLE
                )
                await client.migrate("127.0.0.2")
                await stream_until(
                    client, lambda: client.stats().ecn[-1].validation is Validation.BLEACHED
                )
                paths = {path.path.split(":")[0]: path for path in client.stats().ecn}
                assert paths["127.0.0.1"].validation is Validation.CAPABLE
                assert paths["127.0.0.2"].validation is Validation.BLEACHED
                seen = len(relay.client_tos["127.0.0.2"])
                for _ in range(5):
                    client.send_audio(FRAME)
                    await asyncio.sleep(0.02)
                later = relay.client_tos["127.0.0.2"][seen:]
                assert later and all(tos is not None and tos & ECN_MASK == 0 for tos in later)
                # The backend validated the client's new address afresh, and it failed there.
                backend = server.sessions()[0].stats().ecn
                assert backend[0].validation is Validation.CAPABLE
                assert backend[-1].validation in (Validation.BLEACHED, Validation.TESTING)
        finally:
            relay.close()


@pytest.mark.asyncio
async def test_the_backend_metrics_count_codepoints_and_validation_outcomes() -> None:
    backend = "quicvoice_backend_"
    config = BackendConfig(
        listen=("127.0.0.1", 0),
        server_id=SERVER_ID,
        configs=(LB_CONFIG,),
        metrics=("127.0.0.1", 0),
    )
    server = VoiceServer(config, demo_agent)
    await server.start()
    try:
        host, port = server.address
        async with connect(host, port, verify=False) as client:
            await stream_until(
                client, lambda: client.stats().ecn[-1].validation is Validation.CAPABLE
            )
        async with connect(host, port, verify=False, ecn="off") as client:
            for _ in range(5):
                client.send_audio(FRAME)
                await asyncio.sleep(0.02)
        address = server.telemetry.metrics_address
        assert address is not None

        def both_closed(samples: Samples) -> bool:
            closed = sum(v for (n, _), v in samples.items() if n == f"{backend}sessions_ecn_total")
            return closed >= 2

        samples = await scrape_until(address, both_closed)  # type: ignore[arg-type]
    finally:
        await server.aclose()
    total = f"{backend}ecn_datagrams_received_total"
    assert value(samples, total, codepoint="ect1") > 0
    assert value(samples, total, codepoint="not_ect") > 0
    assert value(samples, total, codepoint="ce") == 0
    ecn = f"{backend}sessions_ecn_total"
    # The backend marks ECT(1) and validates its own path: capable in both calls (the "off"
    # client still reports what it received).
    assert value(samples, ecn, validation="capable", l4s_bottleneck="false") == 2


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "lie",
    [EcnCounts(ect1=2**62 - 1), EcnCounts(ect0=5), EcnCounts()],
    ids=["more-than-sent", "wrong-codepoint", "backwards"],
)
async def test_a_backend_reporting_impossible_counts_gets_ecn_off_and_the_call_goes_on(
    lie: EcnCounts,
) -> None:
    async with running_server() as server:
        host, port = server.address
        async with connect(host, port, verify=False) as client:
            await stream_until(
                client, lambda: client.stats().ecn[-1].validation is Validation.CAPABLE
            )
            for connection in set(server._connections.values()):
                connection.quic.ecn.counts_to_report = lambda space: lie  # type: ignore[method-assign]
            await stream_until(client, lambda: client.stats().ecn[-1].validation.failed)
            assert client.stats().ecn[-1].validation is Validation.MANGLED
            # The call is still up and carries audio both ways.
            for _ in range(10):
                client.send_audio(FRAME)
                await asyncio.sleep(0.01)
            client.end_audio()

            async def turn_ended() -> None:
                while not isinstance(await client.receive(), TurnEnded):
                    pass

            await asyncio.wait_for(turn_ended(), 5.0)
            assert await client.bye() > 0


@pytest.mark.asyncio
async def test_a_network_that_drops_marked_packets_still_carries_the_call_unmarked() -> None:
    async with running_server() as server:
        relay = EcnRelay(server.address, bleach=lambda host: False, drop_marked=True)
        try:
            host, port = relay.address
            async with connect(host, port, verify=False, timeout=10.0) as client:
                path = client.stats().ecn[-1]
                assert path.validation is Validation.LOST
                for _ in range(5):
                    client.send_audio(FRAME)
                    await asyncio.sleep(0.02)
                client.end_audio()

                async def turn_ended() -> None:
                    while not isinstance(await client.receive(), TurnEnded):
                        pass

                await asyncio.wait_for(turn_ended(), 5.0)
                assert await client.bye() == 5
        finally:
            relay.close()
