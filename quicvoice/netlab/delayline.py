"""A userspace delay-and-loss line on TUN devices: ``python -m quicvoice.netlab.delayline``.

This kernel has no ``tc netem``, so a link with delay and loss is a program: the kernel routes
packets into a TUN device, this program reads them, drops some at random, holds the rest for
the configured delay and writes them back into the same device, where the kernel routes them
on (specs/netlab.md has the topology and the measured accuracy).

    python -m quicvoice.netlab.delayline --line dl-up:delay=50,loss=1 \\
        --line dl-down:delay=50,jitter=5,loss=1 --seed 7

Each ``--line DEVICE[:key=value,...]`` serves one TUN device (created if it does not exist,
else attached: ``ip tuntap add mode tun`` devices work) with its own ``LineConfig``; one
device per direction gives per-direction settings. The program prints one JSON line
``{"event": "ready", ...}`` once every device is attached, one ``{"event": "stats", ...}``
line on SIGUSR1 and a final one on SIGTERM/SIGINT, and exits when its parent dies.

The core (``DelayLine``) is sans-I/O: packets and ``now`` in, due packets out, randomness
injected. The loss draw is made for every packet in arrival order from its own seeded RNG, so
the k-th packet of a line is dropped or not whatever the delay, the timing or the queue, and
with one seed the packets lost at 1 % are a subset of those lost at 5 %.
"""

from __future__ import annotations

import argparse
import ctypes
import enum
import fcntl
import heapq
import json
import os
import random
import select
import signal
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .dualq import DualQ, DualQConfig, DualQStats
from .ecnbits import Ecn, read_ecn, write_ecn

#: Linux ``<linux/if_tun.h>``: the TUNSETIFF ioctl and its flags.
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
#: ``struct ifreq``: 16-octet name, then a union whose first member here is ``short flags``.
IFREQ = "16sH22x"
TUN_PATH = "/dev/net/tun"
#: ``prctl(PR_SET_TIMERSLACK, ns)``: the default 50 µs slack would be added to every wake-up.
PR_SET_TIMERSLACK = 29
TIMER_SLACK_NS = 1000
#: Largest IP packet a TUN device hands out.
MAX_PACKET = 65535
#: Packets read from one device per wake-up at most, so one busy direction cannot starve the
#: other's releases.
READ_BATCH = 64
#: How often (s) the loop looks at least once whether its parent is still alive.
PARENT_CHECK = 0.5

#: Lateness histogram: 50 µs buckets up to 20 ms (the last bucket holds everything later).
LATE_BUCKET = 50e-6
LATE_BUCKETS = 400
#: ``--realtime``: SCHED_FIFO priority (low; the loop blocks in select between packets).
RT_PRIORITY = 10

DEFAULT_QUEUE_PACKETS = 1000
DEFAULT_QUEUE_BYTES = 2 * 1024 * 1024
#: The CLI's short names of the ``LineConfig`` fields.
_SPEC_KEYS = {
    "delay": "delay_ms",
    "jitter": "jitter_ms",
    "loss": "loss_percent",
    "limit": "queue_packets",
    "bytes": "queue_bytes",
    "reorder": "reorder",
    "rate": "rate_kbps",
    "l4s": "l4s_threshold_ms",
    "target": "classic_target_ms",
    "ecn": "ecn",
}
#: What a line does to the ECN field of what it relays (before its bottleneck, if any):
#: ``keep`` it, ``bleach`` it (clear to not-ECT), ``mangle`` ECT(1) into ECT(0).
ECN_MODES = ("keep", "bleach", "mangle")


