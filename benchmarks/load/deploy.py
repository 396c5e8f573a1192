"""A deployment of real processes on loopback: redis-server, a ``quicvoice-lb`` forwarder and
``quicvoice serve`` backends, all from one TOML file, each killable and restartable by PID.

Everything binds to 127.0.0.1 on free ports; redis-server runs without persistence in a
temporary directory of the benchmark's.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from aioquic.h3.connection import H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import HandshakeCompleted

QUIC_LB_KEY = "8f95f09245765f80256934e50c66207f"
RESET_KEY = bytes(range(32)).hex()
SERVER_IDS = ("0a000001", "0a000002", "0a000003")
#: How long a process may take to come up, in seconds.
START_TIMEOUT = 15.0

Address = tuple[str, int]


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port of 127.0.0.1 that nothing is bound to right now."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _kill(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGKILL) -> None:
    """Signal one process we started (by PID) and reap it."""
    if process is None or process.poll() is not None:
        return
    os.kill(process.pid, sig)
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


class RedisProcess:
    """A ``redis-server`` child on a fixed free port, no persistence, in ``directory``."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is needed (scripts/test installs it)")
        self.binary = binary
        self.directory = directory
        self.port = free_port(socket.SOCK_STREAM)
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, prefix: str = "qv:") -> str:
        """The ``session_store`` URL for this server and key prefix."""
        return f"redis://127.0.0.1:{self.port}/0?prefix={prefix}"

    def start(self) -> None:
        """Start (or restart, on the same port) and wait for PING."""
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.command("PING").startswith(b"+PONG"):
                return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING")

    def kill(self) -> None:
        """SIGKILL: every record is gone (no persistence)."""
        _kill(self.process)
        self.process = None

    def command(self, *args: str) -> bytes:
        """One command in RESP; the raw reply, or ``b""`` when Redis is unreachable."""
        parts = [a.encode() for a in args]
        request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(request)
                reply = b""
                while not reply.endswith(b"\r\n"):
                    chunk = conn.recv(1 << 20)
                    if not chunk:
                        break
                    reply += chunk
                return reply
        except OSError:
            return b""

    def count_keys(self, pattern: str) -> int:
        """How many keys match ``pattern`` (KEYS; fine for benchmark-sized databases)."""
        reply = self.command("EVAL", f"return #redis.call('KEYS', '{pattern}')", "0")
        return int(reply[1:].split(b"\r\n")[0]) if reply.startswith(b":") else -1

    @property
    def pids(self) -> list[int]:
        """The server's PID, if it runs."""
        return [self.process.pid] if self.process and self.process.poll() is None else []


