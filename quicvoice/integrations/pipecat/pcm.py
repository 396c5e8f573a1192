"""PCM in the shapes Pipecat frames carry, converted to the mono rate a session speaks.

Pipecat frames are s16le bytes with a ``sample_rate`` and ``num_channels`` of their own;
a TTS at 24 kHz stereo can feed a pipeline whose transport runs at 16 kHz mono. A
:class:`PcmConverter` checks a frame's shape, downmixes it and resamples it with the
library's streaming resampler (filter history carried across frames, fixed delay, no
stream state that resets between chunks). Anything it cannot convert without garbling
(an odd byte count, a length that is not whole frames of its channels, an unsupported
rate) raises :class:`AudioFormatError` naming the frame's shape. Pure: no pipecat, no I/O.
"""

from __future__ import annotations

import numpy as np

from ...audio.frames import downmix
from ...audio.resample import StreamResampler
from ...errors import CodecError

#: Channel counts a frame may carry (mono, stereo, and up to 7.1 surround).
MAX_CHANNELS = 8
_S16LE = np.dtype("<i2")


class AudioFormatError(CodecError):
    """A frame of audio the adapter cannot convert without garbling it (a ``ValueError``)."""


def check_shape(data: bytes, sample_rate: int, num_channels: int) -> None:
    """Raise :class:`AudioFormatError` unless ``data`` is whole s16le frames of its channels."""
    if isinstance(num_channels, bool) or not isinstance(num_channels, int):
        raise AudioFormatError(f"num_channels must be an int, not {num_channels!r}")
    if not 1 <= num_channels <= MAX_CHANNELS:
        raise AudioFormatError(
            f"audio with {num_channels} channels (1 to {MAX_CHANNELS} are converted)"
        )
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise AudioFormatError(f"sample_rate must be a positive int (Hz), not {sample_rate!r}")
    width = 2 * num_channels
    if len(data) % width:
        raise AudioFormatError(
            f"{len(data)} octets of s16le audio are not whole frames of {num_channels} "
            f"channel(s) ({width} octets each)"
        )


class PcmConverter:
    """Streaming conversion of s16le audio of any channel count and rate to mono at ``out_rate``.

    One converter per stream (one direction of one call); it keeps a resampler per
    input rate it has met and the samples left over when a chunk is not a multiple of
    the resampler's period (at most 10 ms), which go out with the next chunk.
    """

    __slots__ = ("_out_rate", "_resamplers")

    def __init__(self, out_rate: int) -> None:
        check_shape(b"", out_rate, 1)
        self._out_rate = out_rate
        self._resamplers: dict[int, StreamResampler] = {}

    @property
    def out_rate(self) -> int:
        """The rate of what :meth:`convert` returns, in Hz."""
        return self._out_rate

    def convert(self, data: bytes, sample_rate: int, num_channels: int) -> bytes:
        """Mono s16le at ``out_rate`` for one chunk; :class:`AudioFormatError` if it can't be."""
        check_shape(data, sample_rate, num_channels)
        mono = downmix(np.frombuffer(data, dtype=_S16LE).astype(np.int16), num_channels)
        if sample_rate == self._out_rate:
            return mono.astype(_S16LE).tobytes()
        out = self._resampler(sample_rate).process(mono)
        return out.astype(_S16LE).tobytes()

    def reset(self) -> None:
        """Forget filter history and held samples (between utterances)."""
        for resampler in self._resamplers.values():
            resampler.reset()

    def _resampler(self, sample_rate: int) -> StreamResampler:
        resampler = self._resamplers.get(sample_rate)
        if resampler is None:
            try:
                resampler = StreamResampler(sample_rate, self._out_rate)
            except ValueError as error:
                raise AudioFormatError(
                    f"cannot resample {sample_rate} Hz to {self._out_rate} Hz: {error}"
                ) from None
            self._resamplers[sample_rate] = resampler
        return resampler
