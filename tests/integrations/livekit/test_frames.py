"""LiveKit frames of any rate and channel count: converted to the session's mono PCM, or
refused with ``FrameFormatError``; never passed on garbled."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("livekit.rtc", reason="needs the livekit extra")

from livekit import rtc  # noqa: E402

from quicvoice.audio.frames import downmix  # noqa: E402
from quicvoice.errors import CodecError  # noqa: E402
from quicvoice.integrations.livekit import FrameConverter, FrameFormatError  # noqa: E402
from quicvoice.integrations.livekit.frames import frame_samples  # noqa: E402

from .caller import dominant_hz, tone  # noqa: E402


def frame_of(samples: np.ndarray, rate: int, channels: int = 1) -> rtc.AudioFrame:
    return rtc.AudioFrame(
        samples.astype(np.int16).tobytes(), rate, channels, len(samples) // channels
    )


def converted(converter: FrameConverter, frames: list[rtc.AudioFrame]) -> np.ndarray:
    parts = [converter.convert(frame) for frame in frames] + [converter.flush()]
    return np.concatenate(parts)


def test_stereo_at_48k_becomes_mono_at_16k_with_its_pitch_and_level() -> None:
    left = tone(1000.0, 48000, 1.0)
    stereo = np.stack([left, left], axis=1).reshape(-1)
    frames = [frame_of(stereo[i : i + 960 * 2], 48000, 2) for i in range(0, len(stereo), 960 * 2)]
    out = converted(FrameConverter(16000), frames)
    assert abs(len(out) - 16000) < 16000 * 0.01  # one second, plus the filter's few ms
    steady = out[1600:12800]
    assert abs(dominant_hz(steady, 16000) - 1000.0) < 3
    level = np.sqrt(np.mean(steady.astype(np.float64) ** 2)) / (0.5 * 32767 / np.sqrt(2))
    assert 0.97 < level < 1.03


def test_opposite_channels_cancel_in_the_downmix() -> None:
    left = tone(440.0, 16000, 0.1)
    stereo = np.stack([left, -left], axis=1).reshape(-1)
    assert not np.any(downmix(stereo, 2))


@pytest.mark.parametrize("rate", [22050, 44100, 24000, 8000])
def test_frames_of_any_size_resample_as_one_stream(rate: int) -> None:
    signal = tone(300.0, rate, 0.5)
    sizes = np.random.default_rng(rate).integers(1, 700, size=len(signal))
    cuts = np.cumsum(sizes)
    chunks = np.split(signal, cuts[cuts < len(signal)])
    split = converted(FrameConverter(16000), [frame_of(c, rate) for c in chunks])
    whole = converted(FrameConverter(16000), [frame_of(signal, rate)])
    assert np.array_equal(split, whole)


def test_a_frame_at_the_sessions_rate_passes_unchanged() -> None:
    signal = tone(300.0, 16000, 0.02)
    assert np.array_equal(FrameConverter(16000).convert(frame_of(signal, 16000)), signal)


def test_an_unsupported_rate_is_refused_naming_it() -> None:
    with pytest.raises(FrameFormatError, match="4000 Hz cannot be resampled to 16000 Hz"):
        FrameConverter(16000).convert(frame_of(np.zeros(80), 4000))


def test_a_rate_change_within_a_segment_is_refused() -> None:
    converter = FrameConverter(16000)
    converter.convert(frame_of(np.zeros(480), 24000))
    with pytest.raises(FrameFormatError, match="48000 Hz in a stream at 24000 Hz"):
        converter.convert(frame_of(np.zeros(960), 48000))
    with pytest.raises(FrameFormatError):
        converter.convert(frame_of(np.zeros(320), 16000))  # back to the session's rate, too


def test_a_header_that_cannot_describe_audio_is_refused() -> None:
    with pytest.raises(FrameFormatError, match="0 channels"):
        frame_samples(rtc.AudioFrame(bytes(4), 16000, 0, 2))
    with pytest.raises(FrameFormatError, match="sample rate 0"):
        frame_samples(rtc.AudioFrame(bytes(4), 0, 1, 2))
    assert issubclass(FrameFormatError, CodecError)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.one_of(
        st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000]), st.integers(0, 400000)
    ),
    channels=st.integers(0, 8),
    count=st.integers(0, 1200),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_frame_is_converted_or_refused_with_frame_format_error(
    rate: int, channels: int, count: int, seed: int
) -> None:
    size = count * max(channels, 1)
    pcm = np.random.default_rng(seed).integers(-32768, 32768, size, dtype=np.int16)
    frame = rtc.AudioFrame(pcm.tobytes(), rate, channels, count)
    converter = FrameConverter(16000)
    try:
        out = converter.convert(frame)
        tail = converter.flush()
    except FrameFormatError:
        return
    assert out.dtype == np.int16 and tail.dtype == np.int16
    assert channels >= 1 and rate > 0
    expected = count * 16000 // rate
    assert expected <= len(out) + len(tail) <= expected + 16000 * 0.005 + 2  # + the filter delay
