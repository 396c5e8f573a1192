"""ngtcp2 backends behind a real forwarder: a call through the VIP, the health gauge, a killed
backend's call resuming on the other one with its state, calls resuming at home (their
``home_cid``) after a blackout, a flood that cannot starve the probes,
garbage through the VIP, and a fleet mixing the engines.

Everything is a real process on loopback: the forwarder (``python -m lb``), each backend
(``quicvoice serve --engine ...``, its own process), Redis (the tests' ``redis-server``). The
client is the project's raw-QUIC client in this event loop. Skipped, with the reason, where
quicvoice._ngtcp2 was not built (no libngtcp2-dev).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from contextlib import AbstractContextManager, AsyncExitStack, ExitStack
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lb.packet import MIN_SHORT_HEADER_LEN
from quicvoice.asyncio.client import VoiceClient, connect
from quicvoice.engine_ngtcp2 import AVAILABLE, UNAVAILABLE
from quicvoice.netlab.blackout import BlackoutRelay
from quicvoice.session.events import AudioReceived, EventReceived, SessionResumed, TurnEnded
from quicvoice.store import open_store, unpack_state

from ..conftest import RedisServer
from ..security.raw import FRAME
from .deployment import (
    FLOOD,
    FLOOD_RATE,
    FLOOD_SECONDS,
    LB_CONFIG,
    SERVER_IDS,
    Deployment,
    poll_until,
    serve_backend,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not AVAILABLE, reason=f"ngtcp2 engine not built: {UNAVAILABLE}"),
]

A, B = "0a000001", "0a000002"
ECHO_APP = "tests.app.apps:app"
TIMEOUT = 10.0
CID_LEN = 17


def serve(
    deployment: Deployment, sid: str, *, engine: str = "ngtcp2", app: str | None = ECHO_APP
) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """A real ``quicvoice serve`` process for backend ``sid`` on ``engine`` (``app``: ``None``
    is the demo agent), killed at the end."""
    return serve_backend(deployment, sid, engine=engine, app=app)


def uplink_packets(deployment: Deployment, sid: str) -> float:
    """Datagrams the forwarder has sent to backend ``sid`` (its metrics)."""
    total = 0.0
    prefix = f'quicvoice_lb_backend_packets_total{{backend="{sid}"'
    for line in deployment.wait_for_metrics().splitlines():
        if line.startswith(prefix) and 'direction="uplink"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def echoed_utterance(call: VoiceClient, frames: int, *, heard: int | None = None) -> int:
    """Say ``frames`` more frames, end the uplink, and return how many came back in the app's
    turn (its ``heard`` event must count ``heard``, by default ``frames``: they reached the
    app)."""
    for index in range(frames):
        call.send_audio(FRAME, index * 320)
        await asyncio.sleep(0.005)
    call.end_audio()
    back = 0
    heard = frames if heard is None else heard
    told = False

    async def until_turn_ends() -> None:
        nonlocal back, told
        while True:
            event = await call.receive()
            if isinstance(event, AudioReceived):
                back += 1
            elif isinstance(event, EventReceived) and event.name == "heard":
                assert event.data["frames"] == heard
                told = True
            elif isinstance(event, TurnEnded):
                return

    await asyncio.wait_for(until_turn_ends(), TIMEOUT)
    assert told, "the app's heard event never came"
    return back


def test_a_call_through_the_vip_on_ngtcp2_backends_and_their_health(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, server_ids=[A, B], session_store="memory://")
    deployment.start_forwarder()

    async def scenario() -> None:
        await poll_until(lambda: deployment.backend_up(A) == deployment.backend_up(B) == 1.0, 5)
        downs = {sid: deployment.went_down(sid) for sid in (A, B)}
        homes = set()
        for _ in range(4):
            async with connect(*deployment.vip, verify=False, reconnect=False) as call:
                assert call.session is not None and call.session.home_cid is not None
                homes.add(call.session.server_id)
                # The home CID is a fresh CID of the backend that welcomed the call.
                assert len(call.session.home_cid) == CID_LEN
                assert await echoed_utterance(call, 40) == 40
                assert await call.bye(timeout=TIMEOUT) == 40
        assert homes <= {A, B}
        # Probes kept being answered all along (health_interval 0.2 s): no backend went down.
        await asyncio.sleep(1.0)
        assert deployment.backend_up(A) == deployment.backend_up(B) == 1.0
        assert {sid: deployment.went_down(sid) for sid in (A, B)} == downs

    try:
        with serve(deployment, A), serve(deployment, B):
            asyncio.run(scenario())
    finally:
        deployment.stop()


def test_a_call_migrates_through_the_forwarder_127_0_0_2_to_127_0_0_3_on_ngtcp2(
    tmp_path: Path,
) -> None:
    """The client moves (new socket, new address, new CID): the forwarder routes the new CID
    to the same backend, encapsulating the new address, which ngtcp2 validates as a new path;
    the app hears every frame from before and after the move."""
    deployment = Deployment(tmp_path, server_ids=[A, B], session_store="memory://")
    deployment.start_forwarder()

    async def scenario() -> None:
        await poll_until(lambda: deployment.backend_up(A) == deployment.backend_up(B) == 1.0, 5)
        async with connect(
            *deployment.vip, verify=False, reconnect=False, local_address="127.0.0.2"
        ) as call:
            assert call.session is not None
            home = call.session.server_id
            for index in range(20):
                call.send_audio(FRAME, index * 320)
            await call.migrate("127.0.0.3")
            # The rest of the utterance goes from the new address; the app must hear all 40.
            for index in range(20, 40):
                call.send_audio(FRAME, index * 320)
            assert await echoed_utterance(call, 0, heard=40) == 40
            assert await call.bye(timeout=TIMEOUT) == 40
            assert not call.resumptions  # the same connection, on the same backend
            assert call.session.server_id == home

    try:
        with serve(deployment, A), serve(deployment, B):
            asyncio.run(scenario())
    finally:
        deployment.stop()


def test_a_killed_ngtcp2_backend_s_call_resumes_on_the_other_with_its_state(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The demo agent keeps an order in the session's state (Redis); SIGKILL on the call's
    backend: the forwarder finds it by ICMP, resets the call's CID, and the client resumes
    through the VIP on the other backend, which finds the order."""
    url = redis_server.unique_url()
    deployment = Deployment(tmp_path, server_ids=[A, B], session_store=url, health_interval=0.2)
    deployment.start_forwarder()

    async def checkpointed(session_id: str) -> None:
        """Until the backend's checkpoint of the order is in Redis (it is written after the
        agent answered): a kill before that would lose it, whatever the engine."""
        store = open_store(url)
        try:
            deadline = time.monotonic() + 5
            while True:
                record = await store.load(session_id)
                if record is not None and unpack_state(record.state).get("cart"):
                    return
                assert time.monotonic() < deadline, "the order was never checkpointed"
                await asyncio.sleep(0.02)
        finally:
            await store.aclose()

    async def scenario(processes: dict[str, subprocess.Popen[bytes]]) -> None:
        await poll_until(lambda: deployment.backend_up(A) == deployment.backend_up(B) == 1.0, 5)
        async with connect(*deployment.vip, verify=False, liveness_timeout=5.0) as call:
            assert call.session is not None
            home = call.session.server_id
            other = B if home == A else A
            call.send_event("order.add", {"item": "tea"})
            await asyncio.wait_for(call.wait_event("order.cart"), TIMEOUT)
            await checkpointed(call.session.session_id)
            downs = deployment.went_down(home)
            killed_at = asyncio.get_running_loop().time()
            processes[home].send_signal(signal.SIGKILL)
            processes[home].wait(5)
            for _ in range(50):  # the uplink goes on: the forwarder's ICMP path sees the death
                call.send_audio(FRAME)
                if call.resumptions:
                    break
                await asyncio.sleep(0.02)
            resumed = await call.wait_resumed(timeout=TIMEOUT)
            assert isinstance(resumed, SessionResumed) and resumed.server_id == other
            resumption = call.resumptions[0]
            assert resumption.reason.startswith("stateless reset"), resumption
            detection = resumption.declared_dead_at - killed_at
            assert detection < 0.6, f"found after {detection:.3f} s: the probe timeout is 1 s"
            call.send_event("order.list")
            cart = await asyncio.wait_for(call.wait_event("order.cart"), TIMEOUT)
            assert cart.data == {"items": [{"item": "tea"}]}
        await poll_until(lambda: deployment.went_down(home) == downs + 1, 2)
        assert deployment.backend_up(other) == 1.0

    try:
        with serve(deployment, A, app=None) as process_a, serve(deployment, B, app=None) as b:
            asyncio.run(scenario({A: process_a, B: b}))
    finally:
        deployment.stop()


