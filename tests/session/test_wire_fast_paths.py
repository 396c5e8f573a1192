"""The per-frame shortcuts of ``wire.py`` (one ``struct.pack`` to encode, the whole-frame path
of ``FrameReader.feed``) say exactly what the plain definitions say, garbage included."""

from __future__ import annotations

import pytest
from aioquic.buffer import encode_uint_var
from hypothesis import example, given
from hypothesis import strategies as st

from quicvoice.errors import ProtocolError
from quicvoice.session.codes import ErrorCode
from quicvoice.session.wire import (
    FRAME_HEADER,
    FRAME_HEADER_LEN,
    MAX_FRAME_LEN,
    MAX_FRAME_PAYLOAD,
    FrameReader,
    MediaFrame,
    encode_frame,
    encode_frame_fields,
    read_varint,
)


def _plain_encoding(seq: int, timestamp: int, payload: bytes) -> bytes:
    body = FRAME_HEADER.pack(seq % 2**32, timestamp % 2**32) + payload
    return encode_uint_var(len(body)) + body


def _plain_frames(data: bytes, end_stream: bool) -> tuple[list[MediaFrame], bytes] | int:
    """Frames of ``data`` fed at once to an empty reader and what it keeps, or the error code."""
    frames, position = [], 0
    while (prefix := read_varint(data, position)) is not None:
        length, start = prefix
        if not FRAME_HEADER_LEN <= length <= MAX_FRAME_LEN:
            return ErrorCode.FRAME_ERROR
        if start + length > len(data):
            break
        seq, timestamp = FRAME_HEADER.unpack_from(data, start)
        frames.append(MediaFrame(seq, timestamp, data[start + FRAME_HEADER_LEN : start + length]))
        position = start + length
    if end_stream and position < len(data):
        return ErrorCode.FRAME_ERROR
    return frames, data[position:]


@given(
    st.integers(-(2**33), 2**33),
    st.integers(-(2**33), 2**33),
    st.binary(max_size=MAX_FRAME_PAYLOAD + 1),
)
def test_encoding_is_the_plain_one(seq: int, timestamp: int, payload: bytes) -> None:
    if len(payload) > MAX_FRAME_PAYLOAD:
        with pytest.raises(ValueError):
            encode_frame_fields(seq, timestamp, payload)
        return
    wire = encode_frame_fields(seq, timestamp, payload)
    assert wire == _plain_encoding(seq, timestamp, payload)
    if 0 <= seq < 2**32 and 0 <= timestamp < 2**32:
        assert encode_frame(MediaFrame(seq, timestamp, payload)) == wire


def _with_prefix(body: bytes, delta: int) -> bytes:
    """``body`` after a 2-octet length prefix of its length plus ``delta`` (even if that is
    out of range: 2**14 - 1 at most)."""
    length = min(max(len(body) + delta, 0), 0x3FFF)
    return bytes([0x40 | length >> 8, length & 0xFF]) + body


#: Chunks near one whole frame with a 2-octet prefix: the fast path's edges.
_whole_frame_like = st.builds(
    _with_prefix,
    st.binary(max_size=80) | st.binary(min_size=MAX_FRAME_LEN - 2, max_size=MAX_FRAME_LEN + 2),
    st.integers(-2, 2),
)


@given(st.one_of(st.binary(max_size=100), _whole_frame_like), st.booleans())
@example(_with_prefix(bytes(MAX_FRAME_LEN + 1), 0), False)  # whole, but one octet too long
@example(_with_prefix(bytes(MAX_FRAME_LEN), 0), True)  # the longest frame there is
def test_one_chunk_reads_as_the_plain_definition(data: bytes, end_stream: bool) -> None:
    expected = _plain_frames(data, end_stream)
    reader = FrameReader()
    try:
        frames = reader.feed(data, end_stream)
    except ProtocolError as error:
        assert error.error_code == expected
        return
    assert not isinstance(expected, int)
    assert frames == expected[0]
    assert reader.buffered == len(expected[1])


@given(st.lists(st.integers(0, 4096), min_size=1, max_size=5), st.integers(1, 700))
def test_whole_frames_after_a_partial_one(sizes: list[int], cut: int) -> None:
    """A chunk that completes a held frame takes the general path, then whole ones the fast."""
    frames = [MediaFrame(seq, seq * 320, bytes([seq]) * size) for seq, size in enumerate(sizes)]
    wire = [encode_frame(frame) for frame in frames]
    reader = FrameReader()
    cut = min(cut, len(wire[0]) - 1)
    got = reader.feed(wire[0][:cut]) + reader.feed(wire[0][cut:])
    for piece in wire[1:]:
        got += reader.feed(piece)
    assert got == frames
    assert reader.buffered == 0
