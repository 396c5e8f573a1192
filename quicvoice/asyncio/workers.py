"""``quicvoice serve --workers N``: N backend processes on one host, one per core.

Each worker is a whole backend with its own UDP port and its own QUIC-LB server ID, both
derived from the configured ones: worker ``i`` (from 0) has server ID ``base + i`` (the
configured ``server_id`` read as a big-endian number, same length) and listens on port
``port + i``. In a forwarder's file (with ``[[backends]]``) each worker's address is instead
the one of its own ``[[backends]]`` entry, so the forwarder routes every CID to the right
process and needs nothing but one ``[[backends]]`` entry per worker.

Why N ports and not one shared with ``SO_REUSEPORT``: the kernel spreads a shared port's
datagrams by a hash of the 4-tuple, not by connection ID, so after a migration (or a NAT
rebinding) a connection's datagrams would land on a worker that does not hold it; steering
by CID needs an eBPF program, which this Python package does not load. With a port per worker
the forwarder, which already routes by CID, does the steering.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from ..errors import ConfigurationError
from ..settings import Address, format_address

#: A bound on ``--workers``: more processes than this on one host is a configuration mistake.
MAX_WORKERS = 64
#: Seconds a worker has to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 10.0

__all__ = [
    "MAX_WORKERS",
    "WorkerPlan",
    "check_worker_count",
    "check_shared_keys",
    "file_keys",
    "run_workers",
    "worker_address",
    "worker_server_id",
]


def say_json(message: Mapping[str, object]) -> None:
    """Print ``message`` as one JSON line in one write: ``--workers`` share stdout, and
    ``print`` writes the line and its newline apart when unbuffered (``PYTHONUNBUFFERED``),
    so two workers' lines could run together."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerPlan:
    """What one worker process is told on its command line."""

    #: The worker's index, from 0.
    index: int
    #: Its QUIC-LB server ID.
    server_id: bytes
    #: Its UDP address.
    listen: Address
    #: Its metrics endpoint, if the backend serves one.
    metrics: Address | None = None


def check_worker_count(count: object) -> int:
    """Return ``count`` if it is a whole number of workers in 1..``MAX_WORKERS``."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_WORKERS:
        raise ConfigurationError(f"--workers: must be 1..{MAX_WORKERS}, not {count!r:.40}")
    return count


def worker_server_id(base: bytes, index: int) -> bytes:
    """Server ID of worker ``index``: ``base + index``, as big-endian numbers of base's length."""
    value = int.from_bytes(base, "big") + index
    if value >= 1 << (8 * len(base)):
        raise ConfigurationError(
            f"server_id: {base.hex()} + {index} does not fit in {len(base)} octets"
        )
    return value.to_bytes(len(base), "big")


def worker_address(address: Address, index: int, what: str = "listen") -> Address:
    """Address of worker ``index``: the same host, port ``port + index`` (port 0: any)."""
    host, port = address
    if port == 0:
        return address
    if port + index > 0xFFFF:
        raise ConfigurationError(f"{what}: port {port} + {index} is above 65535")
    return (host, port + index)


def file_keys(path: str | Path) -> frozenset[str]:
    """The top-level keys of the TOML file at ``path`` (empty if it cannot be read: loading
    the configuration reports that, naming the file)."""
    try:
        return frozenset(tomllib.loads(Path(path).read_text()))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return frozenset()


def check_shared_keys(keys: frozenset[str]) -> None:
    """Refuse a file whose workers would not share what routing and resets need."""
    for key in ("configs", "reset_key"):
        if key not in keys:
            raise ConfigurationError(
                f"--workers: the file must set {key} (the workers share it: QUIC-LB routing "
                "and stateless resets across them need one value)"
            )


class _Stop(Exception):
    """SIGINT or SIGTERM reached the supervisor."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def run_workers(serve_argv: Sequence[str], plans: Sequence[WorkerPlan]) -> int:
    """Start one ``quicvoice serve`` process per plan and supervise them.

    Every worker gets ``serve_argv`` (the supervisor's own ``serve`` arguments) followed by
    its own ``--server-id``, ``--listen`` and ``--metrics``, which win over the earlier ones.
    On SIGINT or SIGTERM every worker is sent SIGTERM; when one worker exits on its own the
    others are stopped too and its exit status is returned.
    """
    previous = {
        signum: signal.signal(signum, _raise_stop) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    processes: list[subprocess.Popen[bytes]] = []
    status = 0
    try:
        for plan in plans:
            command = [sys.executable, "-m", "quicvoice.cli", *serve_argv, "--workers", "1"]
            command += ["--server-id", plan.server_id.hex()]
            command += ["--listen", format_address(plan.listen)]
            if plan.metrics is not None:
                command += ["--metrics", format_address(plan.metrics)]
            processes.append(subprocess.Popen(command))
        say_json(
            {
                "workers": [
                    {
                        "pid": process.pid,
                        "server_id": plan.server_id.hex(),
                        "listen": format_address(plan.listen),
                    }
                    for process, plan in zip(processes, plans, strict=True)
                ]
            }
        )
        _, wait_status = os.wait()
        status = os.waitstatus_to_exitcode(wait_status)
        if status < 0:  # killed by a signal: the shell's convention
            status = 128 - status
    except _Stop:
        status = 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return status
