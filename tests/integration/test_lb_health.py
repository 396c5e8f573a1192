"""Backend health through a real forwarder: probes a flood cannot starve, a gauge per backend,
a killed backend process found by ICMP at once, a forged ICMP message that changes nothing.

The forwarder is a real ``quicvoice-lb`` process; backends are ``VoiceServer``s in this event
loop or real ``quicvoice serve`` processes; the flood is a real process; all on loopback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from lb.health import DEFAULT_CONFIRM_TIMEOUT, PROBE_CLIENT
from quicvoice.asyncio.client import connect
from quicvoice.asyncio.server import VoiceServer
from quicvoice.encapsulation import wrap
from quicvoice.session.events import SessionResumed

from ..conftest import RedisServer
from .deployment import (
    FLOOD,
    FLOOD_RATE,
    FLOOD_SECONDS,
    LB_CONFIG,
    Deployment,
    backends,
    finish,
    poll_until,
    serve_backend,
    stream,
)

pytestmark = pytest.mark.integration

A, B = "0a000001", "0a000002"
#: The flood: unknown short headers straight at the backend, DCIDs of this deployment (they
#: decode to a server ID, so each one asks for a stateless reset), bounded in count and time.


def test_the_gauge_shows_configured_and_found_states(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, server_ids=[A, B], down={B}, health_interval=0.1)
    deployment.start_forwarder()

    async def scenario() -> None:
        async with backends(deployment) as servers:
            await poll_until(lambda: deployment.backend_up(A) == 1.0, 5)
            assert deployment.backend_up(B) == 0.0  # configured down
            await servers[A].aclose()  # its port closes: ICMP, then no probe answer
            await poll_until(lambda: deployment.backend_up(A) == 0.0, 5)
            assert deployment.went_down(A) == 1.0
            assert deployment.went_down(B) == 0.0  # configured down is no transition

    try:
        asyncio.run(scenario())
    finally:
        deployment.stop()


def test_a_flood_of_unknown_short_headers_cannot_starve_the_probes(tmp_path: Path) -> None:
    """Before authenticated probes had their own allowance, such a flood got the backend
    marked down within 1.4-1.7 s (the probes shared the strangers' 100 resets per second)."""
    deployment = Deployment(tmp_path, server_ids=[A], health_interval=0.1)
    deployment.start_forwarder()
    cids = ",".join(LB_CONFIG.encode(bytes.fromhex(A), os.urandom(12)).hex() for _ in range(64))

    async def scenario() -> None:
        async with backends(deployment) as servers:
            server = servers[A]
            await poll_until(lambda: deployment.backend_up(A) == 1.0, 5)
            host, port = deployment.backends[A]
            flood = subprocess.Popen(
                [sys.executable, "-c", FLOOD, host, str(port), str(FLOOD_RATE),
                 str(FLOOD_SECONDS), cids],
                stdout=subprocess.PIPE,
            )  # fmt: skip
            try:
                await asyncio.sleep(FLOOD_SECONDS / 2)
                # A new call during the flood lands on the only backend and completes.
                async with connect(*deployment.vip, verify=False) as call:
                    await stream(call, 10)
                    assert await finish(call) >= 1
                assert await asyncio.to_thread(flood.wait, FLOOD_SECONDS + 10) == 0
            finally:
                if flood.poll() is None:
                    flood.kill()
                    flood.wait()
            assert flood.stdout is not None
            sent = int(flood.stdout.read())
            assert sent >= FLOOD_RATE * FLOOD_SECONDS * 0.95
            # The flood reached the backend and used up the strangers' allowance...
            assert server.counters["dropped_unknown_cid"] >= sent * 0.5
            assert server.counters["stateless_resets"] < sent * 0.2
            # ...while the probes were answered all along: never marked down.
            assert deployment.went_down(A) == 0.0
            assert deployment.backend_up(A) == 1.0
            assert server.counters["probes_answered"] >= 10 * FLOOD_SECONDS * 0.8

    try:
        asyncio.run(scenario())
    finally:
        deployment.stop()


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def forged_port_unreachable(
    source: tuple[str, int], destination: tuple[str, int], payload: bytes = bytes(40)
) -> bytes:
    """An ICMP port unreachable (RFC 792) quoting a UDP datagram ``source`` -> ``destination``
    that carried ``payload``."""
    quoted_ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), 0, 0, 64, socket.IPPROTO_UDP, 0,
        socket.inet_aton(source[0]), socket.inet_aton(destination[0]),
    )  # fmt: skip
    quoted_ip = quoted_ip[:10] + struct.pack("!H", _checksum(quoted_ip)) + quoted_ip[12:]
    quoted_udp = struct.pack("!HHHH", source[1], destination[1], 8 + len(payload), 0)
    body = b"\0\0\0\0" + quoted_ip + quoted_udp + payload
    header = struct.pack("!BBH", 3, 3, 0)
    return header[:2] + struct.pack("!H", _checksum(header + body)) + body


