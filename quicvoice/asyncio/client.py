"""The client library: ``async with connect(...) as call`` for native and mobile apps.

The client owns its UDP sockets, so it can move the connection to another local address
mid-call (``migrate``): it binds a new socket, switches to a fresh connection ID from the
server's pool (RFC 9000 §9.5), sends from the new socket at once, and keeps the old one open
for about one RTT so that nothing already in flight towards it is lost (make-before-break).

What to do when the network under the call vanishes, when its connection dies, how to resume
and what to keep meanwhile is decided by the sans-I/O ``CallMachine``
(``quicvoice.session.call``, ``specs/protocol.md``). This module is its thin asyncio shell:
sockets, aioquic connections, timers, moving datagrams, and executing the machine's actions.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import HandshakeCompleted
from aioquic.tls import SessionTicket

from ..audio.frames import Pcm
from ..audio.pcm import PcmEncoder, PcmFrame, check_app_rate
from ..audio.turn_pcm import TurnPcmDecoder
from ..ecn import EcnMode
from ..errors import (
    CallEndedError,
    CallReconnectingError,
    CertificateVerificationError,
    ConnectTimeoutError,
    MigrationError,
    SessionRefusedError,
    UplinkEndedError,
)
from ..happy_eyeballs import DEFAULT_ATTEMPT_DELAY
from ..quic import (
    VoiceQuicConnection,
    can_send_early_data,
    check_aioquic_version,
    peer_reset_tokens,
    rtt_seconds,
    stream_send_offsets,
    use_initial_destination_cid,
)
from ..session.call import (
    CallAction,
    CallConfig,
    CallMachine,
    CancelTurn,
    CheckLocalAddress,
    CloseLink,
    ClosePath,
    DeliverEvent,
    EndAudio,
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
from ..session.codes import ErrorCode
from ..session.congestion import CongestionConfig, CongestionResponse
from ..session.congestion_feed import CongestionFeed
from ..session.connection import SessionLimits, VoiceConnection
from ..session.events import (
    AudioReceived,
    ByeReceived,
    ClientEvent,
    EventReceived,
    SessionClosed,
    SessionResumed,
    SessionStarted,
    TurnCancelled,
    TurnEnded,
    TurnStarted,
)
from ..session.inbox import EventInbox, InboxStats
from ..session.messages import Hello, codec_clock_rate
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
from .congestion import feed_congestion
from .dial import (
    client_configuration,
    race,
    request_authority,
    resolve,
    tls_settings,
    usable_addresses,
)
from .timer import ConnectionTimer
from .udp import (
    ANCILLARY_SIZE,
    RECEIVE_SIZE,
    bind_udp_socket,
    received_tos,
    set_ecn_marking,
)

__all__ = [
    "Resumption",
    "VoiceClient",
    "address_vanished",
    "connect",
    "hello_with_credentials",
    "route_source",
]

logger = logging.getLogger("quicvoice.client")

#: Clock rate assumed for a codec name without a usable rate (L16/16000's).
DEFAULT_CLOCK_RATE = 16000
#: Datagrams read from one socket per wake-up of the event loop, at most.
MAX_READS_PER_WAKEUP = 32


class _ClientSocket:
    """One local UDP socket of a link (several exist during a migration), read by the loop's
    reader callback and written directly: a failed send is reported at once, so a vanished
    network is noticed on the first frame sent from it."""

    def __init__(self, link: _Link, path: PathId, sock: socket.socket, ecn: int) -> None:
        self._link = link
        self.path = path
        self._sock = sock
        host, port = sock.getsockname()[:2]
        self.local_address: Address = (host, port)
        #: The ECN path name of this socket (one socket is one path of the connection).
        self.ecn_path = format_address(self.local_address)
        #: The ECN codepoint the socket marks with now.
        self.ecn = ecn
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._read_ready)
        self.closed = False

    def _read_ready(self) -> None:
        for _ in range(MAX_READS_PER_WAKEUP):
            if self.closed:
                return
            try:
                data, ancdata, _flags, addr = self._sock.recvmsg(RECEIVE_SIZE, ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # an ICMP error queued on the socket: nothing to read
            # An IPv6 socket reports (host, port, flowinfo, scope_id); aioquic compares the
            # peer's address with the one it connected to, (host, port), so a 4-tuple would
            # look like a packet from another path and the handshake would never finish.
            tos = received_tos(ancdata) if ancdata else None
            self._link.datagram_received(self, data, (addr[0], addr[1]), tos)

    def mark(self, codepoint: int) -> None:
        """Mark what this socket sends with ECN ``codepoint`` from now on."""
        if codepoint != self.ecn and not self.closed:
            set_ecn_marking(self._sock, codepoint)
            self.ecn = codepoint

    def send(self, data: bytes, addr: Any) -> None:
        """Send one datagram; a full buffer loses it (QUIC recovers), a gone network is
        reported."""
        try:
            self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as error:
            self._link.send_failed(self, error)

    def close(self) -> None:
        """Stop reading and close the socket."""
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()


class _Link:
    """One QUIC connection of the call, its voice session and its sockets."""

    def __init__(
        self,
        link_id: LinkId,
        configuration: QuicConfiguration,
        *,
        machine: CallMachine,
        drain: Callable[[], None],
        webtransport: bool,
        authority: str,
        path: str,
        hello: Hello,
        limits: SessionLimits | None,
        on_ticket: Callable[[SessionTicket], None],
        ecn: EcnMode = EcnMode.L4S,
    ) -> None:
        self.id = link_id
        self.ecn = ecn
        #: The call's machine, told what happens here; ``drain`` runs its actions after.
        self._machine = machine
        self._drain = drain
        self.quic = VoiceQuicConnection(
            configuration=configuration, session_ticket_handler=on_ticket, ecn=ecn
        )
        transport: VoiceTransport = (
            WebTransportTransport(self.quic, path=path, authority=authority)
            if webtransport
            else RawQuicTransport(self.quic)
        )
        self.voice = VoiceConnection(transport, hello=hello, limits=limits)
        self.sockets: dict[PathId, _ClientSocket] = {}
        self.active: _ClientSocket | None = None
        self.timer = ConnectionTimer(self.quic, self._on_timer)
        self._transmit_handle: asyncio.Handle | None = None
        self._loop = asyncio.get_running_loop()
        self.connected = False
        self.closed = False
        self.packets_sent = 0
        self.packets_received = 0

    def bind(self, path: PathId, address: Address) -> _ClientSocket:
        """A new socket on ``address`` (raises ``OSError`` when it cannot be bound)."""
        codepoint = int(self.ecn.codepoint)
        sock = _ClientSocket(self, path, bind_udp_socket(address, codepoint), codepoint)
        self.sockets[path] = sock
        return sock

    def start(self, server: Address) -> None:
        """Say hello: the first flight, in 0-RTT when a session ticket allows."""
        self.connected = True
        self.quic.connect(server, now=self._loop.time())
        if can_send_early_data(self.quic):
            self.voice.start_early()

    def datagram_received(
        self, sock: _ClientSocket, data: bytes, addr: Any, tos: int | None = None
    ) -> None:
        if self.closed:
            return
        now = self._loop.time()
        self.packets_received += 1
        if self._is_stateless_reset(data):
            self._machine.handle_stateless_reset(self.id, now)
            self._drain()
            return
        self.quic.ecn_local_path = sock.ecn_path
        self.quic.receive_datagram_ecn(data, addr, now, tos)
        stream_id = self.voice.uplink_stream_id
        rtt = rtt_seconds(self.quic)
        self._machine.handle_datagram_received(
            self.id,
            sock.path,
            now,
            uplink_acked=stream_send_offsets(self.quic, stream_id)[0]
            if stream_id is not None
            else None,
            rtt=rtt[1] if rtt is not None else None,
        )
        self.process_events(now)
        self.transmit()
        self._drain()

    def send_failed(self, sock: _ClientSocket, error: OSError) -> None:
        if not self.closed and error.errno is not None:
            self._machine.handle_send_error(self.id, sock.path, error.errno, self._loop.time())

    def _is_stateless_reset(self, data: bytes) -> bool:
        # RFC 9000 §10.3.1: a short-header-looking datagram of at least 21 octets whose last
        # 16 octets are a reset token the peer gave us.
        if len(data) < 21 or data[0] & 0x80:
            return False
        return data[-16:] in peer_reset_tokens(self.quic)

    def process_events(self, now: float) -> None:
        machine = self._machine
        event = self.quic.next_event()
        while event is not None:
            if isinstance(event, HandshakeCompleted):
                machine.handle_handshake_completed(
                    self.id, now, early_data_accepted=event.early_data_accepted
                )
            for voice_event in self.voice.handle_event(event, now):
                machine.handle_voice_event(self.id, voice_event, now)
            event = self.quic.next_event()

    def transmit_soon(self) -> None:
        if self._transmit_handle is None and not self.closed:
            self._transmit_handle = self._loop.call_soon(self._transmit_and_drain)

    def _transmit_and_drain(self) -> None:
        self.transmit()
        self._drain()

    def transmit(self) -> None:
        self._transmit_handle = None
        active = self.active
        if self.closed or active is None or not self.connected:
            return
        now = self._loop.time()
        sent = 0
        quic = self.quic
        quic.ecn_local_path = active.ecn_path
        # One socket is one path: its marking follows the path's validation (specs/ecn.md).
        active.mark(int(quic.ecn.send_codepoint(active.ecn_path)))
        for data, addr in quic.datagrams_to_send(now=now):
            sent += 1
            active.send(data, addr)
        if sent:
            self.packets_sent += sent
            self._machine.handle_datagrams_sent(self.id, now)
        self.timer.update()

    def _on_timer(self, now: float) -> None:
        self.quic.handle_timer(now)
        self.process_events(now)
        self.transmit()
        self._drain()

    def retire(self, path: PathId) -> None:
        sock = self.sockets.get(path)
        if sock is not None and sock is not self.active:
            sock.close()
            del self.sockets[path]

    def close(self, *, goodbye: bool, error_code: int = 0, reason: str = "") -> None:
        """Close the connection (with CONNECTION_CLOSE when ``goodbye``) and its sockets."""
        if self.closed:
            return
        if goodbye and self.connected:
            if error_code:
                self.voice.close(ErrorCode(error_code), reason)
            else:
                self.quic.close()
            self.transmit()
        self.closed = True
        self.timer.cancel()
        if self._transmit_handle is not None:
            self._transmit_handle.cancel()
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()


class VoiceClient:
    """A voice call from the client side. Create it with ``connect()``.

    Events for the app (``receive()``) are bounded (``quicvoice.session.inbox``): received
    audio also waits there unless ``audio_events=False`` (the playout buffer has every frame
    either way), at most 500 frames, the oldest dropped and counted; control events are never
    dropped, and a call whose app leaves 10 000 of them unread ends with ``LIMIT_EXCEEDED``.

    Audio is codec payloads (``send_audio``, ``playout.pull()``), or with ``sample_rate`` PCM
    at the app's rate: ``send_pcm`` encodes it, and turns are decoded as they arrive (one
    decoder per turn) into the playout buffer, which ``play()`` reads once per tick of the
    app's audio clock; ``AudioReceived.pcm`` carries the same samples.
    """

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
        audio_events: bool = True,
        sample_rate: int | None = None,
        ecn: EcnMode = EcnMode.L4S,
    ) -> None:
        self._server = server
        self._ecn = ecn
        self._sample_rate = None if sample_rate is None else check_app_rate(sample_rate)
        self._configuration = configuration
        self._webtransport = webtransport
        self._limits = limits
        self._authority = authority
        self._path = path
        self._ticket: SessionTicket | None = None
        self._machine = CallMachine(
            CallConfig(
                reconnect=reconnect,
                liveness_timeout=liveness_timeout,
                reconnect_timeout=reconnect_timeout,
                ipv6=":" in server[0],
            ),
            hello,
        )
        self._links: dict[LinkId, _Link] = {}
        self._inbox = EventInbox(audio=audio_events)
        self._loop = asyncio.get_running_loop()
        self._draining = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._changed: asyncio.Future[None] | None = None
        self._migrating: dict[int, asyncio.Future[Migration]] = {}
        self._open_error: OSError | None = None
        self._peer_bye: int | None = None
        self._peer_bye_event = asyncio.Event()
        self._closed = asyncio.Event()
        self._close_reason = ""
        self._ping_id = 0
        #: Packets of links already closed (the call's totals go on across resumes).
        self._packets_sent = 0
        self._packets_received = 0
        #: Response turns, buffered ahead of real time for the app's audio clock: codec
        #: payloads, or with ``sample_rate`` s16le PCM at that rate (``play()`` reads it).
        self.playout: PlayoutBuffer | None = None
        self._samples_per_frame = 320
        self._clock_rate = DEFAULT_CLOCK_RATE
        #: With ``sample_rate``: the uplink's encoder and the downlink turns' decoders.
        self._pcm_encoder: PcmEncoder | None = None
        #: The uplink's congestion response (specs/l4s.md): feed it the peer's ECN feedback
        #: and losses; ``send_pcm`` encodes Opus at its ``target_bitrate``.
        self.congestion = CongestionResponse(CongestionConfig(mode=ecn.value))
        #: Every link's ECN feedback and losses go to ``congestion`` (its mode follows the
        #: path's validation).
        self._congestion_feed = CongestionFeed(self.congestion, ecn)
        self._turn_pcm: TurnPcmDecoder | None = None
        self._played_samples = 0
        self._playing_turn: int | None = None

    # -- life cycle ----------------------------------------------------------------------

    async def open(self, local_address: Address, timeout: float) -> None:
        """Bind ``local_address``, handshake, and wait for the session (``connect()`` does this)."""
        machine = self._machine
        machine.open(local_address, self._loop.time())
        self._drain()
        if self._open_error is not None:
            raise self._open_error
        await self._until(
            lambda: machine.session is not None or machine.open_failure is not None, timeout
        )
        failure = machine.open_failure
        if failure is not None:
            if self._open_error is not None:
                raise self._open_error
            raise SessionRefusedError(failure.error_code, failure.reason)
        session = machine.session
        if session is None:
            raise ConnectTimeoutError(
                f"no voice session with {format_address(self._server)} within {timeout} s"
            )
        self._playout()

    async def close(self) -> None:
        """Close the connection and every socket."""
        self._machine.close(self._loop.time())
        self._drain()
        for link in self._links.values():
            self._close_link(link, goodbye=False)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._closed.set()
        self._peer_bye_event.set()
        self._notify()

    # -- executing the machine's actions -------------------------------------------------

    def _drain(self) -> None:
        """Execute the machine's actions (reports made meanwhile queue more; they run too)."""
        if self._draining:
            return
        self._draining = True
        try:
            machine = self._machine
            action = machine.next_action()
            while action is not None:
                self._execute(action)
                action = machine.next_action()
        finally:
            self._draining = False
        self._arm_timer()
        self._notify()

    def _execute(self, action: CallAction) -> None:
        now = self._loop.time()
        machine = self._machine
        if isinstance(action, SendAudio):
            link = self._links[action.link]
            frame = action.frame
            link.voice.send_audio(frame.payload, frame.timestamp, now, seq=frame.seq)
            stream_id = link.voice.uplink_stream_id
            if stream_id is not None:
                _, written = stream_send_offsets(link.quic, stream_id)
                machine.handle_audio_written(link.id, frame.seq, written)
            link.transmit_soon()
        elif isinstance(action, DeliverEvent):
            self._deliver(action.event)
        elif isinstance(action, SendPing):
            link = self._links[action.link]
            self._ping_id += 1
            link.quic.send_ping(self._ping_id)
            link.transmit()
        elif isinstance(action, SendEvent):
            link = self._links[action.link]
            link.voice.send_event(action.name, action.data)
            link.transmit_soon()
        elif isinstance(action, EndAudio):
            link = self._links[action.link]
            link.voice.end_audio()
            link.transmit_soon()
        elif isinstance(action, SendBye):
            link = self._links[action.link]
            link.voice.send_bye(uplink_frames=action.uplink_frames)
            link.transmit_soon()
        elif isinstance(action, SendPlayed):
            link = self._links[action.link]
            if link.voice.send_played(
                action.wire_turn_id, action.played_ms, complete=action.complete
            ):
                link.transmit_soon()
        elif isinstance(action, CancelTurn):
            link = self._links[action.link]
            for event in link.voice.cancel_turn(action.wire_turn_id):
                machine.handle_voice_event(link.id, event, now)
            link.transmit_soon()
        elif isinstance(action, OpenLink):
            self._open_link(action, now)
        elif isinstance(action, OpenPath):
            self._open_path(action, now)
        elif isinstance(action, ClosePath):
            self._links[action.link].retire(action.path)
        elif isinstance(action, CheckLocalAddress):
            vanished = address_vanished(action.host)
            machine.handle_local_address_checked(action.link, vanished, now)
        elif isinstance(action, CloseLink):
            self._close_link(
                self._links[action.link],
                goodbye=action.goodbye,
                error_code=action.error_code,
                reason=action.reason,
            )
        elif isinstance(action, MigrationFinished):
            waiter = self._migrating.pop(action.request, None)
            if waiter is not None and not waiter.done():
                if action.migration is not None:
                    waiter.set_result(action.migration)
                else:
                    waiter.set_exception(MigrationError(action.error or "migration failed"))
        else:  # pragma: no cover - every action is handled above
            raise TypeError(f"unknown call action {action!r}")

    def _open_link(self, action: OpenLink, now: float) -> None:
        link = self._links.get(action.link)
        if link is None:
            configuration = self._configuration
            if self._ticket is not None:
                configuration = replace(configuration, session_ticket=self._ticket)
            link = _Link(
                action.link,
                configuration,
                machine=self._machine,
                drain=self._drain,
                webtransport=self._webtransport,
                authority=self._authority,
                path=self._path,
                hello=action.hello,
                limits=self._limits,
                on_ticket=self._on_ticket,
                ecn=self._ecn,
            )
            self._links[action.link] = link
            feed_congestion(link.quic, self._congestion_feed, self._loop.time)
            if action.dcid is not None:
                use_initial_destination_cid(link.quic, action.dcid)
        try:
            link.active = link.bind(action.path, (action.host, action.port))
        except OSError as error:
            self._open_error = error
            self._machine.handle_link_open_failed(link.id, now, str(error))
            return
        link.start(self._server)
        self._machine.handle_link_opened(
            link.id,
            link.active.local_address,
            now,
            early_uplink=link.voice.uplink_stream_id is not None,
        )
        link.transmit()

    def _open_path(self, action: OpenPath, now: float) -> None:
        link = self._links[action.link]
        wildcard = self._machine.config.wildcard
        try:
            if action.host is None:
                host = route_source(self._server) or wildcard
                try:
                    sock = link.bind(action.path, (host, 0))
                except OSError:
                    sock = link.bind(action.path, (wildcard, 0))
            else:
                sock = link.bind(action.path, (action.host, action.port))
        except OSError as error:
            self._machine.handle_path_failed(link.id, action.path, now, str(error))
            return
        link.active = sock
        if action.new_connection_id:
            link.quic.change_connection_id()
        # An ack-eliciting packet right away: the server answers on the new path at once.
        self._ping_id += 1
        link.quic.send_ping(self._ping_id)
        self._machine.handle_path_opened(link.id, action.path, sock.local_address, now)
        link.transmit()

    def _close_link(
        self, link: _Link, *, goodbye: bool, error_code: int = 0, reason: str = ""
    ) -> None:
        if link.closed:
            return
        link.close(goodbye=goodbye, error_code=error_code, reason=reason)
        self._packets_sent += link.packets_sent
        self._packets_received += link.packets_received
        current = self._machine.current_link
        for closed in [i for i, other in self._links.items() if other.closed and i != current]:
            del self._links[closed]

    def _on_ticket(self, ticket: SessionTicket) -> None:
        self._ticket = ticket

    def _arm_timer(self) -> None:
        # Moved only when the deadline comes earlier; firing early just re-arms (as
        # ConnectionTimer does), so a deadline that moves on every packet costs nothing.
        at = self._machine.get_timer()
        if at is None:
            return
        if self._timer is not None:
            if at >= self._timer_at:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_machine_timer)

    def _on_machine_timer(self) -> None:
        self._timer = None
        at = self._machine.get_timer()
        if at is None:
            return
        now = self._loop.time()
        if at <= now:
            self._machine.handle_timer(now)
            self._drain()
        else:
            self._arm_timer()

    def _notify(self) -> None:
        changed = self._changed
        if changed is not None:
            self._changed = None
            if not changed.done():
                changed.set_result(None)

    def _change(self) -> asyncio.Future[None]:
        """The future the next ``_notify()`` completes."""
        if self._changed is None:
            self._changed = self._loop.create_future()
        return self._changed

    async def _next_change(self) -> None:
        await asyncio.shield(self._change())

    async def _until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds after some action, at most ``timeout`` seconds."""
        deadline = self._loop.time() + timeout
        while not predicate():
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return False
            try:
                # The future is made before waiting: ``wait_for`` would run a coroutine as a
                # task, which makes it only when it first runs, after a datagram already
                # queued could have changed everything and notified nobody.
                await asyncio.wait_for(asyncio.shield(self._change()), remaining)
            except TimeoutError:
                return predicate()
        return True

    # -- events --------------------------------------------------------------------------

    def _playout(self) -> PlayoutBuffer | None:
        """The playout buffer (and with ``sample_rate`` the PCM converters), made as soon as
        ``welcome`` names the codec: a turn's first frames may arrive with the welcome,
        before ``open()`` has resumed. A resume keeps the codec, so they are made once."""
        session = self._machine.session
        if self.playout is None and session is not None:
            rate = codec_clock_rate(session.codec) or DEFAULT_CLOCK_RATE
            self._clock_rate = rate
            self._samples_per_frame = rate * session.frame_ms // 1000
            if self._sample_rate is not None:
                self._pcm_encoder = PcmEncoder(
                    session.codec, self._sample_rate, frame_ms=session.frame_ms
                )
                self._turn_pcm = TurnPcmDecoder(
                    session.codec, self._sample_rate, frame_ms=session.frame_ms
                )
            self.playout = PlayoutBuffer(
                self._samples_per_frame, rate=rate, on_turn_played=self._report_played
            )
        return self.playout

    def _report_played(self, played: PlayedTurn) -> None:
        """Tell the server how much of a turn the caller heard (cancelled or played out);
        the machine knows which connection and which of the server's turn IDs it was."""
        if self._machine.report_played(played.turn_id, played.played_ms, complete=played.complete):
            self._drain()

    def _deliver(self, event: ClientEvent) -> None:
        playout = self._playout()
        turn_pcm = self._turn_pcm
        if isinstance(event, AudioReceived):
            if turn_pcm is not None:
                # Decoded as it arrives, in the order it is played: the playout buffer then
                # holds PCM, and the event carries it too, at no further cost.
                event = replace(event, pcm=turn_pcm.decode(event.turn_id, event.frame.payload))
            if playout is not None and event.turn_id is not None:
                playout.push(event.turn_id, event.frame.payload if event.pcm is None else event.pcm)
        elif isinstance(event, TurnStarted):
            if playout is not None:
                playout.start_turn(event.turn_id)
        elif isinstance(event, TurnEnded):
            if playout is not None:
                playout.end_turn(event.turn_id)
            if turn_pcm is not None:
                turn_pcm.end_turn(event.turn_id)
        elif isinstance(event, TurnCancelled):
            if playout is not None:
                playout.cancel(event.turn_id)
            if turn_pcm is not None:
                turn_pcm.end_turn(event.turn_id)
        elif isinstance(event, ByeReceived):
            self._peer_bye = event.uplink_frames
            self._peer_bye_event.set()
        elif isinstance(event, SessionClosed):
            self._close_reason = event.reason or f"error code {event.error_code:#x}"
            self._closed.set()
            self._peer_bye_event.set()
        if not self._inbox.push(event):
            waiting = self._inbox.stats().control_waiting
            self._machine.abort(
                int(ErrorCode.LIMIT_EXCEEDED),
                f"the app left {waiting} events unread (receive() or wait_event())",
            )

    def _check_pcm(self, what: str) -> None:
        if self._sample_rate is None:
            raise ValueError(
                f"{what} needs connect(..., sample_rate=N): this call uses codec payloads"
            )

    def _flush_pcm(self) -> None:
        """Send what ``send_pcm`` holds, padded to whole frames (the uplink is ending)."""
        encoder = self._pcm_encoder
        if encoder is None or self._machine.ended:
            return
        for frame in encoder.flush():
            self._machine.send_audio(frame.payload, None, self._samples_per_frame)

    # -- the call ------------------------------------------------------------------------

    @property
    def _link(self) -> _Link:
        """The connection the call is on now (during a reconnection: the latest attempt)."""
        current = self._machine.current_link
        if current is None or current not in self._links:
            raise CallEndedError("the call has no connection")
        return self._links[current]

    @property
    def session(self) -> SessionStarted | None:
        """The session as the server accepted it (after a resume: the latest ``welcome``)."""
        return self._machine.session

    @property
    def local_address(self) -> Address:
        """The local address audio is currently sent from."""
        active = self._link.active
        if active is None or self._link.closed:
            raise CallReconnectingError("the call is reconnecting and has no socket yet")
        return active.local_address

    @property
    def clock_rate(self) -> int:
        """Sample rate of the session's codec, in Hz."""
        return self._clock_rate

    @property
    def samples_per_frame(self) -> int:
        """Samples in one frame at the session's codec rate."""
        return self._samples_per_frame

    @property
    def sample_rate(self) -> int | None:
        """The app's PCM rate in Hz (``connect(sample_rate=)``), or ``None``: codec payloads."""
        return self._sample_rate

    @property
    def uplink_bitrate(self) -> int | None:
        """The Opus bitrate ``send_pcm`` encodes at now (it follows ``congestion``), bit/s;
        ``None`` for fixed-rate codecs or without ``sample_rate``."""
        encoder = self._pcm_encoder
        return encoder.bitrate if encoder is not None else None

    @property
    def playing_turn(self) -> int | None:
        """The turn of the frame the last ``play()`` gave (``None``: silence)."""
        return self._playing_turn

    @property
    def audio_decode_errors(self) -> int:
        """Downlink payloads that did not decode to PCM (each played as silence)."""
        return self._turn_pcm.decode_errors if self._turn_pcm is not None else 0

    @property
    def resumptions(self) -> tuple[Resumption, ...]:
        """Reconnections that resumed this session."""
        return self._machine.resumptions

    @property
    def reconnecting(self) -> bool:
        """Whether the connection was declared dead and the call is being resumed now."""
        return self._machine.reconnecting

    def send_audio(self, payload: bytes, timestamp: int | None = None) -> int:
        """Send one uplink frame; ``timestamp`` defaults to seq x samples per frame.

        While the call is reconnecting the frame is kept (reliable mode) and sent after the
        resume; in realtime mode it is dropped and counted. Raises ``CallEndedError`` once
        the call has ended, ``UplinkEndedError`` after ``end_audio()`` (reliable mode).
        """
        seq = self._machine.send_audio(payload, timestamp, self._samples_per_frame)
        self._drain()
        return seq

    def send_pcm(self, pcm: bytes | bytearray | memoryview | Pcm) -> int:
        """Send PCM at the app's rate (``connect(sample_rate=)``): s16le bytes or a 1-D
        int16 numpy array, any length; return how many frames went out.

        Whole frames are encoded to the session's codec and sent like ``send_audio``'s;
        less than a frame (and an odd trailing byte) is held for the next call, and
        ``end_audio()`` or ``bye()`` sends it padded with silence. Raises ``ValueError``
        without ``sample_rate``, ``TypeError``/``ValueError`` for samples of another type or
        shape, ``CallEndedError`` once the call has ended, ``UplinkEndedError`` after
        ``end_audio()`` (reliable mode).
        """
        self._check_pcm("send_pcm()")
        machine = self._machine
        encoder = self._pcm_encoder
        if machine.ended or encoder is None:
            raise CallEndedError("cannot send audio: the call has ended")
        if machine.uplink_ended:
            raise UplinkEndedError("the uplink has ended (end_audio or bye)")
        encoder.set_bitrate(self.congestion.target_bitrate)
        frames = encoder.write(pcm)
        for frame in frames:
            self._machine.send_audio(frame.payload, None, self._samples_per_frame)
        self._drain()
        return len(frames)

    def play(self) -> PcmFrame:
        """The downlink's next frame period as PCM at the app's rate: call it once per tick
        of the app's audio clock (``connect(sample_rate=)``).

        It takes the next frame from the playout buffer (as ``playout.pull()``, so what is
        played is what the ``played`` report counts), or gives a frame of silence
        (``concealed`` true) when none is buffered; ``playing_turn`` says whose frame it was.
        ``timestamp`` counts the samples played so far. ``ValueError`` without
        ``sample_rate``.
        """
        self._check_pcm("play()")
        turn_pcm, playout = self._turn_pcm, self.playout
        if turn_pcm is None or playout is None:
            raise CallEndedError("play(): the call has no session")
        item = playout.pull()
        if item is None:
            self._playing_turn, data, concealed = None, turn_pcm.silence(), True
        else:
            (self._playing_turn, data), concealed = item, False
        frame = PcmFrame(
            data=data,
            sample_rate=turn_pcm.app_rate,
            timestamp=self._played_samples,
            concealed=concealed,
        )
        self._played_samples += len(frame)
        return frame

    def end_audio(self) -> None:
        """Finish the reliable uplink: the server then knows every frame has arrived.

        PCM held by ``send_pcm`` goes out first, padded to a whole frame. While the call
        reconnects, the end waits for the connection that takes it over.
        """
        self._flush_pcm()
        self._machine.end_audio()
        self._drain()

    def send_event(self, name: str, data: Any = None) -> None:
        """Send an application event to the server (after the resume, while reconnecting;
        ``CallReconnectingError`` when 1000 already wait)."""
        self._machine.send_event(name, data)
        self._drain()

    def cancel_turn(self, turn_id: int) -> None:
        """Barge in: stop turn ``turn_id`` here at once and tell the server to stop sending it."""
        self._machine.cancel_turn(turn_id)
        self._drain()
        if self.playout is not None:
            # A turn that had fully arrived is still playing out here: flush it too (the
            # server hears of it from the ``played`` report, complete=False).
            self.playout.cancel(turn_id)

    async def receive(self) -> ClientEvent:
        """Wait for the next event; ``CallEndedError`` once the call has ended and every
        event has been read."""
        while True:
            event = self._inbox.pop()
            if event is not None:
                return event
            if self._machine.ended:
                raise CallEndedError(f"the call has ended: {self._close_reason or 'closed'}")
            await self._next_change()

    async def wait_event(self, name: str, timeout: float = 5.0) -> EventReceived:
        """Wait for the application event ``name``; the events before it stay for
        ``receive()``, in order."""

        def named(event: ClientEvent) -> bool:
            return isinstance(event, EventReceived) and event.name == name

        async def wait() -> EventReceived:
            while True:
                event = self._inbox.take_first(named)
                if isinstance(event, EventReceived):
                    return event
                if self._machine.ended:
                    raise CallEndedError(f"session closed while waiting for {name}")
                await self._next_change()

        return await asyncio.wait_for(wait(), timeout)

    async def wait_resumed(self, timeout: float = 10.0) -> SessionResumed:
        """Wait until the call has resumed after losing its connection (other events stay
        for ``receive()``)."""

        async def wait() -> SessionResumed:
            while True:
                event = self._inbox.take_first(lambda e: isinstance(e, SessionResumed))
                if isinstance(event, SessionResumed):
                    return event
                if self._machine.ended:
                    raise CallEndedError(f"session closed: {self._close_reason}")
                await self._next_change()

        return await asyncio.wait_for(wait(), timeout)

    async def bye(self, timeout: float = 5.0) -> int:
        """Finish the uplink and say goodbye; return how many uplink frames the server got.

        While the call reconnects, the goodbye waits for the connection that carries it on.
        """
        self._flush_pcm()
        self._machine.bye()
        self._drain()
        await asyncio.wait_for(self._peer_bye_event.wait(), timeout)
        if self._peer_bye is None:
            raise CallEndedError(
                f"the session closed before the server said goodbye: {self._close_reason}"
            )
        return self._peer_bye

    async def migrate(
        self, local_address: str | Address, *, new_connection_id: bool = True, timeout: float = 3.0
    ) -> Migration:
        """Move the call to ``local_address`` (a new network) and return the measured gap.

        With ``new_connection_id=False`` the CID stays the same, which is what a NAT rebinding
        looks like to the server (a passive migration). Raises ``MigrationError`` (a
        ``ConnectionError``) when the move does not complete.
        """
        if isinstance(local_address, str):
            local_address = (local_address, 0)
        request = self._machine.migrate(
            local_address,
            new_connection_id=new_connection_id,
            timeout=timeout,
            now=self._loop.time(),
        )
        waiter: asyncio.Future[Migration] = self._loop.create_future()
        self._migrating[request] = waiter
        self._drain()
        return await waiter

    def inbox_stats(self) -> InboxStats:
        """Counters of the event queue: waiting events, audio events dropped."""
        return self._inbox.stats()

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
        open_links = [other for other in self._links.values() if not other.closed]
        return replace(
            stats,
            uplink_frames_sent=self._machine.next_seq,
            uplink_frames_dropped=stats.uplink_frames_dropped + self._machine.frames_dropped,
            migrations=self._machine.migrations,
            packets_sent=self._packets_sent + sum(other.packets_sent for other in open_links),
            packets_received=self._packets_received
            + sum(other.packets_received for other in open_links),
            ecn=link.quic.ecn.path_stats(),
            ecn_mode=link.quic.ecn.mode.value,
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
    sample_rate: int | None = None,
    ecn: EcnMode | str = EcnMode.L4S,
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

    ``sample_rate`` (8000, 16000, 24000, 44100 or 48000 Hz) makes the call speak PCM at that
    rate whatever the codec on the wire: ``send_pcm()`` takes s16le samples, ``play()`` gives
    them, and the playout buffer and ``AudioReceived.pcm`` hold them. Without it the app
    sends and plays codec payloads (``send_audio()``, ``playout.pull()``).

    ``ecn`` marks every datagram (specs/ecn.md): ``"l4s"`` ECT(1), the default; ``"classic"``
    ECT(0); ``"off"`` not-ECT. A path that bleaches or mangles the marks gets not-ECT.

    Raises ``SessionRefusedError`` when the server closes before welcoming the session, with
    the close's ``error_code`` (``RESUME_REFUSED`` for a bad or stale ``resume_token``,
    ``UNSUPPORTED`` for no common codec, ``VERSION_UNSUPPORTED`` for a protocol version the
    server does not speak, ``UNAUTHENTICATED``..``REFUSED`` or an accept hook's
    own code for a caller refused, ``specs/auth.md``), and ``ConnectTimeoutError`` when no
    session is up within ``timeout`` (resolution included).
    """
    check_aioquic_version()
    ecn_mode = EcnMode.parse(ecn)
    if sample_rate is not None:
        check_app_rate(sample_rate)
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
            sample_rate=sample_rate,
            ecn=ecn_mode,
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
