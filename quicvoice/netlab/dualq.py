"""A rate-limited link with a DualQ Coupled AQM (RFC 9332), sans-I/O.

The lab's bottleneck: packets go in with their arrival time, and come out with the time their
last bit left a link of ``rate_kbps``, or are dropped. Two queues share the link:

* the **L4S queue** takes ECT(1) and CE packets (RFC 9331's classifier). A packet whose
  sojourn (enqueue to the start of its transmission) exceeds a shallow threshold is CE-marked:
  a step at ``l4s_threshold_ms`` (1 ms), or with ``l4s_ramp_ms`` a linear ramp from there.
  It is also marked with the coupled probability ``p_CL = k·p'`` (k = 2), whichever is higher.
* the **classic queue** takes not-ECT and ECT(0) packets under a PI2 controller: every
  ``update_ms`` (16 ms), ``p' += alpha·(qdelay - target) + beta·(qdelay - previous qdelay)``
  with the classic head's sojourn as qdelay (target 15 ms); a classic packet is dropped
  (not-ECT) or CE-marked (ECT(0)) with ``p_C = p'^2``.
* **Scheduling**: time-shifted FIFO: the L4S head goes first unless the classic head has
  waited ``tshift_ms`` longer than it (RFC 9332 §4.2.2), so L4S has priority without
  starving classic.

Randomness is injected (``rng``), time is the caller's: a unit test replays it exactly.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from .ecnbits import Ecn, read_ecn, write_ecn

#: PI2 gains of RFC 9332 Appendix A (per second, for a 16 ms update and 100 ms max RTT).
DEFAULT_ALPHA = 0.16
DEFAULT_BETA = 3.2


@dataclass(frozen=True, slots=True, kw_only=True)
class DualQConfig:
    """The link rate and the AQM's settings."""

    #: Link rate in kbit/s (serialisation time of each packet).
    rate_kbps: float
    #: L4S marking threshold on the L4S packet's sojourn time (step), ms.
    l4s_threshold_ms: float = 1.0
    #: With a ramp (> 0), the marking probability grows linearly from the threshold to 1 at
    #: threshold + ramp; 0 is a step.
    l4s_ramp_ms: float = 0.0
    #: Target of the classic queue's PI2 controller, ms.
    classic_target_ms: float = 15.0
    #: PI2 update interval, ms.
    update_ms: float = 16.0
    alpha: float = DEFAULT_ALPHA
    beta: float = DEFAULT_BETA
    #: Coupling factor k: p_CL = k·p'.
    coupling: float = 2.0
    #: Time shift of the scheduler, ms: classic is served first once its head has waited this
    #: much longer than the L4S head.
    tshift_ms: float = 30.0
    #: Both queues together hold at most this many packets and octets.
    limit_packets: int = 1000
    limit_bytes: int = 2 * 1024 * 1024

    def __post_init__(self) -> None:
        if not 1.0 <= self.rate_kbps <= 10_000_000:
            raise ValueError(f"rate_kbps must be within 1..10000000, not {self.rate_kbps}")
        for name in ("l4s_threshold_ms", "l4s_ramp_ms", "classic_target_ms", "tshift_ms"):
            if not 0.0 <= getattr(self, name) <= 10_000:
                raise ValueError(f"{name} must be within 0..10000 ms")
        if not 1.0 <= self.update_ms <= 1000:
            raise ValueError("update_ms must be within 1..1000")
        if not (0.0 <= self.alpha <= 100 and 0.0 <= self.beta <= 100):
            raise ValueError("alpha and beta must be within 0..100")
        if not 1.0 <= self.coupling <= 16:
            raise ValueError("coupling must be within 1..16")
        if self.limit_packets < 1 or self.limit_bytes < 1:
            raise ValueError("limit_packets and limit_bytes must be ≥ 1")

    def serialisation(self, size: int) -> float:
        """Seconds to send ``size`` octets at the link rate."""
        return size * 8 / (self.rate_kbps * 1000)


