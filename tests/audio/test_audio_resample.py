"""The resampler, measured: rejection and ripple from FFTs of tones, delay, streaming exactness."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from audio_signals import spectrum_db, stream, tone, tone_gain_db, tone_phase
from hypothesis import given, settings
from hypothesis import strategies as st

from quicvoice.audio import Resampler, design_filter, pcm_from_float
from quicvoice.errors import CodecError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

CONVERSIONS = [
    (8000, 48000),
    (48000, 8000),
    (16000, 48000),
    (48000, 16000),
    (24000, 48000),
    (48000, 24000),
    (44100, 48000),
    (48000, 44100),
    (8000, 16000),
    (16000, 8000),
]
REJECTION_DB = 90.0
RIPPLE_DB = 0.1
MAX_DELAY = 0.005


def _run(in_rate: int, out_rate: int, x: np.ndarray) -> np.ndarray:
    """Stream ``x`` in 20 ms frames; drop the first 50 ms of output (filter start-up)."""
    y = stream(Resampler(in_rate, out_rate).process, x, in_rate // 50)
    return y[out_rate // 20 :]


@pytest.mark.parametrize(("in_rate", "out_rate"), CONVERSIONS)
def test_every_frame_is_full_size_and_delay_is_fixed(in_rate: int, out_rate: int) -> None:
    r = Resampler(in_rate, out_rate)
    assert r.delay <= MAX_DELAY
    for ms in (10, 20, 20, 10, 60):
        n = in_rate * ms // 1000
        assert len(r.process(np.zeros(n, dtype=np.int16))) == out_rate * ms // 1000


@pytest.mark.parametrize(("in_rate", "out_rate"), CONVERSIONS)
def test_rejection_and_passband_ripple(in_rate: int, out_rate: int) -> None:
    """Passband tones: gain within ±0.1 dB and every other component <= -90 dB.

    Stopband tones (downsampling only): nothing at all above -90 dB. The band
    between the lower Nyquist frequency and the stopband may fold into the
    transition band; it is not tested.
    """
    d = design_filter(in_rate, out_rate)
    count = in_rate // 2
    passband = np.linspace(40.0, d.passband_hz, 9) + 0.37
    passband[-1] = d.passband_hz
    gains, worst = [], -999.0
    for f in passband:
        y = _run(in_rate, out_rate, tone(f, in_rate, count))
        gains.append(tone_gain_db(y, f, out_rate))
        freqs, level = spectrum_db(y, out_rate)
        worst = max(worst, float(level[np.abs(freqs - f) > 50].max()))
    if d.stopband_hz < in_rate / 2:
        for f in np.linspace(d.stopband_hz, in_rate / 2 - 20, 7) + 0.37:
            y = _run(in_rate, out_rate, tone(f, in_rate, count))
            worst = max(worst, float(spectrum_db(y, out_rate)[1].max()))
    assert max(np.abs(gains)) <= RIPPLE_DB, gains
    assert worst <= -REJECTION_DB, worst


@pytest.mark.parametrize(("in_rate", "out_rate"), CONVERSIONS)
def test_measured_delay_matches_reported_delay(in_rate: int, out_rate: int) -> None:
    f = 150.37  # below 1 / (2 * delay): the phase shift needs no unwrapping
    x = tone(f, in_rate, in_rate // 2)
    r = Resampler(in_rate, out_rate)
    y = stream(r.process, x, in_rate // 50)
    skip = out_rate // 20
    expected = tone(f, out_rate, len(y))[skip:]
    shift = (tone_phase(expected, f, out_rate) - tone_phase(y[skip:], f, out_rate)) % (2 * np.pi)
    measured = shift / (2 * np.pi * f)
    assert abs(measured - r.delay) < 2e-6, (measured, r.delay)


@settings(max_examples=40, deadline=None)
@given(
    conversion=st.sampled_from(CONVERSIONS),
    cuts=st.lists(st.integers(0, 40), min_size=1, max_size=12),
    seed=st.integers(0, 2**32 - 1),
)
def test_streaming_is_bit_exact_with_one_shot(
    conversion: tuple[int, int], cuts: list[int], seed: int
) -> None:
    """Bit-exact, not just within 1 LSB: integer coefficients make float64 sums exact."""
    in_rate, out_rate = conversion
    unit = Resampler(in_rate, out_rate).input_multiple
    x = np.random.default_rng(seed).integers(-32768, 32768, unit * sum(cuts) + unit, dtype=np.int16)
    one_shot = Resampler(in_rate, out_rate).process(x)
    r = Resampler(in_rate, out_rate)
    parts, start = [], 0
    for c in [*cuts, 1]:
        parts.append(r.process(x[start : start + c * unit]))
        start += c * unit
    assert np.array_equal(np.concatenate(parts), one_shot)


def test_audioop_ratecv_aliases_and_we_do_not() -> None:
    """A 5 kHz tone at 48 kHz has no place in 8 kHz audio: ratecv folds it to 3 kHz."""
    x = tone(5000.37, 48000, 24000)
    naive, _ = audioop.ratecv(x.tobytes(), 2, 1, 48000, 8000, None)
    naive_level = spectrum_db(np.frombuffer(naive, dtype=np.int16)[400:], 8000)[1].max()
    ours_level = spectrum_db(_run(48000, 8000, x), 8000)[1].max()
    assert naive_level > -10.0
    assert ours_level < -REJECTION_DB


def test_full_scale_input_clips_instead_of_wrapping() -> None:
    square = np.tile(np.array([32767] * 24 + [-32768] * 24, dtype=np.int16), 100)
    y = Resampler(48000, 8000).process(square)
    assert y.max() == 32767 and y.min() == -32768  # Gibbs overshoot clipped


def test_reset_forgets_history() -> None:
    r = Resampler(8000, 48000)
    r.process(tone(440.0, 8000, 160))
    r.reset()
    assert not r.process(np.zeros(160, dtype=np.int16)).any()


@pytest.mark.parametrize("count", [1, 5, 7, 161])
def test_frame_size_not_a_multiple_is_rejected(count: int) -> None:
    with pytest.raises(ValueError, match="multiple"):
        Resampler(48000, 8000).process(np.zeros(count, dtype=np.int16))


@given(st.sampled_from([np.float32, np.float64, np.int32, np.uint16, np.int8]))
def test_wrong_dtype_is_rejected(dtype: type) -> None:
    with pytest.raises(CodecError):
        Resampler(8000, 48000).process(np.zeros(160, dtype=dtype))


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=50))
def test_float_conversion_rejects_nan_and_inf(values: list[float]) -> None:
    x = np.array(values, dtype=np.float32)
    if np.all(np.isfinite(x)):
        assert pcm_from_float(x).dtype == np.int16
    else:
        with pytest.raises(CodecError, match="NaN"):
            pcm_from_float(x)


@pytest.mark.parametrize(("in_rate", "out_rate"), [(7999, 8000), (8000, 4000), (48000, 44101)])
def test_unsupported_rates_are_rejected(in_rate: int, out_rate: int) -> None:
    with pytest.raises(ValueError):
        Resampler(in_rate, out_rate)
