"""The Prometheus text exposition format, version 0.0.4, and a fixed-bucket histogram.

Written here rather than taken from ``prometheus_client``: a backend's metrics are read from
state the event loop owns, once per scrape, so none of that library's per-update locking and
registry machinery is needed, and the core keeps no dependency for a format this small.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

#: The ``Content-Type`` of a scrape's answer.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

Labels = tuple[tuple[str, str], ...]


class MetricKind(Enum):
    """The ``# TYPE`` of a metric family."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Histogram:
    """Counts observations into fixed buckets (upper bounds, inclusive), with their sum."""

    __slots__ = ("bounds", "_counts", "sum", "count")

    def __init__(self, bounds: Sequence[float]) -> None:
        if not bounds or list(bounds) != sorted(set(bounds)) or not math.isfinite(bounds[-1]):
            raise ValueError("bounds must be finite, increasing and not empty")
        #: The buckets' upper bounds; ``+Inf`` is implied.
        self.bounds = tuple(float(bound) for bound in bounds)
        self._counts = [0] * (len(self.bounds) + 1)
        #: The sum of every observed value.
        self.sum = 0.0
        #: How many values were observed.
        self.count = 0

    def observe(self, value: float) -> None:
        """Count one value (NaN is ignored: it belongs to no bucket)."""
        if math.isnan(value):
            return
        self._counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` for every bucket, ``+Inf`` last."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip((*self.bounds, math.inf), self._counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricFamily:
    """One metric: its name (counters end in ``_total``), kind, help text and series."""

    #: The metric's name, with its unit (``_milliseconds``) and, for counters, ``_total``.
    name: str
    #: Counter, gauge or histogram.
    kind: MetricKind
    #: One line saying what is counted and in which unit.
    help: str
    #: Counters and gauges: the value of each label set.
    values: Mapping[Labels, float] = field(default_factory=dict)
    #: Histograms: the histogram of each label set.
    histograms: Mapping[Labels, Histogram] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"not a metric name: {self.name!r}")
        if self.kind is MetricKind.COUNTER and not self.name.endswith("_total"):
            raise ValueError(f"a counter's name ends in _total: {self.name!r}")
        for labels in (*self.values, *self.histograms):
            for key, _ in labels:
                if not _LABEL.fullmatch(key) or key.startswith("__") or key == "le":
                    raise ValueError(f"not a label name: {key!r}")


def render(families: Iterable[MetricFamily]) -> str:
    """The families in the text format, one ``# HELP`` and ``# TYPE`` line each."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind.value}")
        if family.kind is MetricKind.HISTOGRAM:
            for labels, histogram in sorted(family.histograms.items()):
                lines.extend(_histogram_lines(family.name, labels, histogram))
        else:
            for labels, value in sorted(family.values.items()):
                lines.append(f"{family.name}{_labels(labels)} {_number(value)}")
    return "\n".join(lines) + "\n"


def _histogram_lines(name: str, labels: Labels, histogram: Histogram) -> list[str]:
    lines = [
        f"{name}_bucket{_labels((*labels, ('le', _number(bound))))} {count}"
        for bound, count in histogram.cumulative()
    ]
    lines.append(f"{name}_sum{_labels(labels)} {_number(histogram.sum)}")
    lines.append(f"{name}_count{_labels(labels)} {histogram.count}")
    return lines


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape_value(value)}"' for key, value in labels) + "}"


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
