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
    #: No common codec (the ``hello`` offered none the server supports).
    UNSUPPORTED = 0x107
    #: The server's application failed; the session ends.
    INTERNAL_ERROR = 0x108
    #: The resume token was forged, expired or for another session.
    RESUME_REFUSED = 0x109
    #: The server requires a credential and the ``hello`` carried none.
    UNAUTHENTICATED = 0x10A
    #: The credential is not a well-formed token (or is too large).
    TOKEN_MALFORMED = 0x10B
    #: The token's ``exp`` has passed (beyond the allowed clock skew).
    TOKEN_EXPIRED = 0x10C
    #: The token's ``nbf`` (or ``iat``) is still in the future (beyond the allowed clock skew).
    TOKEN_NOT_YET_VALID = 0x10D
    #: The token's ``aud`` does not name this service.
    TOKEN_WRONG_AUDIENCE = 0x10E
    #: The token's ``iss`` is not a trusted issuer.
    TOKEN_WRONG_ISSUER = 0x10F
    #: The token's signature does not verify.
    TOKEN_BAD_SIGNATURE = 0x110
    #: The token names a key (``kid``) or algorithm the server does not have.
    TOKEN_UNKNOWN_KEY = 0x111
    #: The server application's accept hook refused the caller.
    REFUSED = 0x112
    #: The ``hello``'s protocol ``version`` is not one the server speaks.
    VERSION_UNSUPPORTED = 0x113
    #: An uplink frame's payload does not match the negotiated codec and frame duration
    #: (PCM: not exactly one frame of samples; Opus: a malformed packet or another duration).
    FRAME_MISMATCH = 0x114
    #: The session's state could not be read now (the store is failing over, or down): the
    #: session was not taken over, and a resume asked again later may succeed.
    STATE_UNAVAILABLE = 0x115


#: Codes an application's accept hook may choose for a refusal of its own, beside ``REFUSED``.
APPLICATION_REFUSAL_CODES = range(0x1000, 0x2000)
