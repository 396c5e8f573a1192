"""The client library: ``async with connect(...) as call`` for native and mobile apps.

The client owns its UDP sockets, so it can move the connection to another local address
mid-call (``migrate``): it binds a new socket, switches to a fresh connection ID from the
server's pool (RFC 9000 §9.5), sends from the new socket at once, and keeps the old one open
for about one RTT so that nothing already in flight towards it is lost (make-before-break).

When the network under the call vanishes without warning (the app has not called
``migrate`` yet, the kernel refuses to send from the old address), the client moves the live
connection by itself to whatever network the kernel now routes through, with a fresh CID, and
``migrate()`` to that network later just reports that move.

When the connection itself dies (its backend is gone: a stateless reset, or nothing heard for
``liveness_timeout`` while sending), the client reconnects to the same address and resumes the
session with the token from ``welcome``. Uplink frames the dead connection never got
acknowledged, and those captured during the gap, are kept and sent on the new connection, so
no speech is lost.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, cast

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import HandshakeCompleted
from aioquic.tls import SessionTicket

from ..errors import CertificateVerificationError, SessionRefusedError
from ..happy_eyeballs import DEFAULT_ATTEMPT_DELAY
from ..quic import (
    VoiceQuicConnection,
    can_send_early_data,
    check_aioquic_version,
    peer_reset_tokens,
    stream_send_offsets,
)
from ..session.codes import ErrorCode
from ..session.connection import SessionLimits, VoiceConnection
from ..session.events import (
    AudioReceived,
    ByeReceived,
    EventReceived,
    SessionClosed,
    SessionResumed,
    SessionStarted,
    TurnCancelled,
    TurnEnded,
    TurnStarted,
    VoiceEvent,
)
from ..session.messages import Hello, UplinkMode, codec_clock_rate
from ..session.playout import PlayedTurn, PlayoutBuffer
from ..session.stats import Migration, SessionStats
from ..session.transport import (
    ALPN_H3,
    ALPN_VOICE,
    WEBTRANSPORT_PATH,
    RawQuicTransport,
    VoiceTransport,
    WebTransportTransport,
)
from ..settings import Address, format_address
from ..urls import dial_target
from .dial import (
    client_configuration,
    race,
    request_authority,
    resolve,
    tls_settings,
    usable_addresses,
)
from .timer import ConnectionTimer
from .udp import bind_udp_socket

logger = logging.getLogger("quicvoice.client")

#: Clock rate assumed for a codec name without a usable rate (L16/16000's).
DEFAULT_CLOCK_RATE = 16000
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
#: Attempts made with that short timeout before it starts doubling.
FAST_ATTEMPTS = 4
#: The attempt timeout when the client has moved to another network meanwhile (its RTT there
#: is unknown): long enough for a handshake over a slow cellular link.
NEW_PATH_ATTEMPT_TIMEOUT = 1.5
#: How long an attempt the backend has answered may take in all: under load its handshake
#: and resume queue behind others, and abandoning it would only queue one more.
ANSWERED_ATTEMPT_TIMEOUT = 3.0
LIVENESS_CHECK_INTERVAL = 0.05
#: Once a send has gone unanswered this fraction of ``liveness_timeout``, PINGs probe the
#: connection every ``PROBE_INTERVAL`` of it, so a live peer has many chances to answer
#: before the connection is declared dead.
PROBE_AFTER = 0.25
PROBE_INTERVAL = 0.1
#: Events a quiet connection may deliver during a resume, kept in case it comes back.
MAX_QUIET_EVENTS = 10000
#: Application events the app may send while the call reconnects.
MAX_HELD_EVENTS = 1000
#: Send errors that mean the socket's network is gone (its address or route vanished), not
#: that the server is: the connection moves to whatever network remains.
PATH_GONE_ERRORS = frozenset({errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN})
#: Close codes by which a backend refused a resume without taking the session over.
DEFINITE_REFUSALS = frozenset({int(ErrorCode.RESUME_REFUSED), int(ErrorCode.UNSUPPORTED)})


class _ClientSocket(asyncio.DatagramProtocol):
    """One local UDP socket of the client; several exist during a migration."""

    def __init__(
        self,
        on_datagram: Callable[[bytes, Address, float], None],
        on_path_gone: Callable[[_ClientSocket, OSError], None],
    ) -> None:
        self._on_datagram = on_datagram
        self._on_path_gone = on_path_gone
        self.transport: asyncio.DatagramTransport | None = None
        self.local_address: Address = ("", 0)
        self.first_receive: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.last_receive = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        host, port = self.transport.get_extra_info("sockname")[:2]
        self.local_address = (host, port)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        now = asyncio.get_running_loop().time()
        self.last_receive = now
        if not self.first_receive.done():
            self.first_receive.set_result(now)
        # An IPv6 socket reports (host, port, flowinfo, scope_id); aioquic compares the
        # peer's address with the one it connected to, (host, port), so a 4-tuple would look
        # like a packet from another path and the handshake would never finish.
        self._on_datagram(data, (addr[0], addr[1]), now)

    def error_received(self, exc: Exception) -> None:
        # Unconnected UDP sockets get no ICMP errors on Linux: what arrives here is the
        # kernel refusing our own send, which is worth acting on when the network vanished.
        if isinstance(exc, OSError) and exc.errno in PATH_GONE_ERRORS:
            self._on_path_gone(self, exc)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass(frozen=True, slots=True)
class _KeptFrame:
    """An uplink frame kept until the server acknowledges it (or resent after a resume)."""

    seq: int
    timestamp: int
    payload: bytes
    #: Where the frame ends on the uplink stream; acknowledged once the peer's ACKs pass it.
    stream_end: int


class _Link:
    """One QUIC connection of the call, its voice session and its sockets."""

    def __init__(
        self,
        server: Address,
        configuration: QuicConfiguration,
        *,
        webtransport: bool,
        hello: Hello,
        limits: SessionLimits | None,
        authority: str,
        path: str,
        on_event: Callable[[_Link, VoiceEvent], None],
        on_reset: Callable[[_Link], None],
        on_ticket: Callable[[SessionTicket], None],
        on_path_gone: Callable[[_Link, _ClientSocket, OSError], None],
    ) -> None:
        self.server = server
        self.quic = VoiceQuicConnection(
            configuration=configuration, session_ticket_handler=on_ticket
        )
        transport: VoiceTransport = (
            WebTransportTransport(self.quic, path=path, authority=authority)
            if webtransport
            else RawQuicTransport(self.quic)
        )
        self.voice = VoiceConnection(transport, hello=hello, limits=limits)
        self._on_event = on_event
        self._on_reset = on_reset
        self._on_path_gone = on_path_gone
        self.sockets: list[_ClientSocket] = []
        self.active: _ClientSocket | None = None
        self.timer = ConnectionTimer(self.quic, self._on_timer)
        self._transmit_handle: asyncio.Handle | None = None
        self.started: asyncio.Future[SessionStarted] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.packets_sent = 0
        self.packets_received = 0
        self.last_send = 0.0
        #: When the first packet sent since the last one received went out (``None`` while
        #: nothing sent is unanswered): silence counts from there, not from the last receive,
        #: so a pause in sending is not mistaken for a dead peer.
        self.unanswered_since: float | None = None
        self.last_probe = 0.0
        self._probes = 0
        self.last_receive = 0.0
        #: Event-loop times of the first packet sent, the handshake's end and ``welcome``.
        self.started_at = 0.0
        self.handshake_at = 0.0
        self.welcome_at = 0.0
        #: Whether the server accepted what we sent in 0-RTT.
        self.early_data_accepted = False
        #: The peer reset the connection (it has no state for it), or the session ended.
        self.reset_received = False
        self.session_ended = False

    async def open_socket(self, local_address: Address) -> _ClientSocket:
        loop = asyncio.get_running_loop()
        sock = bind_udp_socket(local_address)
        _, protocol = await loop.create_datagram_endpoint(
            lambda: _ClientSocket(self._on_datagram, self._socket_path_gone), sock=sock
        )
        self.sockets.append(protocol)
        return protocol

    async def start(self, local_address: Address) -> None:
        self.active = await self.open_socket(local_address)
        self.started_at = asyncio.get_running_loop().time()
        self.quic.connect(self.server, now=self.started_at)
        if can_send_early_data(self.quic):
            self.voice.start_early()
        self.transmit()

    def _socket_path_gone(self, sock: _ClientSocket, error: OSError) -> None:
        if not self.closed and sock is self.active:
            self._on_path_gone(self, sock, error)

    def _on_datagram(self, data: bytes, addr: Address, now: float) -> None:
        if self.closed:
            return
        self.packets_received += 1
        if self._is_stateless_reset(data):
            self.reset_received = True
            self._on_reset(self)
            return
        self.last_receive = now
        self.unanswered_since = None
        self.quic.receive_datagram(data, addr, now)
        self.process_events(now)
        self.transmit()

    def _is_stateless_reset(self, data: bytes) -> bool:
        # RFC 9000 §10.3.1: a short-header-looking datagram of at least 21 octets whose last
        # 16 octets are a reset token the peer gave us.
        if len(data) < 21 or data[0] & 0x80:
            return False
        return data[-16:] in peer_reset_tokens(self.quic)

    def process_events(self, now: float) -> None:
        event = self.quic.next_event()
        while event is not None:
            if isinstance(event, HandshakeCompleted):
                self.handshake_at = now
                self.early_data_accepted = event.early_data_accepted
            for voice_event in self.voice.handle_event(event, now):
                if isinstance(voice_event, SessionStarted) and not self.started.done():
                    self.welcome_at = now
                    self.started.set_result(voice_event)
                elif isinstance(voice_event, SessionClosed):
                    self.session_ended = True
                    if not self.started.done():
                        self.started.set_exception(
                            SessionRefusedError(voice_event.error_code, voice_event.reason)
                        )
                self._on_event(self, voice_event)
            event = self.quic.next_event()

    def transmit_soon(self) -> None:
        if self._transmit_handle is None and not self.closed:
            self._transmit_handle = asyncio.get_running_loop().call_soon(self.transmit)

    def transmit(self) -> None:
        self._transmit_handle = None
        active = self.active
        if self.closed or active is None or active.transport is None:
            return
        now = asyncio.get_running_loop().time()
        for data, addr in self.quic.datagrams_to_send(now=now):
            self.packets_sent += 1
            self.last_send = now
            if self.unanswered_since is None:
                self.unanswered_since = now
            active.transport.sendto(data, addr)
        self.timer.update()

    def probe(self, now: float) -> None:
        """Send a PING: the peer answers it with an ACK."""
        if self.closed:
            return
        self._probes += 1
        self.quic.send_ping(self._probes)
        self.last_probe = now
        self.transmit()

    def _on_timer(self, now: float) -> None:
        self.quic.handle_timer(now)
        self.process_events(now)
        self.transmit()

    def retire_socket(self, sock: _ClientSocket) -> None:
        if sock is not self.active and sock in self.sockets:
            sock.close()
            self.sockets.remove(sock)

    def close(self, *, say_goodbye: bool) -> None:
        """Close the connection (with CONNECTION_CLOSE when ``say_goodbye``) and its sockets."""
        if self.closed:
            return
        if say_goodbye:
            self.quic.close()
            self.transmit()
        self.closed = True
        self.timer.cancel()
        if self._transmit_handle is not None:
            self._transmit_handle.cancel()
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()
        if not self.started.done():
            self.started.cancel()


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
    #: Event-loop time (seconds) when the old connection was declared dead.
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


class VoiceClient:
    """A voice call from the client side. Create it with ``connect()``."""

    def __init__(
        self,
        server: Address,
        configuration: QuicConfiguration,
        *,
        webtransport: bool,
        hello: Hello,
        limits: SessionLimits | None,
        authority: str,
        reconnect: bool,
        liveness_timeout: float,
        reconnect_timeout: float,
        path: str = WEBTRANSPORT_PATH,
    ) -> None:
        self._server = server
        self._configuration = configuration
        self._webtransport = webtransport
        self._hello = hello
        self._limits = limits
        self._authority = authority
        self._path = path
        self._ticket: SessionTicket | None = None
        self._reconnect = reconnect
        self._liveness_timeout = liveness_timeout
        self._reconnect_timeout = reconnect_timeout
        self._link = self._new_link(hello)
        self._events: asyncio.Queue[VoiceEvent] = asyncio.Queue()
        self._peer_bye: int | None = None
        self._peer_bye_event = asyncio.Event()
        self._closed = asyncio.Event()
        self._close_reason = ""
        self._closing = False
        self._migrations: list[Migration] = []
        self._resumptions: list[Resumption] = []
        self._ping_id = 0
        self._packets_sent = 0
        self._packets_received = 0
        self._next_seq = 0
        self._kept: deque[_KeptFrame] = deque()
        self._frames_dropped = 0
        self._reconnecting: asyncio.Task[None] | None = None
        self._recovering: asyncio.Task[None] | None = None
        #: During a resume: the connection that went quiet, and what it delivered meanwhile.
        self._quiet_link: _Link | None = None
        self._quiet_events: list[VoiceEvent] = []
        #: Application events sent while reconnecting, sent once the session is back.
        self._held_events: list[tuple[str, Any]] = []
        #: The app finished the reliable uplink (``end_audio``): a connection that takes the
        #: call over (a resume, or the quiet one taken back) finishes it too.
        self._audio_ended = False
        #: The migration the client made by itself when its network vanished, until the
        #: app's own ``migrate()`` to that network takes it over.
        self._moved_by_itself: Migration | None = None
        self._liveness: asyncio.Task[None] | None = None
        self._local_host = "0.0.0.0"
        self.playout: PlayoutBuffer | None = None
        #: The session as the server accepted it (after a resume: the latest ``welcome``).
        self.session: SessionStarted | None = None
        self._samples_per_frame = 320
        self._clock_rate = DEFAULT_CLOCK_RATE

    # -- life cycle ----------------------------------------------------------------------

    def _new_link(self, hello: Hello) -> _Link:
        configuration = self._configuration
        if self._ticket is not None:
            configuration = replace(configuration, session_ticket=self._ticket)
        return _Link(
            self._server,
            configuration,
            webtransport=self._webtransport,
            hello=hello,
            limits=self._limits,
            authority=self._authority,
            path=self._path,
            on_event=self._on_link_event,
            on_reset=self._on_link_reset,
            on_ticket=self._on_ticket,
            on_path_gone=self._on_path_gone,
        )

    def _on_ticket(self, ticket: SessionTicket) -> None:
        self._ticket = ticket

    async def open(self, local_address: Address, timeout: float) -> None:
        """Bind ``local_address``, handshake, and wait for the session (``connect()`` does this)."""
        self._local_host = local_address[0]
        await self._link.start(local_address)
        try:
            self.session = await asyncio.wait_for(asyncio.shield(self._link.started), timeout)
        except TimeoutError:
            raise ConnectionError(
                f"no voice session with {format_address(self._server)} within {timeout} s"
            ) from None
        self._clock_rate = codec_clock_rate(self.session.codec) or DEFAULT_CLOCK_RATE
        self._samples_per_frame = self._clock_rate * self.session.frame_ms // 1000
        self._playout()
        if self._reconnect:
            self._liveness = asyncio.get_running_loop().create_task(self._watch_liveness())

    async def close(self) -> None:
        """Close the connection and every socket."""
        self._closing = True
        for task in (self._liveness, self._reconnecting, self._recovering):
            if task is not None:
                task.cancel()
        self._link.close(say_goodbye=True)
        self._closed.set()

    # -- events --------------------------------------------------------------------------

    def _on_link_event(self, link: _Link, event: VoiceEvent) -> None:
        if link is not self._link:
            if link is self._quiet_link and len(self._quiet_events) < MAX_QUIET_EVENTS:
                self._quiet_events.append(event)  # delivered if it comes back
            return
        if isinstance(event, SessionStarted):
            return  # open() and the reconnection take it from link.started
        if isinstance(event, SessionClosed) and self._reconnecting is not None:
            return  # a refused or failed attempt: _resume() decides, from link.started
        if isinstance(event, SessionClosed) and self._should_resume(event):
            self._begin_reconnect(f"connection closed: {event.reason or event.error_code}")
            return
        self._deliver(event)

    def _on_link_reset(self, link: _Link) -> None:
        if link is self._link and self._reconnecting is not None:
            # A resume attempt's backend has no such connection: try the next one at once.
            if not link.started.done():
                link.started.set_exception(ConnectionError("stateless reset"))
            return
        if link is self._link:
            if self._should_resume(None):
                self._begin_reconnect("stateless reset: the backend lost the connection")
            else:
                link.close(say_goodbye=False)
                self._deliver(
                    SessionClosed(error_code=ErrorCode.NO_ERROR, reason="stateless reset")
                )

    def _playout(self) -> PlayoutBuffer | None:
        """The playout buffer, made as soon as ``welcome`` names the codec: a turn's first
        frames may arrive with the welcome, before ``open()`` has resumed."""
        welcome = self._link.voice.welcome
        if self.playout is None and welcome is not None:
            rate = codec_clock_rate(welcome.codec) or DEFAULT_CLOCK_RATE
            self.playout = PlayoutBuffer(
                rate * welcome.frame_ms // 1000, rate=rate, on_turn_played=self._report_played
            )
        return self.playout

    def _deliver(self, event: VoiceEvent) -> None:
        playout = self._playout()
        if isinstance(event, AudioReceived):
            if playout is not None and event.turn_id is not None:
                playout.push(event.turn_id, event.frame.payload)
        elif isinstance(event, TurnStarted):
            if playout is not None:
                playout.start_turn(event.turn_id)
        elif isinstance(event, TurnEnded):
            if playout is not None:
                playout.end_turn(event.turn_id)
        elif isinstance(event, TurnCancelled):
            if playout is not None:
                playout.cancel(event.turn_id)
        elif isinstance(event, ByeReceived):
            self._peer_bye = event.uplink_frames
            self._peer_bye_event.set()
        elif isinstance(event, SessionClosed):
            self._close_reason = event.reason or f"error code {event.error_code:#x}"
            self._closed.set()
            self._peer_bye_event.set()
        self._events.put_nowait(event)

    def _should_resume(self, event: SessionClosed | None) -> bool:
        """Resume after a reset or a silent death, never after the peer closed on purpose."""
        transport_death = event is None or event.reason == "Idle timeout"
        return (
            transport_death
            and self._reconnect
            and not self._closing
            and self.session is not None
            and self.session.resume_token is not None
        )

    # -- reconnection --------------------------------------------------------------------

    async def _watch_liveness(self) -> None:
        """Declare the connection dead when we keep sending and hear nothing back."""
        while True:
            await asyncio.sleep(LIVENESS_CHECK_INTERVAL)
            link = self._link
            if (
                self._reconnecting is not None
                or self._recovering is not None
                or link.closed
                or link.last_receive == 0.0
            ):
                continue
            unanswered = link.unanswered_since
            now = asyncio.get_running_loop().time()
            if (
                unanswered is not None
                and now - unanswered >= PROBE_AFTER * self._liveness_timeout
                and now - link.last_probe >= PROBE_INTERVAL * self._liveness_timeout
            ):
                # Probe a silence instead of judging it on loss recovery's few, backed-off
                # retransmissions: a frame or two lost each way in a quiet moment (10 % loss
                # at 200 ms RTT) would otherwise look like a second of silence.
                link.probe(now)
            silent = 0.0 if unanswered is None else link.last_send - unanswered
            if silent > self._liveness_timeout:
                reason = f"nothing heard for {silent:.2f} s while sending"
                active = link.active
                if active is not None and address_vanished(active.local_address[0]):
                    self._begin_path_recovery(f"{reason}; the local address is gone")
                else:
                    self._begin_reconnect(reason)

    def _begin_reconnect(self, reason: str) -> None:
        if self._reconnecting is None and not self._closing:
            recovering = self._recovering
            if recovering is not None and recovering is not asyncio.current_task():
                recovering.cancel()
            self._recovering = None
            self._reconnecting = asyncio.get_running_loop().create_task(self._resume(reason))

    # -- the network under the call went away --------------------------------------------

    def _on_path_gone(self, link: _Link, sock: _ClientSocket, error: OSError) -> None:
        if link is self._link:
            where = format_address(sock.local_address)
            self._begin_path_recovery(f"sending from {where}: {error.strerror or error}")

    def _begin_path_recovery(self, reason: str) -> None:
        if (
            self._recovering is None
            and self._reconnecting is None
            and not self._closing
            and not self._link.closed
            and self.session is not None
        ):
            self._recovering = asyncio.get_running_loop().create_task(self._recover_path(reason))

    async def _recover_path(self, reason: str) -> None:
        """The local network vanished under a live connection: migrate it to what remains.

        The backend still holds the connection, so moving it (a new socket where the kernel
        now routes, a fresh connection ID) keeps the call on its backend with nothing to
        resume. Only if the server does not answer on the new path does the client fall back
        to reconnecting and resuming.
        """
        link = self._link
        old = link.active
        logger.info("path lost (%s): migrating to the remaining network", reason)
        wildcard = "::" if ":" in self._server[0] else "0.0.0.0"
        host = route_source(self._server) or wildcard
        try:
            try:
                new = await link.open_socket((host, 0))
            except OSError:
                new = await link.open_socket((wildcard, 0))
            loop = asyncio.get_running_loop()
            last_on_old = (old.last_receive if old is not None else 0.0) or loop.time()
            link.active = new
            self._local_host = new.local_address[0]
            link.quic.change_connection_id()
            self._ping_id += 1
            link.quic.send_ping(self._ping_id)
            link.transmit()
            first_on_new = await asyncio.wait_for(
                asyncio.shield(new.first_receive), NEW_PATH_ATTEMPT_TIMEOUT
            )
        except (TimeoutError, OSError) as error:
            logger.info("no answer on the remaining network (%r): reconnecting", error)
            self._recovering = None
            if link is self._link and not link.closed:
                self._begin_reconnect(f"{reason}; no answer after moving the connection")
            return
        if old is not None:
            link.retire_socket(old)
        migration = Migration(
            from_address=format_address(old.local_address if old else ("", 0)),
            to_address=format_address(new.local_address),
            gap_ms=(first_on_new - last_on_old) * 1000,
        )
        self._migrations.append(migration)
        self._moved_by_itself = migration
        self._recovering = None

    async def _resume(self, reason: str) -> None:
        loop = asyncio.get_running_loop()
        started_at = loop.time()
        old = self._link
        before = self.session
        assert before is not None and before.resume_token is not None
        self._prune_kept(old)
        # A connection that only went quiet (an overloaded backend, a short blackout) is kept
        # open meanwhile, its loss probes going on: if no resume succeeds and it comes back,
        # the call carries on where it was. A reset connection is gone for good.
        old_may_revive = not old.reset_received
        if old_may_revive:
            self._quiet_link = old
        else:
            self._drop_link(old)
        backoff = RECONNECT_BACKOFF
        rtt = (old.voice.stats().rtt_smoothed_ms or 100.0) / 1000
        attempt_timeout = max(MIN_ATTEMPT_TIMEOUT, ATTEMPT_RTTS * rtt)
        host_measured = self._local_host
        deadline = started_at + self._reconnect_timeout
        token = before.resume_token
        attempts = 0
        may_have_taken_over = False
        while loop.time() < deadline:
            attempts += 1
            if self._local_host != host_measured:
                # migrate() moved us to another network: the old RTT says nothing about it.
                host_measured = self._local_host
                attempt_timeout = max(attempt_timeout, NEW_PATH_ATTEMPT_TIMEOUT)
            hello = replace(self._hello, codecs=(before.codec,), resume_token=token)
            link = self._new_link(hello)
            self._link = link
            try:
                try:
                    await link.start((self._local_host, 0))
                except OSError:
                    # The address we last used is gone (its interface vanished): let the
                    # kernel pick whatever interface remains.
                    self._local_host = host_measured = (
                        "::" if ":" in self._server[0] else "0.0.0.0"
                    )
                    attempt_timeout = max(attempt_timeout, NEW_PATH_ATTEMPT_TIMEOUT)
                    await link.start((self._local_host, 0))
                early = self._send_kept_early(link)
                started = await _await_welcome(link, attempt_timeout, deadline)
            except (TimeoutError, ConnectionError, OSError, asyncio.CancelledError) as error:
                # Say goodbye: a backend still loading the session for this attempt then
                # leaves it where it is instead of claiming it for a connection nobody uses.
                link.close(say_goodbye=not link.reset_received)
                task = asyncio.current_task()
                if self._closing or (task is not None and task.cancelling()):
                    old.close(say_goodbye=not old.reset_received)
                    raise  # the app hung up: no more attempts
                refused = (
                    isinstance(error, SessionRefusedError) and error.error_code in DEFINITE_REFUSALS
                )
                logger.info("resume attempt failed: %r", error)
                # An attempt that timed out may still reach a backend and take the session
                # over, which closes the old connection: going back to it is safe only while
                # every attempt got a definite refusal.
                may_have_taken_over = may_have_taken_over or not refused
                if old_may_revive and not may_have_taken_over and _heard_since(old, started_at):
                    self._restore(old, reason)
                    return
                if refused:
                    break
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, RECONNECT_BACKOFF_MAX)
                if attempts >= FAST_ATTEMPTS:
                    # Not just an unlucky hash onto the dead backend: the path may be slow.
                    attempt_timeout = min(2 * attempt_timeout, RECONNECT_BACKOFF_MAX * 2)
                continue
            self.session = started
            resent = self._adopt_early(early) if early else self._resend_kept()
            resumption = Resumption(
                from_server=before.server_id,
                to_server=started.server_id,
                gap_ms=(loop.time() - started_at) * 1000,
                frames_resent=resent,
                declared_dead_at=started_at,
                reason=reason,
                attempts=attempts,
                handshake_ms=(link.handshake_at - link.started_at) * 1000,
                resume_ms=(link.welcome_at - link.handshake_at) * 1000,
                zero_rtt=link.early_data_accepted,
            )
            self._resumptions.append(resumption)
            self._reconnecting = None
            if self._audio_ended:
                link.voice.end_audio()
                link.transmit_soon()
            self._send_held_events()
            if old_may_revive:
                self._drop_link(old)
            self._deliver(
                SessionResumed(
                    session_id=started.session_id,
                    server_id=started.server_id,
                    gap_ms=resumption.gap_ms,
                    reason=reason,
                )
            )
            return
        if old_may_revive and not may_have_taken_over:
            if await self._revives(old, started_at, deadline):
                self._restore(old, reason)
                return
        if old_may_revive:
            self._drop_link(old)
        self._reconnecting = None
        self._deliver(
            SessionClosed(
                error_code=ErrorCode.INTERNAL_ERROR,
                reason=f"{reason}; could not resume the session",
            )
        )

    def _drop_link(self, link: _Link) -> None:
        """Give up ``link`` for good, keeping its packet counts for the call's stats."""
        if link is self._quiet_link:
            self._quiet_link = None
            self._quiet_events.clear()
        if not link.closed:
            self._packets_sent += link.packets_sent
            self._packets_received += link.packets_received
            # Goodbye, should it still get through: the backend then ends its stale session
            # now rather than at the idle timeout (its writes already lose to the resume).
            link.close(say_goodbye=not link.reset_received)

    async def _revives(self, old: _Link, declared_dead_at: float, deadline: float) -> bool:
        """Wait until ``deadline`` for the quiet connection to be heard from again."""
        loop = asyncio.get_running_loop()
        while True:
            if old.closed or old.reset_received or old.session_ended:
                return False
            if _heard_since(old, declared_dead_at):
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(LIVENESS_CHECK_INTERVAL)

    def _restore(self, old: _Link, reason: str) -> None:
        """The quiet connection answered again: carry on on it, sending the frames captured
        meanwhile (those it had sent, it retransmits itself)."""
        logger.info("connection heard from again after %s: no resume needed", reason)
        self._link = old
        self._reconnecting = None
        self._quiet_link = None
        events, self._quiet_events = self._quiet_events, []
        for event in events:
            self._on_link_event(old, event)
        captured_meanwhile = [frame for frame in self._kept if frame.stream_end == 0]
        self._kept = deque(frame for frame in self._kept if frame.stream_end != 0)
        for frame in captured_meanwhile:
            self._send_now(frame.seq, frame.timestamp, frame.payload)
        if self._audio_ended:
            old.voice.end_audio()
            old.transmit_soon()
        self._send_held_events()

    def _prune_kept(self, link: _Link) -> None:
        stream_id = link.voice.uplink_stream_id
        if stream_id is None:
            return
        acked, _ = stream_send_offsets(link.quic, stream_id)
        kept = self._kept
        while kept and kept[0].stream_end <= acked:
            kept.popleft()

    def _send_kept_early(self, link: _Link) -> list[_KeptFrame] | None:
        """With a 0-RTT uplink open, send the kept frames now, before ``welcome``.

        They stay kept until the session resumes: if this attempt fails, the next one sends
        them again. Returns them with their offsets on the new stream.
        """
        stream_id = link.voice.uplink_stream_id
        if stream_id is None:
            return None
        loop = asyncio.get_running_loop()
        sent = []
        for frame in self._kept:
            link.voice.send_audio(frame.payload, frame.timestamp, loop.time(), seq=frame.seq)
            _, written = stream_send_offsets(link.quic, stream_id)
            sent.append(replace(frame, stream_end=written))
        link.transmit()
        return sent

    def _adopt_early(self, sent: list[_KeptFrame]) -> int:
        """The session resumed: frames sent in 0-RTT are now the ones kept (new offsets)."""
        captured_meanwhile = list(self._kept)[len(sent) :]
        self._kept = deque(sent)
        for frame in captured_meanwhile:
            self._send_now(frame.seq, frame.timestamp, frame.payload)
        return len(sent) + len(captured_meanwhile)

    def _resend_kept(self) -> int:
        frames = list(self._kept)
        self._kept.clear()
        for frame in frames:
            self._send_now(frame.seq, frame.timestamp, frame.payload)
        return len(frames)

    # -- the call ------------------------------------------------------------------------

    @property
    def local_address(self) -> Address:
        """The local address audio is currently sent from."""
        if self._link.active is None:
            raise ConnectionError("the call is reconnecting and has no socket yet")
        return self._link.active.local_address

    @property
    def clock_rate(self) -> int:
        """Sample rate of the session's codec, in Hz."""
        return self._clock_rate

    @property
    def samples_per_frame(self) -> int:
        """Samples in one frame at the session's codec rate."""
        return self._samples_per_frame

    @property
    def resumptions(self) -> tuple[Resumption, ...]:
        """Reconnections that resumed this session."""
        return tuple(self._resumptions)

    @property
    def reconnecting(self) -> bool:
        """Whether the connection was declared dead and the call is being resumed now."""
        return self._reconnecting is not None

    def send_audio(self, payload: bytes, timestamp: int | None = None) -> int:
        """Send one uplink frame; ``timestamp`` defaults to seq x samples per frame.

        While the call is reconnecting the frame is kept (reliable mode) and sent after the
        resume; in realtime mode it is dropped and counted.
        """
        seq = self._next_seq
        self._next_seq = (seq + 1) % (1 << 32)
        if timestamp is None:
            timestamp = seq * self._samples_per_frame
        if self._reconnecting is not None:
            if self.session is not None and self.session.uplink is UplinkMode.RELIABLE:
                self._keep(_KeptFrame(seq, timestamp, payload, stream_end=0))
            else:
                self._frames_dropped += 1
            return seq
        self._send_now(seq, timestamp, payload)
        return seq

    def _send_now(self, seq: int, timestamp: int, payload: bytes) -> None:
        link = self._link
        loop = asyncio.get_running_loop()
        link.voice.send_audio(payload, timestamp, loop.time(), seq=seq)
        stream_id = link.voice.uplink_stream_id
        if stream_id is not None:
            _, written = stream_send_offsets(link.quic, stream_id)
            self._keep(_KeptFrame(seq, timestamp, payload, stream_end=written))
            if len(self._kept) % 32 == 0:
                self._prune_kept(link)
        link.transmit_soon()

    def _keep(self, frame: _KeptFrame) -> None:
        if len(self._kept) >= MAX_KEPT_FRAMES:
            self._kept.popleft()
            self._frames_dropped += 1
        self._kept.append(frame)

    def end_audio(self) -> None:
        """Finish the reliable uplink: the server then knows every frame has arrived.

        While the call reconnects, the end waits for the connection that takes it over.
        """
        self._audio_ended = True
        if self._reconnecting is not None:
            return
        self._link.voice.end_audio()
        self._link.transmit_soon()

    def send_event(self, name: str, data: Any = None) -> None:
        """Send an application event to the server (after the resume, while reconnecting)."""
        if self._reconnecting is not None:
            if len(self._held_events) >= MAX_HELD_EVENTS:
                raise ConnectionError("too many events held while the call reconnects")
            self._held_events.append((name, data))
            return
        self._link.voice.send_event(name, data)
        self._link.transmit_soon()

    def _send_held_events(self) -> None:
        held, self._held_events = self._held_events, []
        for name, data in held:
            self.send_event(name, data)

    def _report_played(self, played: PlayedTurn) -> None:
        """Tell the server how much of a turn the caller heard (cancelled or played out)."""
        voice = self._link.voice
        if self._reconnecting is None and voice.send_played(
            played.turn_id, played.played_ms, complete=played.complete
        ):
            self._link.transmit_soon()

    def cancel_turn(self, turn_id: int) -> None:
        """Barge in: stop turn ``turn_id`` here at once and tell the server to stop sending it."""
        for event in self._link.voice.cancel_turn(turn_id):
            self._deliver(event)
        if self.playout is not None:
            # A turn that had fully arrived is still playing out here: flush it too (the
            # server hears of it from the ``played`` report, complete=False).
            self.playout.cancel(turn_id)
        self._link.transmit_soon()

    async def receive(self) -> VoiceEvent:
        """Wait for the next event."""
        return await self._events.get()

    async def wait_event(self, name: str, timeout: float = 5.0) -> EventReceived:
        """Wait for the application event ``name``, skipping others (audio keeps playing out)."""

        async def wait() -> EventReceived:
            while True:
                event = await self._events.get()
                if isinstance(event, EventReceived) and event.name == name:
                    return event
                if isinstance(event, SessionClosed):
                    raise ConnectionError(f"session closed while waiting for {name}")

        return await asyncio.wait_for(wait(), timeout)

    async def wait_resumed(self, timeout: float = 10.0) -> SessionResumed:
        """Wait until the call has resumed after losing its connection."""

        async def wait() -> SessionResumed:
            while True:
                event = await self._events.get()
                if isinstance(event, SessionResumed):
                    return event
                if isinstance(event, SessionClosed):
                    raise ConnectionError(f"session closed: {event.reason}")

        return await asyncio.wait_for(wait(), timeout)

    async def bye(self, timeout: float = 5.0) -> int:
        """Finish the uplink and say goodbye; return how many uplink frames the server got."""
        self._link.voice.end_audio()
        self._link.voice.send_bye(uplink_frames=self._next_seq)
        self._link.transmit_soon()
        await asyncio.wait_for(self._peer_bye_event.wait(), timeout)
        if self._peer_bye is None:
            raise ConnectionError(
                f"the session closed before the server said goodbye: {self._close_reason}"
            )
        return self._peer_bye

    async def migrate(
        self, local_address: str | Address, *, new_connection_id: bool = True, timeout: float = 3.0
    ) -> Migration:
        """Move the call to ``local_address`` (a new network) and return the measured gap.

        With ``new_connection_id=False`` the CID stays the same, which is what a NAT rebinding
        looks like to the server (a passive migration).
        """
        if isinstance(local_address, str):
            local_address = (local_address, 0)
        if self._closing or self._closed.is_set():
            raise ConnectionError("the call has ended")
        recovering = self._recovering
        if recovering is not None:
            # The client is already moving off a vanished network: let it finish first.
            try:
                await asyncio.wait_for(asyncio.shield(recovering), timeout)
            except TimeoutError:
                raise ConnectionError(f"still moving the call after {timeout} s") from None
        moved, self._moved_by_itself = self._moved_by_itself, None
        active = self._link.active
        if (
            moved is not None
            and active is not None
            and local_address == (active.local_address[0], 0)
            and self._migrations
            and self._migrations[-1] is moved
        ):
            return moved  # the client already moved there when the old network vanished
        reconnecting = self._reconnecting
        if reconnecting is not None:
            # The connection is being re-established: do it from the new address instead.
            return await self._migrate_while_reconnecting(
                local_address, max(timeout, self._reconnect_timeout)
            )
        link = self._link
        old = link.active
        if old is None:
            raise ConnectionError("the call has no socket to migrate from")
        new = await link.open_socket(local_address)
        loop = asyncio.get_running_loop()
        last_on_old = old.last_receive or loop.time()
        link.active = new
        self._local_host = local_address[0]
        if new_connection_id:
            link.quic.change_connection_id()
        # An ack-eliciting packet right away: the server answers on the new path at once.
        self._ping_id += 1
        link.quic.send_ping(self._ping_id)
        link.transmit()
        try:
            first_on_new = await asyncio.wait_for(asyncio.shield(new.first_receive), timeout)
        except TimeoutError:
            raise ConnectionError(f"no answer on the new path within {timeout} s") from None
        rtt = link.voice.stats().rtt_smoothed_ms or 0.0
        loop.call_later(max(1.5 * rtt / 1000, MIN_OLD_PATH_LINGER), link.retire_socket, old)
        migration = Migration(
            from_address=format_address(old.local_address),
            to_address=format_address(new.local_address),
            gap_ms=(first_on_new - last_on_old) * 1000,
        )
        self._migrations.append(migration)
        return migration

    async def _migrate_while_reconnecting(
        self, local_address: Address, timeout: float
    ) -> Migration:
        previous = self._local_host
        self._local_host = local_address[0]
        loop = asyncio.get_running_loop()
        started = loop.time()
        reconnecting = self._reconnecting
        if reconnecting is not None:
            try:
                await asyncio.wait_for(asyncio.shield(reconnecting), timeout)
            except TimeoutError:
                raise ConnectionError(f"not reconnected within {timeout} s") from None
        if self._link.active is None or self._link.closed:
            raise ConnectionError("the call could not be resumed")
        migration = Migration(
            from_address=format_address((previous, 0)),
            to_address=format_address(self._link.active.local_address),
            gap_ms=(loop.time() - started) * 1000,
        )
        self._migrations.append(migration)
        return migration

    def stats(self) -> SessionStats:
        """A snapshot of the call's statistics (counters of the current connection)."""
        link = self._link
        stats = link.voice.stats()
        if self.playout is not None:
            playout = self.playout.stats()
            stats = replace(
                stats,
                playout_buffer_frames=playout.buffered_frames,
                concealed_samples=playout.concealed_samples,
            )
        return replace(
            stats,
            uplink_frames_sent=self._next_seq,
            uplink_frames_dropped=stats.uplink_frames_dropped + self._frames_dropped,
            migrations=tuple(self._migrations),
            packets_sent=self._packets_sent + link.packets_sent,
            packets_received=self._packets_received + link.packets_received,
        )



