"""Events of the voice layer: what ``VoiceConnection.handle_event`` reports, as past-tense facts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .messages import Hello, UplinkMode
from .wire import MediaFrame


class VoiceEvent:
    """Base class of voice events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class HelloReceived(VoiceEvent):
    """Server: a client asked for a session; answer with ``accept()`` or ``reject()``."""

    #: The client's request.
    hello: Hello


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionStarted(VoiceEvent):
    """Both sides: the session is established (client: ``welcome`` arrived; server: sent)."""

    #: The session's ID.
    session_id: str
    #: The codec in force, ``"NAME/RATE"``.
    codec: str
    #: Frame duration in milliseconds.
    frame_ms: int
    #: The uplink mode in force.
    uplink: UplinkMode
    #: The backend's QUIC-LB server ID in hex.
    server_id: str
    #: Whether this continues an earlier session.
    resumed: bool
    #: Token to resume the session elsewhere (client side only).
    resume_token: bytes | None = None
    #: The backend's connection ID for resume attempts (client side only; ``welcome``).
    home_cid: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionResumed(VoiceEvent):
    """Client: the connection died and the session continues on a new one."""

    #: The session's ID (unchanged).
    session_id: str
    #: The backend now serving it (hex server ID).
    server_id: str
    #: From the old connection being declared dead to the new ``welcome``, milliseconds.
    gap_ms: float
    #: Why the old connection was given up.
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioReceived(VoiceEvent):
    """A media frame arrived: uplink at the server, a turn's frame at the client."""

    #: The frame.
    frame: MediaFrame
    #: The turn it belongs to (downlink), or ``None`` for uplink audio.
    turn_id: int | None = None
    #: Client with ``connect(sample_rate=N)``: the frame decoded to s16le samples at N Hz
    #: (silence if it did not decode); ``None`` otherwise.
    pcm: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnStarted(VoiceEvent):
    """Client: the server opened response turn ``turn_id``."""

    #: The turn.
    turn_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnEnded(VoiceEvent):
    """Client: turn ``turn_id`` is complete; every frame of it has been reported."""

    #: The turn.
    turn_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnCancelled(VoiceEvent):
    """Either side: turn ``turn_id`` was cancelled (barge-in); discard what is left of it."""

    #: The turn.
    turn_id: int
    #: True when the peer cancelled it, False when this side did.
    by_peer: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnPlayed(VoiceEvent):
    """Server: the client reported how much of turn ``turn_id`` its caller heard."""

    #: The turn.
    turn_id: int
    #: Milliseconds of the turn the client's playout handed to its audio device.
    played_ms: int
    #: True when the whole turn played out, False when it was cut short.
    complete: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class UplinkEnded(VoiceEvent):
    """Server: the client finished its reliable uplink stream; every frame has been reported."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EventReceived(VoiceEvent):
    """An application event arrived on the control stream."""

    #: Dotted event name.
    name: str
    #: Its data.
    data: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorReceived(VoiceEvent):
    """The peer reported an error on the control stream."""

    #: The error code.
    code: int
    #: The peer's explanation.
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ByeReceived(VoiceEvent):
    """The peer is done; carries its uplink frame count (client: sent, server: received)."""

    #: Uplink frames as counted by the peer.
    uplink_frames: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionClosed(VoiceEvent):
    """The connection under the session closed."""

    #: The application or transport error code (0: normal).
    error_code: int
    #: The reason phrase.
    reason: str


#: What a client call delivers to its app (``VoiceClient.receive()``): a ``match`` over these
#: classes is checked for exhaustiveness by mypy. Turn IDs are the client's own (unique over
#: the whole call, resumes included: ``specs/protocol.md``).
ClientEvent = (
    TurnStarted
    | AudioReceived
    | TurnEnded
    | TurnCancelled
    | EventReceived
    | ErrorReceived
    | ByeReceived
    | SessionResumed
    | SessionClosed
)
