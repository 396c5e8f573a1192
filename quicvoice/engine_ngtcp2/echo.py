"""The prototype's voice application: welcome every ``hello``, echo the uplink on one turn.

Sans-I/O and engine-agnostic: it reads stream data and writes stream data through the small
``StreamSink`` interface, so the same echo runs over any engine's connection. It speaks the raw
QUIC voice protocol (``quicvoice/1``, specs/protocol.md) just far enough for a benchmark and the
interop test: the control stream (client bidirectional stream 0) gets a ``welcome`` answering the
``hello``; the server opens one turn stream; every frame of the reliable uplink stream goes back
on it at once. Anything malformed raises ``ProtocolError`` with the protocol's error code.
"""

from __future__ import annotations

from typing import Protocol

from ..errors import ProtocolError
from ..session.codes import ErrorCode
from ..session.messages import Hello, MessageReader, Welcome, encode_message
from ..session.wire import (
    FrameReader,
    StreamHeaderReader,
    StreamKind,
    encode_frame,
    encode_stream_header,
)

CONTROL_STREAM_ID = 0


class StreamSink(Protocol):
    """What the echo needs from a QUIC connection."""

    def open_uni_stream(self) -> int:
        """Open a unidirectional stream; return its ID, or -1 when the peer allows none."""
        ...

    def send_stream(self, stream_id: int, data: bytes, fin: bool = False) -> bool:
        """Queue ``data`` on a stream; return whether it was accepted."""
        ...


def _is_client_uni(stream_id: int) -> bool:
    return stream_id & 0x3 == 0x2


class EchoSession:
    """One connection's voice session: ``welcome``, then the uplink echoed on turn 0."""

    __slots__ = (
        "_sink",
        "_server_id",
        "_control",
        "_header",
        "_frames",
        "_uplink",
        "_turn",
        "echoed",
    )

    def __init__(self, sink: StreamSink, server_id: str) -> None:
        self._sink = sink
        self._server_id = server_id
        self._control = MessageReader()
        self._header = StreamHeaderReader()
        self._frames = FrameReader()
        self._uplink: int | None = None
        self._turn: int | None = None
        #: Frames echoed so far.
        self.echoed = 0

    @property
    def welcomed(self) -> bool:
        """Whether the session was welcomed (its turn stream is open)."""
        return self._turn is not None

    def stream_data(self, stream_id: int, data: bytes, fin: bool) -> None:
        """Take data of one stream (``stream_id`` -1: a DATAGRAM, ignored by this echo)."""
        if stream_id == CONTROL_STREAM_ID:
            self._on_control(data)
        elif _is_client_uni(stream_id):
            self._on_uplink(stream_id, data, fin)
        elif stream_id >= 0:
            raise ProtocolError(f"stream {stream_id} is not allowed", ErrorCode.STREAM_ERROR)

    def _on_control(self, data: bytes) -> None:
        for message in self._control.feed(data):
            if not isinstance(message, Hello) or self._turn is not None:
                raise ProtocolError(f"unexpected {message.TYPE} message", ErrorCode.HELLO_REQUIRED)
            welcome = Welcome(
                session_id="ngtcp2-echo",
                codec=message.codecs[0],
                frame_ms=message.frame_ms,
                uplink=message.uplink,
                server_id=self._server_id,
            )
            self._sink.send_stream(CONTROL_STREAM_ID, encode_message(welcome))
            turn = self._sink.open_uni_stream()
            if turn < 0:
                raise ProtocolError("no stream left for the turn", ErrorCode.LIMIT_EXCEEDED)
            self._sink.send_stream(turn, encode_stream_header(StreamKind.TURN, 0))
            self._turn = turn

    def _on_uplink(self, stream_id: int, data: bytes, fin: bool) -> None:
        if self._turn is None:
            raise ProtocolError("media stream before welcome", ErrorCode.STREAM_ERROR)
        if self._uplink is None:
            self._uplink = stream_id
        elif stream_id != self._uplink:
            raise ProtocolError("a second uplink stream", ErrorCode.STREAM_ERROR)
        if self._header.kind is None:
            rest = self._header.feed(data)
            if rest is None:
                return
            if self._header.kind is not StreamKind.UPLINK:
                raise ProtocolError("a turn stream from the client", ErrorCode.STREAM_ERROR)
            data = rest
        frames = self._frames.feed(data, end_stream=fin)
        if frames:
            self._sink.send_stream(self._turn, b"".join(encode_frame(frame) for frame in frames))
            self.echoed += len(frames)