#: How long ``connect`` waits before racing the next address of a name (RFC 8305 §5).
ATTEMPT_DELAY = DEFAULT_ATTEMPT_DELAY


@asynccontextmanager
async def connect(
    target: str,
    port: int | None = None,
    *,
    webtransport: bool | None = None,
    local_address: str | Address | None = None,
    hello: Hello | None = None,
    token: str | None = None,
    metadata: Mapping[str, str] | None = None,
    server_name: str | None = None,
    ca_file: str | os.PathLike[str] | None = None,
    cafile: str | os.PathLike[str] | None = None,
    certificate_hashes: Iterable[bytes | str] = (),
    verify: bool = True,
    limits: SessionLimits | None = None,
    idle_timeout: float = 30.0,
    timeout: float = 5.0,
    reconnect: bool = True,
    liveness_timeout: float = 1.0,
    reconnect_timeout: float = 10.0,
    attempt_delay: float = ATTEMPT_DELAY,
) -> AsyncIterator[VoiceClient]:
    """Open a voice call and close it on exit.

    ``target`` is a URL, ``quic://HOST[:PORT]`` (raw QUIC, ALPN ``quicvoice/1``) or
    ``https://HOST[:PORT]/PATH`` (WebTransport at PATH, ``/voice`` if none), the port 443 when
    not given; or a host (DNS name or IP literal) with ``port``, raw QUIC unless
    ``webtransport=True``. A bad URL raises ``InvalidURLError`` (a ``ValueError``).

    A name is resolved, and its IPv6 and IPv4 addresses raced happy-eyeballs style
    (RFC 8305): the next address is tried ``attempt_delay`` seconds after the previous one, or
    as soon as it fails; the first whose session is welcomed wins and the others are closed.
    ``NameResolutionError`` when the name does not resolve.

    The server's certificate must carry the host (or ``server_name``, also sent as SNI) and
    chain to the system's trust store, or to ``ca_file`` (``cafile`` is an alias) when given;
    with ``certificate_hashes`` (SHA-256 digests, bytes or hex) the leaf must be one of them
    instead, like the browsers' ``serverCertificateHashes``. ``verify=False`` accepts any
    certificate (development only). A certificate that fails raises
    ``CertificateVerificationError`` naming the check, before any hello or audio is sent.

    ``token`` and ``metadata`` go into the hello (and into the hellos of resumes);
    ``local_address`` is the local IP (or (IP, port)) to send from. With ``reconnect`` the call
    resumes by itself when its connection dies: after a stateless reset, or after
    ``liveness_timeout`` seconds of sending without hearing anything; it gives up after
    ``reconnect_timeout`` seconds.

    Raises ``SessionRefusedError`` when the server closes before welcoming the session, with
    the close's ``error_code`` (``RESUME_REFUSED`` for a bad or stale ``resume_token``,
    ``UNSUPPORTED`` for no common codec), and ``ConnectTimeoutError`` when no session is up
    within ``timeout`` (resolution included).
    """
    check_aioquic_version()
    if ca_file is not None and cafile is not None:
        raise ValueError("give ca_file or its alias cafile, not both")
    url = dial_target(target, port, webtransport)
    hello = hello_with_credentials(hello or Hello(), token, metadata)
    settings = tls_settings(
        url,
        server_name=server_name,
        ca_file=ca_file if ca_file is not None else cafile,
        certificate_hashes=certificate_hashes,
        verify=verify,
    )
    if isinstance(local_address, str):
        local_address = (local_address, 0)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    resolved = await resolve(url.host, url.port, timeout)
    addresses = usable_addresses(
        url.host, resolved, None if local_address is None else local_address[0]
    )
    chosen_local = local_address

    async def open_attempt(server: Address) -> VoiceClient:
        rejected: asyncio.Future[CertificateVerificationError] = loop.create_future()

        def on_rejected(error: CertificateVerificationError) -> None:
            if not rejected.done():
                rejected.set_result(error)

        configuration = client_configuration(
            settings,
            alpn=ALPN_H3 if url.webtransport else ALPN_VOICE,
            idle_timeout=idle_timeout,
            on_rejected=on_rejected,
        )
        client = VoiceClient(
            server,
            configuration,
            webtransport=url.webtransport,
            hello=hello,
            limits=limits,
            authority=request_authority(url, server_name),
            path=url.path or WEBTRANSPORT_PATH,
            reconnect=reconnect,
            liveness_timeout=liveness_timeout,
            reconnect_timeout=reconnect_timeout,
        )
        local = chosen_local or ("::" if ":" in server[0] else "0.0.0.0", 0)
        # The race's deadline bounds the attempt; open()'s own timeout only backs it up.
        opening = loop.create_task(client.open(local, max(0.0, deadline - loop.time()) + 1.0))
        try:
            waiting: set[asyncio.Future[Any]] = {opening, rejected}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if rejected.done():
                raise rejected.result()
            opening.result()
        except BaseException:
            opening.cancel()
            await asyncio.wait({opening})
            await client.close()  # CONNECTION_CLOSE: the backend keeps no half-open session
            raise
        return client

    async def close_attempt(client: VoiceClient) -> None:
        await client.close()

    client, _ = await race(
        url.host,
        addresses,
        open_attempt,
        close_attempt,
        deadline=deadline,
        attempt_delay=attempt_delay,
    )
    try:
        yield client
    finally:
        await client.close()


