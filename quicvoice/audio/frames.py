"""Mono 16-bit PCM frames and the checks every audio function applies to its input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from quicvoice.errors import CodecError

#: Samples are signed 16-bit integers in native byte order, one channel.
PCM_DTYPE = np.dtype(np.int16)
INT16_MIN = -32768
INT16_MAX = 32767
#: Scale used by :func:`pcm_from_float`: 1.0 maps to this value.
FLOAT_FULL_SCALE = 32767.0

Pcm = npt.NDArray[np.int16]


def check_pcm(samples: object, *, name: str = "samples") -> Pcm:
    """Return ``samples`` if it is a one-dimensional int16 numpy array, else raise.

    Raises :class:`~quicvoice.errors.CodecError` (a ``ValueError``) naming the problem,
    so a bad frame from a peer or an application never gets deeper than the API edge.
    The array is not copied.
    """
    if not isinstance(samples, np.ndarray):
        raise CodecError(f"{name} must be a numpy int16 array, not {type(samples).__name__}")
    if samples.dtype != PCM_DTYPE:
        hint = "; convert floats with pcm_from_float()" if samples.dtype.kind == "f" else ""
        raise CodecError(f"{name} must have dtype int16, not {samples.dtype}{hint}")
    if samples.ndim != 1:
        raise CodecError(f"{name} must be one-dimensional (mono), not shape {samples.shape}")
    return samples


def downmix(samples: Pcm, channels: int) -> Pcm:
    """Mono from interleaved ``channels``: the mean of the channels, rounded to nearest (the
    mean of int16 values always fits in int16)."""
    if channels == 1:
        return samples
    mono: Pcm = np.rint(samples.reshape(-1, channels).mean(axis=1)).astype(np.int16)
    return mono


def pcm_from_float(samples: npt.ArrayLike) -> Pcm:
    """Convert float samples in [-1.0, 1.0] to int16, rounding and clipping.

    NaN or infinite values raise :class:`~quicvoice.errors.CodecError`: they mean a bug
    upstream, and silently mapping them to some sample value would hide it.
    """
    values = np.asarray(samples)
    if values.dtype.kind != "f":
        raise CodecError(f"expected a float array, not dtype {values.dtype}")
    if values.ndim != 1:
        raise CodecError(f"samples must be one-dimensional (mono), not shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise CodecError("samples contain NaN or infinite values")
    scaled = np.rint(values.astype(np.float64) * FLOAT_FULL_SCALE)
    return np.clip(scaled, INT16_MIN, INT16_MAX).astype(np.int16)


def pcm_to_float(samples: Pcm) -> npt.NDArray[np.float32]:
    """Convert int16 samples to float32 in [-1.0, 1.0] (the inverse of :func:`pcm_from_float`)."""
    return check_pcm(samples).astype(np.float32) / np.float32(FLOAT_FULL_SCALE)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class AudioFrame:
    """A run of mono int16 samples at one sample rate.

    The samples array is not copied; treat it as read-only once it is in a frame.
    Two frames are equal when rate, timestamp and every sample are equal.
    """

    samples: Pcm
    """The samples, a one-dimensional int16 array."""
    rate: int
    """Sample rate in Hz."""
    timestamp: int = 0
    """Index of the first sample on the stream's clock, in samples at ``rate`` (RTP-style)."""

    def __post_init__(self) -> None:
        check_pcm(self.samples)
        if isinstance(self.rate, bool) or not isinstance(self.rate, int) or self.rate <= 0:
            raise ValueError(f"rate must be a positive int (Hz), not {self.rate!r}")
        if isinstance(self.timestamp, bool) or not isinstance(self.timestamp, int):
            raise ValueError(f"timestamp must be an int (samples), not {self.timestamp!r}")

    @property
    def duration(self) -> float:
        """Length of the frame in seconds."""
        return len(self.samples) / self.rate

    def __len__(self) -> int:
        return len(self.samples)

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, AudioFrame):
            return NotImplemented
        return (
            self.rate == other.rate
            and self.timestamp == other.timestamp
            and np.array_equal(self.samples, other.samples)
        )

    __hash__ = None  # type: ignore[assignment]
