"""Control messages: msgpack maps on the control stream, each behind a varint length.

Every message class validates its fields when decoded; anything else is a ``ProtocolError``
with ``ErrorCode.MESSAGE_ERROR`` or ``UNKNOWN_MESSAGE``, never another exception.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

import msgpack
from aioquic.buffer import encode_uint_var

from ..errors import ProtocolError
from .codes import ErrorCode
from .wire import read_varint

PROTOCOL_VERSION = 1
#: Largest control message body; a longer length prefix is refused before it is buffered.
MAX_MESSAGE_LEN = 64 * 1024
MAX_NAME_LEN = 128
MAX_CODECS = 16
#: Largest credential (a bearer token, e.g. a JWT) a ``hello`` may carry, in characters.
MAX_TOKEN_LEN = 8192
#: Most entries of a ``hello``'s ``metadata`` map, and the longest key and value in it.
MAX_METADATA_ENTRIES = 32
MAX_METADATA_KEY_LEN = 64
#: A ``welcome``'s ``home_cid``: a QUIC connection ID a client may open a connection to
#: (RFC 9000 §7.2: at least 8 octets; §17.2: at most 20).
MIN_HOME_CID = 8
MAX_HOME_CID = 20
MAX_METADATA_VALUE_LEN = 1024
#: Integers in ``played`` stay below this (QUIC's varint range, for other implementations).
U62 = 1 << 62


class UplinkMode(Enum):
    """How the client sends its audio."""

    #: One unidirectional stream of frames: nothing lost, late frames arrive late.
    RELIABLE = "reliable"
    #: One datagram per frame: lost frames are concealed at the server.
    REALTIME = "realtime"


def codec_clock_rate(codec: str) -> int | None:
    """The RTP-style clock rate of a codec named ``"NAME/RATE"``, or None when it does not parse."""
    _, _, rate = codec.partition("/")
    # isdigit() alone accepts digits like "²" that int() refuses.
    return int(rate) if rate.isascii() and rate.isdigit() and int(rate) > 0 else None


def _fail(message: str) -> ProtocolError:
    return ProtocolError(message, ErrorCode.MESSAGE_ERROR)


def _get(
    body: dict[str, Any], name: str, kind: type | tuple[type, ...], *, optional: bool = False
) -> Any:
    value = body.get(name)
    if value is None:
        if optional:
            return None
        raise _fail(f"{body.get('type')}: missing {name}")
    if isinstance(value, bool) and kind is int:
        raise _fail(f"{body.get('type')}: {name} must be an integer")
    if not isinstance(value, kind):
        raise _fail(f"{body.get('type')}: {name} has the wrong type")
    return value


def _check_name(value: str, what: str) -> str:
    if not 0 < len(value) <= MAX_NAME_LEN:
        raise _fail(f"{what} must be 1 to {MAX_NAME_LEN} characters")
    return value


class Message:
    """Base class of control messages."""

    TYPE: ClassVar[str] = ""

    def to_wire(self) -> dict[str, Any]:
        """Return the msgpack map of this message, ``type`` included."""
        raise NotImplementedError

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Message:
        """Build the message from its map; raise ``ProtocolError`` when a field is wrong."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello(Message):
    """Client to server, first message: what the client sends and wants."""

    TYPE: ClassVar[str] = "hello"
    #: Protocol version the client speaks.
    version: int = PROTOCOL_VERSION
    #: Codecs the client can send and receive, preferred first, as ``"NAME/RATE"``.
    codecs: tuple[str, ...] = ("L16/16000",)
    #: Frame duration in milliseconds.
    frame_ms: int = 20
    #: How the uplink is carried.
    uplink: UplinkMode = UplinkMode.RELIABLE
    #: A resume token from an earlier ``welcome``, to continue that session.
    resume_token: bytes | None = None
    #: The caller's credential, e.g. a bearer JWT (at most ``MAX_TOKEN_LEN`` characters);
    #: kept out of ``repr`` so logging a ``hello`` cannot leak it.
    token: str | None = field(default=None, repr=False)
    #: Application metadata for the server's accept hook: string keys and values, bounded by
    #: ``MAX_METADATA_ENTRIES``, ``MAX_METADATA_KEY_LEN`` and ``MAX_METADATA_VALUE_LEN``.
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.token is not None:
            _check_token(self.token, error=ValueError)
        _check_metadata(self.metadata, error=ValueError)

    def to_wire(self) -> dict[str, Any]:
        """Return the msgpack map of this message."""
        body: dict[str, Any] = {
            "type": self.TYPE,
            "version": self.version,
            "codecs": list(self.codecs),
            "frame_ms": self.frame_ms,
            "uplink": self.uplink.value,
        }
        if self.resume_token is not None:
            body["resume_token"] = self.resume_token
        if self.token is not None:
            body["token"] = self.token
        if self.metadata:
            body["metadata"] = dict(self.metadata)
        return body

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Hello:
        """Validate and build a ``hello``."""
        codecs = _get(body, "codecs", list)
        if not 0 < len(codecs) <= MAX_CODECS or not all(isinstance(c, str) for c in codecs):
            raise _fail(f"hello: codecs must be 1 to {MAX_CODECS} strings")
        frame_ms = _get(body, "frame_ms", int)
        if frame_ms not in (10, 20, 40, 60):
            raise _fail("hello: frame_ms must be 10, 20, 40 or 60")
        try:
            uplink = UplinkMode(_get(body, "uplink", str))
        except ValueError:
            raise _fail("hello: uplink must be 'reliable' or 'realtime'") from None
        return cls(
            version=_get(body, "version", int),
            codecs=tuple(_check_name(c, "codec") for c in codecs),
            frame_ms=frame_ms,
            uplink=uplink,
            resume_token=_get(body, "resume_token", bytes, optional=True),
            token=_wire_token(body.get("token")),
            metadata=_check_metadata(_get(body, "metadata", dict, optional=True), error=_fail),
        )