def test_after_a_blackout_calls_resume_at_home_on_ngtcp2_through_their_home_cid(
    tmp_path: Path,
) -> None:
    """Three ngtcp2 backends, ``memory://``: only the backend that holds a session can resume
    it. A blackout longer than the liveness timeout (0.5 s) but short enough that every
    attempt after it falls in the client's home-only second: each resumed connection was
    opened to its ``welcome``'s home CID, the forwarder routed it home, and the ngtcp2 backend
    accepted that Initial and resumed the session with its state."""
    deployment = Deployment(tmp_path, session_store="memory://")
    deployment.start_forwarder()

    async def scenario() -> None:
        await poll_until(lambda: all(deployment.backend_up(sid) == 1.0 for sid in SERVER_IDS), 5)
        relay = BlackoutRelay(deployment.vip)
        entry = await relay.start()
        try:
            async with AsyncExitStack() as stack:
                calls = [
                    await stack.enter_async_context(
                        connect(*entry, verify=False, liveness_timeout=0.5)
                    )
                    for _ in range(3)
                ]
                homes, home_cids = {}, {}
                for index, call in enumerate(calls):
                    assert call.session is not None and call.session.home_cid is not None
                    homes[call.session.session_id] = call.session.server_id
                    home_cids[call.session.session_id] = call.session.home_cid
                    assert LB_CONFIG.decode(call.session.home_cid) == bytes.fromhex(
                        call.session.server_id
                    )
                    call.send_event("order.add", {"item": f"tea {index}"})
                    await asyncio.wait_for(call.wait_event("order.cart"), TIMEOUT)
                relay.black_out(1.0)
                for call in calls:
                    call.send_audio(FRAME)  # sending into the dark: the silence is noticed
                resumed = await asyncio.gather(
                    *(call.wait_resumed(timeout=TIMEOUT) for call in calls)
                )
                for index, (call, event) in enumerate(zip(calls, resumed, strict=True)):
                    assert isinstance(event, SessionResumed)
                    assert event.server_id == homes[event.session_id]
                    quic = call._link.quic
                    assert quic._original_destination_connection_id == home_cids[event.session_id]
                    call.send_event("order.list")
                    cart = await asyncio.wait_for(call.wait_event("order.cart"), TIMEOUT)
                    assert cart.data == {"items": [{"item": f"tea {index}"}]}
        finally:
            relay.close()

    try:
        with ExitStack() as stack:
            for sid in SERVER_IDS:
                stack.enter_context(serve(deployment, sid, app=None))
            asyncio.run(scenario())
    finally:
        deployment.stop()


