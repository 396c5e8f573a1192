"""Application PCM: 16-bit little-endian mono at the rate an application asks for.

Voice frameworks hand their apps little-endian PCM at a rate of the app's choosing; the wire
carries a negotiated codec (L16 big-endian at 16/24/48 kHz, PCMU, PCMA, Opus at 48 kHz).
This module converts between the two, one stateful converter per direction, so the
resampler's filter history and the Opus state carry over from frame to frame:

* :class:`PcmDecoder` (network -> app): a codec payload, or samples a jitter buffer already
  decoded at the codec rate, to a :class:`PcmFrame` at the app rate.
* :class:`PcmEncoder` (app -> network): PCM of any length (bytes or int16 numpy) to codec
  payloads of exactly one frame each; the remainder is held until more arrives, and
  :meth:`PcmEncoder.flush` pads it (and drains the resampler's delay) at the end of a turn.

Sans-I/O: no clock, no socket; timestamps count samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quicvoice.audio.codecs import AudioCodec, CodecSpec, OpusCodec, make_codec
from quicvoice.audio.frames import AudioFrame, Pcm, check_pcm
from quicvoice.audio.resample import Resampler
from quicvoice.errors import CodecError

APP_RATES = (8000, 16000, 24000, 44100, 48000)
"""Sample rates an application may ask for, in Hz."""
FRAME_MS_CHOICES = (10, 20, 40, 60)
"""Frame durations the protocol negotiates, in milliseconds."""
_LITTLE_ENDIAN = np.dtype("<i2")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class PcmFrame:
    """One frame of application audio: mono signed 16-bit little-endian samples."""

    data: bytes
    """The samples as s16le bytes."""
    sample_rate: int
    """Sample rate in Hz (the app's)."""
    timestamp: int
    """Index of the first sample since the stream began, in samples at ``sample_rate``."""
    sequence: int | None = None
    """Sequence number of the network frame it came from; ``None`` when it was concealed."""
    concealed: bool = False
    """True when the audio was not decoded from its own packet (loss concealment, silence)."""

    @property
    def samples(self) -> Pcm:
        """The samples as a read-only int16 numpy view of :attr:`data` (no copy)."""
        view: Pcm = np.frombuffer(self.data, dtype=_LITTLE_ENDIAN)
        return view

    @property
    def duration_ms(self) -> float:
        """Length of the frame in milliseconds."""
        return len(self.data) / 2 * 1000 / self.sample_rate

    def __len__(self) -> int:
        return len(self.data) // 2


@dataclass(frozen=True, slots=True, kw_only=True)
class EncodedFrame:
    """One codec payload made by :class:`PcmEncoder`."""

    payload: bytes
    """The codec payload (one frame)."""
    timestamp: int
    """Index of its first sample on the codec's clock, in samples at the codec rate."""


def check_app_rate(rate: int) -> int:
    """Return ``rate`` if applications may ask for it, else raise ``ValueError``."""
    if isinstance(rate, bool) or not isinstance(rate, int) or rate not in APP_RATES:
        raise ValueError(f"sample_rate must be one of {APP_RATES}, not {rate!r}")
    return rate


def _spec(codec: CodecSpec | str) -> CodecSpec:
    return CodecSpec.parse(codec) if isinstance(codec, str) else codec


def _frame_samples(rate: int, frame_ms: int) -> int:
    if frame_ms not in FRAME_MS_CHOICES:
        raise ValueError(f"frame_ms must be one of {FRAME_MS_CHOICES}, not {frame_ms!r}")
    return rate * frame_ms // 1000


class PcmDecoder:
    """Network -> app: codec payloads (or codec-rate samples) to app-rate :class:`PcmFrame`."""

    __slots__ = ("_codec", "_resampler", "_app_rate", "_timestamp")

    def __init__(self, codec: CodecSpec | str, app_rate: int, *, frame_ms: int = 20) -> None:
        self._app_rate = check_app_rate(app_rate)
        _frame_samples(app_rate, frame_ms)
        self._codec: AudioCodec = make_codec(_spec(codec), frame_ms=frame_ms)
        self._resampler = Resampler(self._codec.rate, app_rate)
        self._timestamp = 0

    @property
    def codec(self) -> AudioCodec:
        """The codec instance decoding payloads."""
        return self._codec

    @property
    def app_rate(self) -> int:
        """The application's sample rate in Hz."""
        return self._app_rate

    @property
    def delay(self) -> float:
        """Algorithmic delay of the resampling, in seconds (the codec's own excluded)."""
        return self._resampler.delay

    def decode(self, payload: bytes, *, sequence: int | None = None) -> PcmFrame:
        """Decode one payload from the network; raise :class:`CodecError` if it is bad.

        A bad payload (corrupt, or a length the resampler cannot take) changes nothing:
        the next good one decodes as if it had not come.
        """
        samples = self._codec.decode_pcm(payload)
        if len(samples) % self._resampler.input_multiple:
            raise CodecError(
                f"a payload of {len(samples)} samples does not split into "
                f"{self._codec.rate} -> {self._app_rate} Hz frames"
            )
        return self._emit(self._resampler.process(samples), sequence, concealed=False)

    def convert(
        self, samples: Pcm, *, sequence: int | None = None, concealed: bool = False
    ) -> PcmFrame:
        """Resample codec-rate samples decoded elsewhere (a jitter buffer) to an app frame."""
        return self._emit(self._resampler.process(samples), sequence, concealed=concealed)

    def _emit(self, samples: Pcm, sequence: int | None, *, concealed: bool) -> PcmFrame:
        frame = PcmFrame(
            data=samples.astype(_LITTLE_ENDIAN, copy=False).tobytes(),
            sample_rate=self._app_rate,
            timestamp=self._timestamp,
            sequence=sequence,
            concealed=concealed,
        )
        self._timestamp += len(samples)
        return frame


class PcmEncoder:
    """App -> network: PCM of any length to codec payloads of one frame each.

    :meth:`write` takes s16le bytes (an odd trailing byte is held for the next call) or a
    one-dimensional int16 numpy array, and returns the payloads of every whole frame it
    completed; less than a frame stays held. :meth:`flush` ends the stream: what is held,
    plus enough silence to push the resampler's delayed tail out, is padded to whole frames.
    """

    __slots__ = (
        "_codec",
        "_resampler",
        "_app_rate",
        "_app_frame",
        "_pending",
        "_odd",
        "_timestamp",
        "_unflushed",
    )

    def __init__(self, codec: CodecSpec | str, app_rate: int, *, frame_ms: int = 20) -> None:
        self._app_rate = check_app_rate(app_rate)
        self._app_frame = _frame_samples(app_rate, frame_ms)
        self._codec: AudioCodec = make_codec(_spec(codec), frame_ms=frame_ms)
        self._resampler = Resampler(app_rate, self._codec.rate)
        self._pending: Pcm = np.zeros(0, dtype=np.int16)
        self._odd = b""
        self._timestamp = 0
        self._unflushed = False

    @property
    def codec(self) -> AudioCodec:
        """The codec instance making payloads."""
        return self._codec

    @property
    def app_rate(self) -> int:
        """The application's sample rate in Hz."""
        return self._app_rate

    @property
    def frame_samples(self) -> int:
        """Samples of app-rate audio per payload."""
        return self._app_frame

    @property
    def bitrate(self) -> int | None:
        """The codec's target bitrate (bit/s) when it has one to set (Opus), else None."""
        codec = self._codec
        return codec.bitrate if isinstance(codec, OpusCodec) else None

    def set_bitrate(self, bitrate: int) -> bool:
        """Follow a congestion response: set the Opus bitrate from the next frame on.

        Returns False, changing nothing, for codecs of fixed rate (L16, G.711).
        """
        codec = self._codec
        if not isinstance(codec, OpusCodec):
            return False
        codec.set_bitrate(bitrate)
        return True

    @property
    def held_samples(self) -> int:
        """App-rate samples held back, waiting for a whole frame."""
        return len(self._pending)

    @property
    def delay(self) -> float:
        """Algorithmic delay of the resampling, in seconds (the codec's own excluded)."""
        return self._resampler.delay

    def write(self, pcm: bytes | bytearray | memoryview | Pcm) -> list[EncodedFrame]:
        """Add app PCM; return the payloads of the frames it completed."""
        samples = self._samples_of(pcm)
        if len(samples) == 0:
            return []
        self._unflushed = True
        pending = np.concatenate((self._pending, samples)) if len(self._pending) else samples
        whole = len(pending) - len(pending) % self._app_frame
        self._pending = pending[whole:].copy()
        return [
            self._encode(pending[start : start + self._app_frame])
            for start in range(0, whole, self._app_frame)
        ]

    def flush(self) -> list[EncodedFrame]:
        """End the stream: pad what is held (and the resampler's tail) to whole frames.

        Returns nothing when nothing was written since the last flush.
        """
        self._odd = b""
        if not self._unflushed:
            return []
        self._unflushed = False
        held = len(self._pending)
        total = held + int(np.ceil(self._resampler.delay * self._app_rate))
        padded = -(-total // self._app_frame) * self._app_frame
        pending = np.zeros(padded, dtype=np.int16)
        pending[:held] = self._pending
        self._pending = np.zeros(0, dtype=np.int16)
        return [
            self._encode(pending[start : start + self._app_frame])
            for start in range(0, padded, self._app_frame)
        ]

    def _encode(self, samples: Pcm) -> EncodedFrame:
        edge = self._resampler.process(samples)
        payload = self._codec.encode(AudioFrame(samples=edge, rate=self._codec.rate))
        frame = EncodedFrame(payload=payload, timestamp=self._timestamp)
        self._timestamp += len(edge)
        return frame

    def _samples_of(self, pcm: bytes | bytearray | memoryview | Pcm) -> Pcm:
        if isinstance(pcm, np.ndarray):
            return check_pcm(pcm, name="pcm")
        if not isinstance(pcm, bytes | bytearray | memoryview):
            raise TypeError(f"pcm must be bytes or an int16 numpy array, not {type(pcm).__name__}")
        data = self._odd + bytes(pcm)
        cut = len(data) - len(data) % 2
        self._odd = data[cut:]
        return np.frombuffer(data[:cut], dtype=_LITTLE_ENDIAN).astype(np.int16)