def hello_with_credentials(
    hello: Hello, token: str | None, metadata: Mapping[str, str] | None
) -> Hello:
    """``hello`` with ``token`` and ``metadata`` put in (``ValueError`` if out of bounds)."""
    if token is not None:
        if hello.token is not None and hello.token != token:
            raise ValueError("token given both as a keyword and in hello")
        hello = replace(hello, token=token)
    if metadata is not None:
        if hello.metadata and dict(hello.metadata) != dict(metadata):
            raise ValueError("metadata given both as a keyword and in hello")
        hello = replace(hello, metadata=dict(metadata))
    return hello


async def _await_welcome(link: _Link, timeout: float, deadline: float) -> SessionStarted:
    """Wait for a resume attempt's ``welcome``: ``timeout`` while the backend is silent, up to
    ``ANSWERED_ATTEMPT_TIMEOUT`` in all once it has answered, never past ``deadline``."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        return await asyncio.wait_for(
            asyncio.shield(link.started), max(0.05, min(deadline, began + timeout) - began)
        )
    except TimeoutError:
        now = loop.time()
        limit = min(deadline, began + max(timeout, ANSWERED_ATTEMPT_TIMEOUT))
        if link.last_receive == 0.0 or now >= limit:
            raise
        return await asyncio.wait_for(asyncio.shield(link.started), limit - now)


def _heard_since(link: _Link, moment: float) -> bool:
    """Whether ``link`` is alive: a packet (not a reset) processed after ``moment``."""
    return (
        not link.closed
        and not link.reset_received
        and not link.session_ended
        and link.last_receive > moment
    )


def route_source(server: Address) -> str | None:
    """The local address the kernel would send from to reach ``server`` now, if any route."""
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(server)  # UDP: picks a route and a source, sends nothing
        except OSError:
            return None
        return str(probe.getsockname()[0])


def address_vanished(host: str) -> bool:
    """Whether ``host`` (a specific local address) is no longer configured on any interface."""
    if host in ("", "0.0.0.0", "::"):
        return False
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, 0))
        except OSError as error:
            return error.errno == errno.EADDRNOTAVAIL
    return False