@dataclass(frozen=True, slots=True, kw_only=True)
class DualQStats:
    """What the AQM did so far."""

    l4s_packets: int = 0
    classic_packets: int = 0
    #: CE marks the AQM set, per queue (packets that arrived CE are not counted).
    l4s_marked: int = 0
    classic_marked: int = 0
    #: Classic not-ECT packets the AQM dropped.
    dropped: int = 0
    #: Arrivals refused because the queues were full.
    overflowed: int = 0
    #: Sojourn (enqueue to start of transmission) of sent packets, ms.
    l4s_sojourn_mean_ms: float = 0.0
    l4s_sojourn_max_ms: float = 0.0
    classic_sojourn_mean_ms: float = 0.0
    classic_sojourn_max_ms: float = 0.0
    #: Percentiles of the same, per queue, ms (to the histogram's 0.1 ms bins).
    l4s_sojourn_p50_ms: float = 0.0
    l4s_sojourn_p99_ms: float = 0.0
    classic_sojourn_p50_ms: float = 0.0
    classic_sojourn_p99_ms: float = 0.0
    #: The PI2 base probability p' now.
    base_probability: float = 0.0


#: Sojourn histogram: 0.1 ms bins up to 500 ms.
SOJOURN_BIN = 0.0001
SOJOURN_BINS = 5000


@dataclass(slots=True)
class _Queued:
    packet: bytes
    arrival: float
    ecn: Ecn | None


