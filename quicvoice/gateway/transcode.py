"""The phone line's µ-law 8 kHz to and from the session's codec (sans-I/O).

When the backend speaks ``PCMU/8000`` the octets go straight through, re-cut into whole
frames only: no decode, no resampling. Any other codec goes through the library's own
G.711 tables and its stateful polyphase resampler (``quicvoice.audio.pcm``): one encoder
for the whole uplink, whose filter history carries from chunk to chunk, and one decoder
per downlink turn (``TurnPcmDecoder``), so no turn's tail leaks into the next and there is
no stream resampler state to reset between turns.
"""

from __future__ import annotations

import numpy as np

from quicvoice.audio.codecs import CodecSpec
from quicvoice.audio.frames import Pcm
from quicvoice.audio.g711 import ULAW_SILENCE, ulaw_decode, ulaw_encode
from quicvoice.audio.pcm import PcmEncoder
from quicvoice.audio.turn_pcm import TurnPcmDecoder

#: The line's codec and rate: G.711 µ-law at 8 kHz, one octet per sample.
LINE_CODEC = "PCMU/8000"
LINE_RATE = 8000


def is_line_codec(codec: str) -> bool:
    """Whether ``codec`` is the line's own µ-law 8 kHz (then nothing is transcoded)."""
    return CodecSpec.parse(codec).matches(CodecSpec.parse(LINE_CODEC))


def ulaw_duration(payload: bytes) -> float:
    """Seconds of audio in a µ-law payload."""
    return len(payload) / LINE_RATE


class UplinkFramer:
    """The caller's µ-law chunks (any length) to one codec payload per frame."""

    def __init__(self, codec: str, *, frame_ms: int = 20) -> None:
        self.codec = codec
        self.passthrough = is_line_codec(codec)
        self._frame_octets = LINE_RATE * frame_ms // 1000
        self._held = bytearray()
        self._encoder = (
            None if self.passthrough else PcmEncoder(codec, LINE_RATE, frame_ms=frame_ms)
        )

    def write(self, ulaw: bytes) -> list[bytes]:
        """Add a chunk; return the payloads of the frames it completed."""
        if self._encoder is not None:
            return [frame.payload for frame in self._encoder.write(ulaw_decode(ulaw))]
        self._held += ulaw
        size = self._frame_octets
        whole = len(self._held) - len(self._held) % size
        frames = [bytes(self._held[start : start + size]) for start in range(0, whole, size)]
        del self._held[:whole]
        return frames

    def flush(self) -> list[bytes]:
        """End of the call's audio: what is held, padded with silence to whole frames."""
        if self._encoder is not None:
            return [frame.payload for frame in self._encoder.flush()]
        if not self._held:
            return []
        padding = bytes([ULAW_SILENCE]) * (self._frame_octets - len(self._held))
        frame = bytes(self._held) + padding
        self._held.clear()
        return [frame]


class DownlinkDecoder:
    """A turn's codec payloads to µ-law for the line, one decoder per turn."""

    def __init__(self, codec: str, *, frame_ms: int = 20) -> None:
        self.codec = codec
        self.passthrough = is_line_codec(codec)
        self._turns = (
            None if self.passthrough else TurnPcmDecoder(codec, LINE_RATE, frame_ms=frame_ms)
        )

    def decode(self, turn_id: int | None, payload: bytes) -> bytes:
        """One frame of ``turn_id`` as µ-law (a payload that does not decode: silence)."""
        if self._turns is None:
            return payload
        pcm = self._turns.decode(turn_id, payload)
        return ulaw_encode(_samples(pcm))

    def end_turn(self, turn_id: int) -> None:
        """Forget ``turn_id``'s decoder (it played out or was cancelled)."""
        if self._turns is not None:
            self._turns.end_turn(turn_id)

    @property
    def decode_errors(self) -> int:
        """Payloads that did not decode (each sent as silence)."""
        return self._turns.decode_errors if self._turns is not None else 0


def _samples(pcm: bytes) -> Pcm:
    return np.frombuffer(pcm, dtype="<i2").astype(np.int16)
