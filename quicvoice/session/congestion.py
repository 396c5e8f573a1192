"""The voice sender's answer to congestion: a target Opus bitrate from ECN feedback and losses.

Sans-I/O: the caller reports what the peer acknowledged (``on_ecn_feedback``: packets newly
acknowledged, of which newly CE-marked) and what it declared lost (``on_loss``), with the time
and the smoothed RTT; it reads ``target_bitrate`` and gives it to the Opus encoder.

* **L4S** (the path carries our ECT(1)): a scalable, DCTCP/Prague-style response. Once per
  round (one RTT of feedback), ``alpha`` (an EWMA, gain ``1/16``, of the fraction of packets
  marked CE in the round; seeded with the first marked round's fraction) is updated; a round
  with marks lowers the bitrate by ``alpha/2`` (``rate *= 1 - alpha/2``), a round without
  adds ``increase_bps`` (1 kbit/s). Light marking nudges the bitrate, heavy marking halves
  it, and audio keeps flowing.
* **Classic** (ECT(0), RFC 3168): a CE mark is a loss: the bitrate halves, at most once per
  RTT, and grows back additively.
* **Loss**, in every mode (L4S senders must answer loss classically, RFC 9331): halve,
  at most once per RTT.
* **off** (not-ECT): CE feedback is ignored (a peer reporting marks on packets we never
  marked is the ECN validation's business); losses still halve.

In every mode a round (an RTT) without a reduction adds ``increase_bps``, up to the cap.

The bitrate never leaves ``[min_bitrate, max_bitrate]`` (Opus speech: 6-64 kbit/s).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

#: What this sender marks its packets with (``ecn`` setting of issue 17).
EcnMode = Literal["l4s", "classic", "off"]
ECN_MODES: tuple[EcnMode, ...] = ("l4s", "classic", "off")
#: RTT assumed until the caller gives one, in seconds.
DEFAULT_RTT = 0.1
#: Shortest round the response counts feedback over, in seconds (an RTT on loopback is µs).
MIN_ROUND = 0.02


@dataclass(frozen=True, slots=True, kw_only=True)
class CongestionConfig:
    """Bounds and gains of the response."""

    #: ECN mode of the packets this sender sends.
    mode: EcnMode = "l4s"
    #: Bitrate at the start, bit/s.
    start_bitrate: int = 32_000
    #: The bitrate stays within these, bit/s (libopus accepts 6000-510000).
    min_bitrate: int = 6_000
    max_bitrate: int = 64_000
    #: Additive increase per round without congestion, bit/s.
    increase_bps: int = 1_000
    #: EWMA gain of alpha (DCTCP's g).
    gain: float = 1 / 16

    def __post_init__(self) -> None:
        if self.mode not in ECN_MODES:
            raise ValueError(f"mode must be one of {ECN_MODES}, not {self.mode!r}")
        if not 6_000 <= self.min_bitrate <= self.max_bitrate <= 510_000:
            raise ValueError("bitrates must satisfy 6000 ≤ min_bitrate ≤ max_bitrate ≤ 510000")
        if not self.min_bitrate <= self.start_bitrate <= self.max_bitrate:
            raise ValueError("start_bitrate must be within min_bitrate..max_bitrate")
        if not 0 <= self.increase_bps <= 100_000:
            raise ValueError("increase_bps must be within 0..100000")
        if not 0.0 < self.gain <= 1.0:
            raise ValueError("gain must be within (0, 1]")


@dataclass(frozen=True, slots=True, kw_only=True)
class CongestionStats:
    """Counters of a response."""

    mode: EcnMode
    target_bitrate: int
    #: The EWMA of the CE fraction (L4S mode).
    alpha: float
    acked: int
    ce: int
    lost: int
    #: Reductions made: by CE (scaled in L4S mode, halving in classic) and by loss.
    ce_reductions: int
    loss_reductions: int
    #: Lowest bitrate reached, bit/s.
    min_target_bitrate: int
    #: Times ``set_mode`` changed the mode (validation or a migration changed the path).
    mode_changes: int = 0


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, not {value!r}")
    return value


class CongestionResponse:
    """Feedback in, ``target_bitrate`` out; one per sending direction of a session."""

    def __init__(self, config: CongestionConfig | None = None) -> None:
        self.config = config or CongestionConfig()
        self._rate = float(self.config.start_bitrate)
        self._alpha = 0.0
        self._round_start: float | None = None
        self._round_acked = 0
        self._round_ce = 0
        self._last_reduction: float | None = None
        self._rtt = DEFAULT_RTT
        self._acked = self._ce = self._lost = 0
        self._ce_reductions = self._loss_reductions = 0
        self._min_rate = self.config.start_bitrate
        self._mode_changes = 0

    @property
    def target_bitrate(self) -> int:
        """The bitrate the encoder should use now, bit/s."""
        return int(self._rate)

    @property
    def alpha(self) -> float:
        """The EWMA of the fraction of packets marked CE (L4S mode)."""
        return self._alpha

    @property
    def mode(self) -> EcnMode:
        """The ECN mode the response answers as (what this path's packets carry)."""
        return self.config.mode

    def set_mode(self, mode: EcnMode) -> None:
        """Answer as ``mode`` from now on: the path's marking or its validation changed (a
        migration, a path found bleaching). The bitrate and the counters carry over; the
        round and ``alpha`` start afresh, since marks on the old path say nothing of the new.
        Raises ValueError for an unknown mode."""
        if mode not in ECN_MODES:
            raise ValueError(f"mode must be one of {ECN_MODES}, not {mode!r}")
        if mode == self.config.mode:
            return
        self.config = replace(self.config, mode=mode)
        self._alpha = 0.0
        self._round_start = None
        self._round_acked = self._round_ce = 0
        self._mode_changes += 1

    def on_ecn_feedback(self, *, now: float, acked: int, ce: int, rtt: float | None = None) -> int:
        """The peer acknowledged ``acked`` more packets, ``ce`` more of them marked CE.

        ``now`` is any monotonic clock in seconds, ``rtt`` the smoothed RTT if known. Returns
        the target bitrate. Raises ValueError for negative counts or ``ce > acked``.
        """
        _count("acked", acked)
        _count("ce", ce)
        if ce > acked:
            raise ValueError(f"ce ({ce}) cannot exceed acked ({acked})")
        self._observe_rtt(rtt)
        self._acked += acked
        self._ce += ce
        mode = self.config.mode
        if mode == "classic" and ce:
            self._halve(now, by_loss=False)
        # Rounds go on in every mode: they pace the additive increase; only L4S counts CE.
        self._round(now, acked, ce if mode == "l4s" else 0)
        return self.target_bitrate

    def on_loss(self, *, now: float, lost: int, rtt: float | None = None) -> int:
        """``lost`` more packets were declared lost: halve, at most once per RTT."""
        _count("lost", lost)
        self._observe_rtt(rtt)
        if lost:
            self._lost += lost
            self._halve(now, by_loss=True)
        return self.target_bitrate

    def statistics(self) -> CongestionStats:
        """A snapshot of the counters."""
        return CongestionStats(
            mode=self.config.mode,
            target_bitrate=self.target_bitrate,
            alpha=round(self._alpha, 6),
            acked=self._acked,
            ce=self._ce,
            lost=self._lost,
            ce_reductions=self._ce_reductions,
            loss_reductions=self._loss_reductions,
            min_target_bitrate=self._min_rate,
            mode_changes=self._mode_changes,
        )

    def _observe_rtt(self, rtt: float | None) -> None:
        if rtt is None:
            return
        if not isinstance(rtt, int | float) or not 0.0 < rtt < 60.0:
            raise ValueError(f"rtt must be within (0, 60) s, not {rtt!r}")
        self._rtt = float(rtt)

    def _round(self, now: float, acked: int, ce: int) -> None:
        """Close the current round if it has lasted an RTT, then count this feedback in."""
        if self._round_start is None:
            self._round_start = now
        elif now - self._round_start >= max(self._rtt, MIN_ROUND) and self._round_acked:
            self._close_round(now)
        self._round_acked += acked
        self._round_ce += ce

    def _close_round(self, now: float) -> None:
        fraction = self._round_ce / self._round_acked
        if self._round_ce and not self._ce_reductions:
            # alpha starts from the first marked round's own fraction rather than from 0
            # (DCTCP) or 1 (Prague): a sudden bottleneck is answered in that round, by as
            # much as it marks, not after the 1/g rounds an EWMA from 0 needs to rise.
            self._alpha = fraction
        else:
            gain = self.config.gain
            self._alpha = (1 - gain) * self._alpha + gain * fraction
        if self._round_ce:
            self._set(self._rate * (1 - self._alpha / 2))
            self._ce_reductions += 1
            self._last_reduction = now
        elif self._quiet(now):
            self._set(self._rate + self.config.increase_bps)
        self._round_start = now
        self._round_acked = self._round_ce = 0

    def _quiet(self, now: float) -> bool:
        """No reduction within the last RTT (growth waits a round after any cut)."""
        last = self._last_reduction
        return last is None or now - last >= max(self._rtt, MIN_ROUND)

    def _halve(self, now: float, *, by_loss: bool) -> None:
        if not self._quiet(now):
            return
        self._last_reduction = now
        self._set(self._rate / 2)
        if by_loss:
            self._loss_reductions += 1
        else:
            self._ce_reductions += 1

    def _set(self, rate: float) -> None:
        config = self.config
        self._rate = min(float(config.max_bitrate), max(float(config.min_bitrate), rate))
        self._min_rate = min(self._min_rate, int(self._rate))
