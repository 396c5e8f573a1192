"""Audio frames between LiveKit (``rtc.AudioFrame``: int16, interleaved) and a session's PCM.

The session speaks mono s16le at one rate (``App.sample_rate``). A frame at another rate
or with several channels is converted here, statefully, with the library's own resampler
(its filter history carries across frames, so a stream of frames resamples as a whole);
a frame that cannot be converted raises :class:`FrameFormatError` naming what is wrong,
never passes through garbled.
"""

from __future__ import annotations

import numpy as np
from livekit import rtc

from ...audio.frames import Pcm, downmix
from ...audio.resample import StreamResampler
from ...errors import CodecError


class FrameFormatError(CodecError):
    """An audio frame's rate, channel count or size cannot be taken (the message says which)."""


def frame_samples(frame: rtc.AudioFrame) -> Pcm:
    """The frame's int16 samples, interleaved, exactly ``samples_per_channel * channels``.

    Raises :class:`FrameFormatError` for a frame whose header cannot describe audio.
    """
    rate, channels, count = frame.sample_rate, frame.num_channels, frame.samples_per_channel
    if not isinstance(rate, int) or rate <= 0:
        raise FrameFormatError(f"audio frame with sample rate {rate!r} Hz")
    if not isinstance(channels, int) or channels <= 0:
        raise FrameFormatError(f"audio frame with {channels!r} channels")
    if not isinstance(count, int) or count < 0:
        raise FrameFormatError(f"audio frame with {count!r} samples per channel")
    data = np.frombuffer(frame.data, dtype=np.int16)
    if len(data) < count * channels:
        raise FrameFormatError(
            f"audio frame holds {len(data)} samples, its header says {count} x {channels}"
        )
    return data[: count * channels]


def pcm_frame(data: bytes, sample_rate: int) -> rtc.AudioFrame:
    """A mono ``rtc.AudioFrame`` holding the s16le ``data`` at ``sample_rate``."""
    return rtc.AudioFrame(data, sample_rate, 1, len(data) // 2)


class FrameConverter:
    """Turns LiveKit frames of any supported rate and channel count into mono PCM at ``rate``.

    One converter per audio stream (a LiveKit speech segment): the resampler keeps its
    history across frames, and samples short of the resampler's input multiple wait for the
    next frame; :meth:`flush` returns what is held (and the filter's tail) at the end.
    """

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._resampler: StreamResampler | None = None

    @property
    def rate(self) -> int:
        """The output rate in Hz."""
        return self._rate

    def convert(self, frame: rtc.AudioFrame) -> Pcm:
        """Mono int16 samples at :attr:`rate` for ``frame`` (possibly fewer, held back)."""
        mono = downmix(frame_samples(frame), frame.num_channels)
        if frame.sample_rate == self._rate and self._resampler is None:
            return mono
        return self._resampler_for(frame.sample_rate).process(mono)

    def flush(self) -> Pcm:
        """The held samples and the filter's delayed tail, padded with silence; then reset."""
        resampler = self._resampler
        if resampler is None:
            return np.zeros(0, dtype=np.int16)
        self._resampler = None
        return resampler.flush()

    def _resampler_for(self, in_rate: int) -> StreamResampler:
        resampler = self._resampler
        if resampler is not None:
            if resampler.resampler.in_rate != in_rate:
                raise FrameFormatError(
                    f"audio frame at {in_rate} Hz in a stream at "
                    f"{resampler.resampler.in_rate} Hz: "
                    "the rate may change only between segments"
                )
            return resampler
        try:
            resampler = StreamResampler(in_rate, self._rate)
        except ValueError as error:
            raise FrameFormatError(
                f"audio frame at {in_rate} Hz cannot be resampled to {self._rate} Hz: {error}"
            ) from None
        self._resampler = resampler
        return resampler
