"""Figures from call results and process samples, and their markdown tables."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from .calls import CallResult
from .procstat import Sample


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def spread(values: list[float]) -> str:
    """``p50 / p95 / max`` in ms, or ``-``."""
    if not values:
        return "-"
    return f"{percentile(values, 0.5):.0f} / {percentile(values, 0.95):.0f} / {max(values):.0f}"


@dataclass(frozen=True, slots=True)
class Summary:
    """Totals over a set of calls."""

    calls: int
    started: int
    completed: int
    #: Started but not completed (the session closed, or a reply never came).
    lost: int
    #: Never got a session.
    failed_to_start: int
    sent: int
    delivered: int
    missing: int
    late: int
    send_late: int
    max_send_lag_ms: float
    carts_intact: int
    resumed_calls: int
    migrations: int
    migration_errors: int
    downlink_frames: int
    errors: tuple[str, ...]

    @property
    def audio_lost(self) -> int:
        """Uplink frames sent that no backend's application received."""
        return self.sent - self.delivered

    @property
    def late_share(self) -> float:
        """Share of delivered frames later than ``calls.LATE_S`` after capture."""
        return self.late / self.delivered if self.delivered else 0.0


def summarize(results: list[CallResult]) -> Summary:
    """Totals over ``results``."""
    errors = sorted({r.error for r in results if r.error})
    return Summary(
        calls=len(results),
        started=sum(r.started for r in results),
        completed=sum(r.completed for r in results),
        lost=sum(r.started and not r.completed for r in results),
        failed_to_start=sum(not r.started for r in results),
        sent=sum(r.sent for r in results),
        delivered=sum(r.delivered for r in results),
        missing=sum(r.missing for r in results),
        late=sum(r.late for r in results),
        send_late=sum(r.send_late for r in results),
        max_send_lag_ms=max((r.max_send_lag_ms for r in results), default=0.0),
        carts_intact=sum(r.cart_intact for r in results),
        resumed_calls=sum(bool(r.resumes) for r in results),
        migrations=sum(r.migrations for r in results),
        migration_errors=sum(r.migration_errors for r in results),
        downlink_frames=sum(r.downlink_frames for r in results),
        errors=tuple(errors[:5]),
    )


def cpu_rss_table(samples: list[Sample], since: float = 0.0) -> list[str]:
    """Mean CPU % and last RSS per process group, over samples taken after ``since`` s."""
    by_group: defaultdict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        if sample.at >= since:
            by_group[sample.group].append(sample)
    lines = ["| process | CPU % of a core (mean) | RSS MiB (last) |", "|---|---:|---:|"]
    total = 0.0
    for group in sorted(by_group):
        rows = by_group[group][1:] or by_group[group]  # the first has no CPU delta
        cpu = sum(s.cpu_percent for s in rows) / len(rows)
        total += cpu
        lines.append(f"| {group} | {cpu:.0f} | {by_group[group][-1].rss_kib / 1024:.1f} |")
    lines.append(f"| all | {total:.0f} | |")
    return lines


def linear_slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(x, y)`` points (0 for fewer than two)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var


def backend_at(result: CallResult, instant: float) -> str:
    """The backend (server ID) holding the call at Unix time ``instant``."""
    holder = result.server_first
    for resume in result.resumes:
        if resume["dead_at_unix"] <= instant:
            holder = resume["to"]
    return holder


def recovery_ms(result: CallResult, instant: float) -> float | None:
    """How long until audio flowed again after ``instant``: for the first uplink frame captured
    after it, from the later of ``instant`` and its capture to its arrival at the serving
    backend's application. ``None`` when that frame is not among the final backend's arrivals
    (the call resumed again later, or had ended)."""
    later = [seq for seq, _ in result.arrivals if result.capture_time(seq) > instant]
    if not later:
        return None
    first = min(later)
    if any(result.capture_time(s) > instant for s in range(max(0, first - 1), first)):
        return None  # an earlier post-fault frame went to a backend we did not ask
    arrived = min(at for seq, at in result.arrivals if seq == first)
    return (arrived - max(instant, result.capture_time(first))) * 1000
