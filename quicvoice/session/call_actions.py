"""What the client's call machine asks its I/O shell to do (``CallAction``\\ s), and the
records it keeps: kept uplink frames and resumptions. See ``quicvoice.session.call``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .events import ClientEvent
from .messages import Hello
from .stats import Migration

LinkId = int
PathId = int


@dataclass(frozen=True, slots=True, kw_only=True)
class KeptFrame:
    """An uplink frame kept until the server acknowledges it (or resent after a resume)."""

    #: The frame's sequence number.
    seq: int
    #: Its capture timestamp, in samples.
    timestamp: int
    #: The codec payload.
    payload: bytes
    #: Where it ends on the carrying link's uplink stream (acknowledged once the peer's ACKs
    #: pass it), or ``None`` while it was captured during a reconnection and not yet sent.
    stream_end: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Resumption:
    """One reconnection that resumed the session, possibly on another backend."""

    #: The backend (server ID, hex) before and after.
    from_server: str
    to_server: str
    #: From the moment the old connection was declared dead to the new ``welcome``, ms.
    gap_ms: float
    #: Uplink frames sent again on the new connection (unacknowledged, or captured meanwhile).
    frames_resent: int
    #: Time (seconds, the shell's clock) when the old connection was declared dead.
    declared_dead_at: float
    #: Why: a stateless reset, silence while sending, or an idle timeout.
    reason: str
    #: Connection attempts it took (the first flight of some may have gone to a dead backend).
    attempts: int
    #: Of the successful attempt: first packet to handshake done, and handshake to ``welcome``
    #: (the backend verifying the token and loading the state), in ms.
    handshake_ms: float
    resume_ms: float
    #: Whether the resumed connection's first flight (hello and kept audio) went in 0-RTT.
    zero_rtt: bool = False


# -- actions ---------------------------------------------------------------------------------


class CallAction:
    """Base class of what the machine asks the I/O shell to do."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenLink(CallAction):
    """Open QUIC connection ``link`` to the server from ``(host, port)`` (socket ``path``),
    saying ``hello`` (in 0-RTT when a ticket allows). Answer with ``handle_link_opened`` or
    ``handle_link_open_failed``."""

    #: The new link.
    link: LinkId
    #: Its first socket.
    path: PathId
    #: Local address to bind.
    host: str
    port: int
    #: The hello to say (with the resume token for a resume attempt).
    hello: Hello
    #: The Initial's destination connection ID (a resume attempt to the backend that issued
    #: it as ``home_cid``), or ``None``: a random one (RFC 9000 §7.2).
    dcid: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenPath(CallAction):
    """Bind a new socket ``path`` for ``link`` and move the link onto it: make it the one
    sent from, switch to a fresh connection ID when asked (RFC 9000 §9.5), send a PING.
    Answer with ``handle_path_opened`` or ``handle_path_failed``."""

    link: LinkId
    path: PathId
    #: Local address to bind; ``None``: where the kernel routes to the server now (the
    #: wildcard if that cannot be bound).
    host: str | None
    port: int
    #: Switch to a fresh connection ID (False looks like a NAT rebinding to the server).
    new_connection_id: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ClosePath(CallAction):
    """Close socket ``path`` of ``link`` (the old one after a migration)."""

    link: LinkId
    path: PathId


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckLocalAddress(CallAction):
    """Find out whether ``host`` still exists on an interface; answer with
    ``handle_local_address_checked``."""

    link: LinkId
    host: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SendPing(CallAction):
    """Send a PING on ``link`` now: a live peer answers it with an ACK."""

    link: LinkId


@dataclass(frozen=True, slots=True, kw_only=True)
class SendAudio(CallAction):
    """Send one uplink frame on ``link``; on a stream, report where it ends with
    ``handle_audio_written``."""

    link: LinkId
    frame: KeptFrame


@dataclass(frozen=True, slots=True, kw_only=True)
class SendEvent(CallAction):
    """Send an application event on ``link``."""

    link: LinkId
    name: str
    data: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class EndAudio(CallAction):
    """Finish ``link``'s reliable uplink stream (FIN)."""

    link: LinkId


@dataclass(frozen=True, slots=True, kw_only=True)
class SendBye(CallAction):
    """Say goodbye on ``link`` with the client's uplink frame count."""

    link: LinkId
    uplink_frames: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelTurn(CallAction):
    """Barge in on ``link``'s turn ``wire_turn_id`` (the server's number for it); report the
    voice events this produces with ``handle_voice_event``."""

    link: LinkId
    wire_turn_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SendPlayed(CallAction):
    """Tell ``link``'s server how much of its turn ``wire_turn_id`` the caller heard (the
    ``played`` report; the voice layer sends it only when ``welcome`` asked for reports)."""

    link: LinkId
    wire_turn_id: int
    #: Milliseconds of the turn handed to the audio device.
    played_ms: int
    #: Whether every frame of the ended turn was played.
    complete: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseLink(CallAction):
    """Close ``link`` and its sockets; with ``goodbye``, send CONNECTION_CLOSE first."""

    link: LinkId
    goodbye: bool
    #: The application error code and reason of the CONNECTION_CLOSE.
    error_code: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliverEvent(CallAction):
    """Hand ``event`` to the app (playout buffer and event queue)."""

    event: ClientEvent


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationFinished(CallAction):
    """The app's ``migrate()`` number ``request`` is done: ``migration``, or ``error``."""

    request: int
    migration: Migration | None
    error: str | None = None
