"""The client's call policy as a sans-I/O state machine: what to do when the network goes away.

A call runs over one QUIC connection at a time (a *link*), each with one or more local sockets
(*paths*). ``CallMachine`` decides, from what the I/O shell reports, when a link is alive, when
to probe it, when its network is gone (move it to another local address), when it is dead
(reconnect and resume the session with the token from ``welcome``), how long a resume attempt
may take, when to give up, which uplink frames to keep and resend, and what app calls made
meanwhile (events, ``end_audio``, ``bye``, ``migrate``) turn into once a connection carries the
call on. The contract is ``specs/protocol.md`` ("The call machine").

Like aioquic's ``QuicConnection`` it takes inputs (``handle_*`` methods and the app's calls,
each with ``now`` in seconds), exposes ``get_timer()`` / ``handle_timer(now)``, and queues
``CallAction``\\ s for the shell to execute (``next_action()``). It reads no clock, opens no
socket, and draws no randomness. The shell answers some actions with an input
(``OpenLink`` -> ``handle_link_opened`` or ``handle_link_open_failed``, ``OpenPath`` ->
``handle_path_opened`` or ``handle_path_failed``, ``SendAudio`` -> ``handle_audio_written``,
``CheckLocalAddress`` -> ``handle_local_address_checked``).
"""

from __future__ import annotations

import enum
import errno
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import CallEndedError, CallReconnectingError, UplinkEndedError
from ..settings import Address, format_address
from .call_actions import (
    CallAction,
    CancelTurn,
    CheckLocalAddress,
    CloseLink,
    ClosePath,
    DeliverEvent,
    EndAudio,
    KeptFrame,
    LinkId,
    MigrationFinished,
    OpenLink,
    OpenPath,
    PathId,
    Resumption,
    SendAudio,
    SendBye,
    SendEvent,
    SendPing,
    SendPlayed,
)
from .codes import APPLICATION_REFUSAL_CODES, ErrorCode
from .events import (
    AudioReceived,
    ClientEvent,
    SessionClosed,
    SessionResumed,
    SessionStarted,
    TurnCancelled,
    TurnEnded,
    TurnStarted,
    VoiceEvent,
)
from .messages import Hello, UplinkMode
from .stats import Migration

__all__ = [
    "CallAction",
    "CallConfig",
    "CallMachine",
    "CancelTurn",
    "CheckLocalAddress",
    "CloseLink",
    "ClosePath",
    "DeliverEvent",
    "EndAudio",
    "KeptFrame",
    "LinkId",
    "LinkRole",
    "MigrationFinished",
    "OpenLink",
    "OpenPath",
    "PathId",
    "Resumption",
    "SendAudio",
    "SendBye",
    "SendEvent",
    "SendPing",
    "SendPlayed",
    "is_definite_refusal",
]

logger = logging.getLogger("quicvoice.client")


#: How long the old socket stays open after a migration, at least (make-before-break).
MIN_OLD_PATH_LINGER = 0.05
#: Uplink frames kept for resending after a reconnection: 60 s of 20 ms frames.
MAX_KEPT_FRAMES = 3000
#: Pause between reconnection attempts, doubling up to the maximum.
RECONNECT_BACKOFF = 0.05
RECONNECT_BACKOFF_MAX = 1.0
#: A reconnection attempt waits this many RTTs (of the lost connection) for ``welcome``, at
#: least the minimum: an attempt whose first flight went to the dead backend (the forwarder
#: may not know yet) is abandoned quickly, and the next one hashes elsewhere.
ATTEMPT_RTTS = 8
MIN_ATTEMPT_TIMEOUT = 0.3
#: The shortest wait for ``welcome`` however close the reconnection deadline is.
MIN_ATTEMPT_WAIT = 0.05
#: Attempts made with that short timeout before it starts doubling.
FAST_ATTEMPTS = 4
#: Seconds of a reconnection during which every attempt goes home (``home_cid``); after it,
#: only every ``HOME_EVERY``-th attempt does and the others go to any backend, in case the home
#: backend died and the forwarder does not know (its health probes off). A backend that answers
#: those without the session sends the next attempt home at once, so a session only the home
#: backend holds is not lost.
HOME_ONLY_PERIOD = 1.0
HOME_EVERY = 3
#: The attempt timeout when the client has moved to another network meanwhile (its RTT there
#: is unknown): long enough for a handshake over a slow cellular link. Also how long a
#: connection moved off a vanished network waits for an answer on the new path.
NEW_PATH_ATTEMPT_TIMEOUT = 1.5
#: How long an attempt the backend has answered may take in all: under load its handshake
#: and resume queue behind others, and abandoning it would only queue one more.
ANSWERED_ATTEMPT_TIMEOUT = 3.0
#: The RTT assumed for a connection that measured none.
DEFAULT_RTT = 0.1
#: Once a send has gone unanswered this fraction of ``liveness_timeout``, PINGs probe the
#: connection every ``PROBE_INTERVAL`` of it, so a live peer has many chances to answer
#: before the connection is declared dead.
PROBE_AFTER = 0.25
PROBE_INTERVAL = 0.1
#: Events a quiet connection may deliver during a resume, kept in case it comes back.
MAX_QUIET_EVENTS = 10000
#: Application events (and a ``bye``) the app may send while the call reconnects.
MAX_HELD_EVENTS = 1000
#: Client turn IDs remembered for ``cancel_turn`` (older turns are long over).
MAX_REMEMBERED_TURNS = 1024
#: Send errors that mean the socket's network is gone (its address or route vanished), not
#: that the server is: the connection moves to whatever network remains.
PATH_GONE_ERRORS = frozenset({errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN})
#: Close codes by which a backend refused a resume without taking the session over: a bad
#: resume token, no common codec or protocol version, and every refusal of the caller's
#: credential or of the accept hook (those come before the record is claimed,
#: ``specs/auth.md``). Retrying them would only be refused again; an accept hook's own
#: codes are ``APPLICATION_REFUSAL_CODES``.
DEFINITE_REFUSALS = frozenset(
    {
        int(ErrorCode.RESUME_REFUSED),
        int(ErrorCode.UNSUPPORTED),
        int(ErrorCode.VERSION_UNSUPPORTED),
        *range(int(ErrorCode.UNAUTHENTICATED), int(ErrorCode.REFUSED) + 1),
    }
)
#: The reason aioquic gives a connection that timed out idle (a silent death, not a close).
IDLE_TIMEOUT_REASON = "Idle timeout"


def is_definite_refusal(error_code: int) -> bool:
    """Whether a close with ``error_code`` before ``welcome`` refused the session for certain
    (it was not taken over, and asking again gets the same answer)."""
    return error_code in DEFINITE_REFUSALS or error_code in APPLICATION_REFUSAL_CODES


@dataclass(frozen=True, slots=True, kw_only=True)
class CallConfig:
    """The policy's settings for one call."""

    #: Resume by itself when the connection dies (a stateless reset, or ``liveness_timeout``
    #: of sending without hearing anything). Without it there are no liveness probes either.
    reconnect: bool = True
    #: Seconds of sending unanswered after which a connection is dead.
    liveness_timeout: float = 1.0
    #: Seconds a reconnection may take in all before the call ends.
    reconnect_timeout: float = 10.0
    #: Whether the server is reached over IPv6 (the wildcard to bind when an address is gone).
    ipv6: bool = False

    def __post_init__(self) -> None:
        if not self.liveness_timeout > 0 or not self.reconnect_timeout > 0:
            raise ValueError("liveness_timeout and reconnect_timeout must be positive")

    @property
    def wildcard(self) -> str:
        """The local address that lets the kernel pick the interface."""
        return "::" if self.ipv6 else "0.0.0.0"


