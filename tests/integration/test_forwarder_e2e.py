"""Forwarder + three real backends + clients, all on loopback (issue 4's end-to-end test).

The forwarder runs as a real ``quicvoice-lb`` process; the backends are ``VoiceServer``s in
this event loop, configured from the same file. Clients talk only to the VIP.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from lb.encapsulation import wrap
from quicvoice.agent import demo_agent
from quicvoice.asyncio.client import VoiceClient, connect
from quicvoice.asyncio.config import BackendConfig
from quicvoice.asyncio.server import VoiceServer
from quicvoice.quiclb import LoadBalancerConfig
from quicvoice.session.events import TurnEnded

from .voice_harness import FRAME, http3_get_status

pytestmark = pytest.mark.integration

KEY = "8f95f09245765f80256934e50c66207f"
LB_CONFIG = LoadBalancerConfig(0, 4, 12, bytes.fromhex(KEY))
SERVER_IDS = ["0a000001", "0a000002", "0a000003"]
START_TIMEOUT = 5.0


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Deployment:
    """The shared TOML file, the forwarder process and its addresses."""

    def __init__(self, directory: Path) -> None:
        self.vip = ("127.0.0.1", free_port())
        self.backend_listen = ("127.0.0.1", free_port())
        self.metrics_port = free_port(socket.SOCK_STREAM)
        self.backends = {sid: ("127.0.0.1", free_port()) for sid in SERVER_IDS}
        self.path = directory / "deployment.toml"
        lines = [
            f'listen = "127.0.0.1:{self.vip[1]}"',
            f'backend_listen = "127.0.0.1:{self.backend_listen[1]}"',
            f'metrics = "127.0.0.1:{self.metrics_port}"',
            f'reset_key = "{bytes(range(32)).hex()}"',
            "[[configs]]",
            "id = 0",
            "server_id_len = 4",
            "nonce_len = 12",
            f'key = "{KEY}"',
        ]
        for sid, (_, port) in self.backends.items():
            lines += ["[[backends]]", f'server_id = "{sid}"', f'address = "127.0.0.1:{port}"']
        self.path.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start_forwarder(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lb", "--config", str(self.path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.wait_for_metrics()

    def wait_for_metrics(self) -> str:
        """Return the metrics page, waiting for the forwarder to come up."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1
                ) as response:
                    return str(response.read().decode())
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill_forwarder(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(5)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    deployed = Deployment(tmp_path)
    deployed.start_forwarder()
    try:
        yield deployed
    finally:
        deployed.stop()


@asynccontextmanager
async def backends(deployment: Deployment) -> AsyncIterator[dict[str, VoiceServer]]:
    servers = {}
    for sid in SERVER_IDS:
        config = BackendConfig.load(deployment.path, server_id=bytes.fromhex(sid))
        assert config.listen == deployment.backends[sid]
        assert config.forwarder == deployment.backend_listen
        server = VoiceServer(config, demo_agent)
        await server.start()
        servers[sid] = server
    try:
        yield servers
    finally:
        for server in servers.values():
            server.close()
        await asyncio.sleep(0)


async def stream(client: VoiceClient, count: int, interval: float = 0.02) -> None:
    for _ in range(count):
        client.send_audio(FRAME)
        await asyncio.sleep(interval)


async def finish(client: VoiceClient) -> int:
    client.end_audio()

    async def reply() -> None:
        while not isinstance(await client.receive(), TurnEnded):
            pass

    await asyncio.wait_for(reply(), 10)
    return await client.bye(timeout=10)


def session_home(servers: dict[str, VoiceServer], session_id: str) -> str:
    homes = [
        sid for sid, s in servers.items() if any(x.session_id == session_id for x in s.sessions())
    ]
    assert len(homes) == 1, homes
    return homes[0]


def test_calls_land_where_their_cids_say(deployment: Deployment) -> None:
    async def scenario() -> None:
        async with backends(deployment) as servers:
            homes = []
            for index in range(8):
                async with connect(
                    *deployment.vip, verify=False, local_address=f"127.0.0.{2 + index % 3}"
                ) as client:
                    assert client.session is not None
                    home = session_home(servers, client.session.session_id)
                    assert client.session.server_id == home
                    # The CID the client sends to decodes to the backend that holds the call.
                    assert LB_CONFIG.decode(client._quic._peer_cid.cid) == bytes.fromhex(home)
                    await stream(client, 5, 0.005)
                    assert await finish(client) == 5
                    homes.append(home)
            assert len(set(homes)) >= 2  # first flights spread over the backends

    asyncio.run(scenario())


def test_migration_through_the_forwarder_stays_on_its_backend(deployment: Deployment) -> None:
    async def scenario() -> None:
        async with backends(deployment) as servers:
            async with connect(*deployment.vip, verify=False, local_address="127.0.0.2") as client:
                assert client.session is not None
                home = session_home(servers, client.session.session_id)
                streaming = asyncio.get_running_loop().create_task(stream(client, 50))
                await asyncio.sleep(0.4)
                migration = await client.migrate("127.0.0.3")
                await streaming
                assert await finish(client) == 50
                assert migration.to_address.startswith("127.0.0.3:")
                assert session_home(servers, client.session.session_id) == home
                session = servers[home].sessions()[0]
                assert session.peer_address is not None and session.peer_address[0] == "127.0.0.3"

    asyncio.run(scenario())


def test_forwarder_restart_mid_call_loses_nothing(deployment: Deployment) -> None:
    async def scenario() -> None:
        async with backends(deployment) as servers:
            async with connect(*deployment.vip, verify=False, idle_timeout=30) as client:
                assert client.session is not None
                streaming = asyncio.get_running_loop().create_task(stream(client, 60))
                await asyncio.sleep(0.3)
                deployment.kill_forwarder()
                await asyncio.sleep(0.2)  # frames sent now are lost on the wire...
                deployment.start_forwarder()  # ...and retransmitted by QUIC once it is back
                await streaming
                assert await finish(client) == 60
                assert client.stats().migrations == ()
                assert session_home(servers, client.session.session_id) == client.session.server_id

    asyncio.run(scenario())


def test_the_forwarder_is_not_a_reflector(deployment: Deployment) -> None:
    victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    victim.bind(("127.0.0.9", 0))
    victim.settimeout(0.5)
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    attacker.bind(("127.0.0.5", 0))
    try:
        payload = os.urandom(1000)
        for _ in range(20):
            attacker.sendto(wrap(victim.getsockname(), payload), deployment.backend_listen)
        with pytest.raises(TimeoutError):
            victim.recvfrom(2048)
        for _ in range(40):  # counters reach the metrics endpoint about once a second
            metrics = deployment.wait_for_metrics()
            line = next(
                (row for row in metrics.splitlines() if 'reason="not_a_backend"' in row), ""
            )
            if line.endswith(" 20"):
                break
            time.sleep(0.1)
        assert line.endswith(" 20"), line
    finally:
        victim.close()
        attacker.close()


def test_plain_http3_get_through_the_forwarder_reaches_the_named_backend(
    deployment: Deployment,
) -> None:
    async def scenario() -> None:
        async with backends(deployment):
            for _ in range(4):
                status = await http3_get_status(*deployment.vip, local_host="127.0.0.2")
                named = LB_CONFIG.decode(status["_peer_cid"])
                assert named is not None and status["server_id"] == named.hex()

    asyncio.run(scenario())
