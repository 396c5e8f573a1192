"""A Redis Sentinel deployment of real processes on 127.0.0.1, for store and failover tests.

A primary, one replica (``--replicaof``) and three sentinels (``redis-server --sentinel`` with a
configuration file written here; Debian's ``redis-sentinel`` is the same binary). The sentinels
are told of each other and of the replica in their files (fixed IDs), so they are ready at once
instead of after two hello periods; ``down-after-milliseconds`` and ``failover-timeout`` are
short so a killed primary is replaced within a few seconds. Every process is killed by PID.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pytest

from .conftest import free_port

#: The name the sentinels monitor the primary under.
SERVICE = "qv"
#: How long a process may take to start and answer, in seconds.
START_TIMEOUT = 10.0
#: Sentinels' ``down-after-milliseconds``: silence after which a node is thought down.
DOWN_AFTER_MS = 300
#: Sentinels' ``failover-timeout``, in ms.
FAILOVER_TIMEOUT_MS = 2000


def command(port: int, *args: bytes | str, timeout: float = 1.0) -> list[bytes] | bytes | int:
    """Send one command in RESP to 127.0.0.1:``port`` and parse a flat reply."""
    parts = [a.encode() if isinstance(a, str) else a for a in args]
    request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(request)
        reader = conn.makefile("rb")
        return _read(reader)


def _read(reader: BinaryIO) -> list[bytes] | bytes | int:
    line = reader.readline()
    kind, rest = line[:1], line[1:-2]
    if kind in (b"+", b"-"):
        return line[:-2]
    if kind == b":":
        return int(rest)
    if kind == b"$":
        if rest == b"-1":
            return b""
        return reader.read(int(rest) + 2)[:-2]
    if kind == b"*":
        items = []
        for _ in range(max(0, int(rest))):
            item = _read(reader)
            items.append(item if isinstance(item, bytes) else str(item).encode())
        return items
    raise ValueError(f"unexpected reply {line!r}")


def _fields(reply: object) -> dict[str, str]:
    assert isinstance(reply, list), reply
    return {k.decode(): v.decode() for k, v in zip(reply[::2], reply[1::2], strict=True)}


@dataclass
class SentinelGroup:
    """The processes, their ports, and what tests do to them."""

    directory: Path
    primary_port: int = field(default_factory=free_port)
    replica_port: int = field(default_factory=free_port)
    sentinel_ports: list[int] = field(default_factory=lambda: [free_port() for _ in range(3)])
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    prefixes: Iterator[int] = field(default_factory=itertools.count)

    def url(self, **options: str) -> str:
        """A ``redis+sentinel://`` URL naming all three sentinels, with a prefix of its own."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        query = "&".join(
            f"{k}={v}" for k, v in {"prefix": f"t{next(self.prefixes)}:", **options}.items()
        )
        return f"redis+sentinel://{hosts}/{SERVICE}/0?{query}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (scripts/test installs it)")
        self._data_node(binary, self.primary_port)
        self._data_node(
            binary, self.replica_port, "--replicaof", "127.0.0.1", str(self.primary_port)
        )
        self.wait_for(self._replica_linked, "the replica to sync")
        ids = {port: f"{port:040x}" for port in self.sentinel_ports}
        for port in self.sentinel_ports:
            lines = [
                f"port {port}",
                "bind 127.0.0.1",
                f"dir {self.directory}",
                f"sentinel myid {ids[port]}",
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2",
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
                f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
                f"sentinel known-replica {SERVICE} 127.0.0.1 {self.replica_port}",
            ] + [
                f"sentinel known-sentinel {SERVICE} 127.0.0.1 {other} {ids[other]}"
                for other in self.sentinel_ports
                if other != port
            ]
            config = self.directory / f"sentinel-{port}.conf"  # sentinels rewrite their file
            config.write_text("\n".join(lines) + "\n")
            self._spawn(port, [binary, str(config), "--sentinel"])
        self.wait_for(self._sentinels_ready, "the sentinels to know each other")

    def _data_node(self, binary: str, port: int, *extra: str) -> None:
        directory = self.directory / f"redis-{port}"
        directory.mkdir(exist_ok=True)
        self._spawn(
            port,
            [
                binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--dir", str(directory),
                "--repl-diskless-sync-delay", "0", "--loglevel", "warning", *extra,
            ],
        )  # fmt: skip

    def _spawn(self, port: int, argv: list[str]) -> None:
        self.processes[port] = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def wait_for(
        self, condition: Callable[[], bool], what: str, timeout: float = START_TIMEOUT
    ) -> float:
        """Poll ``condition()`` until true; the seconds it took (fails after ``timeout``)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            for port, process in self.processes.items():
                if process.poll() is not None and port not in self._killed:
                    raise RuntimeError(f"redis process on port {port} exited")
            try:
                if condition():
                    return time.monotonic() - started
            except (OSError, ValueError, AssertionError):
                pass
            time.sleep(0.01)
        raise TimeoutError(f"timed out waiting for {what}")

    @property
    def _killed(self) -> set[int]:
        return {port for port, p in self.processes.items() if p.returncode is not None}

    def _replica_linked(self) -> bool:
        # After a full sync, Redis 7 streams writes to the replica only once the replica has
        # acknowledged (REPLCONF ACK, up to a second later); until then WAIT confirms nothing.
        # (A WAIT before that returns at once: nothing was streamed, so nothing to confirm.)
        command(self.primary_port, "SET", "linked", "1")  # moves the replication offset on
        info = command(self.primary_port, "INFO", "replication")
        assert isinstance(info, bytes)
        acked = re.search(rb"slave0:.*,state=online,offset=(\d+),", info)
        return acked is not None and int(acked.group(1)) > 0

    def _sentinels_ready(self) -> bool:
        for port in self.sentinel_ports:
            state = _fields(command(port, "SENTINEL", "MASTER", SERVICE))
            if state["num-other-sentinels"] != "2" or state["num-slaves"] != "1":
                return False
            if state["flags"] != "master":
                return False
        return True

    def primary_named(self) -> set[int]:
        """The primary's port as each answering sentinel names it."""
        named = set()
        for port in self.sentinel_ports:
            try:
                reply = command(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            except OSError:
                continue
            assert isinstance(reply, list) and len(reply) == 2, reply
            named.add(int(reply[1]))
        return named

    def role(self, port: int) -> bytes:
        reply = command(port, "ROLE")
        assert isinstance(reply, list) and reply, reply
        return reply[0]

    def kill(self, port: int) -> None:
        """SIGKILL the process on ``port`` (by PID) and reap it."""
        process = self.processes[port]
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

    def pause(self, port: int) -> None:
        """Freeze the process on ``port`` (SIGSTOP): its connections stay open, silent."""
        os.kill(self.processes[port].pid, signal.SIGSTOP)

    def resume(self, port: int) -> None:
        """Thaw a process frozen by ``pause``."""
        if self.processes[port].poll() is None:
            os.kill(self.processes[port].pid, signal.SIGCONT)

    def failover_done(self) -> bool:
        """Every sentinel names the replica as primary, and it has taken the role."""
        return (
            self.primary_named() == {self.replica_port}
            and self.role(self.replica_port) == b"master"
        )

    def stop(self) -> None:
        for port in list(self.processes):
            self.kill(port)


def started_group(directory: Path) -> Iterator[SentinelGroup]:
    """Start a group in ``directory``, yield it, kill every process at the end."""
    group = SentinelGroup(directory)
    try:
        group.start()
        yield group
    finally:
        group.stop()