# -- state -----------------------------------------------------------------------------------


class LinkRole(enum.Enum):
    """What a link is to the call."""

    #: The call's first connection, before ``welcome``.
    OPENING = "opening"
    #: The connection that carries the call.
    CARRYING = "carrying"
    #: A resume attempt, before ``welcome``.
    ATTEMPT = "attempt"
    #: Declared dead but kept open during a resume, in case it is heard from again.
    QUIET = "quiet"
    #: Closed; the machine emits no more actions for it.
    CLOSED = "closed"


@dataclass(slots=True)
class _Path:
    id: PathId
    local_address: Address | None = None
    first_receive: float | None = None
    last_receive: float = 0.0


@dataclass(slots=True)
class _Link:
    id: LinkId
    role: LinkRole
    hello: Hello
    host: str
    port: int
    opened_at: float = 0.0
    paths: dict[PathId, _Path] = field(default_factory=dict)
    active_path: PathId | None = None
    last_receive: float = 0.0
    #: When the first packet sent since the last one received went out (``None`` while
    #: nothing sent is unanswered): silence counts from there, not from the last receive,
    #: so a pause in sending is not mistaken for a dead peer.
    unanswered_since: float | None = None
    last_send: float = 0.0
    last_probe: float = 0.0
    reset: bool = False
    ended: bool = False
    handshake_at: float = 0.0
    welcome_at: float = 0.0
    early_data_accepted: bool = False
    uplink_acked: int = 0
    rtt: float | None = None
    #: Resume attempt with a 0-RTT uplink: the kept frames sent early, with their offsets here.
    early: list[KeptFrame] | None = None
    #: Added to the server's turn IDs on this connection to make the client's.
    turn_base: int = 0
    #: The Initial's destination CID (a resume attempt sent home), ``None`` for a random one.
    dcid: bytes | None = None

    @property
    def active_address(self) -> Address | None:
        path = self.paths.get(self.active_path) if self.active_path is not None else None
        return path.local_address if path is not None else None


@dataclass(slots=True)
class _Reconnection:
    reason: str
    started_at: float
    before: SessionStarted
    old: _Link
    old_may_revive: bool
    deadline: float
    attempt_timeout: float
    host_measured: str
    backoff: float = RECONNECT_BACKOFF
    attempts: int = 0
    #: An attempt that timed out may still have reached a backend and taken the session
    #: over (which closes the old connection): going back to the old one is safe only while
    #: every attempt got a definite refusal.
    may_have_taken_over: bool = False
    attempt: _Link | None = None
    attempt_began: float = 0.0
    attempt_expires: float = 0.0
    attempt_extended: bool = False
    next_attempt_at: float | None = None
    awaiting_revival: bool = False
    #: The CID of the backend that held the session (``welcome``'s ``home_cid``): attempts
    #: go there while nothing says that backend is gone (then ``None``: any backend).
    home_cid: bytes | None = None
    #: When the quiet connection was last probed, and whether it has answered since the
    #: reconnection began (the path is back: an unanswered attempt is retried at once).
    last_quiet_probe: float = 0.0
    path_back: bool = False
    #: When a backend last refused an attempt sent to any backend (the path worked then),
    #: and whether the next attempt goes home because of it.
    refused_elsewhere_at: float | None = None
    home_next: bool = False
    #: Failed attempts that lengthen the back-off and the attempt timeout (those sent to any
    #: backend).
    counted_failures: int = 0


@dataclass(slots=True)
class _Recovery:
    reason: str
    link: _Link
    path: PathId
    old_path: PathId | None
    last_on_old: float = 0.0
    expires: float | None = None


class _MigrationPhase(enum.Enum):
    AFTER_RECOVERY = "after recovery"
    AFTER_RECONNECT = "after reconnect"
    AWAITING_ANSWER = "awaiting answer"


@dataclass(slots=True)
class _MigrationRequest:
    id: int
    host: str
    port: int
    new_connection_id: bool
    timeout: float
    phase: _MigrationPhase
    deadline: float | None = None
    link: _Link | None = None
    path: PathId | None = None
    old_path: PathId | None = None
    last_on_old: float = 0.0
    previous_host: str = ""
    started: float = 0.0


@dataclass(frozen=True, slots=True)
class _HeldEvent:
    name: str
    data: Any


@dataclass(frozen=True, slots=True)
class _HeldBye:
    uplink_frames: int