@dataclass(slots=True)
class _QueueCounters:
    packets: int = 0
    marked: int = 0
    sent: int = 0
    sojourn_sum: float = 0.0
    sojourn_max: float = 0.0
    items: deque[_Queued] = field(default_factory=deque)
    #: Sojourns sent, in bins of SOJOURN_BIN s (the last bin holds everything longer).
    histogram: list[int] = field(default_factory=lambda: [0] * SOJOURN_BINS)

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile of the sojourns sent (upper edge of its bin), ms."""
        if not self.sent:
            return 0.0
        rank = q / 100 * self.sent
        seen = 0
        for index, count in enumerate(self.histogram):
            seen += count
            if seen >= rank:
                return round((index + 1) * SOJOURN_BIN * 1000, 4)
        return round(SOJOURN_BINS * SOJOURN_BIN * 1000, 4)


class DualQ:
    """``enqueue(packet, now)``; ``advance(now)`` -> ``[(packet, departure), ...]``."""

    def __init__(self, config: DualQConfig, *, rng: random.Random) -> None:
        self.config = config
        self._rng = rng
        self._l4s = _QueueCounters()
        self._classic = _QueueCounters()
        self._bytes = 0
        self._free_at = float("-inf")
        self._next_update: float | None = None
        self._base = 0.0
        self._previous_qdelay = 0.0
        self._dropped = 0
        self._overflowed = 0

    @property
    def base_probability(self) -> float:
        """p', the PI2 controller's output (p_C = p'^2, p_CL = k·p')."""
        return self._base

    def __len__(self) -> int:
        return len(self._l4s.items) + len(self._classic.items)

    def enqueue(self, packet: bytes, now: float) -> list[tuple[bytes, float]] | None:
        """Queue ``packet`` arrived at ``now``; None if the queues are full (it is dropped).

        Returns what left the link up to ``now`` first (see ``advance``), so a caller that
        pushes late never lets a packet jump ahead of a decision that was due before it.
        """
        sent = self.advance(now)
        config = self.config
        if len(self) >= config.limit_packets or self._bytes + len(packet) > config.limit_bytes:
            self._overflowed += 1
            return None
        if self._next_update is None:
            self._next_update = now + config.update_ms / 1000
        ecn = read_ecn(packet)
        queue = self._l4s if ecn in (Ecn.ECT1, Ecn.CE) else self._classic
        queue.packets += 1
        queue.items.append(_Queued(packet, now, ecn))
        self._bytes += len(packet)
        if self._free_at < now and len(self) == 1:
            self._free_at = now  # the link was idle: it starts sending at once
        return sent

    def next_decision(self) -> float | None:
        """When the link can start its next packet, or None when nothing is queued."""
        if not len(self):
            return None
        heads = [q.items[0].arrival for q in (self._l4s, self._classic) if q.items]
        return max(self._free_at, min(heads))

    def advance(self, now: float) -> list[tuple[bytes, float]]:
        """Every packet whose transmission started by ``now``, with its departure time (when
        its last bit left the link, possibly after ``now``), CE-marked where the AQM said so."""
        sent: list[tuple[bytes, float]] = []
        while True:
            start = self.next_decision()
            if start is None or start > now:
                break
            self._update_controller(start)
            queue = self._pick(start)
            item = queue.items.popleft()
            self._bytes -= len(item.packet)
            sojourn = start - item.arrival
            packet = self._decide(queue, item, sojourn)
            if packet is None:
                continue
            queue.sent += 1
            queue.sojourn_sum += sojourn
            queue.sojourn_max = max(queue.sojourn_max, sojourn)
            queue.histogram[min(SOJOURN_BINS - 1, max(0, int(sojourn / SOJOURN_BIN)))] += 1
            self._free_at = start + self.config.serialisation(len(packet))
            sent.append((packet, self._free_at))
        return sent

    def _update_controller(self, until: float) -> None:
        """Run the PI2 updates due by ``until`` (lazily: nothing runs between calls)."""
        config = self.config
        step = config.update_ms / 1000
        if self._next_update is None or self._next_update > until:
            return
        if not self._classic.items:
            # The classic queue stayed empty: every update due saw qdelay 0; one closed form
            # for all of them, however long the idle spell.
            count = int((until - self._next_update) // step) + 1
            target = config.classic_target_ms / 1000
            self._base += -config.beta * self._previous_qdelay - count * config.alpha * target
            self._base = min(1.0, max(0.0, self._base))
            self._previous_qdelay = 0.0
            self._next_update += count * step
            return
        while self._next_update <= until:
            at = self._next_update
            qdelay = max(0.0, at - self._classic.items[0].arrival)
            self._base += config.alpha * (qdelay - config.classic_target_ms / 1000) + (
                config.beta * (qdelay - self._previous_qdelay)
            )
            self._base = min(1.0, max(0.0, self._base))
            self._previous_qdelay = qdelay
            self._next_update = at + step

    def _pick(self, start: float) -> _QueueCounters:
        l4s, classic = self._l4s, self._classic
        if not l4s.items:
            return classic
        if not classic.items:
            return l4s
        l4s_wait = start - l4s.items[0].arrival
        classic_wait = start - classic.items[0].arrival
        return classic if classic_wait > l4s_wait + self.config.tshift_ms / 1000 else l4s

    def _decide(self, queue: _QueueCounters, item: _Queued, sojourn: float) -> bytes | None:
        config = self.config
        draw = self._rng.random()
        if queue is self._l4s:
            threshold = config.l4s_threshold_ms / 1000
            if sojourn < threshold:
                native = 0.0
            elif config.l4s_ramp_ms <= 0:
                native = 1.0
            else:
                native = min(1.0, (sojourn - threshold) / (config.l4s_ramp_ms / 1000))
            probability = max(native, min(1.0, config.coupling * self._base))
            if draw < probability and item.ecn is not Ecn.CE:
                queue.marked += 1
                return write_ecn(item.packet, Ecn.CE)
            return item.packet
        if draw < self._base * self._base:
            if item.ecn in (Ecn.ECT0, Ecn.ECT1):
                queue.marked += 1
                return write_ecn(item.packet, Ecn.CE)
            if item.ecn is not Ecn.CE:
                self._dropped += 1
                return None
        return item.packet

    def statistics(self) -> DualQStats:
        """A snapshot of the counters."""
        l4s, classic = self._l4s, self._classic
        return DualQStats(
            l4s_packets=l4s.packets,
            classic_packets=classic.packets,
            l4s_marked=l4s.marked,
            classic_marked=classic.marked,
            dropped=self._dropped,
            overflowed=self._overflowed,
            l4s_sojourn_mean_ms=round(1000 * l4s.sojourn_sum / l4s.sent, 4) if l4s.sent else 0.0,
            l4s_sojourn_max_ms=round(1000 * l4s.sojourn_max, 4),
            classic_sojourn_mean_ms=(
                round(1000 * classic.sojourn_sum / classic.sent, 4) if classic.sent else 0.0
            ),
            classic_sojourn_max_ms=round(1000 * classic.sojourn_max, 4),
            l4s_sojourn_p50_ms=l4s.percentile_ms(50),
            l4s_sojourn_p99_ms=l4s.percentile_ms(99),
            classic_sojourn_p50_ms=classic.percentile_ms(50),
            classic_sojourn_p99_ms=classic.percentile_ms(99),
            base_probability=round(self._base, 6),
        )
