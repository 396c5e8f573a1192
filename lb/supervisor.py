"""The forwarder's supervisor: sockets, pump processes, signals, metrics, health probes.

Process layout::

    supervisor (quicvoice-lb)         parses the config, binds the sockets, serves /metrics,
     |                                 validates and relays SIGHUP, restarts dead pumps,
     |                                 sends the health probes
     +- worker 0: uplink pump          VIP socket -> decide -> backend socket (lb/pump.py)
     |            downlink pump        backend socket -> decide -> VIP socket
     +- worker 1: ... (--workers N: N pairs of sockets on the same ports, SO_REUSEPORT)

Each pump is a plain blocking loop in its own process, no event loop and no lock shared with
the other direction. The two pumps of a worker share its two sockets, inherited across
``fork``: the downlink pump sends from the VIP socket, the uplink pump from the backend socket,
so backends answer to ``backend_listen``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

from quicvoice.errors import ConfigurationError
from quicvoice.settings import Address, format_address

from . import errqueue, mmsg
from .config import ForwarderConfig, load_config
from .health import HealthTable, probes
from .log import JsonLogger
from .metrics import MetricsServer, read_snapshots
from .pump import (
    DOWNLINK,
    HANDLED_SIGNALS,
    IDLE_TIMEOUT,
    NATIVE,
    PYTHON,
    UPLINK,
    Pump,
    native_path_for,
    set_receive_timeout,
)
from .router import MetricSample

#: Socket buffers asked for (the kernel may cap them at net.core.[rw]mem_max).
SOCKET_BUFFER_LEN = 4 * 1024 * 1024
#: Backends whose health is tracked (a larger pool is tracked up to this many).
MAX_HEALTH_BACKENDS = 1024
#: A pump that dies sooner than this after starting is restarted only after this long.
RESTART_BACKOFF = 1.0
#: How long the supervisor waits for pumps to exit on SIGTERM before it kills them.
STOP_GRACE = 2.0
#: Between relaying SIGHUP to the downlink pumps and to the uplink pumps (seconds): a backend
#: that a reload adds is trusted on the way back before the first datagram goes to it.
RELOAD_STAGGER = 0.05
SUPERVISOR_TICK = 0.1
#: Gauge: 1 when the pumps run on the native path, 0 on the Python path.
NATIVE_PATH_METRIC = "quicvoice_lb_native_path"
#: Gauge per backend: 1 when it takes traffic, 0 when it is down (configured or found so).
BACKEND_UP_METRIC = "quicvoice_lb_backend_up"
#: Counter per backend and direction (``to="down"`` / ``to="up"``) of health changes.
BACKEND_TRANSITIONS_METRIC = "quicvoice_lb_backend_transitions_total"


def open_socket(address: Address, *, icmp_errors: bool = False) -> socket.socket:
    """A UDP socket bound to ``address`` with SO_REUSEPORT and large buffers, blocking.

    SO_RCVTIMEO makes ``recvfrom`` return EAGAIN after ``IDLE_TIMEOUT`` while Python still
    sees a blocking socket (a Python-level timeout would add a poll() per datagram); a pump on
    the native path clears it on the socket it receives from and uses an alarm instead.
    ``icmp_errors`` queues ICMP errors on the socket (lb/errqueue.py), for the backend socket.
    """
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        for option, forced in (
            (socket.SO_RCVBUF, getattr(socket, "SO_RCVBUFFORCE", None)),
            (socket.SO_SNDBUF, getattr(socket, "SO_SNDBUFFORCE", None)),
        ):
            try:
                if forced is None:
                    raise PermissionError
                sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER_LEN)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_LEN)
        set_receive_timeout(sock, IDLE_TIMEOUT)
        if icmp_errors:
            errqueue.enable(sock)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def snapshot_parent() -> str | None:
    """Where the pumps' counter snapshots go: /dev/shm (memory) where it is writable, else the
    temporary directory. Each pump replaces its file every second while it forwards; on a disk
    file system creating and renaming it took 0.4 to 1 ms here, a stall of the pump's loop
    (the tail of the latency at one datagram in flight), on tmpfs 0.1 ms."""
    shared = "/dev/shm"
    return shared if os.path.isdir(shared) and os.access(shared, os.W_OK | os.X_OK) else None


def _run_pump(kwargs: dict[str, Any]) -> None:
    Pump(**kwargs).run()


class Supervisor:
    """Starts ``workers`` pairs of pumps, relays signals, serves metrics, restarts dead pumps."""

    def __init__(
        self,
        config_path: Path,
        config: ForwarderConfig,
        workers: int,
        logger: JsonLogger,
        *,
        batch: bool = False,
        native: bool = True,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.config_path = config_path
        self.config = config
        self.workers = workers
        #: Whether pumps on the Python path batch system calls (``--batch``).
        self.batch = batch
        #: Whether pumps may take the native path (``--python-path`` says no).
        self.native = native
        #: Why the pumps route on the Python path (``None``: they take the native one).
        self.python_reason: str | None = "--python-path"
        self.logger = logger.bind(role="supervisor")
        self._context = multiprocessing.get_context("fork")
        self._run_dir = Path(tempfile.mkdtemp(prefix="quicvoice-lb-", dir=snapshot_parent()))
        self._sockets: list[tuple[socket.socket, socket.socket]] = []
        self._pumps: dict[tuple[int, str], BaseProcess] = {}
        self._started: dict[tuple[int, str], float] = {}
        self._stopping = False
        self._reload_requested = False
        self._reloads = {"ok": 0, "error": 0}
        self._restarts = 0
        self._metrics: MetricsServer | None = None
        #: When each backend last answered a probe; shared with the pumps across fork.
        self._health = (
            HealthTable(MAX_HEALTH_BACKENDS, config.health_timeout)
            if config.health_interval > 0
            else None
        )
        self._next_probe = 0.0
        #: Whether the backend sockets queue ICMP errors (lb/errqueue.py).
        self._icmp_errors = config.health_interval > 0 and config.health_icmp
        #: Whether each backend takes traffic, by server ID (hex), as the pumps decide it.
        self._backend_up: dict[str, bool] = {}
        #: Health changes by (server ID, "down" / "up").
        self._transitions: dict[tuple[str, str], int] = {}
        self._watch_health()

    def collect(self) -> list[MetricSample]:
        """Every pump's latest counters plus the supervisor's own."""
        samples = read_snapshots(self._run_dir)
        samples.append(("quicvoice_lb_workers", (), self.workers))
        samples.append((NATIVE_PATH_METRIC, (), int(self.python_reason is None)))
        samples.append(("quicvoice_lb_pump_restarts_total", (), self._restarts))
        for result, count in self._reloads.items():
            samples.append(("quicvoice_lb_config_reloads_total", (("result", result),), count))
        for server_id, up in list(self._backend_up.items()):
            samples.append((BACKEND_UP_METRIC, (("server_id", server_id),), int(up)))
        for (server_id, to), count in list(self._transitions.items()):
            labels = (("server_id", server_id), ("to", to))
            samples.append((BACKEND_TRANSITIONS_METRIC, labels, count))
        return samples

    def _watch_health(self) -> None:
        """Follow each backend's state for the gauge, with the rule the uplink pumps apply
        (lb/health.py): configured down, or dead in the health table."""
        backends = self.config.backends
        dead = self._health.dead(len(backends)) if self._health is not None else frozenset()
        now_up = {
            backend.server_id.hex(): not backend.down and index not in dead
            for index, backend in enumerate(backends)
        }
        for server_id, up in now_up.items():
            before = self._backend_up.get(server_id)
            if before is not None and before != up:
                key = (server_id, "up" if up else "down")
                self._transitions[key] = self._transitions.get(key, 0) + 1
        self._backend_up = now_up

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit status."""
        try:
            self._bind()
            signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
            try:
                for worker in range(self.workers):
                    for direction in (DOWNLINK, UPLINK):
                        self._start(worker, direction)
                signal.signal(signal.SIGHUP, self._on_sighup)
                signal.signal(signal.SIGTERM, self._on_stop)
                signal.signal(signal.SIGINT, self._on_stop)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
            if self.config.metrics is not None:
                self._metrics = MetricsServer(self.config.metrics, self.collect)
                self._metrics.start()
                self.logger.info("metrics_listening", address=format_address(self._metrics.address))
            if self.python_reason is not None:
                self.logger.warning("python_path", reason=self.python_reason)
            self.logger.info(
                "forwarding",
                listen=format_address(self.config.listen),
                backend_listen=format_address(self.config.backend_listen),
                workers=self.workers,
                path=PYTHON if self.python_reason is not None else NATIVE,
                batched=self.python_reason is None or (self.batch and mmsg.AVAILABLE),
                backends=len(self.config.backends),
                pid=os.getpid(),
            )
            while not self._stopping:
                time.sleep(SUPERVISOR_TICK)
                if self._reload_requested:
                    self._reload()
                self._reap()
                self._probe()
                self._watch_health()
            return 0
        finally:
            self._shutdown()

    def _bind(self) -> None:
        for _ in range(self.workers):
            vip = backend = None
            try:
                vip = open_socket(self.config.listen)
                backend = open_socket(self.config.backend_listen, icmp_errors=self._icmp_errors)
            except OSError as error:
                for sock in (vip, backend):
                    if sock is not None:
                        sock.close()
                key = "listen" if vip is None else "backend_listen"
                address = getattr(self.config, key)
                raise ConfigurationError(
                    f"{key}: cannot bind {format_address(address)}: {error.strerror or error}"
                ) from None
            self._sockets.append((vip, backend))
        if self.native:
            self.python_reason = native_path_for(*self._sockets[0])

    def _start(self, worker: int, direction: str) -> None:
        vip, backend = self._sockets[worker]
        kwargs = {
            "direction": direction,
            "worker": worker,
            "config_path": self.config_path,
            "config": self.config,
            "vip": vip,
            "backend": backend,
            "snapshot": self._run_dir / f"worker{worker}-{direction}.json",
            "parent_pid": os.getpid(),
            "logger": self.logger.bind(role="pump"),
            "batch": self.batch,
            "native": self.native,
            "health": self._health,
        }
        process = self._context.Process(
            target=_run_pump, args=(kwargs,), name=f"quicvoice-lb {direction} {worker}"
        )
        process.start()
        self._pumps[(worker, direction)] = process
        self._started[(worker, direction)] = time.monotonic()

    def _reap(self) -> None:
        now = time.monotonic()
        for key, process in list(self._pumps.items()):
            if process.is_alive() or self._stopping:
                continue
            if now - self._started[key] < RESTART_BACKOFF:
                continue  # it died young: wait before trying again
            self.logger.error("pump_died", worker=key[0], pump=key[1], exit_code=process.exitcode)
            process.join(0)
            self._restarts += 1
            signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
            try:
                self._start(*key)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)

    def _reload(self) -> None:
        self._reload_requested = False
        try:
            config = load_config(self.config_path)
        except ConfigurationError as error:
            self._reloads["error"] += 1
            self.logger.error("reload_refused", error=str(error))
            return
        self._reloads["ok"] += 1
        for key in ("listen", "backend_listen", "metrics"):
            if getattr(config, key) != getattr(self.config, key):
                self.logger.warning("reload_ignores_key", key=key, reason="restart to rebind")
        if self._health is not None:
            self._health.carry_over(self.config.backends, config.backends)
        self.config = config
        for direction in (DOWNLINK, UPLINK):
            for (_, pump_direction), process in self._pumps.items():
                if pump_direction == direction and process.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGHUP)
            if direction == DOWNLINK:
                time.sleep(RELOAD_STAGGER)
        self.logger.info("reload_relayed", backends=len(config.backends))

    def _probe(self) -> None:
        """Send each backend a health probe every ``health_interval``."""
        now = time.monotonic()
        if self._health is None or now < self._next_probe or not self._sockets:
            return
        self._next_probe = now + self.config.health_interval
        backend_socket = self._sockets[0][1]
        config = self.config
        packets = probes(config.configs, config.backends, config.reset_key)
        for backend, packet in zip(config.backends, packets, strict=True):
            # A probe that cannot leave is a probe unanswered.
            errqueue.sendto_past_icmp(backend_socket, packet, backend.address)

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        self._reload_requested = True

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _shutdown(self) -> None:
        self._stopping = True
        for process in self._pumps.values():
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for process in self._pumps.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(1.0)
        if self._metrics is not None:
            self._metrics.close()
        for pair in self._sockets:
            for sock in pair:
                sock.close()
        shutil.rmtree(self._run_dir, ignore_errors=True)
        self.logger.info("stopped")