def test_a_flood_of_unknown_short_headers_cannot_starve_an_ngtcp2_backend_s_probes(
    tmp_path: Path,
) -> None:
    """Strangers' short headers for CIDs of this backend, 4000 a second straight at it, share
    100 resets a second; the forwarder's probes have their own allowance: never marked down.

    The backend process starts first: it takes about a second under load, and a forwarder
    started before it counts a down transition when its first second of grace runs out before
    the backend's first answer (seen in full-suite runs), which is not the flood's."""
    deployment = Deployment(tmp_path, server_ids=[A], health_interval=0.1)
    cids = ",".join(LB_CONFIG.encode(bytes.fromhex(A), os.urandom(12)).hex() for _ in range(64))

    async def scenario() -> None:
        await poll_until(lambda: deployment.backend_up(A) == 1.0, 5)
        down_before = deployment.went_down(A)
        host, port = deployment.backends[A]
        flood = subprocess.Popen(
            [sys.executable, "-c", FLOOD, host, str(port), str(FLOOD_RATE),
             str(FLOOD_SECONDS), cids],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            await asyncio.sleep(FLOOD_SECONDS / 2)
            # A new call during the flood lands on the only backend and completes.
            async with connect(*deployment.vip, verify=False, reconnect=False) as call:
                assert await echoed_utterance(call, 10) == 10
                assert await call.bye(timeout=TIMEOUT) == 10
            assert await asyncio.to_thread(flood.wait, FLOOD_SECONDS + 10) == 0
        finally:
            if flood.poll() is None:
                flood.kill()
                flood.wait()
        assert flood.stdout is not None
        assert int(flood.stdout.read()) >= FLOOD_RATE * FLOOD_SECONDS * 0.95
        assert deployment.went_down(A) == down_before
        assert deployment.backend_up(A) == 1.0

    try:
        with serve(deployment, A):
            deployment.start_forwarder()
            asyncio.run(scenario())
    finally:
        deployment.stop()


def _garbage(cid: bytes) -> st.SearchStrategy[bytes]:
    """Datagrams of every shape sent to the VIP: the forwarder encapsulates each one to the
    backend it routes to (the live call's CID routes to the call's backend)."""
    tail = st.binary(max_size=1200)
    long_type = st.integers(0, 3).map(lambda t: 0xC0 | (t << 4))
    return st.one_of(
        st.binary(min_size=1, max_size=1300),
        tail.map(lambda rest: b"\x40" + cid + rest),
        st.tuples(long_type, st.sampled_from([1, 0, 0x1A2A3A4A]), tail).map(
            lambda p: bytes([p[0]]) + struct.pack("!I", p[1]) + bytes([len(cid)]) + cid + p[2]
        ),
        st.tuples(st.binary(min_size=8, max_size=20), st.binary(min_size=1200, max_size=1250)).map(
            lambda p: b"\xc0\x00\x00\x00\x01" + bytes([len(p[0])]) + p[0] + b"\x00" + p[1]
        ),
    )


def test_garbage_through_the_vip_never_crashes_an_ngtcp2_backend_nor_the_live_call(
    tmp_path: Path,
) -> None:
    deployment = Deployment(tmp_path, server_ids=[A, B], session_store="memory://")
    deployment.start_forwarder()

    async def scenario(processes: list[subprocess.Popen[bytes]]) -> None:
        await poll_until(lambda: deployment.backend_up(A) == deployment.backend_up(B) == 1.0, 5)
        async with connect(*deployment.vip, verify=False, reconnect=False) as call:
            assert call.session is not None
            live = bytes(call._link.quic._peer_cid.cid)
            assert len(live) == CID_LEN
            home = call.session.server_id
            garbage: list[bytes] = []

            @settings(
                max_examples=30,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(batch=st.lists(_garbage(live), min_size=1, max_size=10))
            def collect(batch: list[bytes]) -> None:
                garbage.extend(batch)

            collect()
            # What the forwarder passes on to the call's backend: short headers to the live CID
            # that are long enough to be QUIC packets (it drops shorter ones itself).
            aimed = sum(
                1
                for datagram in garbage
                if datagram.startswith(b"\x40" + live) and len(datagram) >= MIN_SHORT_HEADER_LEN
            )
            assert aimed > 0
            before = uplink_packets(deployment, home)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("127.0.0.1", 0))
                for index, datagram in enumerate(garbage):
                    sock.sendto(datagram, deployment.vip)
                    if index % 20 == 19:
                        await asyncio.sleep(0.01)
            # The forwarder carried the garbage aimed at the live CID to the call's backend.
            await poll_until(lambda: uplink_packets(deployment, home) >= before + aimed, 5)
            assert await echoed_utterance(call, 20) == 20
            assert await call.bye(timeout=TIMEOUT) == 20
        assert all(process.poll() is None for process in processes)
        assert deployment.backend_up(A) == deployment.backend_up(B) == 1.0

    try:
        with serve(deployment, A) as a, serve(deployment, B) as b:
            asyncio.run(scenario([a, b]))
    finally:
        deployment.stop()


def test_a_mixed_fleet_behind_one_forwarder_takes_calls_on_both_engines(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, server_ids=[A, B], session_store="memory://")
    deployment.start_forwarder()

    async def scenario() -> None:
        await poll_until(lambda: deployment.backend_up(A) == deployment.backend_up(B) == 1.0, 5)
        homes: dict[str, int] = {}
        for _ in range(20):
            async with connect(*deployment.vip, verify=False, reconnect=False) as call:
                assert call.session is not None
                home = call.session.server_id
                homes[home] = homes.get(home, 0) + 1
                assert await echoed_utterance(call, 10) == 10
                assert await call.bye(timeout=TIMEOUT) == 10
            if len(homes) == 2 and min(homes.values()) >= 2:
                break
        assert set(homes) == {A, B}, homes
        assert deployment.backend_up(A) == deployment.backend_up(B) == 1.0

    try:
        with ExitStack() as stack:
            stack.enter_context(serve(deployment, A, engine="aioquic"))
            stack.enter_context(serve(deployment, B, engine="ngtcp2"))
            asyncio.run(scenario())
    finally:
        deployment.stop()
