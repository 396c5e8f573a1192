"""A deployment on loopback for end-to-end tests: one shared TOML file, a real forwarder
process, and backends configured from that file (``VoiceServer``s in the test's event loop, or
``quicvoice serve`` processes)."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
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

    def metric(self, sample: str, default: float) -> float:
        """The value of one sample (``name{labels}``) of the forwarder's metrics, or
        ``default`` when it is not shown."""
        for line in self.wait_for_metrics().splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
        return default

    def backend_up(self, sid: str) -> float:
        """The forwarder's health gauge for backend ``sid`` (-1: not shown)."""
        return self.metric(f'quicvoice_lb_backend_up{{server_id="{sid}"}}', -1.0)

    def went_down(self, sid: str) -> float:
        """How many times the forwarder has marked backend ``sid`` down."""
        return self.metric(
            f'quicvoice_lb_backend_transitions_total{{server_id="{sid}",to="down"}}', 0.0
        )

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


@contextmanager
def serve_backend(
    deployment: Deployment, sid: str, *, engine: str | None = None, app: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``quicvoice serve`` process for backend ``sid`` of the deployment's file
    (``engine``, ``app``: the file's and the demo agent when ``None``), killed at the end; a
    backend that logged a traceback fails the test."""
    log = deployment.path.with_name(f"serve-{sid}.log")
    command = [
        sys.executable, "-m", "quicvoice.cli", "serve", "--config", str(deployment.path),
        "--server-id", sid,
    ]  # fmt: skip
    if engine is not None:
        command += ["--engine", engine]
    if app is not None:
        command += ["--app", app]
    with open(log, "wb") as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors)
    try:
        assert process.stdout is not None
        assert process.stdout.readline(), f"the backend did not start: {log.read_text()}"
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        # A backend that raised anything (into its event loop, or out) logged it here.
        assert "Traceback" not in log.read_text(), log.read_text()


async def poll_until(check: Callable[[], object], timeout: float) -> None:
    """Call ``check`` (in a thread: it may read another process's metrics) every 50 ms until
    it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


#: Strangers' short headers for CIDs of a backend, ``FLOOD_RATE`` a second straight at it
#: (``python -c FLOOD host port rate seconds cid,cid,...``; prints how many it sent).
FLOOD_RATE = 4000
FLOOD_SECONDS = 5.0
FLOOD = """
import os, socket, sys, time
host, port, rate, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
cids = [bytes.fromhex(c) for c in sys.argv[5].split(",")]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.3", 0))
start = time.monotonic()
sent, total = 0, int(rate * seconds)
while sent < total and time.monotonic() - start < seconds + 2:
    due = min(total, int((time.monotonic() - start) * rate))
    while sent < due:
        sock.sendto(b"\\x41" + cids[sent % len(cids)] + os.urandom(40), (host, port))
        sent += 1
    time.sleep(0.001)
print(sent, flush=True)
"""
