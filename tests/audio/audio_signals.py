"""Signal generators and measurements shared by the audio tests (imported as a module)."""

from __future__ import annotations

import numpy as np

AMPLITUDE = 0.89  # -1 dBFS: leaves room for the filter's overshoot
FULL_SCALE = 32767.0


def tone(freq: float, rate: int, count: int, amplitude: float = AMPLITUDE) -> np.ndarray:
    """A sine at ``freq`` Hz as int16."""
    t = np.arange(count) / rate
    return np.rint(amplitude * FULL_SCALE * np.sin(2 * np.pi * freq * t + 0.3)).astype(np.int16)


def spectrum_db(samples: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies and levels in dB relative to a sine of amplitude AMPLITUDE.

    A Kaiser window with beta 38 keeps the window's own sidelobes below -250 dB,
    so everything seen above -150 dB is in the signal.
    """
    window = np.kaiser(len(samples), 38.0)
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * window))
    level = spectrum / (window.sum() / 2) / (AMPLITUDE * FULL_SCALE)
    return np.fft.rfftfreq(len(samples), 1.0 / rate), 20 * np.log10(np.maximum(level, 1e-15))


def tone_gain_db(samples: np.ndarray, freq: float, rate: int) -> float:
    """Gain of a sine at ``freq`` relative to AMPLITUDE, by least-squares fit."""
    t = np.arange(len(samples)) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, samples.astype(np.float64), rcond=None)
    return float(20 * np.log10(np.hypot(*coef) / (AMPLITUDE * FULL_SCALE)))


def tone_phase(samples: np.ndarray, freq: float, rate: int) -> float:
    """Phase (radians) of the sine at ``freq`` in ``samples``, as sin(2 pi f t + phase)."""
    t = np.arange(len(samples)) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    (a, b), *_ = np.linalg.lstsq(basis, samples.astype(np.float64), rcond=None)
    return float(np.arctan2(b, a))


def stream(process, samples: np.ndarray, frame: int) -> np.ndarray:
    """Feed ``samples`` through ``process`` in frames of ``frame`` samples and join the output."""
    return np.concatenate([process(samples[i : i + frame]) for i in range(0, len(samples), frame)])


def loss_pattern(count: int, rate: float, seed: int) -> np.ndarray:
    """A fixed, seeded Bernoulli loss pattern (True = lost)."""
    return np.random.default_rng(seed).random(count) < rate