class CallMachine:
    """The client's call policy, sans-I/O; see the module docstring and ``specs/protocol.md``."""

    def __init__(self, config: CallConfig, hello: Hello) -> None:
        self.config = config
        self._hello = hello
        self._actions: deque[CallAction] = deque()
        self._links: dict[LinkId, _Link] = {}
        self._next_link = 0
        self._next_path = 0
        self._carrying: _Link | None = None
        self._current: _Link | None = None
        self._session: SessionStarted | None = None
        self._open_failure: SessionClosed | None = None
        self._reconnection: _Reconnection | None = None
        self._recovery: _Recovery | None = None
        self._judging: _Link | None = None
        self._judging_reason = ""
        self._closing = False
        self._ended = False
        self._local_host = config.wildcard
        self._next_seq = 0
        self._kept: deque[KeptFrame] = deque()
        self._frames_dropped = 0
        self._audio_ended = False
        self._held: list[_HeldEvent | _HeldBye] = []
        self._quiet_events: list[VoiceEvent] = []
        self._migrations: list[Migration] = []
        self._moved_by_itself: Migration | None = None
        self._resumptions: list[Resumption] = []
        self._requests: dict[int, _MigrationRequest] = {}
        self._next_request = 0
        self._lingers: list[tuple[float, _Link, PathId]] = []
        #: client turn ID -> (link, the server's turn ID), the latest turns only.
        self._turns: OrderedDict[int, tuple[_Link, int]] = OrderedDict()
        self._open_turns: set[int] = set()
        self._next_turn = 0

    # -- what the shell reads ------------------------------------------------------------

    def next_action(self) -> CallAction | None:
        """The next action to execute, or ``None``."""
        return self._actions.popleft() if self._actions else None

    @property
    def session(self) -> SessionStarted | None:
        """The session as the server accepted it (after a resume: the latest ``welcome``)."""
        return self._session

    @property
    def open_failure(self) -> SessionClosed | None:
        """How the first connection closed before ``welcome``, if it did."""
        return self._open_failure

    @property
    def current_link(self) -> LinkId | None:
        """The link the call is on now: the carrying one, or during a reconnection the
        latest attempt."""
        return self._current.id if self._current is not None else None

    @property
    def carrying_link(self) -> LinkId | None:
        """The link that carries the call (``None`` while reconnecting or before welcome)."""
        link = self._carrying
        return link.id if link is not None and link.role is LinkRole.CARRYING else None

    @property
    def reconnecting(self) -> bool:
        """Whether the connection was declared dead and the call is being resumed."""
        return self._reconnection is not None

    @property
    def recovering(self) -> bool:
        """Whether the call is moving off a vanished network."""
        return self._recovery is not None

    @property
    def ended(self) -> bool:
        """Whether the call is over (closed by the app, the peer, or a failed resume)."""
        return self._ended or self._closing

    @property
    def next_seq(self) -> int:
        """The sequence number of the next uplink frame (frames sent so far, mod 2^32)."""
        return self._next_seq

    @property
    def uplink_ended(self) -> bool:
        """Whether a reliable uplink was finished (``end_audio`` or ``bye``): more audio is
        ``UplinkEndedError``. A realtime uplink never ends."""
        session = self._session
        return self._audio_ended and session is not None and session.uplink is UplinkMode.RELIABLE

    @property
    def frames_dropped(self) -> int:
        """Uplink frames given up: kept frames over the bound, realtime frames while
        reconnecting."""
        return self._frames_dropped

    @property
    def kept_frames(self) -> tuple[KeptFrame, ...]:
        """Uplink frames not known to be acknowledged, oldest first."""
        return tuple(self._kept)

    @property
    def migrations(self) -> tuple[Migration, ...]:
        """Changes of network path, the app's and the client's own."""
        return tuple(self._migrations)

    @property
    def resumptions(self) -> tuple[Resumption, ...]:
        """Reconnections that resumed the session."""
        return tuple(self._resumptions)

    def open_links(self) -> dict[LinkId, LinkRole]:
        """The links not closed, and their roles."""
        return {link.id: link.role for link in self._links.values()}

    def wire_turn(self, turn_id: int) -> tuple[LinkId, int] | None:
        """The link and the server's turn ID behind client turn ``turn_id``, if remembered."""
        entry = self._turns.get(turn_id)
        return (entry[0].id, entry[1]) if entry is not None else None

    # -- the app -------------------------------------------------------------------------

    def open(self, local_address: Address, now: float) -> None:
        """Start the call's first connection from ``local_address``."""
        if self._links or self._closing:
            raise ValueError("open() is called once, first")
        self._local_host = local_address[0]
        link = self._new_link(LinkRole.OPENING, self._hello, local_address)
        self._carrying = self._current = link
        link.opened_at = now

    def send_audio(self, payload: bytes, timestamp: int | None, samples_per_frame: int) -> int:
        """Send one uplink frame (``timestamp`` defaults to seq x samples per frame); return
        its sequence number. While reconnecting a reliable frame is kept and sent after the
        resume; a realtime one is dropped and counted."""
        session = self._require_active("send audio")
        reliable = session.uplink is UplinkMode.RELIABLE
        if self._audio_ended and reliable:
            raise UplinkEndedError("the uplink has ended (end_audio or bye)")
        seq = self._next_seq
        self._next_seq = (seq + 1) % (1 << 32)
        if timestamp is None:
            timestamp = seq * samples_per_frame
        if self._reconnection is not None:
            if reliable:
                self._keep(
                    KeptFrame(seq=seq, timestamp=timestamp, payload=payload, stream_end=None)
                )
            else:
                self._frames_dropped += 1
            return seq
        self._send_now(KeptFrame(seq=seq, timestamp=timestamp, payload=payload, stream_end=None))
        return seq

    def end_audio(self) -> None:
        """Finish the reliable uplink; while reconnecting, the connection that carries the call
        on finishes it."""
        self._require_active("end the uplink")
        self._audio_ended = True
        if self._reconnection is None:
            self._actions.append(EndAudio(link=self._carrying_id()))

    def send_event(self, name: str, data: Any = None) -> None:
        """Send an application event (after the resume, while reconnecting)."""
        self._require_active("send an event")
        self._send_or_hold(_HeldEvent(name, data))

    def bye(self) -> None:
        """Finish the uplink and say goodbye (on the connection that carries the call on,
        while reconnecting)."""
        self._require_active("say goodbye")
        self._audio_ended = True
        if self._reconnection is None:
            self._actions.append(EndAudio(link=self._carrying_id()))
        self._send_or_hold(_HeldBye(self._next_seq))

    def cancel_turn(self, turn_id: int) -> None:
        """Barge in on client turn ``turn_id``: flushed here at once, and the server told when
        the turn is on the carrying connection (a turn of a lost connection is over there)."""
        entry = self._turns.get(turn_id)
        if entry is None or turn_id not in self._open_turns:
            return
        link, wire = entry
        if link is self._carrying and link.role is LinkRole.CARRYING:
            self._actions.append(CancelTurn(link=link.id, wire_turn_id=wire))
        else:
            self._open_turns.discard(turn_id)
            self._deliver(TurnCancelled(turn_id=turn_id, by_peer=False))

    def report_played(self, turn_id: int, played_ms: int, *, complete: bool) -> bool:
        """The playout buffer finished client turn ``turn_id`` (played out, or cut short):
        tell the server that sent it, in its own turn ID. Only the carrying connection's own
        turns are reported (a turn of a lost connection is over there, and the resumed one's
        server numbers its turns afresh); return whether a ``SendPlayed`` was queued."""
        if played_ms < 0:
            raise ValueError("played_ms must not be negative")
        entry = self._turns.get(turn_id)
        if entry is None or self.ended or self._reconnection is not None:
            return False
        link, wire = entry
        if link is not self._carrying or link.role is not LinkRole.CARRYING:
            return False
        self._actions.append(
            SendPlayed(link=link.id, wire_turn_id=wire, played_ms=played_ms, complete=complete)
        )
        return True

    def migrate(
        self, local_address: Address, *, new_connection_id: bool, timeout: float, now: float
    ) -> int:
        """Move the call to ``local_address``; return the request number that
        ``MigrationFinished`` answers."""
        if self.ended:
            raise CallEndedError("the call has ended")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self._next_request += 1
        request = _MigrationRequest(
            id=self._next_request,
            host=local_address[0],
            port=local_address[1],
            new_connection_id=new_connection_id,
            timeout=timeout,
            phase=_MigrationPhase.AFTER_RECOVERY,
        )
        self._requests[request.id] = request
        if self._recovery is not None:
            # The client is already moving off a vanished network: let it finish first.
            request.deadline = now + timeout
        else:
            self._proceed_migration(request, now)
        return request.id

    def close(self, now: float) -> None:
        """The app hangs up: close every link (with CONNECTION_CLOSE) and end the call."""
        if self._closing:
            return
        self._closing = True
        self._reconnection = None
        self._recovery = None
        self._judging = None
        for link in list(self._links.values()):
            self._close_link(link, goodbye=not link.reset)
        for request in list(self._requests.values()):
            self._finish_migration(request, None, "the call has ended")

    def abort(self, error_code: int, reason: str) -> None:
        """End the call from this side with ``error_code`` (e.g. the app stopped reading)."""
        if self.ended:
            return
        for link in list(self._links.values()):
            self._close_link(link, goodbye=not link.reset, error_code=error_code, reason=reason)
        self._reconnection = None
        self._recovery = None
        self._end(SessionClosed(error_code=error_code, reason=reason))

    # -- the shell's reports -------------------------------------------------------------

    def handle_link_opened(
        self, link_id: LinkId, local_address: Address, now: float, *, early_uplink: bool
    ) -> None:
        """``OpenLink`` succeeded: the first flight is on its way from ``local_address``;
        ``early_uplink`` when a 0-RTT uplink stream is open already."""
        link = self._links.get(link_id)
        if link is None or link.active_path is None:
            return
        link.paths[link.active_path].local_address = local_address
        link.opened_at = now
        reconnection = self._reconnection
        if reconnection is None or reconnection.attempt is not link:
            return
        reconnection.attempt_began = now
        reconnection.attempt_expires = now + max(
            MIN_ATTEMPT_WAIT,
            min(reconnection.deadline, now + reconnection.attempt_timeout) - now,
        )
        if early_uplink:
            # The kept frames travel in 0-RTT; they stay kept until the session resumes, so
            # a failed attempt's successor sends them again.
            link.early = []
            for frame in self._kept:
                self._actions.append(SendAudio(link=link.id, frame=frame))

    def handle_link_open_failed(self, link_id: LinkId, now: float, reason: str) -> None:
        """``OpenLink`` failed: its local address cannot be bound."""
        link = self._links.get(link_id)
        if link is None:
            return
        reconnection = self._reconnection
        if reconnection is not None and reconnection.attempt is link:
            wildcard = self.config.wildcard
            if link.host != wildcard:
                # The address we last used is gone (its interface vanished): let the kernel
                # pick whatever interface remains.
                self._local_host = reconnection.host_measured = wildcard
                reconnection.attempt_timeout = max(
                    reconnection.attempt_timeout, NEW_PATH_ATTEMPT_TIMEOUT
                )
                link.host, link.port = wildcard, 0
                link.paths.clear()
                self._open_path_of(link, now)
                return
            self._attempt_failed(now, refused=False, why=f"cannot bind: {reason}")
            return
        if link.role is LinkRole.OPENING:
            self._forget(link)
            self._open_failure = SessionClosed(
                error_code=int(ErrorCode.INTERNAL_ERROR), reason=f"cannot bind: {reason}"
            )
            self._ended = True

    def handle_path_opened(
        self, link_id: LinkId, path_id: PathId, local_address: Address, now: float
    ) -> None:
        """``OpenPath`` succeeded: the link now sends from ``local_address``."""
        link = self._links.get(link_id)
        if link is None:
            return
        old = link.paths.get(link.active_path) if link.active_path is not None else None
        last_on_old = (old.last_receive if old is not None else 0.0) or now
        link.paths[path_id] = _Path(path_id, local_address=local_address)
        link.active_path = path_id
        recovery = self._recovery
        if recovery is not None and recovery.path == path_id:
            self._local_host = local_address[0]
            recovery.last_on_old = last_on_old
            recovery.expires = now + NEW_PATH_ATTEMPT_TIMEOUT
            return
        for request in self._requests.values():
            if request.path == path_id:
                self._local_host = request.host
                request.last_on_old = last_on_old
                request.deadline = now + request.timeout
                return

    def handle_path_failed(self, link_id: LinkId, path_id: PathId, now: float, reason: str) -> None:
        """``OpenPath`` failed: no socket could be bound."""
        recovery = self._recovery
        if recovery is not None and recovery.path == path_id:
            logger.info("no socket on the remaining network (%s): reconnecting", reason)
            self._recovery_failed(now, "no socket on the remaining network")
            return
        for request in list(self._requests.values()):
            if request.path == path_id:
                self._finish_migration(request, None, f"cannot bind {request.host}: {reason}")

    def handle_datagrams_sent(self, link_id: LinkId, now: float) -> None:
        """``link`` sent at least one datagram at ``now``."""
        link = self._links.get(link_id)
        if link is None:
            return
        link.last_send = now
        if link.unanswered_since is None:
            link.unanswered_since = now
        elif link is self._watched():
            self._judge_if_silent(link)

    def handle_datagram_received(
        self,
        link_id: LinkId,
        path_id: PathId,
        now: float,
        *,
        uplink_acked: int | None = None,
        rtt: float | None = None,
    ) -> None:
        """A datagram (not a reset) was processed on ``link``'s socket ``path``.

        ``uplink_acked``: the uplink stream's offset acknowledged in order, if one is open;
        ``rtt``: the link's smoothed RTT in seconds, once measured.
        """
        link = self._links.get(link_id)
        if link is None:
            return
        link.last_receive = now
        link.unanswered_since = None
        if rtt is not None:
            link.rtt = rtt
        path = link.paths.get(path_id)
        if path is not None:
            path.last_receive = now
            if path.first_receive is None:
                path.first_receive = now
                self._first_on_path(link, path, now)
        if uplink_acked is not None and uplink_acked > link.uplink_acked:
            link.uplink_acked = uplink_acked
            if link.role is LinkRole.CARRYING and self._reconnection is None:
                self._prune_kept(link)
        reconnection = self._reconnection
        if (
            reconnection is not None
            and link is reconnection.old
            and self._heard_since(link, reconnection.started_at)
        ):
            if reconnection.awaiting_revival:
                self._restore(now)
            elif not reconnection.path_back:
                reconnection.path_back = True
                self._retry_now(reconnection, now)

    def handle_handshake_completed(
        self, link_id: LinkId, now: float, *, early_data_accepted: bool
    ) -> None:
        """``link``'s TLS handshake completed."""
        link = self._links.get(link_id)
        if link is not None:
            link.handshake_at = now
            link.early_data_accepted = early_data_accepted

    def handle_audio_written(self, link_id: LinkId, seq: int, stream_end: int) -> None:
        """A ``SendAudio`` frame is on ``link``'s uplink stream, ending at ``stream_end``."""
        link = self._links.get(link_id)
        if link is None:
            return
        if link.early is not None and link.role is LinkRole.ATTEMPT:
            frame = next((f for f in self._kept if f.seq == seq), None)
            if frame is not None:
                link.early.append(replace(frame, stream_end=stream_end))
            return
        if link is not self._carrying:
            return
        kept = self._kept
        for index in range(len(kept) - 1, -1, -1):
            if kept[index].seq == seq:
                kept[index] = replace(kept[index], stream_end=stream_end)
                return

    def handle_voice_event(self, link_id: LinkId, event: VoiceEvent, now: float) -> None:
        """The voice layer of ``link`` reported ``event``."""
        link = self._links.get(link_id)
        if link is None:
            return
        if isinstance(event, SessionClosed):
            link.ended = True
        role = link.role
        if role is LinkRole.QUIET:
            if len(self._quiet_events) < MAX_QUIET_EVENTS:
                self._quiet_events.append(event)  # delivered if it comes back
            return
        if role is LinkRole.ATTEMPT:
            self._on_attempt_event(link, event, now)
            return
        if role is LinkRole.OPENING:
            if isinstance(event, SessionStarted):
                link.welcome_at = now
                link.role = LinkRole.CARRYING
                self._session = event
                return
            if isinstance(event, SessionClosed):
                self._forget(link)
                self._open_failure = event
                self._ended = True
                return
        if role is LinkRole.CARRYING:
            self._on_carrying_event(link, event, now)

    def handle_stateless_reset(self, link_id: LinkId, now: float) -> None:
        """A stateless reset arrived for ``link``: its backend has no such connection."""
        link = self._links.get(link_id)
        if link is None:
            return
        link.reset = True
        reconnection = self._reconnection
        if reconnection is not None and (link is reconnection.old or link.dcid is not None):
            # The backend that held the session lost it (or the forwarder says it is down):
            # from now on any backend, through the shared store.
            self._leave_home(reconnection, "stateless reset")
        if link.role is LinkRole.ATTEMPT:
            # A resume attempt's backend has no such connection: try the next one at once.
            self._attempt_failed(now, refused=False, why="stateless reset")
        elif link.role is LinkRole.OPENING:
            self._close_link(link, goodbye=False)
            self._open_failure = SessionClosed(
                error_code=int(ErrorCode.NO_ERROR), reason="stateless reset"
            )
            self._ended = True
        elif link.role is LinkRole.CARRYING and not self.ended:
            if self._should_resume(None):
                self._begin_reconnect("stateless reset: the backend lost the connection", now)
            else:
                self._close_link(link, goodbye=False)
                self._end(
                    SessionClosed(error_code=int(ErrorCode.NO_ERROR), reason="stateless reset")
                )

    def handle_send_error(
        self, link_id: LinkId, path_id: PathId, error_number: int, now: float
    ) -> None:
        """A send from ``link``'s socket ``path`` failed with ``error_number``."""
        link = self._links.get(link_id)
        reconnection = self._reconnection
        if (
            error_number == errno.ECONNREFUSED
            and link is not None
            and reconnection is not None
            and link is reconnection.attempt
        ):
            # ICMP port unreachable: nothing listens where the attempt went.
            if link.dcid is not None:
                self._leave_home(reconnection, "ICMP port unreachable")
            self._attempt_failed(now, refused=False, why="port unreachable")
            return
        if (
            link is None
            or error_number not in PATH_GONE_ERRORS
            or link is not self._current
            or path_id != link.active_path
        ):
            return
        address = link.paths[path_id].local_address
        where = format_address(address) if address is not None else "?"
        self._begin_path_recovery(
            f"sending from {where}: {errno.errorcode.get(error_number, error_number)}", now
        )

    def handle_local_address_checked(self, link_id: LinkId, vanished: bool, now: float) -> None:
        """The answer to ``CheckLocalAddress``."""
        link = self._judging
        if link is None or link.id != link_id:
            return
        self._judging = None
        reason = self._judging_reason
        if link is not self._carrying or link.role is not LinkRole.CARRYING:
            return
        if vanished:
            self._begin_path_recovery(f"{reason}; the local address is gone", now)
        else:
            self._begin_reconnect(reason, now)

    # -- timers --------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When ``handle_timer`` is due next, or ``None``."""
        times: list[float] = []
        liveness = self._liveness_due()
        if liveness is not None:
            times.append(liveness)
        reconnection = self._reconnection
        if reconnection is not None:
            if reconnection.attempt is not None:
                times.append(reconnection.attempt_expires)
            elif reconnection.next_attempt_at is not None:
                times.append(reconnection.next_attempt_at)
            elif reconnection.awaiting_revival:
                times.append(reconnection.deadline)
            if self._probes_quiet(reconnection):
                times.append(reconnection.last_quiet_probe + self._quiet_probe_interval)
        recovery = self._recovery
        if recovery is not None and recovery.expires is not None:
            times.append(recovery.expires)
        times.extend(r.deadline for r in self._requests.values() if r.deadline is not None)
        times.extend(at for at, _, _ in self._lingers)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Do what is due at ``now``."""
        if self._lingers:
            due = [item for item in self._lingers if item[0] <= now]
            self._lingers = [item for item in self._lingers if item[0] > now]
            for _, link, path in due:
                if link.role is not LinkRole.CLOSED and path in link.paths:
                    del link.paths[path]
                    self._actions.append(ClosePath(link=link.id, path=path))
        for request in list(self._requests.values()):
            if request.deadline is not None and now >= request.deadline:
                self._migration_timed_out(request, now)
        recovery = self._recovery
        if recovery is not None and recovery.expires is not None and now >= recovery.expires:
            logger.info("no answer on the remaining network: reconnecting")
            self._recovery_failed(now, "no answer after moving the connection")
        reconnection = self._reconnection
        if reconnection is not None:
            if reconnection.attempt is not None and now >= reconnection.attempt_expires:
                attempt = reconnection.attempt
                limit = min(
                    reconnection.deadline,
                    reconnection.attempt_began
                    + max(reconnection.attempt_timeout, ANSWERED_ATTEMPT_TIMEOUT),
                )
                if not reconnection.attempt_extended and attempt.last_receive > 0 and now < limit:
                    reconnection.attempt_extended = True
                    reconnection.attempt_expires = limit
                else:
                    self._attempt_failed(now, refused=False, why="no welcome in time")
            elif reconnection.next_attempt_at is not None and now >= reconnection.next_attempt_at:
                reconnection.next_attempt_at = None
                if now < reconnection.deadline:
                    self._start_attempt(now)
                else:
                    self._attempts_over(now)
            elif reconnection.awaiting_revival and now >= reconnection.deadline:
                self._give_up(now)
        reconnection = self._reconnection
        if (
            reconnection is not None
            and self._probes_quiet(reconnection)
            and now >= reconnection.last_quiet_probe + self._quiet_probe_interval
        ):
            reconnection.last_quiet_probe = now
            self._actions.append(SendPing(link=reconnection.old.id))
        self._check_liveness(now)

    # -- liveness ------------------------------------------------------------------------

    def _watched(self) -> _Link | None:
        link = self._carrying
        if (
            not self.config.reconnect
            or link is None
            or link.role is not LinkRole.CARRYING
            or self._reconnection is not None
            or self._recovery is not None
            or self._judging is not None
            or self.ended
            or link.last_receive == 0.0
        ):
            return None
        return link

    def _liveness_due(self) -> float | None:
        link = self._watched()
        if link is None or link.unanswered_since is None:
            return None
        return self._probe_due(link, link.unanswered_since)

    def _probe_due(self, link: _Link, unanswered: float) -> float:
        timeout = self.config.liveness_timeout
        return max(unanswered + PROBE_AFTER * timeout, link.last_probe + PROBE_INTERVAL * timeout)

    def _check_liveness(self, now: float) -> None:
        """Probe a send unanswered for a while (the silence is judged when a send goes out:
        ``handle_datagrams_sent``)."""
        link = self._watched()
        if link is None or link.unanswered_since is None:
            return
        if now >= self._probe_due(link, link.unanswered_since):
            # Probe a silence instead of judging it on loss recovery's few, backed-off
            # retransmissions: a frame or two lost each way in a quiet moment (10 % loss
            # at 200 ms RTT) would otherwise look like a second of silence.
            link.last_probe = now
            self._actions.append(SendPing(link=link.id))

    def _judge_if_silent(self, link: _Link) -> None:
        """Sending for longer than the timeout with nothing heard: dead, or its network gone
        (the shell says which: ``CheckLocalAddress``)."""
        unanswered = link.unanswered_since
        if unanswered is None:
            return
        silent = link.last_send - unanswered
        if silent > self.config.liveness_timeout:
            self._judging = link
            self._judging_reason = f"nothing heard for {silent:.2f} s while sending"
            address = link.active_address
            self._actions.append(
                CheckLocalAddress(link=link.id, host=address[0] if address else "")
            )

    # -- the network under the call went away --------------------------------------------

    def _begin_path_recovery(self, reason: str, now: float) -> None:
        link = self._carrying
        if (
            self._recovery is not None
            or self._reconnection is not None
            or self.ended
            or link is None
            or link.role is not LinkRole.CARRYING
            or self._session is None
        ):
            return
        logger.info("path lost (%s): migrating to the remaining network", reason)
        path = self._new_path_id()
        self._recovery = _Recovery(reason=reason, link=link, path=path, old_path=link.active_path)
        self._actions.append(
            OpenPath(link=link.id, path=path, host=None, port=0, new_connection_id=True)
        )

    def _recovery_failed(self, now: float, why: str) -> None:
        recovery = self._recovery
        if recovery is None:
            return
        self._recovery = None
        link = recovery.link
        if link is self._carrying and link.role is LinkRole.CARRYING:
            self._begin_reconnect(f"{recovery.reason}; {why}", now)
        self._after_recovery(now)

    def _first_on_path(self, link: _Link, path: _Path, now: float) -> None:
        recovery = self._recovery
        if recovery is not None and recovery.link is link and recovery.path == path.id:
            self._recovery = None
            old = link.paths.pop(recovery.old_path, None) if recovery.old_path is not None else None
            if old is not None:
                self._actions.append(ClosePath(link=link.id, path=old.id))
            migration = Migration(
                from_address=format_address(
                    old.local_address if old and old.local_address else ("", 0)
                ),
                to_address=format_address(path.local_address or ("", 0)),
                gap_ms=(now - recovery.last_on_old) * 1000,
            )
            self._migrations.append(migration)
            self._moved_by_itself = migration
            self._after_recovery(now)
            return
        for request in list(self._requests.values()):
            if request.path == path.id and request.link is link:
                rtt = link.rtt or 0.0
                if request.old_path is not None:
                    self._lingers.append(
                        (now + max(1.5 * rtt, MIN_OLD_PATH_LINGER), link, request.old_path)
                    )
                old = link.paths.get(request.old_path) if request.old_path is not None else None
                migration = Migration(
                    from_address=format_address(
                        old.local_address if old and old.local_address else ("", 0)
                    ),
                    to_address=format_address(path.local_address or ("", 0)),
                    gap_ms=(now - request.last_on_old) * 1000,
                )
                self._migrations.append(migration)
                self._finish_migration(request, migration, None)

    def _after_recovery(self, now: float) -> None:
        for request in list(self._requests.values()):
            if request.phase is _MigrationPhase.AFTER_RECOVERY:
                self._proceed_migration(request, now)

    # -- migrate() -----------------------------------------------------------------------

    def _proceed_migration(self, request: _MigrationRequest, now: float) -> None:
        moved, self._moved_by_itself = self._moved_by_itself, None
        link = self._carrying
        active = link.active_address if link is not None else None
        if (
            moved is not None
            and active is not None
            and (request.host, request.port) == (active[0], 0)
            and self._migrations
            and self._migrations[-1] is moved
        ):
            self._finish_migration(request, moved, None)  # already moved there by itself
            return
        if self._reconnection is not None:
            # The connection is being re-established: the next attempts start from there.
            request.phase = _MigrationPhase.AFTER_RECONNECT
            request.previous_host = self._local_host
            self._local_host = request.host
            request.started = now
            request.deadline = now + max(request.timeout, self.config.reconnect_timeout)
            return
        if link is None or link.role is not LinkRole.CARRYING or link.active_path is None:
            self._finish_migration(request, None, "the call has no socket to migrate from")
            return
        request.phase = _MigrationPhase.AWAITING_ANSWER
        request.link = link
        request.old_path = link.active_path
        request.path = self._new_path_id()
        request.deadline = now + request.timeout
        self._actions.append(
            OpenPath(
                link=link.id,
                path=request.path,
                host=request.host,
                port=request.port,
                new_connection_id=request.new_connection_id,
            )
        )

    def _migration_timed_out(self, request: _MigrationRequest, now: float) -> None:
        waited = max(request.timeout, self.config.reconnect_timeout)
        messages = {
            _MigrationPhase.AFTER_RECOVERY: f"still moving the call after {request.timeout} s",
            _MigrationPhase.AFTER_RECONNECT: f"not reconnected within {waited:g} s",
            _MigrationPhase.AWAITING_ANSWER: (
                f"no answer on the new path within {request.timeout} s"
            ),
        }
        self._finish_migration(request, None, messages[request.phase])

    def _after_reconnection(self, now: float) -> None:
        for request in list(self._requests.values()):
            if request.phase is not _MigrationPhase.AFTER_RECONNECT:
                continue
            link = self._carrying
            address = link.active_address if link is not None else None
            if link is None or link.role is not LinkRole.CARRYING or address is None:
                self._finish_migration(request, None, "the call could not be resumed")
                continue
            migration = Migration(
                from_address=format_address((request.previous_host, 0)),
                to_address=format_address(address),
                gap_ms=(now - request.started) * 1000,
            )
            self._migrations.append(migration)
            self._finish_migration(request, migration, None)

    def _finish_migration(
        self, request: _MigrationRequest, migration: Migration | None, error: str | None
    ) -> None:
        if self._requests.pop(request.id, None) is None:
            return
        self._actions.append(
            MigrationFinished(request=request.id, migration=migration, error=error)
        )

    # -- reconnection --------------------------------------------------------------------

    def _should_resume(self, event: SessionClosed | None) -> bool:
        """Resume after a reset or a silent death, never after the peer closed on purpose."""
        transport_death = event is None or event.reason == IDLE_TIMEOUT_REASON
        session = self._session
        return (
            transport_death
            and self.config.reconnect
            and not self.ended
            and session is not None
            and session.resume_token is not None
        )

    def _begin_reconnect(self, reason: str, now: float) -> None:
        old = self._carrying
        before = self._session
        if (
            self._reconnection is not None
            or self.ended
            or old is None
            or old.role is not LinkRole.CARRYING
            or before is None
            or before.resume_token is None
        ):
            return
        self._recovery = None
        self._judging = None
        logger.info("reconnecting: %s", reason)
        self._prune_kept(old)
        # A connection that only went quiet (an overloaded backend, a short blackout) is kept
        # open meanwhile, its loss probes going on: if no resume succeeds and it comes back,
        # the call carries on where it was. A reset connection is gone for good.
        old_may_revive = not old.reset
        if old_may_revive:
            old.role = LinkRole.QUIET
        else:
            self._drop(old)
        rtt = old.rtt or DEFAULT_RTT
        self._reconnection = _Reconnection(
            reason=reason,
            started_at=now,
            before=before,
            old=old,
            old_may_revive=old_may_revive,
            deadline=now + self.config.reconnect_timeout,
            attempt_timeout=max(MIN_ATTEMPT_TIMEOUT, ATTEMPT_RTTS * rtt),
            host_measured=self._local_host,
            # A reset says the backend lost the connection (restarted, or gone): any backend.
            home_cid=before.home_cid if old_may_revive else None,
            last_quiet_probe=now,
        )
        self._start_attempt(now)
        self._after_recovery(now)  # a migrate() waiting on a recovery now waits on this

    def _start_attempt(self, now: float) -> None:
        reconnection = self._reconnection
        assert reconnection is not None
        reconnection.attempts += 1
        if self._local_host != reconnection.host_measured:
            # migrate() moved us to another network: the old RTT says nothing about it.
            reconnection.host_measured = self._local_host
            reconnection.attempt_timeout = max(
                reconnection.attempt_timeout, NEW_PATH_ATTEMPT_TIMEOUT
            )
        before = reconnection.before
        hello = replace(self._hello, codecs=(before.codec,), resume_token=before.resume_token)
        link = self._new_link(
            LinkRole.ATTEMPT, hello, (self._local_host, 0), dcid=self._attempt_dcid(now)
        )
        link.opened_at = now
        self._current = link
        reconnection.attempt = link
        reconnection.attempt_extended = False
        reconnection.attempt_began = now
        reconnection.attempt_expires = now + max(
            MIN_ATTEMPT_WAIT, min(reconnection.deadline, now + reconnection.attempt_timeout) - now
        )

    def _on_attempt_event(self, link: _Link, event: VoiceEvent, now: float) -> None:
        reconnection = self._reconnection
        if reconnection is None or reconnection.attempt is not link:
            return
        if isinstance(event, SessionStarted):
            link.welcome_at = now
            self._resumed(link, event, now)
        elif isinstance(event, SessionClosed):
            refused = is_definite_refusal(event.error_code)
            self._attempt_failed(
                now, refused=refused, why=f"closed: {event.reason} ({event.error_code:#x})"
            )
        # Anything else before ``welcome`` (an ``error`` explaining a refusal) belongs to an
        # attempt that does not carry the call: the app does not see it.

    @property
    def _quiet_probe_interval(self) -> float:
        return PROBE_INTERVAL * self.config.liveness_timeout

    def _probes_quiet(self, reconnection: _Reconnection) -> bool:
        """Whether the quiet connection is probed: until it answers, it tells when the path
        is back sooner than loss recovery's backed-off retransmissions would."""
        old = reconnection.old
        return (
            reconnection.old_may_revive
            and not reconnection.path_back
            and old.role is LinkRole.QUIET
            and not old.reset
            and not old.ended
        )

    def _attempt_dcid(self, now: float) -> bytes | None:
        """Where the next attempt's first flight goes: home (its CID), or any backend."""
        reconnection = self._reconnection
        assert reconnection is not None
        home = reconnection.home_cid
        if home is None or reconnection.home_next or reconnection.path_back:
            reconnection.home_next = False
            return home
        if now - reconnection.started_at < HOME_ONLY_PERIOD:
            return home
        return home if reconnection.attempts % HOME_EVERY == 0 else None

    def _leave_home(self, reconnection: _Reconnection, why: str) -> None:
        if reconnection.home_cid is not None:
            logger.info("resuming on any backend from now on: %s", why)
            reconnection.home_cid = None

    def _retry_now(self, reconnection: _Reconnection, now: float) -> None:
        """The quiet connection answered, so the path is back: an attempt sent into the
        blackout (its first flight lost, its retransmissions backed off) or one waiting out
        its back-off is replaced by a new attempt now."""
        attempt = reconnection.attempt
        if attempt is not None:
            if (
                attempt.last_receive > 0
                or reconnection.attempt_began >= reconnection.last_quiet_probe
            ):
                return  # its backend answers, or it left after the probe that was answered
            reconnection.attempt = None
            self._close_link(attempt, goodbye=not attempt.reset)
            reconnection.may_have_taken_over = True
        elif reconnection.next_attempt_at is None:
            return
        reconnection.next_attempt_at = None
        if now < reconnection.deadline:
            self._start_attempt(now)

    def _attempt_failed(self, now: float, *, refused: bool, why: str) -> None:
        reconnection = self._reconnection
        if reconnection is None or reconnection.attempt is None:
            return
        attempt = reconnection.attempt
        reconnection.attempt = None
        logger.info("resume attempt %d failed: %s", reconnection.attempts, why)
        # Say goodbye: a backend still loading the session for this attempt then leaves it
        # where it is instead of claiming it for a connection nobody uses.
        self._close_link(attempt, goodbye=not attempt.reset)
        reconnection.may_have_taken_over = reconnection.may_have_taken_over or not refused
        if (
            reconnection.old_may_revive
            and not reconnection.may_have_taken_over
            and self._heard_since(reconnection.old, reconnection.started_at)
        ):
            self._restore(now)
            return
        if refused and attempt.dcid is None and reconnection.home_cid is not None:
            # Another backend answered without the session: the path works, so the home
            # backend gets the next attempt, at once.
            reconnection.refused_elsewhere_at = now
            reconnection.home_next = True
            if now < reconnection.deadline:
                self._start_attempt(now)
            else:
                self._attempts_over(now)
            return
        if refused:
            self._attempts_over(now)
            return
        refused_at = reconnection.refused_elsewhere_at
        if (
            attempt.dcid is not None
            and refused_at is not None
            and reconnection.attempt_began >= refused_at
        ):
            self._leave_home(reconnection, "the home backend did not answer on a working path")
        reconnection.next_attempt_at = now + reconnection.backoff
        if attempt.dcid is not None:
            return  # home may be dead, which says nothing of the path: keep the fast attempts
        reconnection.counted_failures += 1
        reconnection.backoff = min(2 * reconnection.backoff, RECONNECT_BACKOFF_MAX)
        if reconnection.counted_failures >= FAST_ATTEMPTS:
            # Not just an unlucky hash onto the dead backend: the path may be slow.
            reconnection.attempt_timeout = min(
                2 * reconnection.attempt_timeout, RECONNECT_BACKOFF_MAX * 2
            )

    def _attempts_over(self, now: float) -> None:
        reconnection = self._reconnection
        assert reconnection is not None
        old = reconnection.old
        if reconnection.old_may_revive and not reconnection.may_have_taken_over:
            if self._heard_since(old, reconnection.started_at):
                self._restore(now)
                return
            if (
                old.role is LinkRole.QUIET
                and not old.reset
                and not old.ended
                and (now < reconnection.deadline)
            ):
                reconnection.awaiting_revival = True  # until the deadline
                return
        self._give_up(now)

    def _give_up(self, now: float) -> None:
        reconnection = self._reconnection
        assert reconnection is not None
        if reconnection.old_may_revive:
            self._drop(reconnection.old)
        self._reconnection = None
        self._end(
            SessionClosed(
                error_code=int(ErrorCode.INTERNAL_ERROR),
                reason=f"{reconnection.reason}; could not resume the session",
            )
        )
        self._after_reconnection(now)

    def _resumed(self, link: _Link, started: SessionStarted, now: float) -> None:
        reconnection = self._reconnection
        assert reconnection is not None
        reconnection.attempt = None
        self._session = started
        link.role = LinkRole.CARRYING
        link.turn_base = self._next_turn
        self._carrying = self._current = link
        self._reconnection = None
        resent = self._adopt_early(link) if link.early else self._resend_kept()
        link.early = None
        resumption = Resumption(
            from_server=reconnection.before.server_id,
            to_server=started.server_id,
            gap_ms=(now - reconnection.started_at) * 1000,
            frames_resent=resent,
            declared_dead_at=reconnection.started_at,
            reason=reconnection.reason,
            attempts=reconnection.attempts,
            handshake_ms=(link.handshake_at - link.opened_at) * 1000,
            resume_ms=(link.welcome_at - link.handshake_at) * 1000,
            zero_rtt=link.early_data_accepted,
        )
        self._resumptions.append(resumption)
        self._carry_on(link)
        if reconnection.old_may_revive:
            self._drop(reconnection.old)
        self._deliver(
            SessionResumed(
                session_id=started.session_id,
                server_id=started.server_id,
                gap_ms=resumption.gap_ms,
                reason=reconnection.reason,
            )
        )
        self._after_reconnection(now)

    def _restore(self, now: float) -> None:
        """The quiet connection answered again: carry on on it, sending the frames captured
        meanwhile (those it had sent, it retransmits itself)."""
        reconnection = self._reconnection
        assert reconnection is not None
        old = reconnection.old
        logger.info("connection heard from again after %s: no resume needed", reconnection.reason)
        if reconnection.attempt is not None:
            self._close_link(reconnection.attempt, goodbye=not reconnection.attempt.reset)
        self._reconnection = None
        old.role = LinkRole.CARRYING
        self._carrying = self._current = old
        events, self._quiet_events = self._quiet_events, []
        for event in events:
            self.handle_voice_event(old.id, event, now)
        captured_meanwhile = [frame for frame in self._kept if frame.stream_end is None]
        self._kept = deque(frame for frame in self._kept if frame.stream_end is not None)
        for frame in captured_meanwhile:
            self._send_now(frame)
        self._carry_on(old)
        self._after_reconnection(now)

    def _carry_on(self, link: _Link) -> None:
        """A connection took the call over: what the app did meanwhile goes out on it."""
        if self._audio_ended:
            self._actions.append(EndAudio(link=link.id))
        held, self._held = self._held, []
        for item in held:
            self._send_or_hold(item)

    def _adopt_early(self, link: _Link) -> int:
        """The session resumed: frames sent in 0-RTT are now the ones kept (new offsets)."""
        early = link.early or []
        sent = {frame.seq for frame in early}
        captured_meanwhile = [frame for frame in self._kept if frame.seq not in sent]
        self._kept = deque(early)
        for frame in captured_meanwhile:
            self._send_now(replace(frame, stream_end=None))
        return len(early) + len(captured_meanwhile)

    def _resend_kept(self) -> int:
        frames = list(self._kept)
        self._kept.clear()
        for frame in frames:
            self._send_now(replace(frame, stream_end=None))
        return len(frames)

    # -- frames, events, links -----------------------------------------------------------

    def _send_now(self, frame: KeptFrame) -> None:
        link = self._carrying
        assert link is not None
        session = self._session
        if session is not None and session.uplink is UplinkMode.RELIABLE:
            self._keep(frame)  # its offset arrives with handle_audio_written
        self._actions.append(SendAudio(link=link.id, frame=frame))

    def _keep(self, frame: KeptFrame) -> None:
        if len(self._kept) >= MAX_KEPT_FRAMES:
            self._kept.popleft()
            self._frames_dropped += 1
        self._kept.append(frame)

    def _prune_kept(self, link: _Link) -> None:
        kept = self._kept
        acked = link.uplink_acked
        while kept and kept[0].stream_end is not None and kept[0].stream_end <= acked:
            kept.popleft()

    def _send_or_hold(self, item: _HeldEvent | _HeldBye) -> None:
        if self._reconnection is not None:
            if len(self._held) >= MAX_HELD_EVENTS:
                raise CallReconnectingError("too many events held while the call reconnects")
            self._held.append(item)
            return
        link_id = self._carrying_id()
        if isinstance(item, _HeldEvent):
            self._actions.append(SendEvent(link=link_id, name=item.name, data=item.data))
        else:
            self._actions.append(SendBye(link=link_id, uplink_frames=item.uplink_frames))

    def _on_carrying_event(self, link: _Link, event: VoiceEvent, now: float) -> None:
        if isinstance(event, SessionStarted) or self._ended:
            return  # nothing follows the end of the call
        if isinstance(event, SessionClosed):
            if self._should_resume(event):
                self._begin_reconnect(f"connection closed: {event.reason or event.error_code}", now)
                return
            self._end(event)
            return
        client_event = self._client_event(link, event)
        if client_event is not None:
            self._deliver(client_event)

    def _client_event(self, link: _Link, event: VoiceEvent) -> ClientEvent | None:
        """``event`` with the client's turn ID (unique over the call) for the server's."""
        if isinstance(event, AudioReceived):
            if event.turn_id is None or link.turn_base == 0:
                return event
            return replace(event, turn_id=event.turn_id + link.turn_base)
        if isinstance(event, TurnStarted | TurnEnded | TurnCancelled):
            turn_id = event.turn_id + link.turn_base
            if isinstance(event, TurnStarted):
                self._remember_turn(turn_id, link, event.turn_id)
            else:
                self._open_turns.discard(turn_id)
            return event if link.turn_base == 0 else replace(event, turn_id=turn_id)
        if isinstance(event, ClientEvent):
            return event
        return None  # a server-side event cannot reach a client

    def _remember_turn(self, turn_id: int, link: _Link, wire: int) -> None:
        self._turns[turn_id] = (link, wire)
        self._open_turns.add(turn_id)
        self._next_turn = max(self._next_turn, turn_id + 1)
        while len(self._turns) > MAX_REMEMBERED_TURNS:
            old, _ = self._turns.popitem(last=False)
            self._open_turns.discard(old)

    def _deliver(self, event: ClientEvent) -> None:
        self._actions.append(DeliverEvent(event=event))

    def _end(self, event: SessionClosed) -> None:
        self._ended = True
        self._deliver(event)

    def _require_active(self, what: str) -> SessionStarted:
        session = self._session
        if self.ended or session is None:
            raise CallEndedError(f"cannot {what}: the call has ended")
        return session

    def _carrying_id(self) -> LinkId:
        link = self._carrying
        assert link is not None
        return link.id

    def _heard_since(self, link: _Link, moment: float) -> bool:
        """Whether ``link`` is alive: a packet (not a reset) processed after ``moment``."""
        return (
            link.role is not LinkRole.CLOSED
            and not link.reset
            and not link.ended
            and link.last_receive > moment
        )

    def _new_path_id(self) -> PathId:
        self._next_path += 1
        return self._next_path

    def _new_link(
        self,
        role: LinkRole,
        hello: Hello,
        local_address: Address,
        *,
        dcid: bytes | None = None,
    ) -> _Link:
        link = _Link(
            id=self._next_link,
            role=role,
            hello=hello,
            host=local_address[0],
            port=local_address[1],
            dcid=dcid,
        )
        self._next_link += 1
        self._links[link.id] = link
        self._open_path_of(link, 0.0)
        return link

    def _open_path_of(self, link: _Link, now: float) -> None:
        path = self._new_path_id()
        link.paths[path] = _Path(path)
        link.active_path = path
        self._actions.append(
            OpenLink(
                link=link.id,
                path=path,
                host=link.host,
                port=link.port,
                hello=link.hello,
                dcid=link.dcid,
            )
        )

    def _close_link(
        self, link: _Link, *, goodbye: bool, error_code: int = 0, reason: str = ""
    ) -> None:
        if link.role is LinkRole.CLOSED:
            return
        link.role = LinkRole.CLOSED
        self._links.pop(link.id, None)
        self._lingers = [item for item in self._lingers if item[1] is not link]
        self._actions.append(
            CloseLink(link=link.id, goodbye=goodbye, error_code=error_code, reason=reason)
        )

    def _drop(self, link: _Link) -> None:
        """Give ``link`` up for good (goodbye, should it still get through: its backend then
        ends the stale session now rather than at the idle timeout)."""
        if link.role is LinkRole.QUIET:
            self._quiet_events.clear()
        self._close_link(link, goodbye=not link.reset)

    def _forget(self, link: _Link) -> None:
        self._close_link(link, goodbye=False)
