"""Application error codes of the voice protocol (specs/protocol.md), used in closes and resets."""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """Codes carried by CONNECTION_CLOSE, RESET_STREAM, STOP_SENDING and ``error`` messages."""

    NO_ERROR = 0x0
    #: A turn was cancelled (barge-in); the stream's data is to be discarded.
    CANCELLED = 0x10
    #: A generic violation of the protocol.
    PROTOCOL_ERROR = 0x100
    #: A control message could not be decoded or broke its schema.
    MESSAGE_ERROR = 0x101
    #: A control message of an unknown type.
    UNKNOWN_MESSAGE = 0x102
    #: A media frame or datagram was malformed or too large.
    FRAME_ERROR = 0x103
    #: A stream that is not allowed here (unknown kind, wrong direction, duplicate uplink).
    STREAM_ERROR = 0x104
    #: The peer exceeded a resource limit (streams, buffered octets, messages).
    LIMIT_EXCEEDED = 0x105
    #: Something other than ``hello`` came first, or ``hello`` came twice.
    HELLO_REQUIRED = 0x106
    #: No common codec, version or uplink mode.
    UNSUPPORTED = 0x107
    #: The server's application failed; the session ends.
    INTERNAL_ERROR = 0x108
    #: The resume token was forged, expired or for another session.
    RESUME_REFUSED = 0x109