class Deployment:
    """The shared TOML file, the forwarder and the backends (``quicvoice serve`` processes)."""

    def __init__(
        self,
        directory: Path,
        *,
        session_store: str = "memory://",
        server_ids: tuple[str, ...] = SERVER_IDS,
        health_interval: float = 0.2,
        lb_workers: int = 1,
    ) -> None:
        self.directory = directory
        self.path = directory / "deployment.toml"
        self.vip: Address = ("127.0.0.1", free_port())
        self.backend_listen: Address = ("127.0.0.1", free_port())
        self.metrics_port = free_port(socket.SOCK_STREAM)
        self.backends: dict[str, Address] = {sid: ("127.0.0.1", free_port()) for sid in server_ids}
        self.session_store = session_store
        self.health_interval = health_interval
        self.lb_workers = lb_workers
        self.forwarder: subprocess.Popen[bytes] | None = None
        self.servers: dict[str, subprocess.Popen[bytes]] = {}
        self.write()

    def write(self, down: frozenset[str] = frozenset()) -> None:
        """(Re)write the shared file."""
        lines = [
            f'listen = "127.0.0.1:{self.vip[1]}"',
            f'backend_listen = "127.0.0.1:{self.backend_listen[1]}"',
            f'metrics = "127.0.0.1:{self.metrics_port}"',
            f'reset_key = "{RESET_KEY}"',
            f'session_store = "{self.session_store}"',
            f"health_interval = {self.health_interval}",
            'log_level = "error"',
            "[[configs]]", "id = 0", "server_id_len = 4", "nonce_len = 12",
            f'key = "{QUIC_LB_KEY}"',
        ]  # fmt: skip
        for sid, (_, port) in self.backends.items():
            lines += ["[[backends]]", f'server_id = "{sid}"', f'address = "127.0.0.1:{port}"']
            if sid in down:
                lines.append("down = true")
        self.path.write_text("\n".join(lines) + "\n")

    # -- processes -----------------------------------------------------------------------

    def start(self) -> None:
        """Start every backend, then the forwarder."""
        for sid in self.backends:
            self.start_backend(sid)
        self.start_forwarder()

    def start_forwarder(self) -> float:
        """Start the forwarder; return how long until its metrics answered, in seconds."""
        started = time.monotonic()
        self.forwarder = subprocess.Popen(
            [sys.executable, "-m", "lb", "--config", str(self.path),
             "--workers", str(self.lb_workers)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.metrics()
        return time.monotonic() - started

    def kill_forwarder(self) -> None:
        """SIGKILL the supervisor; its pumps die with it (PR_SET_PDEATHSIG)."""
        _kill(self.forwarder)
        self.forwarder = None

    def start_backend(self, sid: str) -> None:
        """Start ``quicvoice serve`` for ``sid`` and wait for its "listening" line."""
        with open(self.directory / f"backend-{sid}.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "quicvoice.cli", "serve", "--config", str(self.path),
                 "--server-id", sid],
                stdout=subprocess.PIPE, stderr=log,
            )  # fmt: skip
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith(b"{"):
            _kill(process)
            raise RuntimeError(f"backend {sid} did not start")
        self.servers[sid] = process

    def backend_log(self, sid: str) -> str:
        """What backend ``sid`` logged on stderr (warnings and errors, every start)."""
        path = self.directory / f"backend-{sid}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill_backend(self, sid: str) -> None:
        """SIGKILL one backend: its sessions are gone from memory, its socket closes."""
        _kill(self.servers.pop(sid))

    def stop(self) -> None:
        """Stop everything this deployment started (SIGTERM, then SIGKILL), by PID."""
        _kill(self.forwarder, signal.SIGTERM)
        self.forwarder = None
        for sid in list(self.servers):
            _kill(self.servers.pop(sid), signal.SIGTERM)

    # -- observation ---------------------------------------------------------------------

    def metrics(self) -> str:
        """The forwarder's metrics page, waiting for it to come up."""
        deadline = time.monotonic() + START_TIMEOUT
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    return str(response.read().decode())
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def process_groups(self) -> dict[str, list[int]]:
        """Root PIDs to sample, by role (the forwarder's pumps are found as its children)."""
        groups: dict[str, list[int]] = {}
        if self.forwarder is not None and self.forwarder.poll() is None:
            groups["forwarder"] = [self.forwarder.pid]
        for sid, process in self.servers.items():
            if process.poll() is None:
                groups[f"backend {sid}"] = [process.pid]
        return groups

    def open_sessions(self, timeout: float = 10.0) -> dict[str, int]:
        """Open sessions per live backend, from its ``GET /`` (HTTP/3, straight to it);
        -1 for a backend that did not answer within ``timeout``."""

        async def ask(sid: str) -> int:
            try:
                status = await http3_get_status(*self.backends[sid], timeout=timeout)
            except (RuntimeError, OSError, ValueError):
                return -1
            return int(status["sessions"])

        async def ask_all() -> dict[str, int]:
            return {sid: await ask(sid) for sid in self.servers}

        return asyncio.run(ask_all())

    def sessions_left(self, limit: float) -> tuple[int, float]:
        """Sessions still open on the live backends (-1 if one did not answer), polled every
        second until none or ``limit`` seconds; and how long that took."""
        started = time.monotonic()
        while True:
            counts = self.open_sessions().values()
            left = sum(counts) if -1 not in counts else -1
            if left == 0 or time.monotonic() - started > limit:
                return left, time.monotonic() - started
            time.sleep(1.0)


async def http3_get_status(host: str, port: int, timeout: float = 5.0) -> dict[str, Any]:
    """``GET /`` over HTTP/3 with a bare aioquic client; the backend's JSON status."""
    quic = QuicConnection(
        configuration=QuicConfiguration(is_client=True, alpn_protocols=["h3"], verify_mode=0)
    )
    h3 = H3Connection(quic)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    quic.connect((host, port), loop.time())
    body, status = b"", b""
    deadline = loop.time() + timeout
    try:
        while loop.time() < deadline and not (status and body.endswith(b"}")):
            for data, addr in quic.datagrams_to_send(loop.time()):
                sock.sendto(data, addr)
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 0.05)
                quic.receive_datagram(data, (host, port), loop.time())
            except TimeoutError:
                quic.handle_timer(loop.time())
            event = quic.next_event()
            while event is not None:
                for h3_event in h3.handle_event(event):
                    if isinstance(h3_event, DataReceived):
                        body += h3_event.data
                    elif isinstance(h3_event, HeadersReceived):
                        status = dict(h3_event.headers).get(b":status", b"")
                if isinstance(event, HandshakeCompleted):
                    h3.send_headers(
                        quic.get_next_available_stream_id(),
                        [(b":method", b"GET"), (b":scheme", b"https"),
                         (b":authority", b"localhost"), (b":path", b"/")],
                        end_stream=True,
                    )  # fmt: skip
                event = quic.next_event()
        quic.close()
        for data, addr in quic.datagrams_to_send(loop.time()):
            sock.sendto(data, addr)
    finally:
        sock.close()
    if status != b"200":
        raise RuntimeError(f"GET / on {host}:{port} answered {status!r}")
    result: dict[str, Any] = json.loads(body)
    return result
