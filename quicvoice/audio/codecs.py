"""The codecs a voice session can negotiate, behind one small interface.

* :class:`CodecSpec` names a codec (``"opus/48000"``, ``"PCMU/8000"``, ``"L16/16000"``).
* :func:`negotiate` picks one from an offer.
* :func:`make_codec` returns an :class:`AudioCodec`: ``encode(frame) -> bytes``,
  ``decode(payload) -> frame``, plus the three calls the jitter buffer conceals
  losses with (:class:`~quicvoice.audio.jitter.FrameDecoder`).
* :class:`Transcoder` joins a codec at the network edge to the application's PCM
  rate, decoding and resampling in one step.

Wire formats: L16 is big-endian signed 16-bit (RFC 3551 §4.5.11), PCMU/PCMA are
G.711 bytes (RFC 3551 §4.5.14), Opus is one Opus packet per payload (RFC 7587).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from quicvoice.audio import g711
from quicvoice.audio.conceal import RepeatConcealer
from quicvoice.audio.frames import AudioFrame, Pcm, check_pcm
from quicvoice.audio.opus import OpusConfig, OpusDecoder, OpusEncoder
from quicvoice.audio.resample import Resampler
from quicvoice.errors import CodecError

L16_RATES = (8000, 16000, 24000, 44100, 48000)
"""Rates L16 is offered at, in Hz."""
DEFAULT_FRAME_MS = 20.0
"""Frame duration used when none is given, in milliseconds."""
_BIG_ENDIAN_PCM = np.dtype(">i2")


@dataclass(frozen=True, slots=True, kw_only=True)
class CodecSpec:
    """A codec as negotiated: encoding name, clock rate and channel count."""

    name: str
    """Encoding name as in RTP/SDP: ``"opus"``, ``"PCMU"``, ``"PCMA"`` or ``"L16"``."""
    rate: int
    """Sample rate of the decoded audio in Hz."""
    channels: int = 1
    """Channel count; quicvoice carries mono."""

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"invalid codec name {self.name!r}")
        if isinstance(self.rate, bool) or not isinstance(self.rate, int) or self.rate <= 0:
            raise ValueError(f"codec rate must be a positive int (Hz), not {self.rate!r}")
        if self.channels != 1:
            raise ValueError("only mono codecs are supported")

    @classmethod
    def parse(cls, text: str) -> CodecSpec:
        """Parse ``"name/rate"`` or ``"name/rate/channels"`` (e.g. ``"PCMU/8000"``)."""
        if not isinstance(text, str):
            raise TypeError(f"codec must be given as str, not {type(text).__name__}")
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[1:]):
            raise ValueError(f"codec must look like 'name/rate[/channels]', not {text!r}")
        channels = int(parts[2]) if len(parts) == 3 else 1
        return cls(name=parts[0], rate=int(parts[1]), channels=channels)

    def matches(self, other: CodecSpec) -> bool:
        """Same codec: names compared case-insensitively, rates and channels exactly."""
        return (
            self.name.lower() == other.name.lower()
            and self.rate == other.rate
            and self.channels == other.channels
        )

    def __str__(self) -> str:
        return f"{self.name}/{self.rate}"


OPUS_48K = CodecSpec(name="opus", rate=48000)
PCMU_8K = CodecSpec(name="PCMU", rate=8000)
PCMA_8K = CodecSpec(name="PCMA", rate=8000)
L16_16K = CodecSpec(name="L16", rate=16000)
L16_24K = CodecSpec(name="L16", rate=24000)
L16_48K = CodecSpec(name="L16", rate=48000)
DEFAULT_CODECS = (OPUS_48K, L16_48K, L16_24K, L16_16K, PCMU_8K, PCMA_8K)
"""What quicvoice supports, in its order of preference."""


def negotiate(
    offered: Iterable[CodecSpec | str],
    supported: Iterable[CodecSpec | str] = DEFAULT_CODECS,
    *,
    prefer_offer: bool = True,
) -> CodecSpec | None:
    """Pick the codec both sides support, or ``None`` if there is none.

    With ``prefer_offer`` (the default, as an SDP answerer usually does, RFC 3264 §6.1)
    the first offered codec we support wins; otherwise the first of ``supported`` that
    was offered. Strings are parsed with :meth:`CodecSpec.parse`. The spec returned is
    the offered one (so its spelling of the name is the peer's).
    """
    offer = [CodecSpec.parse(c) if isinstance(c, str) else c for c in offered]
    ours = [CodecSpec.parse(c) if isinstance(c, str) else c for c in supported]
    if prefer_offer:
        return next((o for o in offer if any(o.matches(s) for s in ours)), None)
    for s in ours:
        for o in offer:
            if o.matches(s):
                return o
    return None


@runtime_checkable
class AudioCodec(Protocol):
    """A codec instance (stateful for Opus): one per direction-pair of a stream."""

    @property
    def spec(self) -> CodecSpec:
        """The codec this instance implements."""
        ...

    @property
    def rate(self) -> int:
        """Sample rate of encoded and decoded audio, in Hz."""
        ...

    @property
    def frame_samples(self) -> int:
        """Samples per frame (what the jitter buffer conceals per missing packet)."""
        ...

    def encode(self, frame: AudioFrame) -> bytes:
        """Encode one frame at :attr:`rate` to one payload; raises :class:`CodecError`."""
        ...

    def decode(self, payload: bytes, *, timestamp: int = 0) -> AudioFrame:
        """Decode one payload to a frame stamped ``timestamp``; raises :class:`CodecError`."""
        ...

    def decode_pcm(self, payload: bytes) -> Pcm:
        """Decode one payload to samples; raises :class:`CodecError` on a bad payload."""
        ...

    def recover_pcm(self, next_payload: bytes, samples: int) -> Pcm | None:
        """Rebuild the frame lost before ``next_payload`` from FEC, or ``None`` without FEC."""
        ...

    def conceal_pcm(self, samples: int) -> Pcm:
        """Synthesise ``samples`` samples in place of lost audio."""
        ...


class _PcmCodecBase:
    """Shared parts of the sample-per-sample codecs (L16, G.711)."""

    __slots__ = ("_spec", "_frame_samples", "_concealer")

    def __init__(self, spec: CodecSpec, frame_ms: float) -> None:
        self._spec = spec
        self._frame_samples = _frame_samples(spec.rate, frame_ms)
        self._concealer = RepeatConcealer(spec.rate)

    @property
    def spec(self) -> CodecSpec:
        """The codec this instance implements."""
        return self._spec

    @property
    def rate(self) -> int:
        """Sample rate in Hz."""
        return self._spec.rate

    @property
    def frame_samples(self) -> int:
        """Samples per frame."""
        return self._frame_samples

    def encode(self, frame: AudioFrame) -> bytes:
        """Encode one frame (any length) at :attr:`rate`."""
        _check_frame(frame, self._spec.rate)
        return self._encode(frame.samples)

    def decode(self, payload: bytes, *, timestamp: int = 0) -> AudioFrame:
        """Decode one payload (no concealment state is touched)."""
        return AudioFrame(samples=self._decode(payload), rate=self._spec.rate, timestamp=timestamp)

    def decode_pcm(self, payload: bytes) -> Pcm:
        """Decode one payload in a stream (feeds the concealer)."""
        return self._concealer.good(self._decode(payload))

    def recover_pcm(self, next_payload: bytes, samples: int) -> Pcm | None:
        """These codecs carry no FEC: always ``None``."""
        return None

    def conceal_pcm(self, samples: int) -> Pcm:
        """Pitch-repeat concealment with fade-out (see :mod:`quicvoice.audio.conceal`)."""
        return self._concealer.conceal(samples)

    def _encode(self, samples: Pcm) -> bytes:
        raise NotImplementedError

    def _decode(self, payload: bytes) -> Pcm:
        raise NotImplementedError


class L16Codec(_PcmCodecBase):
    """Uncompressed big-endian 16-bit PCM (RFC 3551 L16)."""

    __slots__ = ()

    def __init__(self, rate: int = 48000, frame_ms: float = DEFAULT_FRAME_MS) -> None:
        super().__init__(CodecSpec(name="L16", rate=rate), frame_ms)

    def _encode(self, samples: Pcm) -> bytes:
        return samples.astype(_BIG_ENDIAN_PCM).tobytes()

    def _decode(self, payload: bytes) -> Pcm:
        _check_payload(payload)
        if len(payload) % 2:
            raise CodecError(f"L16 payload has an odd length ({len(payload)} bytes)")
        return np.frombuffer(payload, dtype=_BIG_ENDIAN_PCM).astype(np.int16)


class G711Codec(_PcmCodecBase):
    """G.711 µ-law (PCMU) or A-law (PCMA) at 8 kHz."""

    __slots__ = ("_ulaw",)

    def __init__(self, law: str = "ulaw", frame_ms: float = DEFAULT_FRAME_MS) -> None:
        if law not in ("ulaw", "alaw"):
            raise ValueError(f"law must be 'ulaw' or 'alaw', not {law!r}")
        self._ulaw = law == "ulaw"
        super().__init__(PCMU_8K if self._ulaw else PCMA_8K, frame_ms)

    def _encode(self, samples: Pcm) -> bytes:
        return g711.ulaw_encode(samples) if self._ulaw else g711.alaw_encode(samples)

    def _decode(self, payload: bytes) -> Pcm:
        _check_payload(payload)
        return g711.ulaw_decode(payload) if self._ulaw else g711.alaw_decode(payload)


class OpusCodec:
    """Opus with in-band FEC and libopus PLC (see :mod:`quicvoice.audio.opus`)."""

    __slots__ = ("_spec", "_encoder", "_decoder")

    def __init__(self, config: OpusConfig | None = None) -> None:
        config = config or OpusConfig()
        self._spec = CodecSpec(name="opus", rate=config.rate)
        self._encoder = OpusEncoder(config)
        self._decoder = OpusDecoder(config.rate, config.frame_samples)

    @property
    def spec(self) -> CodecSpec:
        """The codec this instance implements."""
        return self._spec

    @property
    def rate(self) -> int:
        """Sample rate in Hz."""
        return self._spec.rate

    @property
    def frame_samples(self) -> int:
        """Samples per frame; :meth:`encode` takes exactly this many."""
        return self._encoder.frame_samples

    @property
    def bitrate(self) -> int:
        """The encoder's target bitrate now, bit/s."""
        return self._encoder.bitrate

    def set_bitrate(self, bitrate: int) -> None:
        """Change the encoder's target bitrate from the next frame on (a congestion response)."""
        self._encoder.set_bitrate(bitrate)

    def encode(self, frame: AudioFrame) -> bytes:
        """Encode one frame of exactly :attr:`frame_samples` samples."""
        _check_frame(frame, self._spec.rate)
        return self._encoder.encode(frame.samples)

    def decode(self, payload: bytes, *, timestamp: int = 0) -> AudioFrame:
        """Decode one packet (advances the decoder state)."""
        samples = self.decode_pcm(payload)
        return AudioFrame(samples=samples, rate=self._spec.rate, timestamp=timestamp)

    def decode_pcm(self, payload: bytes) -> Pcm:
        """Decode one packet to samples."""
        _check_payload(payload)
        return self._decoder.decode(payload)

    def recover_pcm(self, next_payload: bytes, samples: int) -> Pcm | None:
        """Recover the lost frame before ``next_payload`` from its in-band FEC."""
        _check_payload(next_payload)
        return self._decoder.decode_fec(next_payload, samples)

    def conceal_pcm(self, samples: int) -> Pcm:
        """libopus packet-loss concealment."""
        return self._decoder.conceal(samples)


def make_codec(
    spec: CodecSpec | str,
    *,
    frame_ms: float = DEFAULT_FRAME_MS,
    opus: OpusConfig | None = None,
) -> AudioCodec:
    """Create a codec instance for ``spec``; ``opus`` overrides Opus settings (rate excepted)."""
    if isinstance(spec, str):
        spec = CodecSpec.parse(spec)
    name = spec.name.lower()
    if name == "opus":
        config = opus or OpusConfig(rate=spec.rate, frame_ms=frame_ms)
        if config.rate != spec.rate:
            raise ValueError(f"Opus config rate {config.rate} != codec rate {spec.rate}")
        return OpusCodec(config)
    if name == "pcmu" and spec.rate == 8000:
        return G711Codec("ulaw", frame_ms)
    if name == "pcma" and spec.rate == 8000:
        return G711Codec("alaw", frame_ms)
    if name == "l16" and spec.rate in L16_RATES:
        return L16Codec(spec.rate, frame_ms)
    raise CodecError(f"unsupported codec {spec}")


class Transcoder:
    """Converts between a codec at the network edge and PCM at the application's rate.

    ``decode`` takes a payload and returns app-rate samples, ``encode`` the reverse;
    each converts once (for G.711, table lookup and resampling are one pass).
    ``to_app``/``from_app`` only resample, for audio that was decoded elsewhere
    (e.g. by a :class:`~quicvoice.audio.jitter.JitterBuffer` using :attr:`codec`).
    """

    __slots__ = ("_codec", "_app_rate", "_down", "_up", "_table", "_timestamp")

    def __init__(
        self,
        edge: CodecSpec | str,
        app_rate: int,
        *,
        frame_ms: float = DEFAULT_FRAME_MS,
        opus: OpusConfig | None = None,
    ) -> None:
        self._codec = make_codec(edge, frame_ms=frame_ms, opus=opus)
        self._app_rate = app_rate
        self._up = Resampler(self._codec.rate, app_rate)
        self._down = Resampler(app_rate, self._codec.rate)
        name = self._codec.spec.name.lower()
        self._table = _float_table(name) if name in ("pcmu", "pcma") else None

    @property
    def codec(self) -> AudioCodec:
        """The edge codec instance (its concealment calls serve a jitter buffer)."""
        return self._codec

    @property
    def app_rate(self) -> int:
        """The application's sample rate in Hz."""
        return self._app_rate

    @property
    def decode_delay(self) -> float:
        """Algorithmic delay of edge -> app resampling, in seconds (codec delay excluded)."""
        return self._up.delay

    @property
    def encode_delay(self) -> float:
        """Algorithmic delay of app -> edge resampling, in seconds (codec delay excluded)."""
        return self._down.delay

    def decode(self, payload: bytes) -> Pcm:
        """Decode a payload and return its samples at :attr:`app_rate`."""
        if self._table is not None:
            if not isinstance(payload, bytes | bytearray | memoryview):
                _check_payload(payload)
            return self._up.process_table(np.frombuffer(payload, dtype=np.uint8), self._table)
        return self._up.process(self._codec.decode_pcm(payload))

    def encode(self, samples: Pcm) -> bytes:
        """Resample app-rate samples to the edge rate and encode them."""
        edge = self._down.process(check_pcm(samples))
        return self._codec.encode(AudioFrame(samples=edge, rate=self._codec.rate))

    def to_app(self, samples: Pcm) -> Pcm:
        """Resample edge-rate samples (already decoded) to :attr:`app_rate`."""
        return self._up.process(samples)

    def from_app(self, samples: Pcm) -> Pcm:
        """Resample app-rate samples to the edge rate (without encoding)."""
        return self._down.process(samples)


@lru_cache(maxsize=2)
def _float_table(name: str) -> npt.NDArray[np.float64]:
    source = g711.ulaw_decode_table() if name == "pcmu" else g711.alaw_decode_table()
    table = source.astype(np.float64)
    table.setflags(write=False)
    return table


def _frame_samples(rate: int, frame_ms: float) -> int:
    samples = rate * frame_ms / 1000.0
    if samples <= 0 or samples != int(samples):
        raise ValueError(f"{frame_ms} ms is not a whole number of samples at {rate} Hz")
    return int(samples)


def _check_frame(frame: AudioFrame, rate: int) -> None:
    if not isinstance(frame, AudioFrame):
        raise CodecError(f"expected an AudioFrame, not {type(frame).__name__}")
    if frame.rate != rate:
        raise CodecError(f"frame rate {frame.rate} Hz does not match codec rate {rate} Hz")


def _check_payload(payload: object) -> None:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise CodecError(f"payload must be bytes, not {type(payload).__name__}")
