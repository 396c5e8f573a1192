"""Byte layouts of the voice protocol (specs/protocol.md): media frames, stream headers, datagrams.

Everything here is pure: bytes in, values out, ``ProtocolError`` on anything malformed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from aioquic.buffer import encode_uint_var

from ..errors import ProtocolError
from .codes import ErrorCode

#: Sequence number and capture timestamp (samples at the session rate), both 32-bit, wrapping.
FRAME_HEADER = struct.Struct("!II")
FRAME_HEADER_LEN = FRAME_HEADER.size
#: A media frame's payload: 20 ms of 48 kHz L16 mono is 1920 octets; leave room for 40 ms.
MAX_FRAME_PAYLOAD = 4096
MAX_FRAME_LEN = FRAME_HEADER_LEN + MAX_FRAME_PAYLOAD
U32 = 1 << 32
#: A frame's length prefix (a 1- or a 2-octet varint) and its header, packed at once.
_SHORT_PREFIXED_HEADER = struct.Struct("!BII")
_PREFIXED_HEADER = struct.Struct("!HII")


def read_varint(buffer: bytes, position: int) -> tuple[int, int] | None:
    """Read a QUIC variable-length integer (RFC 9000 §16) at ``position``.

    Return the value and the position after it, or ``None`` when ``buffer`` ends first.
    """
    if position >= len(buffer):
        return None
    first = buffer[position]
    end = position + (1 << (first >> 6))
    if end > len(buffer):
        return None
    value = first & 0x3F
    for index in range(position + 1, end):
        value = (value << 8) | buffer[index]
    return value, end


class StreamKind(IntEnum):
    """The first varint of every unidirectional voice stream."""

    #: Client to server: the reliable uplink, frames until FIN.
    UPLINK = 0x00
    #: Server to client: one response turn (a varint turn ID follows), frames until FIN.
    TURN = 0x01


class DatagramKind(IntEnum):
    """The first octet of every voice datagram."""

    #: Client to server: one realtime uplink frame.
    UPLINK = 0x00


@dataclass(frozen=True, slots=True)
class MediaFrame:
    """One frame of audio as carried on the wire."""

    #: Sequence number, counting frames from 0 and wrapping at 2**32.
    seq: int
    #: Capture time of the first sample, in samples at the session rate, wrapping at 2**32.
    timestamp: int
    #: Codec payload (for L16: big-endian signed 16-bit samples, RFC 3551).
    payload: bytes


def encode_frame(frame: MediaFrame) -> bytes:
    """Return ``frame`` with its length prefix, as written on a stream."""
    return encode_frame_fields(frame.seq, frame.timestamp, frame.payload)


def encode_frame_fields(seq: int, timestamp: int, payload: bytes) -> bytes:
    """``encode_frame`` of a frame given by its fields (no ``MediaFrame`` made: the send path
    runs once per frame)."""
    length = FRAME_HEADER_LEN + len(payload)
    if length > MAX_FRAME_LEN:
        raise ValueError(f"frame payload of {len(payload)} octets exceeds {MAX_FRAME_PAYLOAD}")
    # RFC 9000 §16: MAX_FRAME_LEN < 2**14, so the length prefix is a 1- or 2-octet varint.
    if length < 0x40:
        return _SHORT_PREFIXED_HEADER.pack(length, seq % U32, timestamp % U32) + payload
    return _PREFIXED_HEADER.pack(0x4000 | length, seq % U32, timestamp % U32) + payload


def encode_stream_header(kind: StreamKind, turn_id: int | None = None) -> bytes:
    """Return the header that opens a unidirectional voice stream."""
    if kind is StreamKind.TURN:
        if turn_id is None or turn_id < 0:
            raise ValueError("a turn stream needs a turn_id >= 0")
        return encode_uint_var(kind) + encode_uint_var(turn_id)
    return encode_uint_var(kind)


def encode_datagram(frame: MediaFrame, kind: DatagramKind = DatagramKind.UPLINK) -> bytes:
    """Return ``frame`` as a voice datagram payload."""
    if len(frame.payload) > MAX_FRAME_PAYLOAD:
        raise ValueError(
            f"frame payload of {len(frame.payload)} octets exceeds {MAX_FRAME_PAYLOAD}"
        )
    return (
        bytes((kind,)) + FRAME_HEADER.pack(frame.seq % U32, frame.timestamp % U32) + frame.payload
    )


def decode_datagram(data: bytes) -> tuple[DatagramKind, MediaFrame]:
    """Parse a voice datagram; raise ``ProtocolError`` when it is malformed."""
    if len(data) < 1 + FRAME_HEADER_LEN:
        raise ProtocolError("datagram too short", ErrorCode.FRAME_ERROR)
    try:
        kind = DatagramKind(data[0])
    except ValueError:
        raise ProtocolError(f"unknown datagram kind {data[0]}", ErrorCode.FRAME_ERROR) from None
    if len(data) > 1 + MAX_FRAME_LEN:
        raise ProtocolError("datagram frame too large", ErrorCode.FRAME_ERROR)
    seq, timestamp = FRAME_HEADER.unpack_from(data, 1)
    return kind, MediaFrame(seq, timestamp, data[1 + FRAME_HEADER_LEN :])


class FrameReader:
    """Reassembles length-prefixed frames from stream data delivered in arbitrary pieces.

    The buffer never holds more than one frame's worth of octets: a length prefix larger than
    ``MAX_FRAME_LEN`` is a ``ProtocolError`` at once, before any of the frame arrives.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    @property
    def buffered(self) -> int:
        """Octets held back, waiting for the rest of a frame."""
        return len(self._buffer)

    def feed(self, data: bytes, end_stream: bool = False) -> list[MediaFrame]:
        """Return every frame completed by ``data``; check truncation when ``end_stream``."""
        if not self._buffer and len(data) > _PREFIXED_HEADER.size and data[0] >> 6 == 1:
            # The usual case, one whole frame with a 2-octet length prefix, without the loop.
            length = ((data[0] & 0x3F) << 8) | data[1]
            if length == len(data) - 2 and length <= MAX_FRAME_LEN:
                seq, timestamp = FRAME_HEADER.unpack_from(data, 2)
                return [MediaFrame(seq, timestamp, data[_PREFIXED_HEADER.size :])]
        buffer = self._buffer + data if self._buffer else data
        frames = []
        position = 0
        size = len(buffer)
        unpack_from = FRAME_HEADER.unpack_from
        while position < size:
            # read_varint inlined (it runs once per frame): RFC 9000 §16.
            first = buffer[position]
            start = position + (1 << (first >> 6))
            if start > size:
                break
            length = first & 0x3F
            for index in range(position + 1, start):
                length = (length << 8) | buffer[index]
            if length < FRAME_HEADER_LEN or length > MAX_FRAME_LEN:
                raise ProtocolError(f"frame length {length} out of range", ErrorCode.FRAME_ERROR)
            end = start + length
            if end > size:
                break
            seq, timestamp = unpack_from(buffer, start)
            frames.append(MediaFrame(seq, timestamp, buffer[start + FRAME_HEADER_LEN : end]))
            position = end
        self._buffer = buffer[position:] if position < size else b""
        if end_stream and self._buffer:
            raise ProtocolError("stream ended inside a frame", ErrorCode.FRAME_ERROR)
        return frames


class StreamHeaderReader:
    """Reads the header of an incoming unidirectional voice stream (kind, then turn ID)."""

    __slots__ = ("_buffer", "kind", "turn_id")

    def __init__(self) -> None:
        self._buffer = b""
        #: The stream's kind, once known.
        self.kind: StreamKind | None = None
        #: The turn ID of a TURN stream, once known.
        self.turn_id: int | None = None

    def feed(self, data: bytes) -> bytes | None:
        """Consume header octets; return the rest of ``data`` once the header is complete."""
        self._buffer += data
        first = read_varint(self._buffer, 0)
        if first is None:
            return None
        kind_value, position = first
        try:
            kind = StreamKind(kind_value)
        except ValueError:
            raise ProtocolError(
                f"unknown stream kind {kind_value}", ErrorCode.STREAM_ERROR
            ) from None
        turn_id = None
        if kind is StreamKind.TURN:
            second = read_varint(self._buffer, position)
            if second is None:
                return None
            turn_id, position = second
        self.kind, self.turn_id = kind, turn_id
        rest = self._buffer[position:]
        self._buffer = b""
        return rest
