"""Opus encoding and decoding with in-band FEC and packet-loss concealment.

Wraps ``opuslib_next`` (which loads the system ``libopus``). What the binding gets
wrong, and what this module does about it:

* ``opuslib`` 3.0.1's FEC/DTX setters did nothing; ``opuslib_next`` fixes them, and
  :class:`OpusEncoder` reads every setting back and raises :class:`CodecError` if
  libopus does not report the value it was given.
* libopus errors surface as ``OpusError`` (not a ``ValueError``); they are turned
  into :class:`CodecError` here, so a corrupt packet from a peer is an ordinary
  decode error.
* The binding's ``decode`` needs the output size in advance; normal decoding asks
  for the 120 ms maximum so any valid packet fits, while concealment and FEC ask for
  exactly the missing duration, as libopus requires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from quicvoice.audio.frames import Pcm, check_pcm
from quicvoice.errors import CodecError

try:
    import opuslib_next
except Exception as exc:  # noqa: BLE001 - the binding raises a bare Exception without libopus
    _OPUS: Any = None
    _IMPORT_ERROR: Exception | None = exc
else:
    _OPUS = opuslib_next
    _IMPORT_ERROR = None

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
"""Sample rates libopus encodes and decodes at, in Hz."""
FRAME_DURATIONS_MS = (2.5, 5.0, 10.0, 20.0, 40.0, 60.0)
"""Frame durations an Opus encoder accepts, in milliseconds."""
MAX_PACKET_MS = 120
"""Longest audio one Opus packet may carry (RFC 6716 §3.2.5), in milliseconds."""
APPLICATIONS = ("voip", "audio", "restricted_lowdelay")
"""libopus application modes; "voip" favours speech intelligibility and enables SILK + FEC."""
DEFAULT_BITRATE = 32000
"""Default target bitrate in bit/s: wideband speech with room for FEC."""


def _require_libopus() -> Any:
    if _OPUS is None:
        raise CodecError(f"Opus is unavailable (install libopus0): {_IMPORT_ERROR}")
    return _OPUS


@dataclass(frozen=True, slots=True, kw_only=True)
class OpusConfig:
    """Encoder settings; validated on construction."""

    rate: int = 48000
    """Sample rate of the PCM given to the encoder, in Hz (one of ``OPUS_RATES``)."""
    frame_ms: float = 20.0
    """Frame duration in milliseconds (one of ``FRAME_DURATIONS_MS``)."""
    bitrate: int = DEFAULT_BITRATE
    """Target bitrate in bit/s (6000-510000)."""
    fec: bool = True
    """Add in-band FEC (LBRR): each packet carries a coarse copy of the previous frame."""
    expected_loss_percent: int = 10
    """Loss the encoder plans for, 0-100; FEC is only produced when this is above 0."""
    dtx: bool = False
    """Discontinuous transmission: send tiny packets during silence."""
    application: str = "voip"
    """One of ``APPLICATIONS``."""
    complexity: int = 9
    """Encoder complexity 0-10 (CPU against quality)."""

    def __post_init__(self) -> None:
        if self.rate not in OPUS_RATES:
            raise ValueError(f"Opus rate must be one of {OPUS_RATES}, not {self.rate}")
        if self.frame_ms not in FRAME_DURATIONS_MS:
            raise ValueError(f"Opus frame_ms must be one of {FRAME_DURATIONS_MS}")
        if not 6000 <= self.bitrate <= 510000:
            raise ValueError(f"Opus bitrate must be 6000-510000 bit/s, not {self.bitrate}")
        if not 0 <= self.expected_loss_percent <= 100:
            raise ValueError("expected_loss_percent must be 0-100")
        if self.application not in APPLICATIONS:
            raise ValueError(f"application must be one of {APPLICATIONS}")
        if not 0 <= self.complexity <= 10:
            raise ValueError("complexity must be 0-10")

    @property
    def frame_samples(self) -> int:
        """Samples per frame at ``rate``."""
        return int(self.rate * self.frame_ms) // 1000


class OpusEncoder:
    """Encodes fixed-size frames of mono int16 PCM to Opus packets."""

    __slots__ = ("_config", "_encoder", "_bitrate")

    def __init__(self, config: OpusConfig | None = None) -> None:
        opus = _require_libopus()
        self._config = config or OpusConfig()
        c = self._config
        try:
            encoder = opus.Encoder(c.rate, 1, c.application)
            encoder.bitrate = c.bitrate
            encoder.complexity = c.complexity
            encoder.inband_fec = int(c.fec)
            encoder.packet_loss_perc = c.expected_loss_percent
            encoder.dtx = int(c.dtx)
            applied = (encoder.inband_fec, encoder.packet_loss_perc, encoder.dtx)
        except opus.OpusError as exc:
            raise CodecError(f"libopus rejected the encoder settings: {exc}") from exc
        wanted = (int(c.fec), c.expected_loss_percent, int(c.dtx))
        if applied != wanted:
            raise CodecError(
                f"libopus binding did not apply FEC/loss/DTX settings: {applied} != {wanted}"
            )
        self._encoder = encoder
        self._bitrate = c.bitrate

    @property
    def config(self) -> OpusConfig:
        """The settings it was made with (``bitrate`` is the one it started at)."""
        return self._config

    @property
    def bitrate(self) -> int:
        """The target bitrate in use now, bit/s."""
        return self._bitrate

    def set_bitrate(self, bitrate: int) -> None:
        """Change the target bitrate from the next frame on (6000-510000 bit/s).

        libopus changes it between frames without a reset, so a congestion response can
        follow the network frame by frame.
        """
        if isinstance(bitrate, bool) or not isinstance(bitrate, int):
            raise TypeError(f"Opus bitrate must be an int, not {type(bitrate).__name__}")
        if not 6000 <= bitrate <= 510000:
            raise ValueError(f"Opus bitrate must be 6000-510000 bit/s, not {bitrate}")
        if bitrate == self._bitrate:
            return
        try:
            self._encoder.bitrate = bitrate
        except _OPUS.OpusError as exc:
            raise CodecError(f"libopus rejected bitrate {bitrate}: {exc}") from exc
        self._bitrate = bitrate

    @property
    def frame_samples(self) -> int:
        """Samples :meth:`encode` expects per call."""
        return self._config.frame_samples

    def encode(self, samples: Pcm) -> bytes:
        """Encode exactly one frame (``frame_samples`` samples) to one Opus packet."""
        pcm = check_pcm(samples)
        if len(pcm) != self.frame_samples:
            raise CodecError(f"Opus frame must be {self.frame_samples} samples, not {len(pcm)}")
        try:
            packet: bytes = self._encoder.encode(np.ascontiguousarray(pcm).tobytes(), len(pcm))
        except _OPUS.OpusError as exc:
            raise CodecError(f"Opus encode failed: {exc}") from exc
        return packet


class OpusDecoder:
    """Decodes Opus packets to mono int16 PCM; conceals losses with FEC or PLC.

    After a lost packet, call :meth:`decode_fec` with the *next* packet to recover
    the lost frame from its FEC data (libopus falls back to PLC when that packet has
    none), then :meth:`decode` the next packet as usual. With no next packet, use
    :meth:`conceal`.
    """

    __slots__ = ("_rate", "_frame_samples", "_decoder", "_max_samples")

    def __init__(self, rate: int = 48000, frame_samples: int | None = None) -> None:
        opus = _require_libopus()
        if rate not in OPUS_RATES:
            raise ValueError(f"Opus rate must be one of {OPUS_RATES}, not {rate}")
        self._rate = rate
        self._frame_samples = frame_samples if frame_samples is not None else rate // 50
        if not 0 < self._frame_samples <= rate * MAX_PACKET_MS // 1000:
            raise ValueError(f"frame_samples out of range: {self._frame_samples}")
        self._max_samples = rate * MAX_PACKET_MS // 1000
        self._decoder = opus.Decoder(rate, 1)

    @property
    def rate(self) -> int:
        """Output sample rate in Hz."""
        return self._rate

    @property
    def frame_samples(self) -> int:
        """Samples per frame; the default length of concealment."""
        return self._frame_samples

    def decode(self, payload: bytes) -> Pcm:
        """Decode one packet; a corrupt or empty packet raises :class:`CodecError`."""
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise CodecError(f"Opus payload must be bytes, not {type(payload).__name__}")
        if len(payload) == 0:
            raise CodecError("empty Opus payload")
        return self._call(bytes(payload), self._max_samples, fec=False)

    def decode_fec(self, next_payload: bytes, samples: int | None = None) -> Pcm:
        """Recover the frame lost just before ``next_payload`` from its FEC data."""
        if not isinstance(next_payload, bytes | bytearray | memoryview) or not next_payload:
            raise CodecError("decode_fec needs the (non-empty) packet after the lost one")
        return self._call(bytes(next_payload), self._check_length(samples), fec=True)

    def conceal(self, samples: int | None = None) -> Pcm:
        """Packet-loss concealment: synthesise ``samples`` (default one frame) of audio."""
        return self._call(b"", self._check_length(samples), fec=False)

    def reset(self) -> None:
        """Reset the decoder state (e.g. when the stream restarts)."""
        self._decoder.reset_state()

    def _check_length(self, samples: int | None) -> int:
        count = self._frame_samples if samples is None else samples
        step = self._rate // 400  # libopus conceals in multiples of 2.5 ms
        if count <= 0 or count % step or count > self._max_samples:
            raise CodecError(f"concealment length must be a multiple of {step} samples")
        return count

    def _call(self, payload: bytes, samples: int, *, fec: bool) -> Pcm:
        try:
            pcm = self._decoder.decode(payload, samples, decode_fec=fec)
        except _OPUS.OpusError as exc:
            raise CodecError(f"Opus decode failed: {exc}") from exc
        return np.frombuffer(pcm, dtype=np.int16).copy()
