"""Voice sessions over real UDP sockets on loopback: handshake, audio, migration, barge-in."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from quicvoice.asyncio.client import VoiceClient, address_vanished, connect, route_source
from quicvoice.asyncio.server import ServerSession
from quicvoice.session.events import (
    AudioReceived,
    SessionClosed,
    TurnEnded,
    TurnStarted,
    VoiceEvent,
)
from quicvoice.session.messages import Hello, UplinkMode

from .voice_harness import FRAME, LB_CONFIG, SERVER_ID, http3_get_status, running_server

pytestmark = pytest.mark.integration
MODES = [False, True]
MODE_IDS = ["raw", "webtransport"]


async def stream(client: VoiceClient, count: int, interval: float = 0.02) -> None:
    for _ in range(count):
        client.send_audio(FRAME)
        await asyncio.sleep(interval)


async def next_of(client: VoiceClient, kind: type, timeout: float = 5.0) -> object:
    async def wait() -> object:
        while True:
            event = await client.receive()
            if isinstance(event, kind):
                return event

    return await asyncio.wait_for(wait(), timeout)


@pytest.mark.parametrize("webtransport", MODES, ids=MODE_IDS)
def test_reliable_call_round_trip(webtransport: bool) -> None:
    async def scenario() -> None:
        async with running_server() as server:
            host, port = server.address
            async with connect(host, port, webtransport=webtransport, verify=False) as client:
                assert client.session is not None
                assert client.session.server_id == SERVER_ID.hex()
                await stream(client, 25, 0.005)
                client.end_audio()
                await next_of(client, TurnEnded)
                assert await client.bye() == 25
                assert client.stats().downlink_frames_received == 25

    asyncio.run(scenario())


@pytest.mark.parametrize("webtransport", MODES, ids=MODE_IDS)
def test_realtime_uplink(webtransport: bool) -> None:
    async def scenario() -> None:
        async with running_server() as server:
            host, port = server.address
            hello = Hello(uplink=UplinkMode.REALTIME)
            async with connect(
                host, port, webtransport=webtransport, hello=hello, verify=False
            ) as client:
                await stream(client, 30, 0.01)
                client.send_event("utterance.end")
                await next_of(client, TurnEnded)
                received = await client.bye()
                # Loopback loses nothing; realtime mode may drop only frames past deadline.
                assert received == 30 - client.stats().uplink_frames_dropped
                assert received >= 28

    asyncio.run(scenario())


@pytest.mark.parametrize("webtransport", MODES, ids=MODE_IDS)
def test_migration_mid_call_loses_no_uplink_frame(webtransport: bool) -> None:
    async def scenario() -> None:
        async with running_server() as server:
            host, port = server.address
            async with connect(
                host, port, webtransport=webtransport, local_address="127.0.0.2", verify=False
            ) as client:
                streaming = asyncio.get_running_loop().create_task(stream(client, 60))
                await asyncio.sleep(0.5)
                migration = await client.migrate("127.0.0.3")
                await streaming
                client.end_audio()
                await next_of(client, TurnEnded)
                assert await client.bye() == 60
                assert migration.from_address.startswith("127.0.0.2:")
                assert migration.to_address.startswith("127.0.0.3:")
                assert 0 <= migration.gap_ms < 1000
                sessions = server.sessions()
                assert len(sessions) == 1
                peer = sessions[0].peer_address
                assert peer is not None and peer[0] == "127.0.0.3"
                assert [m.to_address for m in sessions[0].stats().migrations] == [
                    migration.to_address
                ]

    asyncio.run(scenario())


def test_nat_rebinding_keeps_the_call() -> None:
    async def scenario() -> None:
        async with running_server() as server:
            host, port = server.address
            async with connect(host, port, local_address="127.0.0.2", verify=False) as client:
                await stream(client, 10, 0.005)
                await client.migrate("127.0.0.2", new_connection_id=False)
                await stream(client, 10, 0.005)
                client.end_audio()
                await next_of(client, TurnEnded)
                assert await client.bye() == 20

    asyncio.run(scenario())


@pytest.mark.parametrize("webtransport", MODES, ids=MODE_IDS)
def test_barge_in_flushes_the_turn_on_both_sides(webtransport: bool) -> None:
    server_saw: list[object] = []

    async def long_talker(session: ServerSession) -> None:
        turn = session.start_turn()
        sent = 0
        while session.send_turn_audio(turn, FRAME, sent * 320):
            sent += 1
            await asyncio.sleep(0.002)
            if sent > 5000:
                return
        server_saw.append(("stopped_after", sent))
        async for event in session:
            server_saw.append(event)
            if isinstance(event, SessionClosed):
                break

    async def scenario() -> None:
        async with running_server(long_talker) as server:
            host, port = server.address
            async with connect(host, port, webtransport=webtransport, verify=False) as client:
                started = await next_of(client, TurnStarted)
                assert isinstance(started, TurnStarted)
                await asyncio.sleep(0.1)
                loop = asyncio.get_running_loop()
                cancelled_at = loop.time()
                client.cancel_turn(started.turn_id)
                assert client.playout is not None
                assert client.playout.buffered_frames == 0
                for _ in range(100):
                    if server_saw:
                        break
                    await asyncio.sleep(0.005)
                stop_latency = loop.time() - cancelled_at
                rtt = (client.stats().rtt_smoothed_ms or 1.0) / 1000
                assert server_saw and server_saw[0][0] == "stopped_after"  # type: ignore[index]
                # The agent stops within one RTT plus scheduling slack on a shared machine.
                assert stop_latency < rtt + 0.2
                await asyncio.sleep(0.05)
                before = client.stats().downlink_frames_received
                await asyncio.sleep(0.1)
                assert client.stats().downlink_frames_received == before

    asyncio.run(scenario())


def test_every_server_cid_on_the_wire_decodes_to_the_server_id() -> None:
    dcids: list[bytes] = []

    def record(data: bytes, address: tuple[str, int]) -> None:
        if data and not data[0] & 0x80:  # short header: the DCID is ours
            dcids.append(data[1 : 1 + LB_CONFIG.cid_len])

    async def scenario() -> None:
        async with running_server(on_datagram=record) as server:
            host, port = server.address
            async with connect(host, port, local_address="127.0.0.2", verify=False) as client:
                await stream(client, 10, 0.005)
                await client.migrate("127.0.0.3")
                await stream(client, 10, 0.005)
                client.end_audio()
                await next_of(client, TurnEnded)
                await client.bye()

    asyncio.run(scenario())
    assert len(set(dcids)) >= 2  # the migration switched to a fresh CID
    assert all(LB_CONFIG.decode(cid) == SERVER_ID for cid in dcids)


def test_garbage_datagrams_do_not_disturb_a_call() -> None:
    async def scenario() -> None:
        async with running_server() as server:
            host, port = server.address
            async with connect(host, port, verify=False) as client:
                junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                junk.bind(("127.0.0.4", 0))
                samples = [b"", b"\x00", b"\xff" * 1500, b"\x40" + bytes(60), b"\xc0" * 1200]
                streaming = asyncio.get_running_loop().create_task(stream(client, 40, 0.005))
                for round_ in range(20):
                    for sample in samples:
                        junk.sendto(sample + bytes([round_]), (host, port))
                    await asyncio.sleep(0.005)
                junk.close()
                await streaming
                client.end_audio()
                await next_of(client, TurnEnded)
                assert await client.bye() == 40
                assert server.counters["datagrams"] > 100

    asyncio.run(scenario())


def test_stateless_reset_for_an_unknown_cid_of_this_deployment() -> None:
    async def scenario() -> None:
        async with running_server() as server:
            host, port = server.address
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probe.bind(("127.0.0.1", 0))
            probe.settimeout(2)
            cid = LB_CONFIG.encode(SERVER_ID, bytes(12))
            packet = b"\x40" + cid + bytes(60)
            await asyncio.get_running_loop().sock_sendto(probe, packet, (host, port))
            probe.setblocking(False)
            reply = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(probe, 2048), 2)
            probe.close()
            from quicvoice.quiclb import stateless_reset_token

            assert len(reply) < len(packet)
            assert reply[0] & 0xC0 == 0x40
            assert reply[-16:] == stateless_reset_token(server.config.reset_key, cid)

    asyncio.run(scenario())


def test_plain_http3_get_status() -> None:
    async def scenario() -> None:
        async with running_server() as server:
            status = await http3_get_status(*server.address)
            assert status["server_id"] == SERVER_ID.hex()
            assert status["sessions"] == 0

    asyncio.run(scenario())

@pytest.mark.parametrize(
    ("garbage", "code"),
    [
        (b"\x05\xc1\xc1\xc1\xc1\xc1", 0x101),  # a length-5 message that is not msgpack
        (b"\x80\x10\x00\x00", 0x101),  # a 1 MiB message announced
        (b"\x03\x81\xa1t", 0x101),  # a map with no type
    ],
)
def test_a_bad_peer_closes_only_its_own_session(garbage: bytes, code: int) -> None:
    async def scenario() -> None:
        async with running_server() as server:
            host, port = server.address
            async with (
                connect(host, port, verify=False) as good,
                connect(host, port, verify=False) as bad,
            ):
                streaming = asyncio.get_running_loop().create_task(stream(good, 40, 0.01))
                bad._link.quic.send_stream_data(0, garbage)
                bad._link.transmit()
                closed = await next_of(bad, SessionClosed)
                assert isinstance(closed, SessionClosed) and closed.error_code == code
                await streaming
                good.end_audio()
                await next_of(good, TurnEnded)
                assert await good.bye() == 40

    asyncio.run(scenario())


def test_realtime_uplink_feeds_the_jitter_buffer() -> None:
    played: list[str] = []

    async def listener(session: ServerSession) -> None:
        jitter = session.jitter_buffer
        assert jitter is not None
        loop = asyncio.get_running_loop()
        for _ in range(60):
            await asyncio.sleep(0.02)
            played.append(jitter.get(loop.time()).kind.value)

    async def scenario() -> None:
        async with running_server(listener) as server:
            host, port = server.address
            hello = Hello(uplink=UplinkMode.REALTIME)
            async with connect(host, port, hello=hello, verify=False) as client:
                await stream(client, 40)
                await asyncio.sleep(0.4)

    asyncio.run(scenario())
    assert played.count("normal") + played.count("accelerated") >= 30


def test_an_echoed_frame_costs_one_packet_each_way() -> None:
    """ACKs ride in audio packets: without bundling aioquic sends two packets per frame."""
    server_stats: list[object] = []

    async def echo(session: ServerSession) -> None:
        turn = session.start_turn()
        async for event in session:
            if isinstance(event, AudioReceived):
                session.send_turn_audio(turn, event.frame.payload, event.frame.timestamp)
                if event.frame.seq == 49:
                    server_stats.append(session.stats())

    async def scenario() -> None:
        async with running_server(echo) as server:
            host, port = server.address
            async with connect(host, port, verify=False) as client:
                before = client.stats()
                await stream(client, 50)
                await asyncio.sleep(0.1)
                after = client.stats()
                sent = after.packets_sent - before.packets_sent
                received = after.packets_received - before.packets_received
                assert after.downlink_frames_received == 50
                assert sent <= 50 * 1.2, sent
                assert received <= 50 * 1.2, received

    asyncio.run(scenario())
    assert server_stats


def test_migrate_on_an_ended_call_fails_at_once() -> None:
    async def scenario() -> None:
        async with running_server() as server:
            host, port = server.address
            async with connect(host, port, local_address="127.0.0.2", verify=False) as client:
                await stream(client, 3, 0.005)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(ConnectionError, match="ended"):
                await client.migrate("127.0.0.3")
            assert loop.time() - started < 0.1

    asyncio.run(scenario())


def test_the_client_knows_where_the_kernel_routes_and_which_addresses_are_gone() -> None:
    assert route_source(("127.0.0.1", 9)) == "127.0.0.1"
    assert address_vanished("127.0.0.2") is False  # all of 127/8 is local
    assert address_vanished("0.0.0.0") is False
    assert address_vanished("192.0.2.77") is True  # TEST-NET-1: on no interface here


def test_a_quiet_connection_that_comes_back_keeps_the_call_when_no_resume_succeeds() -> None:
    """The backend hears nothing on the call's path for 1 s (an overloaded host, a blackout):
    the client declares the connection dead and tries to resume, and the resume is refused
    (here the session's record is gone, as when the first flight hashes onto a backend
    without it). When the old connection answers again, the call carries on over it with
    every frame."""
    quiet_until = 0.0
    first_peer: tuple[str, int] | None = None

    def accept(data: bytes, address: tuple[str, int]) -> bool:
        nonlocal first_peer
        if first_peer is None:
            first_peer = address
        return address != first_peer or time.monotonic() >= quiet_until

    async def scenario() -> None:
        nonlocal quiet_until
        async with running_server(accept_datagram=accept) as server:
            host, port = server.address
            async with connect(
                host, port, verify=False, liveness_timeout=0.3, reconnect_timeout=5.0
            ) as client:
                assert client.session is not None
                streaming = asyncio.get_running_loop().create_task(stream(client, 100))
                await asyncio.sleep(0.4)
                quiet_until = time.monotonic() + 1.0
                assert await server.store.delete(client.session.session_id)
                await streaming
                client.end_audio()
                await next_of(client, TurnEnded, timeout=10)
                assert await client.bye() == 100
                assert client.resumptions == ()
                assert len(server.sessions()) == 1

    asyncio.run(scenario())


def test_a_resume_the_backend_answered_is_not_abandoned_for_being_slow() -> None:
    """An overloaded backend answers the handshake but takes a second to load the session:
    the attempt is kept (a new one would only queue behind it), and the call resumes on the
    first attempt with every frame."""
    first_peer: tuple[str, int] | None = None

    def accept(data: bytes, address: tuple[str, int]) -> bool:
        nonlocal first_peer
        if first_peer is None:
            first_peer = address
        return address != first_peer or not blackout

    blackout = False

    async def scenario() -> None:
        nonlocal blackout
        async with running_server(accept_datagram=accept) as server:
            host, port = server.address
            load = server.store.load

            async def slow_load(session_id: str) -> object:
                await asyncio.sleep(1.0)
                return await load(session_id)

            server.store.load = slow_load  # type: ignore[method-assign,assignment]
            send = server.send

            def send_unless_blacked_out(data: bytes, address: tuple[str, int]) -> None:
                if not (blackout and address == first_peer):
                    send(data, address)

            server.send = send_unless_blacked_out  # type: ignore[method-assign]
            async with connect(
                host, port, verify=False, liveness_timeout=0.3, reconnect_timeout=5.0
            ) as client:
                streaming = asyncio.get_running_loop().create_task(stream(client, 100))
                await asyncio.sleep(0.4)
                blackout = True  # the old path is gone for good, both ways
                await streaming
                client.end_audio()
                await next_of(client, TurnEnded, timeout=10)
                [resumption] = client.resumptions
                assert resumption.attempts == 1
                assert resumption.gap_ms > 1000
                assert await client.bye() + resumption.frames_resent >= 100

    asyncio.run(scenario())


def test_an_unanswered_send_is_probed_not_left_to_backed_off_retransmissions() -> None:
    """Nothing comes back for 0.8 s after a send in a quiet moment: the client probes with
    PINGs every tenth of its liveness timeout instead of waiting on loss recovery, whose
    retransmissions back off exponentially (two lost packets each way at 10 % loss would
    otherwise look like a second of silence). The connection lives on; no resume."""
    arrivals: list[float] = []
    blackout_until = 0.0

    def accept(data: bytes, address: tuple[str, int]) -> bool:
        now = time.monotonic()
        if now < blackout_until:
            arrivals.append(now)
            return False
        return True

    async def scenario() -> None:
        nonlocal blackout_until
        async with running_server(accept_datagram=accept) as server:
            host, port = server.address
            async with connect(host, port, verify=False, liveness_timeout=1.0) as client:
                await asyncio.sleep(0.3)  # quiet: nothing unanswered
                start = time.monotonic()
                blackout_until = start + 0.8
                client.send_event("order.add", {"item": "taro milk tea"})
                await client.wait_event("order.cart", 5.0)
                assert client.resumptions == ()
        assert arrivals and arrivals[0] - start < 0.05
        late = [t for t in arrivals if t - start >= 0.35]
        gaps = [b - a for a, b in zip(late, late[1:], strict=False)]
        assert len(late) >= 4 and max(gaps) < 0.2, [round(g, 3) for g in gaps]

    asyncio.run(scenario())


@pytest.mark.parametrize("outcome", ["taken-back", "resumed"])
def test_the_uplink_ended_while_reconnecting_is_ended_by_the_connection_that_carries_on(
    outcome: str,
) -> None:
    """The app finishes its utterance while the call reconnects: the end is not lost on a
    failed attempt; whichever connection carries the call on (the quiet one taken back, or a
    resumed one) finishes the uplink, and the agent answers."""
    first_peer: tuple[str, int] | None = None
    blackout_until = 0.0

    def dark(address: tuple[str, int]) -> bool:
        return address == first_peer and time.monotonic() < blackout_until

    def accept(data: bytes, address: tuple[str, int]) -> bool:
        nonlocal first_peer
        if first_peer is None:
            first_peer = address
        return not dark(address)

    async def scenario() -> None:
        nonlocal blackout_until
        async with running_server(accept_datagram=accept) as server:
            send = server.send

            def send_unless_dark(data: bytes, address: tuple[str, int]) -> None:
                if not dark(address):
                    send(data, address)

            server.send = send_unless_dark  # type: ignore[method-assign]
            host, port = server.address
            async with connect(
                host, port, verify=False, liveness_timeout=0.3, reconnect_timeout=5.0
            ) as client:
                assert client.session is not None
                await stream(client, 10)
                blackout_until = time.monotonic() + (1.2 if outcome == "taken-back" else 60)
                if outcome == "taken-back":  # every resume is refused: the record is gone
                    assert await server.store.delete(client.session.session_id)
                else:
                    # A resume on loopback takes milliseconds; slow it so that the app
                    # surely ends its utterance while the call is reconnecting.
                    load = server.store.load

                    async def slow_load(session_id: str) -> object:
                        await asyncio.sleep(1.5)
                        return await load(session_id)

                    server.store.load = slow_load  # type: ignore[method-assign,assignment]
                loop = asyncio.get_running_loop()
                streaming = loop.create_task(stream(client, 40))
                deadline = loop.time() + 3.0
                while client.reconnecting is False:
                    assert loop.time() < deadline, "the client never declared the path dead"
                    await asyncio.sleep(0.01)
                await streaming
                client.end_audio()  # while reconnecting
                await next_of(client, TurnEnded, timeout=10)
                assert len(client.resumptions) == (0 if outcome == "taken-back" else 1)

    asyncio.run(scenario())


@pytest.mark.asyncio
async def test_iterating_a_server_session_ends_after_session_closed() -> None:
    seen: list[VoiceEvent] = []
    done = asyncio.get_running_loop().create_future()

    async def handler(session: ServerSession) -> None:
        async for event in session:
            seen.append(event)
        done.set_result(None)

    async with running_server(handler) as server:
        async with connect(*server.address, verify=False) as client:
            client.send_event("hi")
        await asyncio.wait_for(done, 5)
    assert isinstance(seen[-1], SessionClosed)
    assert sum(isinstance(event, SessionClosed) for event in seen) == 1
