"""Test signals for the gateway's tests: tones, their pitch and loudness."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.int16]


def tone(freq: float, rate: int, seconds: float, level: float = 0.5) -> Samples:
    """A sine at ``freq`` Hz, ``seconds`` long, as int16 at ``rate``."""
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(level * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def dominant_hz(samples: Samples, rate: int) -> float:
    """The strongest frequency in ``samples`` (Hann window, interpolated peak)."""
    data = samples.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(data * np.hanning(len(data))))
    spectrum[0] = 0.0
    peak = int(np.argmax(spectrum))
    if 0 < peak < len(spectrum) - 1:
        left, centre, right = spectrum[peak - 1 : peak + 2]
        peak += 0.5 * (left - right) / (left - 2 * centre + right)
    return float(peak * rate / len(data))


def rms(samples: Samples) -> float:
    """Root mean square level, in sample units."""
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if len(samples) else 0.0