@dataclass(frozen=True, slots=True, kw_only=True)
class LineConfig:
    """One direction of a line; the CLI spells it ``delay=50,jitter=0,loss=1,limit=1000``."""

    #: One-way delay added to every packet, in milliseconds.
    delay_ms: float = 0.0
    #: Each packet's delay is ``delay_ms`` plus a uniform draw in ±``jitter_ms`` (ms, ≥ 0).
    jitter_ms: float = 0.0
    #: Probability that a packet is dropped, in percent (0–100).
    loss_percent: float = 0.0
    #: Packets held at most; an arrival over either bound is dropped (tail drop, counted).
    queue_packets: int = DEFAULT_QUEUE_PACKETS
    #: Octets held at most.
    queue_bytes: int = DEFAULT_QUEUE_BYTES
    #: With jitter, let a packet overtake an earlier one (netem's behaviour). Off by default: a
    #: real link keeps order, so a packet never leaves before the one ahead of it.
    reorder: bool = False
    #: A bottleneck of this rate (kbit/s) with a DualQ Coupled AQM before the delay; 0: none
    #: (packets are only delayed). The queue bounds above are then the AQM's.
    rate_kbps: float = 0.0
    #: The AQM's L4S marking threshold (step, on the sojourn time), ms.
    l4s_threshold_ms: float = 1.0
    #: The AQM's classic-queue target delay (PI2), ms.
    classic_target_ms: float = 15.0
    #: One of ``ECN_MODES``.
    ecn: str = "keep"

    def __post_init__(self) -> None:
        if self.ecn not in ECN_MODES:
            raise ValueError(f"ecn must be one of {', '.join(ECN_MODES)}, not {self.ecn!r}")
        if self.rate_kbps and self.rate_kbps < 1:
            raise ValueError(f"rate_kbps must be 0 (no bottleneck) or ≥ 1, not {self.rate_kbps}")
        if not 0.0 <= self.delay_ms <= 60_000:
            raise ValueError(f"delay_ms must be within 0..60000, not {self.delay_ms}")
        if not 0.0 <= self.jitter_ms <= self.delay_ms:
            raise ValueError(f"jitter_ms must be within 0..delay_ms, not {self.jitter_ms}")
        if not 0.0 <= self.loss_percent <= 100.0:
            raise ValueError(f"loss_percent must be within 0..100, not {self.loss_percent}")
        if self.queue_packets < 1 or self.queue_bytes < MAX_PACKET:
            raise ValueError("queue_packets must be ≥ 1 and queue_bytes ≥ 65535")
        self.dualq_config()  # validates the AQM's settings

    @classmethod
    def parse(cls, text: str) -> LineConfig:
        """``"delay=50,jitter=2,loss=1,limit=1000,bytes=2097152,reorder=0"``; all optional."""
        values: dict[str, Any] = {}
        for item in filter(None, text.split(",")):
            key, sep, value = item.partition("=")
            name = _SPEC_KEYS.get(key.strip())
            if not sep or name is None:
                raise ValueError(f"unknown line setting {item!r} (keys: {', '.join(_SPEC_KEYS)})")
            if name in ("queue_packets", "queue_bytes"):
                values[name] = int(value)
            elif name == "reorder":
                values[name] = value.strip() in ("1", "true", "yes")
            elif name == "ecn":
                values[name] = value.strip()
            else:
                values[name] = float(value)
        return cls(**values)

    def spec(self) -> str:
        """The inverse of ``parse``."""
        return (
            f"delay={self.delay_ms:g},jitter={self.jitter_ms:g},loss={self.loss_percent:g},"
            f"limit={self.queue_packets},bytes={self.queue_bytes},reorder={int(self.reorder)},"
            f"rate={self.rate_kbps:g},l4s={self.l4s_threshold_ms:g},"
            f"target={self.classic_target_ms:g},ecn={self.ecn}"
        )

    def dualq_config(self) -> DualQConfig:
        """The bottleneck's settings (meaningful when ``rate_kbps`` > 0)."""
        return DualQConfig(
            rate_kbps=self.rate_kbps or 1.0,
            l4s_threshold_ms=self.l4s_threshold_ms,
            classic_target_ms=self.classic_target_ms,
            limit_packets=self.queue_packets,
            limit_bytes=self.queue_bytes,
        )


class Fate(enum.Enum):
    """What ``DelayLine.push`` did with a packet (a bottleneck's AQM decides later, when the
    packet reaches the head of its queue: its drops are counted in ``LineStats.aqm``)."""

    QUEUED = "queued"
    LOST = "lost"
    OVERFLOWED = "overflowed"


