"""RSS and CPU of process groups from ``/proc`` (Linux), sampled in a background thread.

A group is a role ("forwarder", "backend 0a000001", "generator 0"...) and its root PIDs; each
sample sums VmRSS and utime + stime over the roots and all their descendants, so the
forwarder's pump processes count with their supervisor.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Sample:
    """One group at one instant."""

    #: Seconds since the sampler started.
    at: float
    group: str
    #: Sum of VmRSS, KiB.
    rss_kib: int
    #: Sum of user + system CPU time, seconds (cumulative; descendants that exited are lost).
    cpu_s: float
    #: CPU use since the previous sample of this group, percent of one core.
    cpu_percent: float
    #: Processes counted.
    processes: int


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent PID, CPU seconds) of ``pid``, or ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read()
    except OSError:
        return None
    fields = text[text.rindex(b")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None:
                tree.setdefault(stat[0], []).append(int(name))
    return tree


def measure(roots: list[int], tree: dict[int, list[int]]) -> tuple[int, float, int]:
    """(RSS KiB, CPU seconds, processes) of ``roots`` and their descendants."""
    rss, cpu, count = 0, 0.0, 0
    pending = list(roots)
    while pending:
        pid = pending.pop()
        stat = _stat(pid)
        if stat is None:
            continue
        rss += _rss_kib(pid)
        cpu += stat[1]
        count += 1
        pending.extend(tree.get(pid, ()))
    return rss, cpu, count


class Sampler:
    """Samples ``groups()`` every ``interval`` seconds until ``stop()``."""

    def __init__(self, groups: Callable[[], dict[str, list[int]]], interval: float) -> None:
        self._groups = groups
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="procstat", daemon=True)
        self._started = time.monotonic()
        #: Unix time of the sampler's zero (``Sample.at`` counts from it).
        self.started_unix = time.time()
        self._last: dict[str, tuple[float, float]] = {}
        self.samples: list[Sample] = []

    def start(self) -> None:
        """Start sampling (a first sample is taken at once)."""
        self._started = time.monotonic()
        self.started_unix = time.time()
        self._thread.start()

    def stop(self) -> None:
        """Stop and wait for the thread."""
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        """Take one sample of every group now."""
        now = time.monotonic()
        tree = _children()
        for group, roots in self._groups().items():
            rss, cpu, count = measure(roots, tree)
            if count == 0:
                continue
            previous = self._last.get(group)
            percent = 0.0
            if previous is not None and now > previous[0]:
                percent = max(0.0, (cpu - previous[1]) / (now - previous[0]) * 100)
            self._last[group] = (now, cpu)
            self.samples.append(Sample(now - self._started, group, rss, cpu, percent, count))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``/proc/loadavg`` gives them."""
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def udp_drops() -> int:
    """UDP datagrams the kernel dropped for want of receive-buffer space, machine-wide
    (``RcvbufErrors`` in ``/proc/net/snmp``): other jobs on loopback count too."""
    with open("/proc/net/snmp") as handle:
        rows = [line.split() for line in handle if line.startswith("Udp:")]
    return int(dict(zip(rows[0], rows[1], strict=True))["RcvbufErrors"])
