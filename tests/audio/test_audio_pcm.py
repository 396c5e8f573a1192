"""App PCM <-> codec: a sine through encode and decode keeps its frequency and level, with a
bounded delay, for every codec the protocol negotiates and the app rates around it."""

from __future__ import annotations

import numpy as np
import pytest
from audio_signals import AMPLITUDE, FULL_SCALE, tone, tone_gain_db
from hypothesis import given, settings
from hypothesis import strategies as st

from quicvoice.audio.pcm import APP_RATES, PcmDecoder, PcmEncoder, PcmFrame
from quicvoice.errors import CodecError

CODECS = ["L16/16000", "L16/24000", "L16/48000", "PCMU/8000", "PCMA/8000", "opus/48000"]
#: Lowest codec rate per codec: a tone must sit inside its passband (0.9 x Nyquist).
TONE_HZ = 1000.0
CHUNK = 317  # an odd chunk size: the encoder must hold remainders across writes


def _round_trip(codec: str, app_rate: int, samples: np.ndarray) -> tuple[np.ndarray, int]:
    encoder = PcmEncoder(codec, app_rate)
    decoder = PcmDecoder(codec, app_rate)
    payloads = []
    for start in range(0, len(samples), CHUNK):
        piece = samples[start : start + CHUNK]
        data = piece.astype("<i2").tobytes() if start % 2 else piece  # bytes and arrays
        payloads += encoder.write(data)
    payloads += encoder.flush()
    frames = [decoder.decode(p.payload, sequence=i) for i, p in enumerate(payloads)]
    timestamps = [f.timestamp for f in frames]
    assert timestamps == [i * encoder.frame_samples for i in range(len(frames))]
    assert all(f.sample_rate == app_rate for f in frames)
    return np.concatenate([f.samples for f in frames]), len(payloads)


def _dominant_hz(samples: np.ndarray, rate: int) -> float:
    window = np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * window, 8 * len(samples)))
    return float(np.fft.rfftfreq(8 * len(samples), 1.0 / rate)[np.argmax(spectrum)])


def _onset(samples: np.ndarray, threshold: float) -> int:
    return int(np.argmax(np.abs(samples.astype(np.float64)) > threshold))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("app_rate", [8000, 16000, 44100, 48000])
def test_a_sine_keeps_frequency_level_and_a_bounded_delay(codec: str, app_rate: int) -> None:
    silence = app_rate // 10  # 100 ms, then 900 ms of tone
    signal = np.concatenate(
        [np.zeros(silence, dtype=np.int16), tone(TONE_HZ, app_rate, app_rate - silence)]
    )
    out, count = _round_trip(codec, app_rate, signal)
    frame = app_rate // 50
    assert len(out) == count * frame >= len(signal)
    threshold = 0.3 * AMPLITUDE * FULL_SCALE
    delay_ms = (_onset(out, threshold) - _onset(signal, threshold)) * 1000 / app_rate
    # A quantisation step early at most; the resampler (<= 4 ms) + Opus look-ahead (6.5 ms).
    assert -0.5 < delay_ms < 15, delay_ms
    steady = out[silence + app_rate // 10 : silence + app_rate // 10 + app_rate // 2]
    assert abs(_dominant_hz(steady, app_rate) - TONE_HZ) < 2.0
    tolerance = 1.5 if codec.startswith("opus") else 0.5
    assert abs(tone_gain_db(steady, TONE_HZ, app_rate)) < tolerance


@pytest.mark.parametrize("codec", ["L16/16000", "L16/48000"])
def test_l16_at_the_app_rate_is_bit_exact(codec: str) -> None:
    rate = int(codec.split("/")[1])
    signal = tone(440.0, rate, rate // 2)
    out, _ = _round_trip(codec, rate, signal)
    assert np.array_equal(out[: len(signal)], signal)
    assert not out[len(signal) :].any()


def test_the_frame_exposes_a_numpy_view_without_copy() -> None:
    data = np.arange(320, dtype="<i2").tobytes()
    frame = PcmFrame(data=data, sample_rate=16000, timestamp=0)
    samples = frame.samples
    assert samples.dtype == np.int16 and len(samples) == len(frame) == 320
    assert samples.base is not None and not samples.flags.writeable
    assert frame.duration_ms == 20.0


def test_flush_pads_the_remainder_and_a_second_flush_sends_nothing() -> None:
    encoder = PcmEncoder("L16/16000", 16000)
    assert encoder.write(bytes(100)) == []  # 50 samples: held
    assert encoder.held_samples == 50
    flushed = encoder.flush()
    assert len(flushed) == 1 and len(flushed[0].payload) == 640
    assert encoder.flush() == []
    assert PcmEncoder("opus/48000", 16000).flush() == []  # nothing written: nothing sent


def test_an_odd_byte_is_held_for_the_next_write() -> None:
    encoder = PcmEncoder("L16/16000", 16000)
    ramp = np.arange(320, dtype="<i2").tobytes()
    assert encoder.write(ramp[:101]) == []
    frames = encoder.write(ramp[101:])
    assert len(frames) == 1
    assert np.array_equal(np.frombuffer(frames[0].payload, ">i2"), np.arange(320))


def test_bad_app_input_raises_a_clear_error() -> None:
    encoder = PcmEncoder("L16/16000", 16000)
    with pytest.raises(CodecError, match="int16"):
        encoder.write(np.zeros(10, dtype=np.float32))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encoder.write("no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sample_rate"):
        PcmEncoder("L16/16000", 22050)
    assert 44100 in APP_RATES


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=2000))
def test_a_garbled_payload_raises_codec_error_and_loses_nothing_else(payload: bytes) -> None:
    decoder = PcmDecoder("L16/16000", 48000)
    good = tone(440.0, 16000, 320).astype(">i2").tobytes()
    first = decoder.decode(good)
    try:
        decoder.decode(payload)
    except CodecError:
        pass
    else:
        assert len(payload) % 2 == 0
    after = decoder.decode(good)
    assert after.timestamp > first.timestamp and len(after) == 960


@settings(max_examples=100, deadline=None)
@given(payload=st.binary(max_size=400))
def test_garbled_opus_and_g711_never_raise_anything_but_codec_error(payload: bytes) -> None:
    for codec in ("opus/48000", "PCMU/8000"):
        decoder = PcmDecoder(codec, 16000)
        try:
            decoder.decode(payload)
        except CodecError:
            pass
