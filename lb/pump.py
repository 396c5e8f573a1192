"""A pump: one direction of one worker, in its own process. Its life, not its loop.

A pump owns a ``Router`` and what it counted, and looks after itself between datagrams: every
``TICK_INTERVAL`` it publishes its counters (``flush``), applies a pending reload (SIGHUP) and,
uplink, the backends' health (lb/health.py); it stops on SIGTERM/SIGINT or when its
supervisor is gone. The loop that moves datagrams is one of two paths:

- **native** (lb/native_path.py, the extension ``lb._native``): IPv4 sockets, adaptive
  ``recvmmsg``/``sendmmsg`` batches, the common datagram decided in C;
- **python** (lb/python_path.py): where the native path is not available, with IPv6 sockets,
  or asked for (``--python-path``); per datagram, or batched with ``--batch``.

Both take their tables from the Router, route every other datagram through it, and count so
that ``Router.fold`` gives the counters the Router alone would have
(tests/lb/test_lb_fast_path.py, tests/lb/test_lb_native_path.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import struct
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from quicvoice.encapsulation import EncapsulationError, unwrap
from quicvoice.errors import ConfigurationError
from quicvoice.healthprobe import PROBE_CLIENT, is_authentic_probe, probe_key
from quicvoice.settings import Address, format_address

from . import ecn, errqueue, mmsg, native_path, python_path
from .config import ForwarderConfig, load_config
from .health import HealthTable, probe_packet
from .log import JsonLogger
from .metrics import write_snapshot
from .router import Counters, DropReason, MetricSample, Router

#: Counters reach the supervisor about this often (seconds).
SNAPSHOT_INTERVAL = 1.0
#: How often a pump looks after itself between datagrams (counters, backend health), seconds.
TICK_INTERVAL = 0.05
#: How long an idle pump blocks before it looks after itself, seconds: the receive timeout
#: (SO_RCVTIMEO) of the sockets on the Python path, an interval timer (SIGALRM) on the native.
IDLE_TIMEOUT = 0.25
#: Linux prctl(2) option: signal to receive when the parent dies.
PR_SET_PDEATHSIG = 1
#: Log at most this many unexpected errors per pump, then one in ERROR_LOG_EVERY.
ERROR_LOG_BURST = 10
ERROR_LOG_EVERY = 10_000
#: Failed sends by errno, per direction: a breakdown of the ``send_error`` drops.
#: An ICMP error quoting one of our probes is believed when the probe is at most this many
#: seconds old (the error comes back within a round trip).
REFUSED_PROBE_LIFETIME = 2.0
SEND_ERRORS_METRIC = "quicvoice_lb_send_errors_total"
HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
UPLINK = "uplink"
DOWNLINK = "downlink"
#: The pumps' paths (the ``path`` of ``pump_started``).
NATIVE = "native"
PYTHON = "python"


class Stopped(BaseException):
    """Raised by the SIGTERM/SIGINT handler to leave a blocking loop at once."""


def set_parent_death_signal() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (best effort elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def set_receive_timeout(sock: socket.socket, seconds: float) -> None:
    """Make blocking receives on ``sock`` fail with EAGAIN after ``seconds`` (0: never)."""
    whole = int(seconds)
    timeval = struct.pack("@ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    """SIGALRM only has to interrupt a blocking receive (EINTR); the loop then ticks."""


def native_path_for(vip: socket.socket, backend: socket.socket) -> str | None:
    """Why the native path cannot serve these sockets, or ``None`` when it can."""
    if not native_path.AVAILABLE:
        return native_path.UNAVAILABLE
    if vip.family != socket.AF_INET or backend.family != socket.AF_INET:
        return "IPv6 sockets (the native path takes IPv4)"
    return None


class Pump:
    """One direction of one worker: receive, decide, send. Runs in its own process."""

    def __init__(
        self,
        *,
        direction: str,
        worker: int,
        config_path: Path,
        config: ForwarderConfig,
        vip: socket.socket,
        backend: socket.socket,
        snapshot: Path,
        parent_pid: int,
        logger: JsonLogger,
        batch: bool = False,
        native: bool = True,
        health: HealthTable | None = None,
    ) -> None:
        if direction not in (UPLINK, DOWNLINK):
            raise ValueError(f"direction must be {UPLINK!r} or {DOWNLINK!r}")
        self.direction = direction
        self.worker = worker
        self.config_path = config_path
        self.counters = Counters()
        self._config = config
        #: The Router that decides (replaced on reloads and health changes).
        self.router = Router(config, self.counters)
        self.logger = logger.bind(pump=direction, worker=worker)
        #: The client-facing socket and the backend-facing one (shared with the other pump).
        self.vip = vip
        self.backend = backend
        # Each datagram's ECN bits are read and relayed with it (lb/ecn.py, specs/ecn.md).
        ecn.enable_tos_reporting(vip)
        ecn.enable_tos_reporting(backend)
        self._snapshot = snapshot
        self._parent_pid = parent_pid
        self._next_snapshot = 0.0
        #: Unexpected errors so far (logged with a rate limit).
        self.errors = 0
        #: Whether a SIGHUP asked for a reload the loop has not made yet.
        self.reload_pending = False
        #: When the loop next looks after itself; a SIGHUP sets it to 0 so that the datagram
        #: being received is routed by the new Router (the loop tests no flag per datagram).
        self.next_tick = 0.0
        #: Why the native path does not serve this pump (``None``: it does).
        self.python_reason = native_path_for(vip, backend) if native else "--python-path"
        #: ``"native"`` or ``"python"``.
        self.path = NATIVE if self.python_reason is None else PYTHON
        #: Whether this pump receives and sends in batches: always on the native path; on the
        #: Python path when asked for and available here (recvmmsg/sendmmsg).
        self.batched = self.path == NATIVE or (batch and mmsg.AVAILABLE)
        #: Failed sendto calls by errno name (unbatched); batched senders count their own.
        self._send_errors: dict[str, int] = {}
        #: The batched Python loops' senders (their ``errors``).
        self.senders: tuple[mmsg.Sender | mmsg.Outbox, ...] = ()
        #: Probe answers (downlink) and health decisions (uplink): see lb/health.py.
        self._health = health
        self._backend_index = {b.address: i for i, b in enumerate(config.backends)}
        self._dead: frozenset[int] = frozenset()
        self._probe_key = None if config.reset_key is None else probe_key(config.reset_key)
        #: Entries read from the backend socket's error queue (lb/errqueue.py).
        self.icmp_errors = 0
        #: Whether both sockets are IPv4 (the batched Python loops then work in place).
        self.ipv4 = vip.family == socket.AF_INET and backend.family == socket.AF_INET
        #: The batched in-place Python loops' view of the Router.
        self.in_place = python_path.InPlaceTables.of(self.router, self.ipv4)
        #: The native loop, on the native path.
        self.native: native_path.NativeRelay | None = None
        if self.path == NATIVE:
            self.native = native_path.NativeRelay(
                uplink=direction == UPLINK, vip=vip, backend=backend, router=self.router
            )

    def use(self, router: Router) -> None:
        """Route with ``router`` from the next datagram on (counts of the old one kept)."""
        self.fold()
        self.router = router
        self.in_place = python_path.InPlaceTables.of(router, self.ipv4)
        if self.native is not None:
            self.native.use(router)

    def fold(self) -> None:
        """Move what the fast path counted into ``counters``."""
        if self.native is not None:
            drops = (
                self.counters.uplink_drops
                if self.direction == UPLINK
                else (self.counters.downlink_drops)
            )
            self.native.fold(drops)
        self.router.fold()

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT or until the supervisor is gone."""
        set_parent_death_signal()
        signal.signal(signal.SIGHUP, self._on_sighup)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        self.logger.info(
            "pump_started",
            pid=os.getpid(),
            path=self.path,
            batched=self.batched,
            **({"python_reason": self.python_reason} if self.python_reason else {}),
        )
        try:
            if os.getppid() != self._parent_pid:
                return
            if self.native is not None:
                self._wake_by_alarm()
            self.loop()
        except Stopped:
            pass
        finally:
            with contextlib.suppress(Stopped):
                signal.setitimer(signal.ITIMER_REAL, 0.0)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                self.flush()
                self.logger.info("pump_stopped", pid=os.getpid())

    def _wake_by_alarm(self) -> None:
        """Native path: block in receive without a timeout, interrupted by SIGALRM instead.

        A receive timeout arms and cancels a kernel timer in every receive that waits (0.1 to
        0.2 µs measured here, two waits per round trip at one datagram in flight); an interval
        timer costs nothing per wait, and its signal interrupts an idle wait (EINTR) every
        ``IDLE_TIMEOUT`` as the timeout did. Only this pump receives from that socket.
        """
        set_receive_timeout(self.vip if self.direction == UPLINK else self.backend, 0.0)
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, IDLE_TIMEOUT, IDLE_TIMEOUT)

    def loop(self) -> None:
        """Move datagrams until ``Stopped``, on this pump's path."""
        uplink = self.direction == UPLINK
        if self.native is not None:
            self.native.run(self)
        elif self.batched and self.ipv4:
            (python_path.uplink_relay if uplink else python_path.downlink_relay)(self)
        elif self.batched:
            (python_path.uplink_batches if uplink else python_path.downlink_batches)(self)
        else:
            (python_path.uplink_loop if uplink else python_path.downlink_loop)(self)

    def send_failed(self, drops: dict[DropReason, int], error: OSError) -> None:
        """Count a datagram that ``sendto`` could not send."""
        drops[DropReason.SEND_ERROR] += 1
        name = errno.errorcode.get(error.errno or 0, mmsg.ADDRESS_ERROR)
        self._send_errors[name] = self._send_errors.get(name, 0) + 1

    def send_error_samples(self) -> list[MetricSample]:
        """Failed sends by errno name (``quicvoice_lb_send_errors_total``), every I/O path."""
        totals = dict(self._send_errors)
        errors = [sender.errors for sender in self.senders]
        if self.native is not None:
            errors.append(self.native.errors)
        for counted in errors:
            for name, count in counted.items():
                totals[name] = totals.get(name, 0) + count
        return [
            (SEND_ERRORS_METRIC, (("direction", self.direction), ("error", name)), count)
            for name, count in sorted(totals.items())
        ]

    def tick(self) -> None:
        """Look after the pump: a pending reload, counters, backend health."""
        if self.reload_pending:
            self.reload()
        now = time.monotonic()
        self.next_tick = now + TICK_INTERVAL
        if now >= self._next_snapshot:
            self.flush()
        if self._health is not None:
            self.read_error_queue()
            if self.direction == UPLINK:
                self._apply_health()
                # A suspect is routed as down the moment its confirmation times out, not up
                # to a tick later: its clients' next datagrams get their resets.
                due = self._health.next_confirmation(len(self.router.config.backends))
                if due is not None and now < due < self.next_tick:
                    self.next_tick = due

    def receive_failed(self, error: OSError) -> None:
        """A receive failed: the error queue when the kernel reported an ICMP error, else
        an unexpected error."""
        if error.errno in errqueue.ICMP_ERRNOS:
            self.read_error_queue()
        else:
            self.unexpected("recv_failed", error)

    def read_error_queue(self) -> None:
        """Make the backends whose ports were reported unreachable suspects, and probe them."""
        if self._health is not None:
            read = errqueue.drain(self.backend, self._port_unreachable)
            self.icmp_errors += read
            if read and self.direction == UPLINK:
                # A refused probe may have confirmed a suspicion: route so from the next
                # datagram on (the loops pick up a new router when they tick).
                self.next_tick = time.monotonic()

    def _port_unreachable(self, address: Address, quoted: bytes) -> None:
        index = self._backend_index.get(address)
        health = self._health
        if index is None or health is None:
            return
        config = self._config
        backend = config.backends[index]
        if self._refuses_own_probe(quoted):
            health.confirm(index)
            return
        if not health.suspect(index):
            return
        self.logger.info(
            "backend_unreachable",
            server_id=backend.server_id.hex(),
            address=format_address(address),
        )
        packet = probe_packet(config.configs[-1], backend, self._probe_key, time.time())
        # Sent, or unanswered: the suspicion stands either way.
        errqueue.sendto_past_icmp(self.backend, packet, backend.address)

    def _refuses_own_probe(self, quoted: bytes) -> bool:
        """Whether an ICMP error quotes one of this deployment's probes, sent just now."""
        key = self._probe_key
        if key is None:
            return False
        try:
            client, packet = unwrap(quoted)
        except EncapsulationError:
            return False
        if client != PROBE_CLIENT:
            return False
        cid_len = self._config.configs[-1].cid_len
        return is_authentic_probe(key, packet, cid_len, time.time(), REFUSED_PROBE_LIFETIME)

    def probe_answered(self, source: Any) -> None:
        """A backend answered a health probe (downlink)."""
        index = self._backend_index.get((source[0], source[1]))
        if index is not None and self._health is not None:
            self._health.heard(index)

    def _apply_health(self) -> None:
        """Treat backends that stopped answering probes as down (and back when they answer)."""
        assert self._health is not None
        config = self.router.config
        dead = self._health.dead(len(config.backends))
        if dead == self._dead:
            return
        for index in dead - self._dead:
            self.logger.warning(
                "backend_unhealthy", server_id=config.backends[index].server_id.hex()
            )
        for index in self._dead - dead:
            self.logger.info("backend_healthy", server_id=config.backends[index].server_id.hex())
        self._dead = dead
        self.use(Router(_with_down(self._config, dead), self.counters))

    def idle(self) -> None:
        """Woken without a datagram (receive timeout, the idle alarm, a signal): a pending
        reload, check on the supervisor, tick."""
        if self.reload_pending:
            self.reload()
        if os.getppid() != self._parent_pid:
            self.logger.warning("supervisor_gone")
            raise Stopped
        self.tick()

    def flush(self) -> None:
        """Publish this pump's counters for the supervisor's metrics endpoint."""
        self._next_snapshot = time.monotonic() + SNAPSHOT_INTERVAL
        self.fold()
        try:
            write_snapshot(self._snapshot, self.counters.samples() + self.send_error_samples())
        except OSError as error:
            self.unexpected("snapshot_failed", error)

    def reload(self) -> None:
        """Read the configuration file again; keep the old Router if it is invalid."""
        self.reload_pending = False
        try:
            config = load_config(self.config_path)
        except ConfigurationError as error:
            self.logger.error("reload_failed", error=str(error))
            config = None
        if config is not None:
            old = self.router.config
            for key in ("listen", "backend_listen"):
                if getattr(config, key) != getattr(old, key):
                    self.logger.warning("reload_ignores_key", key=key, reason="restart to rebind")
            self._config = config
            self._backend_index = {b.address: i for i, b in enumerate(config.backends)}
            self._probe_key = None if config.reset_key is None else probe_key(config.reset_key)
            self._dead = frozenset()
            self.use(Router(config, self.counters))
            self.logger.info(
                "reloaded",
                backends=len(config.backends),
                healthy=self.router.healthy_backends,
            )

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        self.reload_pending = True
        self.next_tick = 0.0  # the loop reloads before it routes its next datagram

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        raise Stopped

    def unexpected(self, event: str, error: BaseException) -> None:
        """Count and log (rate-limited) an error that cost at most one datagram."""
        self.errors += 1
        if self.errors <= ERROR_LOG_BURST or not self.errors % ERROR_LOG_EVERY:
            self.logger.error(event, error=repr(error), count=self.errors)


def _with_down(config: ForwarderConfig, dead: frozenset[int]) -> ForwarderConfig:
    """``config`` with the backends at the ``dead`` indexes marked down."""
    if not dead:
        return config
    backends = tuple(
        replace(backend, down=True) if index in dead else backend
        for index, backend in enumerate(config.backends)
    )
    return replace(config, backends=backends)
