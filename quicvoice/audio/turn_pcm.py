"""A client's downlink turns to application PCM: one :class:`PcmDecoder` per turn.

A server encodes each response turn with an encoder of its own (a fresh Opus state, its
resampler's tail flushed with silence at the turn's end), and a turn may be cut short by a
barge-in. Decoding each turn with its own decoder keeps one turn's codec and filter state out
of the next: no Opus state carried over from another encoder, no tail of a cancelled turn at
the start of the following one. A decoder costs about 0.1 ms to make.

Sans-I/O: payloads in, s16le bytes at the app's rate out.
"""

from __future__ import annotations

from quicvoice.audio.pcm import PcmDecoder, check_app_rate
from quicvoice.errors import CodecError

#: Turns decoded at once; one more forgets the oldest turn's decoder (a server that leaves
#: turns open without end costs a bounded amount of memory).
MAX_OPEN_TURNS = 16


class TurnPcmDecoder:
    """Codec payloads of downlink turns to app PCM, with a decoder per turn.

    ``decode(turn_id, payload)`` gives one frame period of s16le samples at ``app_rate``;
    a payload that does not decode gives that much silence instead (counted in
    ``decode_errors``), so a turn keeps its length. ``end_turn`` forgets a turn's decoder
    (ended or cancelled); frames of a turn decoded after that start a new one.
    """

    __slots__ = (
        "_codec",
        "_app_rate",
        "_frame_ms",
        "_decoders",
        "_max_open",
        "_silence",
        "decode_errors",
    )

    def __init__(
        self, codec: str, app_rate: int, *, frame_ms: int = 20, max_open_turns: int = MAX_OPEN_TURNS
    ) -> None:
        if max_open_turns <= 0:
            raise ValueError("max_open_turns must be positive")
        self._codec = codec
        self._app_rate = check_app_rate(app_rate)
        self._frame_ms = frame_ms
        self._max_open = max_open_turns
        PcmDecoder(codec, app_rate, frame_ms=frame_ms)  # refuses a bad codec or frame now
        self._decoders: dict[int | None, PcmDecoder] = {}
        self._silence = bytes(2 * (app_rate * frame_ms // 1000))
        #: Payloads that did not decode (each replaced by a frame of silence).
        self.decode_errors = 0

    @property
    def app_rate(self) -> int:
        """The application's sample rate in Hz."""
        return self._app_rate

    @property
    def frame_samples(self) -> int:
        """App-rate samples in one frame period."""
        return len(self._silence) // 2

    @property
    def open_turns(self) -> int:
        """Turns with a decoder now."""
        return len(self._decoders)

    def silence(self) -> bytes:
        """One frame period of silence at the app's rate."""
        return self._silence

    def decode(self, turn_id: int | None, payload: bytes) -> bytes:
        """One payload of turn ``turn_id`` (``None``: audio outside any turn) as s16le bytes."""
        decoder = self._decoders.get(turn_id)
        if decoder is None:
            if len(self._decoders) >= self._max_open:
                del self._decoders[next(iter(self._decoders))]
            decoder = self._decoders[turn_id] = PcmDecoder(
                self._codec, self._app_rate, frame_ms=self._frame_ms
            )
        try:
            return decoder.decode(payload).data
        except CodecError:
            self.decode_errors += 1
            return self._silence

    def end_turn(self, turn_id: int) -> None:
        """Turn ``turn_id`` ended or was cancelled: forget its decoder."""
        self._decoders.pop(turn_id, None)