async def probe_answered_after(server: VoiceServer, answered: int) -> int:
    """Wait (0.3 s at most) for ``server`` to answer more probes than ``answered``."""
    await poll_until(lambda: server.counters["probes_answered"] > answered, 0.3)
    return server.counters["probes_answered"]


@pytest.mark.skipif(os.geteuid() != 0, reason="forging ICMP needs a raw socket (root)")
def test_a_forged_port_unreachable_does_not_take_a_live_backend_down(tmp_path: Path) -> None:
    # Regular probes far apart: only the suspicion's own probe can clear it in time.
    deployment = Deployment(tmp_path, server_ids=[A, B], health_interval=2.0)
    text = deployment.path.read_text().replace(
        "health_interval = 2.0", "health_interval = 2.0\nhealth_timeout = 5.0"
    )
    deployment.path.write_text(text)
    deployment.start_forwarder()

    async def scenario() -> None:
        async with backends(deployment) as servers:
            await poll_until(lambda: deployment.backend_up(A) == 1.0, 5)
            answered = servers[A].counters["probes_answered"]
            # A datagram of a client, and what looks like a probe without the key's proof
            # (a forger who knows the format): neither confirms the suspicion.
            probe_like = wrap(PROBE_CLIENT, b"\x41" + LB_CONFIG.encode(bytes.fromhex(A),
                              os.urandom(LB_CONFIG.nonce_len)) + os.urandom(64))  # fmt: skip
            payloads = [wrap(("127.0.0.1", 5555), b"\x41" + os.urandom(60)), probe_like] * 2
            with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as raw:
                for payload in payloads:
                    message = forged_port_unreachable(
                        deployment.backend_listen, deployment.backends[A], payload
                    )
                    raw.sendto(message, ("127.0.0.1", 0))
                    # The suspicion's probe comes at once, long before the next regular one.
                    answered = await probe_answered_after(servers[A], answered)
                    await asyncio.sleep(DEFAULT_CONFIRM_TIMEOUT + 0.2)  # past the timeout
                    assert deployment.backend_up(A) == 1.0
            assert deployment.went_down(A) == 0.0
            assert deployment.backend_up(A) == 1.0

    try:
        asyncio.run(scenario())
    finally:
        deployment.stop()


def test_a_killed_backend_process_is_found_by_icmp_and_its_call_resumes_at_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Probes alone would take the 1 s health timeout; the ICMP error takes one datagram."""
    deployment = Deployment(
        tmp_path, server_ids=[A, B], session_store=redis_server.unique_url(), health_interval=0.2
    )
    deployment.start_forwarder()

    async def scenario(processes: dict[str, subprocess.Popen[bytes]]) -> None:
        await poll_until(lambda: deployment.backend_up(A) == deployment.backend_up(B) == 1.0, 5)
        async with connect(*deployment.vip, verify=False, liveness_timeout=5.0) as call:
            assert call.session is not None
            home = call.session.server_id
            other = B if home == A else A
            call.send_event("order.add", {"item": "tea"})
            await call.wait_event("order.cart")
            speaking = asyncio.get_running_loop().create_task(stream(call, 200))
            await asyncio.sleep(0.3)
            # (Each backend may have been found down once already, before its process bound.)
            downs = {sid: deployment.went_down(sid) for sid in (A, B)}
            killed_at = asyncio.get_running_loop().time()
            processes[home].send_signal(signal.SIGKILL)
            resumed = await call.wait_resumed(timeout=10)
            assert isinstance(resumed, SessionResumed) and resumed.server_id == other
            resumption = call.resumptions[0]
            assert resumption.reason.startswith("stateless reset"), resumption
            detection = resumption.declared_dead_at - killed_at
            assert detection < 0.6, f"found after {detection:.3f} s: the probe timeout is 1 s"
            call.send_event("order.list")
            cart = await call.wait_event("order.cart")
            assert cart.data == {"items": [{"item": "tea"}]}
            speaking.cancel()
        # The supervisor samples health every 0.1 s: the resume may have been quicker.
        await poll_until(lambda: deployment.went_down(home) == downs[home] + 1, 2)
        assert deployment.went_down(other) == downs[other]

    try:
        with serve_backend(deployment, A) as process_a, serve_backend(deployment, B) as process_b:
            asyncio.run(scenario({A: process_a, B: process_b}))
    finally:
        deployment.stop()