def _wire_token(token: object) -> str | None:
    # A bad credential is refused with its own code (TOKEN_MALFORMED), not MESSAGE_ERROR, so
    # the caller learns that its token, not the client library, is at fault.
    if token is None:
        return None
    if not isinstance(token, str):
        raise ProtocolError("hello: token must be a string", ErrorCode.TOKEN_MALFORMED)
    return _check_token(token, error=lambda text: ProtocolError(text, ErrorCode.TOKEN_MALFORMED))


def _check_token(token: str | None, *, error: Callable[[str], Exception]) -> str | None:
    if token is not None and not 0 < len(token) <= MAX_TOKEN_LEN:
        raise error(f"hello: token must be 1 to {MAX_TOKEN_LEN} characters")
    return token


def _check_metadata(
    metadata: Mapping[Any, Any] | None, *, error: Callable[[str], Exception]
) -> dict[str, str]:
    if not metadata:
        return {}
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise error(f"hello: metadata has more than {MAX_METADATA_ENTRIES} entries")
    for key, value in metadata.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_METADATA_KEY_LEN:
            raise error(f"hello: metadata keys must be strings of 1 to {MAX_METADATA_KEY_LEN}")
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE_LEN:
            raise error(
                f"hello: metadata values must be strings of at most {MAX_METADATA_VALUE_LEN}"
            )
    return dict(metadata)


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome(Message):
    """Server to client, answer to ``hello``: the session as the server accepted it."""

    TYPE: ClassVar[str] = "welcome"
    #: The session's ID, stable across reconnections that resume it.
    session_id: str
    #: The chosen codec, ``"NAME/RATE"``.
    codec: str
    #: Frame duration in milliseconds.
    frame_ms: int
    #: The uplink mode in force.
    uplink: UplinkMode
    #: The backend's QUIC-LB server ID in hex.
    server_id: str
    #: Whether the session continues an earlier one.
    resumed: bool = False
    #: Token with which the client may resume this session on any backend.
    resume_token: bytes | None = None
    #: The server wants ``played`` reports (servers that predate them would refuse the
    #: message as unknown, so a client sends them only when this is true).
    played_reports: bool = False
    #: A connection ID of this backend that no connection uses (QUIC-LB routes it here):
    #: the client's resume attempts send their first flight to it (``specs/protocol.md``).
    home_cid: bytes | None = None

    def __post_init__(self) -> None:
        if self.home_cid is not None and not MIN_HOME_CID <= len(self.home_cid) <= MAX_HOME_CID:
            raise ValueError(f"home_cid must be {MIN_HOME_CID}..{MAX_HOME_CID} octets")

    def to_wire(self) -> dict[str, Any]:
        """Return the msgpack map of this message."""
        body: dict[str, Any] = {
            "type": self.TYPE,
            "session_id": self.session_id,
            "codec": self.codec,
            "frame_ms": self.frame_ms,
            "uplink": self.uplink.value,
            "server_id": self.server_id,
            "resumed": self.resumed,
        }
        if self.resume_token is not None:
            body["resume_token"] = self.resume_token
        if self.played_reports:
            body["played_reports"] = True
        if self.home_cid is not None:
            body["home_cid"] = self.home_cid
        return body

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Welcome:
        """Validate and build a ``welcome``."""
        try:
            uplink = UplinkMode(_get(body, "uplink", str))
        except ValueError:
            raise _fail("welcome: bad uplink") from None
        resumed = body.get("resumed", False)
        if not isinstance(resumed, bool):
            raise _fail("welcome: resumed must be a boolean")
        played_reports = body.get("played_reports")
        if played_reports is not None and not isinstance(played_reports, bool):
            raise _fail("welcome: played_reports must be a boolean")
        home_cid = _get(body, "home_cid", bytes, optional=True)
        if home_cid is not None and not MIN_HOME_CID <= len(home_cid) <= MAX_HOME_CID:
            raise _fail(f"welcome: home_cid must be {MIN_HOME_CID}..{MAX_HOME_CID} octets")
        return cls(
            session_id=_check_name(_get(body, "session_id", str), "session_id"),
            codec=_check_name(_get(body, "codec", str), "codec"),
            frame_ms=_get(body, "frame_ms", int),
            uplink=uplink,
            server_id=_get(body, "server_id", str),
            resumed=resumed,
            resume_token=_get(body, "resume_token", bytes, optional=True),
            played_reports=bool(played_reports),
            home_cid=home_cid,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Event(Message):
    """Either direction: an application event (an order, a transcript, a state change)."""

    TYPE: ClassVar[str] = "event"
    #: Dotted event name, e.g. ``"order.add"``.
    name: str
    #: Any msgpack-encodable value.
    data: Any = None

    def to_wire(self) -> dict[str, Any]:
        """Return the msgpack map of this message."""
        return {"type": self.TYPE, "name": self.name, "data": self.data}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Event:
        """Validate and build an ``event``."""
        return cls(name=_check_name(_get(body, "name", str), "name"), data=body.get("data"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Error(Message):
    """Either direction: an error report; fatal ones are followed by a close."""

    TYPE: ClassVar[str] = "error"
    #: An ``ErrorCode`` value (unknown codes are kept as integers).
    code: int
    #: Human-readable explanation.
    message: str = ""

    def to_wire(self) -> dict[str, Any]:
        """Return the msgpack map of this message."""
        return {"type": self.TYPE, "code": self.code, "message": self.message}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Error:
        """Validate and build an ``error``."""
        message = body.get("message", "")
        if not isinstance(message, str):
            raise _fail("error: message must be a string")
        return cls(code=_get(body, "code", int), message=message[:1024])


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel(Message):
    """Either direction: barge-in, discard turn ``turn_id`` now."""

    TYPE: ClassVar[str] = "cancel"
    #: The turn to cancel.
    turn_id: int

    def to_wire(self) -> dict[str, Any]:
        """Return the msgpack map of this message."""
        return {"type": self.TYPE, "turn_id": self.turn_id}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Cancel:
        """Validate and build a ``cancel``."""
        turn_id = _get(body, "turn_id", int)
        if turn_id < 0:
            raise _fail("cancel: turn_id must be >= 0")
        return cls(turn_id=turn_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class Bye(Message):
    """Either direction: the sender is done; carries its final uplink count."""

    TYPE: ClassVar[str] = "bye"
    #: Client: uplink frames it sent; server: uplink frames it received and delivered.
    uplink_frames: int = 0

    def to_wire(self) -> dict[str, Any]:
        """Return the msgpack map of this message."""
        return {"type": self.TYPE, "uplink_frames": self.uplink_frames}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Bye:
        """Validate and build a ``bye``."""
        frames = _get(body, "uplink_frames", int)
        if frames < 0:
            raise _fail("bye: uplink_frames must be >= 0")
        return cls(uplink_frames=frames)


@dataclass(frozen=True, slots=True, kw_only=True)
class Played(Message):
    """Client to server: how much of turn ``turn_id`` the caller actually heard.

    Sent when a turn was cancelled (by either side) and when a turn finished playing out,
    only to servers whose ``welcome`` asked for it (``played_reports``).
    """

    TYPE: ClassVar[str] = "played"
    #: The turn.
    turn_id: int
    #: Milliseconds of the turn's audio the client's playout handed to its audio device.
    played_ms: int
    #: True when the whole turn played out; False when it was cut short (cancelled).
    complete: bool

    def __post_init__(self) -> None:
        for name in ("turn_id", "played_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < U62:
                raise ValueError(f"played: {name} must be an integer 0 <= n < 2**62")

    def to_wire(self) -> dict[str, Any]:
        """Return the msgpack map of this message."""
        return {
            "type": self.TYPE,
            "turn_id": self.turn_id,
            "played_ms": self.played_ms,
            "complete": self.complete,
        }

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Played:
        """Validate and build a ``played``."""
        turn_id = _get(body, "turn_id", int)
        played_ms = _get(body, "played_ms", int)
        complete = body.get("complete")
        if not isinstance(complete, bool):
            raise _fail("played: complete must be a boolean")
        if not 0 <= turn_id < U62 or not 0 <= played_ms < U62:
            raise _fail("played: turn_id and played_ms must be 0 <= n < 2**62")
        return cls(turn_id=turn_id, played_ms=played_ms, complete=complete)


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls for cls in (Hello, Welcome, Event, Error, Cancel, Bye, Played)
}


def encode_message(message: Message) -> bytes:
    """Return ``message`` with its varint length prefix, as written on the control stream."""
    body: bytes = msgpack.packb(message.to_wire(), use_bin_type=True)
    if len(body) > MAX_MESSAGE_LEN:
        raise ValueError(f"{message.TYPE} message of {len(body)} octets exceeds {MAX_MESSAGE_LEN}")
    return encode_uint_var(len(body)) + body


def decode_message(body: bytes) -> Message:
    """Decode one message body (no length prefix); raise ``ProtocolError`` on anything wrong."""
    try:
        value = msgpack.unpackb(body, raw=False, strict_map_key=True, max_bin_len=MAX_MESSAGE_LEN)
    except Exception as error:  # msgpack raises several unrelated types for corrupt input
        raise _fail(f"undecodable control message: {type(error).__name__}") from None
    if not isinstance(value, dict):
        raise _fail("a control message must be a map")
    kind = value.get("type")
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown control message type {kind!r:.40}", ErrorCode.UNKNOWN_MESSAGE)
    return cls.from_wire(value)


@dataclass(slots=True)
class MessageReader:
    """Reassembles control messages from stream data delivered in arbitrary pieces."""

    _buffer: bytes = field(default=b"")

    @property
    def buffered(self) -> int:
        """Octets held back, waiting for the rest of a message."""
        return len(self._buffer)

    def feed(self, data: bytes, end_stream: bool = False) -> list[Message]:
        """Return every message completed by ``data``."""
        buffer = self._buffer + data
        messages = []
        position = 0
        while position < len(buffer):
            prefix = read_varint(buffer, position)
            if prefix is None:
                break
            length, start = prefix
            if length == 0 or length > MAX_MESSAGE_LEN:
                raise ProtocolError(
                    f"control message length {length} out of range", ErrorCode.MESSAGE_ERROR
                )
            end = start + length
            if end > len(buffer):
                break
            messages.append(decode_message(buffer[start:end]))
            position = end
        self._buffer = buffer[position:]
        if end_stream and self._buffer:
            raise ProtocolError("control stream ended inside a message", ErrorCode.MESSAGE_ERROR)
        return messages
