"""Packet-loss concealment for codecs without their own (L16, G.711).

A lost frame is replaced by the last pitch period of the good signal, repeated and
faded out; when good audio resumes, its first ``MERGE_MS`` are cross-faded with the
continuation of the concealment so the seam does not click.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from quicvoice.audio.frames import INT16_MAX, INT16_MIN, Pcm, check_pcm

HISTORY_MS = 30.0
"""Good signal kept for pitch estimation, in milliseconds."""
MIN_PITCH_HZ = 70.0
MAX_PITCH_HZ = 400.0
FADE_MS = 60.0
"""Concealment fades linearly to silence over this much consecutive loss."""
VOICED_CORRELATION = 0.3
"""Normalised autocorrelation above which the history counts as periodic (voiced)."""
MERGE_MS = 2.5
"""Cross-fade between concealment and resumed audio, in milliseconds."""


class RepeatConcealer:
    """Pitch-repeat concealment with fade-out, for one stream at ``rate`` Hz."""

    __slots__ = ("_rate", "_history", "_period", "_phase", "_concealed", "_fade", "_merge")

    def __init__(self, rate: int) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, not {rate}")
        self._rate = rate
        self._history: Pcm = np.zeros(0, dtype=np.int16)
        self._period: npt.NDArray[np.float64] = np.zeros(0)
        self._phase = 0
        self._concealed = 0
        self._fade = max(1, int(rate * FADE_MS / 1000))
        self._merge = max(1, int(rate * MERGE_MS / 1000))

    @property
    def concealing(self) -> bool:
        """True between a concealed frame and the next good one."""
        return self._concealed > 0

    def good(self, samples: Pcm) -> Pcm:
        """Record a good frame; returns it, cross-faded into the concealment if one was running."""
        pcm = check_pcm(samples)
        if self._concealed and len(pcm) and len(self._period):
            count = min(self._merge, len(pcm))
            tail = self._synthesise(count)
            ramp = (np.arange(count) + 0.5) / count
            mixed = pcm[:count] * ramp + tail * (1.0 - ramp)
            pcm = pcm.copy()
            pcm[:count] = np.clip(np.rint(mixed), INT16_MIN, INT16_MAX)
        self._concealed = 0
        self._period = np.zeros(0)
        keep = int(self._rate * HISTORY_MS / 1000)
        self._history = np.concatenate((self._history, pcm))[-keep:]
        return pcm

    def conceal(self, samples: int) -> Pcm:
        """Synthesise ``samples`` samples to stand in for lost audio."""
        if samples < 0:
            raise ValueError("samples must not be negative")
        if self._concealed == 0:
            self._period = self._pitch_period()
            self._phase = 0
        out = self._synthesise(samples)
        return np.clip(np.rint(out), INT16_MIN, INT16_MAX).astype(np.int16)

    def _synthesise(self, count: int) -> npt.NDArray[np.float64]:
        """The next ``count`` samples of the faded periodic continuation (advances state)."""
        if len(self._period) == 0:
            self._concealed += count
            return np.zeros(count)
        index = (self._phase + np.arange(count)) % len(self._period)
        elapsed = self._concealed + np.arange(count)
        gain = np.clip(1.0 - elapsed / self._fade, 0.0, 1.0)
        self._phase = int((self._phase + count) % len(self._period))
        self._concealed += count
        result: npt.NDArray[np.float64] = self._period[index] * gain
        return result

    def _pitch_period(self) -> npt.NDArray[np.float64]:
        """The last pitch period of the history (autocorrelation peak), or 10 ms if unvoiced."""
        history = self._history.astype(np.float64)
        shortest = int(self._rate / MAX_PITCH_HZ)
        longest = int(self._rate / MIN_PITCH_HZ)
        if len(history) < 2 * shortest:
            return history
        longest = min(longest, len(history) // 2)
        tail = history[-longest:]
        energy = float(tail @ tail)
        if energy == 0.0:
            return np.zeros(0)
        window = longest
        lags = np.arange(shortest, longest + 1)
        views = np.lib.stride_tricks.sliding_window_view(history, window)
        candidates = views[len(views) - 1 - lags]
        target = history[-window:]
        norms = np.sqrt(np.einsum("ij,ij->i", candidates, candidates) * (target @ target))
        scores = (candidates @ target) / np.maximum(norms, 1e-9)
        best = int(np.argmax(scores))
        # Weaker correlation than VOICED_CORRELATION counts as unvoiced: repeat 10 ms instead.
        lag = int(lags[best]) if scores[best] > VOICED_CORRELATION else int(self._rate / 100)
        return history[-min(lag, len(history)) :]
