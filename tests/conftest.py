"""Fixtures shared by every test folder: real ``redis-server`` processes on loopback.

``scripts/test`` installs redis-server; a machine without it fails these tests rather than
skipping them, so a missing install step cannot pass unnoticed.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

#: How long a redis-server may take to answer PING after it starts, in seconds.
START_TIMEOUT = 10.0


@dataclass
class RedisServer:
    """A ``redis-server`` child process on 127.0.0.1 that tests may stop, pause and restart."""

    port: int
    process: subprocess.Popen[bytes] | None = None
    prefixes: Iterator[int] = field(default_factory=itertools.count)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def unique_url(self, **options: str) -> str:
        """The URL with a key prefix no other test uses, so tests share one server safely."""
        query = "&".join(
            f"{k}={v}" for k, v in {"prefix": f"t{next(self.prefixes)}:", **options}.items()
        )
        return f"{self.url}?{query}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (scripts/test installs it)")
        self.process = subprocess.Popen(
            [
                binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if self.ping():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not answer PING")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: bytes | str) -> bytes:
        """Send one command in RESP and return the raw reply (for planting garbage)."""
        parts = [a.encode() if isinstance(a, str) else a for a in args]
        request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
            conn.sendall(request)
            return conn.recv(65536)

    def stop(self) -> None:
        """Kill the process (SIGKILL, by PID) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.resume()
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        self.process = None

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections stay open, nothing answers."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the whole session; tests isolate themselves by key prefix."""
    server = RedisServer(port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_redis_server() -> Iterator[RedisServer]:
    """A redis-server for one test, which it may kill, freeze and restart."""
    server = RedisServer(port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
