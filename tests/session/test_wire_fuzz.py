"""Peers control every byte: the decoders raise ProtocolError or return values, nothing else."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicvoice.errors import ProtocolError
from quicvoice.session.codes import ErrorCode
from quicvoice.session.messages import (
    MAX_MESSAGE_LEN,
    Bye,
    Cancel,
    Error,
    Event,
    Hello,
    MessageReader,
    UplinkMode,
    Welcome,
    decode_message,
    encode_message,
)
from quicvoice.session.wire import (
    MAX_FRAME_PAYLOAD,
    FrameReader,
    MediaFrame,
    StreamHeaderReader,
    StreamKind,
    decode_datagram,
    encode_datagram,
    encode_frame,
    encode_stream_header,
    read_varint,
)

frames = st.builds(
    MediaFrame,
    seq=st.integers(0, 2**32 - 1),
    timestamp=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=700),
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


@given(st.lists(frames, max_size=10), st.lists(st.integers(0, 10_000), max_size=20))
def test_frames_survive_any_chunking(sent: list[MediaFrame], cuts: list[int]) -> None:
    data = b"".join(encode_frame(frame) for frame in sent)
    reader = FrameReader()
    received: list[MediaFrame] = []
    pieces = chunked(data, cuts)
    for index, piece in enumerate(pieces):
        received += reader.feed(piece, end_stream=index == len(pieces) - 1)
    assert received == sent


@given(st.lists(st.binary(max_size=200), max_size=10), st.booleans())
def test_frame_reader_garbage(pieces: list[bytes], end: bool) -> None:
    reader = FrameReader()
    try:
        for index, piece in enumerate(pieces):
            for frame in reader.feed(piece, end_stream=end and index == len(pieces) - 1):
                assert len(frame.payload) <= MAX_FRAME_PAYLOAD
        assert reader.buffered <= 8 + 8 + MAX_FRAME_PAYLOAD
    except ProtocolError as error:
        assert error.error_code == ErrorCode.FRAME_ERROR


def test_oversize_frame_refused_before_buffering() -> None:
    with pytest.raises(ProtocolError, match="out of range"):
        FrameReader().feed(b"\x80\x10\x00\x00")  # a 1 MiB length prefix, no body yet


def test_truncated_frame_at_end_of_stream() -> None:
    data = encode_frame(MediaFrame(1, 2, b"abc"))
    with pytest.raises(ProtocolError, match="inside a frame"):
        FrameReader().feed(data[:-1], end_stream=True)


@given(frames)
def test_datagram_round_trip(frame: MediaFrame) -> None:
    assert decode_datagram(encode_datagram(frame))[1] == frame


@given(st.binary(max_size=5000))
def test_datagram_garbage(data: bytes) -> None:
    try:
        decode_datagram(data)
    except ProtocolError as error:
        assert error.error_code == ErrorCode.FRAME_ERROR


@given(st.binary(max_size=40))
def test_stream_header_garbage(data: bytes) -> None:
    reader = StreamHeaderReader()
    try:
        rest = reader.feed(data)
    except ProtocolError as error:
        assert error.error_code == ErrorCode.STREAM_ERROR
        return
    if rest is not None:
        assert reader.kind in (StreamKind.UPLINK, StreamKind.TURN)


@given(st.integers(0, 2**62 - 1))
def test_stream_header_turn_ids(turn_id: int) -> None:
    reader = StreamHeaderReader()
    assert reader.feed(encode_stream_header(StreamKind.TURN, turn_id) + b"x") == b"x"
    assert reader.turn_id == turn_id


@given(st.binary(max_size=9), st.integers(0, 9))
def test_read_varint_never_raises(data: bytes, position: int) -> None:
    result = read_varint(data, position)
    assert result is None or result[1] <= len(data)


MESSAGES = [
    Hello(),
    Hello(codecs=("opus/48000", "L16/16000"), uplink=UplinkMode.REALTIME, resume_token=b"t"),
    Welcome(
        session_id="s", codec="L16/16000", frame_ms=20, uplink=UplinkMode.RELIABLE, server_id="01"
    ),
    Event(name="order.add", data={"item": "taro", "sugar": 0.75}),
    Error(code=0x101, message="bad"),
    Cancel(turn_id=3),
    Bye(uplink_frames=42),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.TYPE)
def test_message_round_trip(message: object) -> None:
    encoded = encode_message(message)  # type: ignore[arg-type]
    assert MessageReader().feed(encoded) == [message]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "type",
                "version",
                "codecs",
                "frame_ms",
                "uplink",
                "session_id",
                "codec",
                "server_id",
                "name",
                "data",
                "code",
                "message",
                "turn_id",
                "uplink_frames",
                "resume_token",
                "resumed",
                "token",
                "metadata",
            ]
        ),
        json_values,
    ),
    st.sampled_from(["hello", "welcome", "event", "error", "cancel", "bye", "nope"]),
)
def test_schema_violations_are_protocol_errors(body: dict[str, object], kind: str) -> None:
    body = {**body, "type": kind}
    try:
        decode_message(msgpack.packb(body, use_bin_type=True))
    except ProtocolError as error:
        allowed = {ErrorCode.MESSAGE_ERROR, ErrorCode.UNKNOWN_MESSAGE}
        if kind == "hello":
            allowed.add(ErrorCode.TOKEN_MALFORMED)  # a bad credential has its own code
        assert error.error_code in allowed


@given(st.binary(max_size=300))
def test_undecodable_bodies(data: bytes) -> None:
    try:
        decode_message(data)
    except ProtocolError as error:
        assert error.error_code in (ErrorCode.MESSAGE_ERROR, ErrorCode.UNKNOWN_MESSAGE)


def test_oversize_message_refused_before_buffering() -> None:
    prefix = (0x80000000 | (MAX_MESSAGE_LEN + 1)).to_bytes(4, "big")
    with pytest.raises(ProtocolError, match="out of range"):
        MessageReader().feed(prefix)
