"""Frames of any rate and channel count are converted to the session's mono rate, or refused
with ``AudioFormatError``: never garbled."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicvoice.errors import QuicVoiceError
from quicvoice.integrations.pipecat import AudioFormatError, PcmConverter

from .caller import dominant_hz

RATES = [8000, 11025, 16000, 22050, 24000, 44100, 48000]


def stereo(hz: float, rate: int, seconds: float, *, opposite: bool = False) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    left = (8000 * np.sin(2 * math.pi * hz * t)).astype("<i2")
    right = -left if opposite else left
    return np.stack((left, right), axis=1).astype("<i2").tobytes()


@pytest.mark.parametrize("rate", [24000, 44100, 48000])
def test_stereo_at_another_rate_becomes_the_same_tone_mono(rate: int) -> None:
    converter = PcmConverter(16000)
    audio = stereo(1000.0, rate, 0.5)
    chunk = 4 * (rate // 100) + 4 * 7  # 10 ms and a few frames: chunks off the filter period
    out = b"".join(
        converter.convert(audio[i : i + chunk], rate, 2) for i in range(0, len(audio), chunk)
    )
    samples = np.frombuffer(out, dtype="<i2")
    assert abs(len(samples) - 8000) <= 16000 // 100  # at most the held 10 ms short
    assert abs(dominant_hz(samples[400:], 16000) - 1000.0) < 5
    assert 7000 < np.max(np.abs(samples[400:])) < 8100  # same level: averaged, not summed


def test_channels_are_averaged_not_read_as_mono() -> None:
    converter = PcmConverter(48000)
    out = np.frombuffer(
        converter.convert(stereo(440.0, 48000, 0.1, opposite=True), 48000, 2), "<i2"
    )
    assert np.max(np.abs(out)) <= 1  # left and right cancel; interleaved-as-mono would not


@pytest.mark.parametrize(
    ("data", "rate", "channels", "says"),
    [
        (b"\x00" * 7, 16000, 1, "not whole frames"),
        (b"\x00" * 6, 48000, 2, "2 channel(s)"),
        (b"\x00" * 18, 48000, 9, "9 channels"),
        (b"\x00" * 4, 48000, 0, "0 channels"),
        (b"\x00" * 4, 0, 1, "sample_rate"),
        (b"\x00" * 4, 7999, 1, "cannot resample 7999 Hz"),
        (b"\x00" * 4, 16001, 1, "cannot resample 16001 Hz"),
    ],
)
def test_what_cannot_be_converted_is_refused_by_name(
    data: bytes, rate: int, channels: int, says: str
) -> None:
    with pytest.raises(AudioFormatError, match=says.replace("(", r"\(").replace(")", r"\)")):
        PcmConverter(16000).convert(data, rate, channels)


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(
        st.tuples(
            st.binary(max_size=2000),
            st.sampled_from([*RATES, 0, -1, 7, 16001, 10**9]),
            st.integers(min_value=-2, max_value=12),
        ),
        max_size=8,
    ),
    out_rate=st.sampled_from([8000, 16000, 24000, 48000]),
)
def test_any_input_is_converted_exactly_or_refused(
    chunks: list[tuple[bytes, int, int]], out_rate: int
) -> None:
    converter = PcmConverter(out_rate)
    taken: dict[int, int] = {}
    produced: dict[int, int] = {}
    for data, rate, channels in chunks:
        try:
            out = converter.convert(data, rate, channels)
        except AudioFormatError as error:
            assert isinstance(error, QuicVoiceError) and isinstance(error, ValueError)
            continue
        assert len(data) % (2 * channels) == 0 and 1 <= channels <= 8
        assert len(out) % 2 == 0
        taken[rate] = taken.get(rate, 0) + len(data) // (2 * channels)
        produced[rate] = produced.get(rate, 0) + len(out) // 2
    for rate, frames in taken.items():
        # Every input frame comes out in proportion, but for at most 10 ms held back.
        expected = frames * out_rate / rate
        assert expected - out_rate / 100 - 1 <= produced[rate] <= expected + 1