@dataclass(frozen=True, slots=True, kw_only=True)
class LineStats:
    """A snapshot of one line's counters."""

    #: Packets that arrived (every one got a loss draw).
    received: int = 0
    #: Packets released after their delay.
    delivered: int = 0
    #: Packets dropped by the random loss draw.
    lost: int = 0
    #: Packets dropped because the queue was full.
    overflowed: int = 0
    #: Octets released.
    delivered_bytes: int = 0
    #: Packets held now, and the most ever held.
    queued: int = 0
    max_queued: int = 0
    #: How late packets left against their release time (the scheduling error), ms.
    late_mean_ms: float = 0.0
    late_p99_ms: float = 0.0
    late_max_ms: float = 0.0
    #: Release time minus arrival time (with a bottleneck: minus the time the packet left
    #: it), averaged over delivered packets, ms.
    delay_mean_ms: float = 0.0
    #: Arrivals by ECN codepoint as they came in (``not_ip``: no well-formed IP header).
    arrived_not_ect: int = 0
    arrived_ect1: int = 0
    arrived_ect0: int = 0
    arrived_ce: int = 0
    arrived_not_ip: int = 0
    #: Packets whose ECN field the line's ``ecn`` mode rewrote.
    ecn_rewritten: int = 0
    #: The bottleneck's AQM (all zero without ``rate_kbps``).
    aqm: DualQStats = field(default_factory=DualQStats)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready counters (``aqm`` nested)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LineStats:
        """The inverse of ``as_dict``; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if isinstance(values.get("aqm"), dict):
            aqm_names = {f.name for f in fields(DualQStats)}
            values["aqm"] = DualQStats(**{k: v for k, v in values["aqm"].items() if k in aqm_names})
        return cls(**values)


@dataclass(order=True, slots=True)
class _Held:
    release: float
    order: int
    arrival: float = field(compare=False)
    packet: bytes = field(compare=False)


class DelayLine:
    """One direction: ``push(packet, now)``, then ``pop_due(now)`` at ``next_release()``.

    Sans-I/O: the caller owns the clock and the device. ``loss_rng`` decides drops (one draw per
    arrival), ``jitter_rng`` the per-packet delay variation.
    """

    def __init__(
        self,
        config: LineConfig,
        *,
        loss_rng: random.Random,
        jitter_rng: random.Random | None = None,
        aqm_rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._loss_rng = loss_rng
        self._jitter_rng = jitter_rng or random.Random(0)
        self._heap: list[_Held] = []
        self._order = 0
        self._last_release = 0.0
        self._bytes = 0
        self._received = 0
        self._delivered = 0
        self._lost = 0
        self._overflowed = 0
        self._delivered_bytes = 0
        self._max_queued = 0
        self._late_sum = 0.0
        self._late_max = 0.0
        self._late_histogram = [0] * LATE_BUCKETS
        self._delay_sum = 0.0
        self._arrived = dict.fromkeys([*Ecn, None], 0)
        self._ecn_rewritten = 0
        self._bottleneck = (
            DualQ(config.dualq_config(), rng=aqm_rng or random.Random(0))
            if config.rate_kbps
            else None
        )

    @classmethod
    def seeded(cls, config: LineConfig, seed: int, label: str) -> DelayLine:
        """A line whose loss, jitter and AQM draws depend only on ``seed`` and ``label``."""
        return cls(
            config,
            loss_rng=random.Random(f"{seed}/{label}/loss"),
            jitter_rng=random.Random(f"{seed}/{label}/jitter"),
            aqm_rng=random.Random(f"{seed}/{label}/aqm"),
        )

    def push(self, packet: bytes, now: float) -> Fate:
        """Take one packet that arrived at ``now`` (seconds, any monotonic origin)."""
        config = self.config
        self._received += 1
        ecn = read_ecn(packet)
        self._arrived[ecn] += 1
        if self._loss_rng.random() * 100.0 < config.loss_percent:
            self._lost += 1
            return Fate.LOST
        packet = self._rewrite_ecn(packet, ecn)
        if self._bottleneck is not None:
            sent = self._bottleneck.enqueue(packet, now)
            if sent is None:
                self._overflowed += 1
                return Fate.OVERFLOWED
            self._hold_all(sent)
            return Fate.QUEUED
        if len(self._heap) >= config.queue_packets or self._bytes + len(packet) > (
            config.queue_bytes
        ):
            self._overflowed += 1
            return Fate.OVERFLOWED
        self._hold(packet, now)
        return Fate.QUEUED

    def _rewrite_ecn(self, packet: bytes, ecn: Ecn | None) -> bytes:
        mode = self.config.ecn
        if ecn is None or mode == "keep":
            return packet
        if mode == "bleach" and ecn is not Ecn.NOT_ECT:
            self._ecn_rewritten += 1
            return write_ecn(packet, Ecn.NOT_ECT)
        if mode == "mangle" and ecn is Ecn.ECT1:
            self._ecn_rewritten += 1
            return write_ecn(packet, Ecn.ECT0)
        return packet

    def _hold_all(self, sent: list[tuple[bytes, float]]) -> None:
        for packet, departure in sent:
            self._hold(packet, departure)

    def _hold(self, packet: bytes, now: float) -> None:
        """Hold ``packet``, which entered the delay (left the bottleneck) at ``now``."""
        config = self.config
        delay = config.delay_ms
        if config.jitter_ms:
            delay += self._jitter_rng.uniform(-config.jitter_ms, config.jitter_ms)
        release = now + max(0.0, delay) / 1000.0
        if not config.reorder:
            release = max(release, self._last_release)
            self._last_release = release
        self._order += 1
        heapq.heappush(self._heap, _Held(release, self._order, now, packet))
        self._bytes += len(packet)
        self._max_queued = max(self._max_queued, len(self._heap) + self._bottlenecked())

    def _bottlenecked(self) -> int:
        return len(self._bottleneck) if self._bottleneck is not None else 0

    def next_release(self) -> float | None:
        """When the next packet is due (or the bottleneck's next decision), None when idle."""
        times = [self._heap[0].release] if self._heap else []
        if self._bottleneck is not None:
            decision = self._bottleneck.next_decision()
            if decision is not None:
                times.append(decision)
        return min(times, default=None)

    def pop_due(self, now: float) -> list[bytes]:
        """The packets due at ``now``, in release order; ``now`` is taken as their send time."""
        if self._bottleneck is not None:
            self._hold_all(self._bottleneck.advance(now))
        heap = self._heap
        due: list[bytes] = []
        while heap and heap[0].release <= now:
            held = heapq.heappop(heap)
            late = now - held.release
            self._late_sum += late
            self._late_max = max(self._late_max, late)
            self._late_histogram[min(LATE_BUCKETS - 1, int(late / LATE_BUCKET))] += 1
            self._delay_sum += held.release - held.arrival
            self._bytes -= len(held.packet)
            self._delivered += 1
            self._delivered_bytes += len(held.packet)
            due.append(held.packet)
        return due

    def _late_quantile(self, q: float) -> float:
        """The upper edge of the bucket holding the ``q`` quantile of lateness, seconds."""
        rank = q * self._delivered
        seen = 0
        for index, count in enumerate(self._late_histogram):
            seen += count
            if count and seen >= rank:
                return min((index + 1) * LATE_BUCKET, self._late_max)
        return self._late_max

    def statistics(self) -> LineStats:
        delivered = self._delivered
        return LineStats(
            received=self._received,
            delivered=delivered,
            lost=self._lost,
            overflowed=self._overflowed,
            delivered_bytes=self._delivered_bytes,
            queued=len(self._heap) + self._bottlenecked(),
            max_queued=self._max_queued,
            late_mean_ms=round(1000 * self._late_sum / delivered, 4) if delivered else 0.0,
            late_p99_ms=round(1000 * self._late_quantile(0.99), 4),
            late_max_ms=round(1000 * self._late_max, 4),
            delay_mean_ms=round(1000 * self._delay_sum / delivered, 4) if delivered else 0.0,
            arrived_not_ect=self._arrived[Ecn.NOT_ECT],
            arrived_ect1=self._arrived[Ecn.ECT1],
            arrived_ect0=self._arrived[Ecn.ECT0],
            arrived_ce=self._arrived[Ecn.CE],
            arrived_not_ip=self._arrived[None],
            ecn_rewritten=self._ecn_rewritten,
            aqm=self._bottleneck.statistics() if self._bottleneck is not None else DualQStats(),
        )


# -- the I/O shell: TUN devices, one thread, select() ----------------------------------------


def open_tun(name: str) -> int:
    """Open (or attach to) the TUN device ``name`` without packet info; a non-blocking fd."""
    if not 0 < len(name.encode()) < 16:
        raise ValueError(f"device name {name!r} must be 1..15 octets")
    fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack(IFREQ, name.encode(), IFF_TUN | IFF_NO_PI))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _set_timer_slack(nanoseconds: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(nanoseconds), 0, 0, 0)
    except (OSError, AttributeError):
        pass


