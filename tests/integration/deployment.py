"""A deployment on loopback for end-to-end tests: one shared TOML file, a real forwarder
process, and backends (``VoiceServer``s in the test's event loop) configured from that file."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from quicvoice.agent import demo_agent
from quicvoice.asyncio.client import VoiceClient
from quicvoice.asyncio.config import BackendConfig
from quicvoice.asyncio.server import SessionHandler, VoiceServer
from quicvoice.quiclb import LoadBalancerConfig
from quicvoice.session.events import TurnEnded

from .voice_harness import FRAME

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

    def __init__(
        self,
        directory: Path,
        *,
        server_ids: list[str] = SERVER_IDS,
        session_store: str | None = None,
        down: set[str] | None = None,
        health_interval: float = 0.2,
    ) -> None:
        self.vip = ("127.0.0.1", free_port())
        self.backend_listen = ("127.0.0.1", free_port())
        self.metrics_port = free_port(socket.SOCK_STREAM)
        self.backends = {sid: ("127.0.0.1", free_port()) for sid in server_ids}
        self.path = directory / "deployment.toml"
        self.session_store = session_store
        self.health_interval = health_interval
        self.write(down or set())
        self.process: subprocess.Popen[bytes] | None = None

    def write(self, down: set[str]) -> None:
        """(Re)write the shared file, with the backends in ``down`` marked down."""
        lines = [
            f'listen = "127.0.0.1:{self.vip[1]}"',
            f'backend_listen = "127.0.0.1:{self.backend_listen[1]}"',
            f'metrics = "127.0.0.1:{self.metrics_port}"',
            f'reset_key = "{bytes(range(32)).hex()}"',
            f"health_interval = {self.health_interval}",
        ]
        if self.session_store is not None:
            lines.append(f'session_store = "{self.session_store}"')
        lines += ["[[configs]]", "id = 0", "server_id_len = 4", "nonce_len = 12", f'key = "{KEY}"']
        for sid, (_, port) in self.backends.items():
            lines += ["[[backends]]", f'server_id = "{sid}"', f'address = "127.0.0.1:{port}"']
            if sid in down:
                lines.append("down = true")
        self.path.write_text("\n".join(lines) + "\n")

    def reload(self) -> None:
        """SIGHUP the forwarder: it re-reads the file without dropping packets."""
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def start_forwarder(self) -> None:
        with (self.path.parent / "forwarder.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lb", "--config", str(self.path)],
                stdout=subprocess.DEVNULL,
                stderr=log,
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


@asynccontextmanager
async def backends(
    deployment: Deployment, handler: SessionHandler = demo_agent
) -> AsyncIterator[dict[str, VoiceServer]]:
    """Start a ``VoiceServer`` for every backend of the deployment, from the shared file."""
    servers = {}
    for sid in deployment.backends:
        config = BackendConfig.load(deployment.path, server_id=bytes.fromhex(sid))
        assert config.listen == deployment.backends[sid]
        assert config.forwarder == deployment.backend_listen
        server = VoiceServer(config, handler)
        await server.start()
        servers[sid] = server
    try:
        yield servers
    finally:
        for server in servers.values():
            await server.aclose()
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


