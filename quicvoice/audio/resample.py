"""A streaming, low-delay polyphase resampler for int16 audio.

Design (made with numpy at first use, cached per rate pair):

* The ratio ``out/in`` is reduced to ``L/M``; conceptually the input is upsampled
  by ``L``, low-pass filtered, and decimated by ``M``.
* The filter is a Kaiser-windowed sinc designed for ``STOPBAND_DB`` of attenuation.
  With ``f_low = min(in, out) / 2`` its passband ends at ``PASSBAND_FRACTION * f_low``
  and its stopband starts at ``2 * f_low - passband``: aliases and images of the
  passband fall only where the filter rejects them, at the cost of letting the
  band between ``f_low`` and the stopband fold into the transition band.
  The transition is ``0.2 * f_low`` wide, so the delay is about ``32 / min(in, out)``
  seconds: 4 ms at 8 kHz, 2 ms at 16 kHz, 0.7 ms at 44.1 kHz.
* Coefficients are rounded to integers at scale ``2**COEFF_BITS``. Input samples are
  integers, so every product and every partial sum is an integer far below ``2**53``
  and float64 arithmetic is exact in whatever order BLAS adds the terms: streaming
  output is bit-exact with one-shot output, for any split into frames.
* The filter is causal and output ``j`` uses inputs up to ``floor(j * M / L)``, so
  every call returns exactly ``len(samples) * L / M`` samples: no buffering beyond
  the filter's history, and a fixed delay of ``delay`` seconds.
* Work is one matrix product per call: each row is a window of the input covering
  ``G`` periods of ``M`` inputs, and a precomputed block matrix maps it to the
  ``G * L`` outputs of those periods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from quicvoice.audio.frames import INT16_MAX, INT16_MIN, Pcm, check_pcm

STOPBAND_DB = 100.0
"""Kaiser design target for stopband attenuation, in dB."""
PASSBAND_FRACTION = 0.9
"""Passband edge as a fraction of the lower of the two Nyquist frequencies."""
COEFF_BITS = 24
"""Filter coefficients are integers at scale 2**COEFF_BITS (see the module docstring)."""
MIN_RATE = 8000
MAX_RATE = 192000
MAX_PHASES = 1024
"""Largest L or M of the reduced ratio; larger ones would need huge filters."""
BLOCK_FRACTION = 8
"""A row of the block product spans about taps/BLOCK_FRACTION new inputs (measured fastest)."""

Float64Array = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class FilterDesign:
    """A designed polyphase filter for one rate pair."""

    in_rate: int
    """Input sample rate in Hz."""
    out_rate: int
    """Output sample rate in Hz."""
    up: int
    """L: the upsampling factor of the reduced ratio."""
    down: int
    """M: the downsampling factor of the reduced ratio."""
    taps_per_phase: int
    """K: taps of each of the L polyphase branches."""
    length: int
    """Length of the prototype filter (at ``in_rate * up``), in taps."""
    delay: float
    """Group delay of the linear-phase filter, in seconds."""
    passband_hz: float
    """Passband edge in Hz."""
    stopband_hz: float
    """Stopband edge in Hz."""
    phases: Float64Array
    """Integer-valued coefficients, shape (L, K): ``phases[p, t] = h[p + t*L]`` (read-only)."""


def _check_rate(rate: int, name: str) -> None:
    if isinstance(rate, bool) or not isinstance(rate, int):
        raise TypeError(f"{name} must be an int (Hz), not {type(rate).__name__}")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"{name} must be between {MIN_RATE} and {MAX_RATE} Hz, not {rate}")


@lru_cache(maxsize=64)
def design_filter(in_rate: int, out_rate: int) -> FilterDesign:
    """Design (once per rate pair) the polyphase filter for ``in_rate -> out_rate``."""
    _check_rate(in_rate, "in_rate")
    _check_rate(out_rate, "out_rate")
    common = math.gcd(in_rate, out_rate)
    up, down = out_rate // common, in_rate // common
    if max(up, down) > MAX_PHASES:
        raise ValueError(f"ratio {out_rate}/{in_rate} reduces to {up}/{down}: too many phases")
    fs_up = float(in_rate * up)
    nyquist_low = min(in_rate, out_rate) / 2.0
    passband = PASSBAND_FRACTION * nyquist_low
    stopband = 2.0 * nyquist_low - passband
    if up == down:
        identity = np.full((1, 1), float(1 << COEFF_BITS))
        identity.setflags(write=False)
        return FilterDesign(in_rate, out_rate, 1, 1, 1, 1, 0.0, passband, stopband, identity)
    # Kaiser's estimates (Oppenheim & Schafer, eq. 7.62-7.63).
    width = 2.0 * math.pi * (stopband - passband) / fs_up
    length = math.ceil((STOPBAND_DB - 7.95) / (2.285 * width)) + 1
    beta = 0.1102 * (STOPBAND_DB - 8.7)
    taps = math.ceil(length / up)
    centre = (length - 1) / 2.0
    n = np.arange(length, dtype=np.float64)
    cutoff = nyquist_low / fs_up  # cycles per sample at the upsampled rate
    h = 2.0 * cutoff * np.sinc(2.0 * cutoff * (n - centre)) * np.kaiser(length, beta)
    h *= up / h.sum()  # unit gain at DC after zero-stuffing by L
    padded = np.zeros(taps * up, dtype=np.float64)
    padded[:length] = np.rint(h * (1 << COEFF_BITS))
    phases = padded.reshape(taps, up).T.copy()
    phases.setflags(write=False)
    return FilterDesign(
        in_rate=in_rate,
        out_rate=out_rate,
        up=up,
        down=down,
        taps_per_phase=taps,
        length=length,
        delay=centre / fs_up,
        passband_hz=passband,
        stopband_hz=stopband,
        phases=phases,
    )


@lru_cache(maxsize=128)
def _block_matrix(in_rate: int, out_rate: int, periods: int) -> Float64Array:
    """Map a window of ``periods*M + K - 1`` inputs to the ``periods*L`` outputs it ends with.

    Entries are the integer coefficients times 2**-COEFF_BITS: a power-of-two scale
    keeps every product and sum exact, and saves a multiplication per output.
    """
    d = design_filter(in_rate, out_rate)
    up, down, taps = d.up, d.down, d.taps_per_phase
    matrix = np.zeros((periods * down + taps - 1, periods * up), dtype=np.float64)
    t = np.arange(taps)
    for g in range(periods):
        for r in range(up):
            newest, phase = divmod(r * down, up)
            rows = g * down + newest - t + taps - 1
            matrix[rows, g * up + r] = d.phases[phase, t]
    matrix *= 2.0**-COEFF_BITS
    matrix.setflags(write=False)
    return matrix


def _periods_per_row(periods: int, down: int, taps: int) -> int:
    """The largest divisor G of ``periods`` with ``G*M <= max(M, K/BLOCK_FRACTION)``."""
    limit = max(1, taps // BLOCK_FRACTION // down)
    best = 1
    for g in range(1, min(periods, limit) + 1):
        if periods % g == 0:
            best = g
    return best


class Resampler:
    """Streaming resampler from ``in_rate`` to ``out_rate`` for mono int16 audio.

    Call :meth:`process` once per frame. A frame must hold a multiple of
    :attr:`input_multiple` samples (any 10 ms or 20 ms frame between 8, 16, 24,
    44.1 and 48 kHz does); the output then holds exactly
    ``len(frame) * out_rate // in_rate`` samples, delayed by :attr:`delay` seconds.
    The output of a stream is bit-exact with the output of :meth:`process` on the
    whole stream at once.
    """

    __slots__ = ("_design", "_history", "_buffer", "_plan")

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self._design = design_filter(in_rate, out_rate)
        self._history = self._design.taps_per_phase - 1
        self._buffer: Float64Array = np.zeros(self._history, dtype=np.float64)
        self._plan: _Plan | None = None

    @property
    def in_rate(self) -> int:
        """Input sample rate in Hz."""
        return self._design.in_rate

    @property
    def out_rate(self) -> int:
        """Output sample rate in Hz."""
        return self._design.out_rate

    @property
    def delay(self) -> float:
        """Fixed algorithmic delay from input to output, in seconds."""
        return self._design.delay

    @property
    def design(self) -> FilterDesign:
        """The filter in use."""
        return self._design

    @property
    def input_multiple(self) -> int:
        """Every frame given to :meth:`process` must hold a multiple of this many samples."""
        return self._design.down

    def output_length(self, input_length: int) -> int:
        """Number of samples :meth:`process` returns for ``input_length`` input samples."""
        return input_length * self._design.up // self._design.down

    def reset(self) -> None:
        """Forget the signal history, as if newly constructed (e.g. after a stream restart)."""
        self._buffer = np.zeros(self._history, dtype=np.float64)
        self._plan = None

    def process(self, samples: Pcm) -> Pcm:
        """Resample one frame of int16 samples; see the class docstring for the rules."""
        pcm = check_pcm(samples)
        self._input(len(pcm))[:] = pcm
        return self._run(len(pcm))

    def process_table(self, codes: npt.NDArray[np.uint8], table: Float64Array) -> Pcm:
        """Resample ``table[codes]``: decode and resample in one pass.

        ``table`` maps each code (e.g. a µ-law byte) to an integer value in the int16
        range, as float64; transcoders use this to skip an int16 intermediate.
        """
        target = self._input(len(codes))
        table.take(codes, out=target, mode="clip")  # "clip": no bounds-check buffering
        return self._run(len(codes))

    def _input(self, count: int) -> Float64Array:
        """Check ``count`` and return the part of the buffer the new samples go to."""
        if count % self._design.down:
            d = self._design
            raise ValueError(
                f"frame of {count} samples is not a multiple of {d.down} "
                f"({d.in_rate} -> {d.out_rate} Hz)"
            )
        history = self._history
        if len(self._buffer) != history + count:
            grown = np.empty(history + count, dtype=np.float64)
            grown[:history] = self._buffer[:history]
            self._buffer = grown
            self._plan = None
        return self._buffer[history:]

    def _run(self, count: int) -> Pcm:
        d = self._design
        buffer = self._buffer
        if d.up == d.down:
            return buffer[self._history :].astype(np.int16)
        if count == 0:
            return np.zeros(0, dtype=np.int16)
        plan = self._plan
        if plan is None:
            plan = self._plan = _Plan.make(d, buffer, count)
        plan.windows[...] = plan.view
        out = plan.out
        np.dot(plan.windows, plan.matrix, out=out)
        buffer[: self._history] = buffer[count:]
        np.rint(out, out=out)
        np.minimum(out, INT16_MAX, out=out)
        np.maximum(out, INT16_MIN, out=out)
        return out.reshape(-1).astype(np.int16)


@dataclass(frozen=True, slots=True)
class _Plan:
    """Arrays reused by every call with the same frame size (the buffer is reused too)."""

    view: Float64Array
    """Overlapping windows onto the buffer, one row per G periods."""
    windows: Float64Array
    """Contiguous copy of ``view`` (BLAS cannot read overlapping rows)."""
    matrix: Float64Array
    """The block matrix for G periods."""
    out: Float64Array
    """Product of ``windows`` and ``matrix``."""

    @staticmethod
    def make(d: FilterDesign, buffer: Float64Array, count: int) -> _Plan:
        periods = count // d.down
        per_row = _periods_per_row(periods, d.down, d.taps_per_phase)
        matrix = _block_matrix(d.in_rate, d.out_rate, per_row)
        rows = periods // per_row
        item = buffer.itemsize
        view: Float64Array = np.ndarray(
            (rows, matrix.shape[0]),
            dtype=np.float64,
            buffer=buffer,
            strides=(per_row * d.down * item, item),
        )
        return _Plan(
            view=view,
            windows=np.empty(view.shape, dtype=np.float64),
            matrix=matrix,
            out=np.empty((rows, matrix.shape[1]), dtype=np.float64),
        )


class StreamResampler:
    """A :class:`Resampler` for chunks of any length: what is short of
    :attr:`Resampler.input_multiple` waits for the next chunk, and :meth:`flush` ends the
    stream with what is held and the filter's delayed tail.
    """

    __slots__ = ("_resampler", "_held")

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self._resampler = Resampler(in_rate, out_rate)
        self._held: Pcm = np.zeros(0, dtype=np.int16)

    @property
    def resampler(self) -> Resampler:
        """The resampler underneath (rates, delay, design)."""
        return self._resampler

    @property
    def held_samples(self) -> int:
        """Input samples waiting for the next chunk (fewer than the input multiple)."""
        return len(self._held)

    def process(self, samples: Pcm) -> Pcm:
        """Resample ``samples`` (any length); what does not make a whole multiple is held."""
        pcm = check_pcm(samples)
        pending = np.concatenate((self._held, pcm)) if len(self._held) else pcm
        usable = len(pending) - len(pending) % self._resampler.input_multiple
        self._held = pending[usable:].copy()
        return self._resampler.process(np.ascontiguousarray(pending[:usable]))

    def flush(self) -> Pcm:
        """The held samples and the filter's delayed tail (silence fed in after them, cut off
        where real input stops being heard); then start afresh."""
        resampler = self._resampler
        multiple = resampler.input_multiple
        held = len(self._held)
        tail = held + int(np.ceil(resampler.delay * resampler.in_rate))
        padded = np.zeros(-(-tail // multiple) * multiple, dtype=np.int16)
        padded[:held] = self._held
        keep = int(np.ceil(tail * resampler.out_rate / resampler.in_rate))
        out = resampler.process(padded)[:keep]
        self.reset()
        return out

    def reset(self) -> None:
        """Forget the filter history and what is held (between utterances)."""
        self._resampler.reset()
        self._held = np.zeros(0, dtype=np.int16)