@dataclass
class _Device:
    name: str
    fd: int
    line: DelayLine
    write_errors: int = 0


class DelayLineServer:
    """Serves several TUN devices, each with its ``DelayLine``, in one thread.

    Every packet read from a device goes back into the same device when due. The loop sleeps
    in ``select`` until the earliest release or an arrival (timer slack lowered to 1 µs), so
    releases are late only by the wake-up latency, which ``LineStats.late_*`` reports.
    """

    def __init__(
        self,
        devices: Sequence[tuple[str, DelayLine]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._devices: list[_Device] = []
        try:
            for name, line in devices:
                self._devices.append(_Device(name, open_tun(name), line))
        except BaseException:
            self.close()
            raise
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.stopping = False
        self.report_requested = False

    @property
    def wakeup_fd(self) -> int:
        """Write a byte here (``signal.set_wakeup_fd``) to make the loop look at its flags."""
        return self._wake_write

    def statistics(self) -> dict[str, Any]:
        return {
            device.name: {**device.line.statistics().as_dict(), "write_errors": device.write_errors}
            for device in self._devices
        }

    def serve(self, on_report: Callable[[dict[str, Any]], None]) -> None:
        """Run until ``stopping`` or the parent process dies."""
        clock = self._clock
        parent = os.getppid()
        by_fd = {device.fd: device for device in self._devices}
        readers = [self._wake_read, *by_fd]
        next_parent_check = clock() + PARENT_CHECK
        while not self.stopping:
            now = clock()
            deadline = next_parent_check
            for device in self._devices:
                for packet in device.line.pop_due(now):
                    try:
                        os.write(device.fd, packet)
                    except OSError:
                        device.write_errors += 1
                release = device.line.next_release()
                if release is not None and release < deadline:
                    deadline = release
            if now >= next_parent_check:
                if os.getppid() != parent:
                    return
                next_parent_check = now + PARENT_CHECK
            timeout = max(0.0, deadline - clock())
            readable, _, _ = select.select(readers, [], [], timeout)
            if not readable:
                continue
            now = clock()
            for fd in readable:
                if fd == self._wake_read:
                    self._drain_wakeups()
                    if self.report_requested:
                        self.report_requested = False
                        on_report(self.statistics())
                    continue
                device = by_fd[fd]
                for _ in range(READ_BATCH):
                    try:
                        packet = os.read(fd, MAX_PACKET)
                    except BlockingIOError:
                        break
                    device.line.push(packet, now)

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_read, 512):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        for device in self._devices:
            os.close(device.fd)
        self._devices.clear()
        for fd in (getattr(self, "_wake_read", -1), getattr(self, "_wake_write", -1)):
            if fd >= 0:
                os.close(fd)
        self._wake_read = self._wake_write = -1


def _parse_line(text: str) -> tuple[str, LineConfig]:
    name, _, settings = text.partition(":")
    return name, LineConfig.parse(settings)


def _go_realtime() -> bool:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))
    except (OSError, AttributeError):
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quicvoice.netlab.delayline", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--line",
        action="append",
        required=True,
        metavar=(
            "DEVICE[:delay=MS,jitter=MS,loss=PCT,limit=N,bytes=N,reorder=0|1,"
            "rate=KBPS,l4s=MS,target=MS,ecn=keep|bleach|mangle]"
        ),
        help="a TUN device to serve and its settings (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the loss and jitter draws")
    parser.add_argument(
        "--realtime",
        action="store_true",
        help=f"run under SCHED_FIFO (priority {RT_PRIORITY}) so busy cores delay releases less",
    )
    args = parser.parse_args(argv)
    try:
        lines = [_parse_line(text) for text in args.line]
    except ValueError as error:
        parser.error(str(error))
    _set_timer_slack(TIMER_SLACK_NS)
    realtime = _go_realtime() if args.realtime else False
    server = DelayLineServer(
        [(name, DelayLine.seeded(config, args.seed, name)) for name, config in lines]
    )

    def emit(event: str, body: dict[str, Any]) -> None:
        try:
            sys.stdout.write(json.dumps({"event": event, **body}) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:  # the reader is gone (its process died): nobody to tell
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

    def on_stop(signum: int, frame: object) -> None:
        server.stopping = True

    def on_report(signum: int, frame: object) -> None:
        server.report_requested = True

    signal.set_wakeup_fd(server.wakeup_fd)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGUSR1, on_report)
    try:
        emit(
            "ready",
            {
                "pid": os.getpid(),
                "seed": args.seed,
                "realtime": realtime,
                "lines": {name: config.spec() for name, config in lines},
            },
        )
        server.serve(lambda stats: emit("stats", {"lines": stats}))
        emit("stats", {"lines": server.statistics(), "final": True})
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
