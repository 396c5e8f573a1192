"""The backend: a UDP endpoint of our own that serves voice sessions with QUIC-LB CIDs.

aioquic's stock ``serve()`` makes its own CIDs and drops unknown DCIDs silently, so this
endpoint routes datagrams itself: DCID -> connection, new connections from Initials, version
negotiation, stateless resets for CIDs of this deployment that no connection owns, and the
forwarder's encapsulation (``quicvoice.encapsulation``) when a forwarder is configured.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    ProtocolNegotiated,
    QuicEvent,
)
from aioquic.quic.packet import QuicHeader, QuicPacketType, encode_quic_version_negotiation

from ..audio.codecs import DEFAULT_CODECS, CodecSpec, make_codec, negotiate
from ..audio.jitter import JitterBuffer, JitterBufferConfig
from ..auth import (
    AcceptHook,
    Caller,
    CallRequest,
    CredentialRefused,
    TokenVerifier,
    decode_caller,
    encode_caller,
)
from ..certificates import generate_certificate
from ..encapsulation import unwrap, wrap
from ..errors import InvalidStateError, StoreError
from ..healthprobe import PROBE_CLIENT
from ..observability.telemetry import NO_SESSION, BackendTelemetry, SessionTelemetry
from ..quic import QuicLbConnection, check_aioquic_version, parse_header, peek_psk_identity
from ..quiclb import LoadBalancerDecoder, QuicLbConnectionIdGenerator, stateless_reset_token
from ..reset_allowance import ResetAllowance
from ..session.codes import ErrorCode
from ..session.congestion import CongestionConfig, CongestionResponse
from ..session.congestion_feed import CongestionFeed
from ..session.connection import SessionLimits, State, VoiceConnection
from ..session.events import (
    AudioReceived,
    HelloReceived,
    SessionClosed,
    SessionStarted,
    TurnCancelled,
    VoiceEvent,
)
from ..session.messages import PROTOCOL_VERSION, Hello, UplinkMode, Welcome
from ..session.stats import Migration, SessionStats
from ..session.transport import (
    ALPN_H3,
    ALPN_VOICE,
    RawQuicTransport,
    VoiceTransport,
    WebTransportTransport,
)
from ..session.wire import MediaFrame
from ..settings import Address, format_address
from ..store import (
    AsyncCheckpointer,
    CheckpointConflicted,
    Checkpointer,
    CheckpointEvent,
    CheckpointFailed,
    CheckpointStatistics,
    RefusalReason,
    ResumeRefused,
    ResumeTokenIssuer,
    SessionRecord,
    StoreMonitor,
    open_store,
    pack_state,
    unpack_state,
)
from ..store.tickets import TicketCache
from ..version import __version__
from .accept import run_accept_hook
from .config import BackendConfig
from .congestion import feed_congestion
from .timer import ConnectionTimer
from .udp import UdpEndpoint, open_udp_endpoint

logger = logging.getLogger("quicvoice.server")

#: Codecs this server accepts (the client's order of preference wins, RFC 3264 style).
SUPPORTED_CODECS = DEFAULT_CODECS
#: RFC 9000 §14.1: Initial datagrams are padded to at least 1200 octets.
MIN_INITIAL_SIZE = 1200
#: RFC 9000 §10.3: a stateless reset is at least 21 octets, and smaller than what caused it.
MIN_STATELESS_RESET = 21
MAX_STATELESS_RESET = 43
QUIC_VERSION_1 = 0x00000001
#: New connections waiting for their TLS ticket from the store, and datagrams held for each.
MAX_PENDING_CONNECTIONS = 256
MAX_PENDING_DATAGRAMS = 8

SessionHandler = Callable[["ServerSession"], Awaitable[None]]



def stored_caller(stored: SessionRecord) -> Caller | None:
    """The caller a stored session was admitted with (``None``: an open backend's);
    ``ResumeRefused`` (state unavailable) when the stored blob cannot be read."""
    if not stored.caller:
        return None
    try:
        return decode_caller(stored.caller)
    except ValueError as error:
        raise ResumeRefused(RefusalReason.STATE_UNAVAILABLE, str(error)) from None

class ServerSession:
    """One voice session as the server application sees it.

    Events arrive through ``receive()`` (or ``async for``); turns go out through
    ``start_turn``/``send_turn_audio``/``end_turn``. Sending never blocks: data is queued and
    transmitted at the end of the current event-loop iteration, so a frame sent while handling
    a received one leaves in the same packet as the acknowledgement.
    """

    def __init__(
        self,
        connection: _ServerConnection,
        hello: Hello,
        started: SessionStarted,
        events: asyncio.Queue[VoiceEvent],
        state: dict[str, Any] | None = None,
        checkpointer: AsyncCheckpointer | None = None,
        caller: Caller | None = None,
    ) -> None:
        self._connection = connection
        # The connection's voice layer is fixed once a session exists (used once per frame).
        self._voice = connection.voice_connection()
        #: What the client asked for.
        self.hello = hello
        #: The session as accepted (``started.resumed``: it continues an earlier connection).
        self.started = started
        #: Who is calling, as their verified token says (restored on resume); ``None`` when
        #: the server checks no credentials or the caller presented none (specs/auth.md).
        self.caller = caller
        #: Application state (msgpack-serialisable), restored on resume; persist it with
        #: ``checkpoint()`` after each conversational event that changes it.
        self.state: dict[str, Any] = state if state is not None else {}
        self._checkpointer = checkpointer
        self._events = events
        self.closed = False
        #: When set, uplink frames go to this callback as they arrive, in the endpoint's own
        #: call stack, instead of through ``receive()``: no task switch per frame, for
        #: handlers that process audio synchronously (the benchmark's echo, a VAD).
        self.on_audio: Callable[[MediaFrame], None] | None = None
        #: When set, every other voice event goes to this callback instead of ``receive()``
        #: (the application API, :mod:`quicvoice.app`, routes them itself).
        self.on_event: Callable[[VoiceEvent], None] | None = None
        #: When set, called after each datagram of the session was handled: acknowledgements
        #: may have advanced, the peer may have moved.
        self.on_progress: Callable[[], None] | None = None
        #: Realtime mode only: the uplink's jitter buffer, fed as datagrams arrive. Call
        #: ``jitter_buffer.get(now)`` once per frame period for a steady stream of PCM, with
        #: losses concealed (Opus: FEC, then PLC); ``None`` in reliable mode.
        self.jitter_buffer: JitterBuffer | None = None
        if started.uplink is UplinkMode.REALTIME:
            codec = make_codec(started.codec, frame_ms=started.frame_ms)
            self.jitter_buffer = JitterBuffer(
                codec, JitterBufferConfig(frame_samples=codec.frame_samples, rate=codec.rate)
            )

    @property
    def session_id(self) -> str:
        """The session's ID."""
        return self.started.session_id

    @property
    def peer_address(self) -> Address | None:
        """The client's current address (changes when it migrates)."""
        return self._connection.peer_address

    @property
    def congestion(self) -> CongestionResponse:
        """The downlink's congestion response (specs/l4s.md): it follows the client's ECN
        feedback and QUIC's losses; Opus turns encode at its ``target_bitrate``."""
        return self._connection.congestion

    @property
    def migrations(self) -> tuple[Migration, ...]:
        """The client's moves seen so far, oldest first."""
        return self._connection.migrations

    def take_pending(self) -> list[VoiceEvent]:
        """The events queued for ``receive()`` and not taken yet (a new consumer takes over)."""
        pending = []
        while not self._events.empty():
            pending.append(self._events.get_nowait())
        return pending

    def deliver(self, event: VoiceEvent) -> None:
        """Hand an event to ``on_event``, or queue it for ``receive()``."""
        if self.on_event is not None:
            self.on_event(event)
        else:
            self._events.put_nowait(event)

    def turn_send_offsets(self, turn_id: int) -> tuple[int, int] | None:
        """(acknowledged, written) octet offsets of a turn's stream; ``None``: forgotten."""
        return self._voice.turn_send_offsets(turn_id)

    async def receive(self) -> VoiceEvent:
        """Wait for the next event; after ``SessionClosed`` it is returned again forever."""
        event = await self._events.get()
        if isinstance(event, SessionClosed):
            self._events.put_nowait(event)
        return event

    def __aiter__(self) -> ServerSession:
        return self

    async def __anext__(self) -> VoiceEvent:
        # ``receive()`` keeps returning ``SessionClosed``: the iteration ends after yielding it.
        if self.closed:
            raise StopAsyncIteration
        event = await self.receive()
        if isinstance(event, SessionClosed):
            self.closed = True
        return event

    def start_turn(self) -> int:
        """Open a response turn; return its ID."""
        turn_id = self._voice.start_turn()
        self._connection.telemetry.turn_started(turn_id)
        self._connection.transmit_soon()
        return turn_id

    def send_turn_audio(self, turn_id: int, payload: bytes, timestamp: int) -> bool:
        """Queue a frame of a turn; False when the turn was cancelled (stop generating it)."""
        sent = self._voice.send_turn_audio(turn_id, payload, timestamp)
        self._connection.transmit_soon()
        return sent

    def end_turn(self, turn_id: int) -> None:
        """Finish a turn."""
        self._voice.end_turn(turn_id)
        self._connection.telemetry.turn_ended(turn_id)
        self._connection.transmit_soon()

    def cancel_turn(self, turn_id: int) -> None:
        """Cancel a turn from the server side (the agent changed its mind)."""
        for event in self._voice.cancel_turn(turn_id):
            if isinstance(event, TurnCancelled):
                self.deliver(event)
        self._connection.telemetry.turn_ended(turn_id, cancelled_by="server")
        self._connection.transmit_soon()

    def send_event(self, name: str, data: Any = None) -> None:
        """Send an application event to the client."""
        self._voice.send_event(name, data)
        self._connection.transmit_soon()

    def send_bye(self) -> None:
        """Tell the client how many uplink frames arrived."""
        self._voice.send_bye()
        self._connection.transmit_soon()

    def close(self, code: ErrorCode | int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Close the session's connection (``code``: an ``ErrorCode`` or an application's)."""
        self._voice.close(code, reason)
        self._connection.transmit_soon()

    def stats(self) -> SessionStats:
        """A snapshot of the session's statistics."""
        return self._connection.stats()

    def checkpoint(self) -> None:
        """Save ``state`` to the session store soon (never blocks; the latest state wins).

        Call it on conversational events (an order taken, a turn finished), not per frame.
        Store failures are retried in the background and reported in ``checkpoint_stats()``.
        """
        if self._checkpointer is not None:
            self._checkpointer.checkpoint(pack_state(self.state))

    def checkpoint_stats(self) -> CheckpointStatistics | None:
        """Counters of this session's checkpoints (writes, failures, conflicts)."""
        return self._checkpointer.statistics() if self._checkpointer is not None else None

    async def finish_checkpoints(self, timeout: float = 1.0) -> bool:
        """Flush pending state to the store (bounded by ``timeout``) and stop checkpointing."""
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is None:
            return True
        try:
            return await checkpointer.flush(timeout)
        finally:
            await checkpointer.aclose()


class _Refused(Exception):
    """Inside ``_accept``: the call is refused with ``code`` (a credential or the hook said so)."""

    def __init__(self, code: int, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.detail = detail


class _ServerConnection:
    """One QUIC connection of the endpoint and the voice session on it."""

    def __init__(
        self, server: VoiceServer, quic: QuicLbConnection, original_dcid: bytes, client_scid: bytes
    ) -> None:
        self.server = server
        self.quic = quic
        #: The client's first Initial: its DCID and SCID (several attempts may share the DCID).
        self.origin = (original_dcid, client_scid)
        self.cids: set[bytes] = {original_dcid, quic.host_cid}
        self._voice: VoiceConnection | None = None
        self._transport: VoiceTransport | None = None
        self.session: ServerSession | None = None
        #: Metrics and spans of the session (``NO_SESSION`` until it is welcomed).
        self.telemetry: SessionTelemetry = NO_SESSION
        self.via_forwarder = False
        self.peer_address: Address | None = None
        self._last_receive = 0.0
        self._migrations: list[Migration] = []
        self._packets_received = 0
        self._packets_sent = 0
        self._timer = ConnectionTimer(quic, self._on_timer)
        self._transmit_handle: asyncio.Handle | None = None
        self._task: asyncio.Task[None] | None = None
        #: Voice events for the session's handler.
        self.events: asyncio.Queue[VoiceEvent] = asyncio.Queue()
        #: The downlink's congestion response, fed by this connection's ECN feedback and
        #: losses (specs/l4s.md); ``ServerSession.congestion``.
        self.congestion = CongestionResponse(CongestionConfig(mode=quic.ecn.mode.value))
        feed_congestion(
            quic, CongestionFeed(self.congestion, quic.ecn.mode), asyncio.get_running_loop().time
        )

    @property
    def migrations(self) -> tuple[Migration, ...]:
        """The peer's moves seen so far, oldest first."""
        return tuple(self._migrations)

    def voice_connection(self) -> VoiceConnection:
        if self._voice is None:
            raise InvalidStateError("no voice session on this connection yet")
        return self._voice

    def receive(
        self,
        data: bytes,
        address: Address,
        via_forwarder: bool,
        now: float,
        tos: int | None = None,
    ) -> None:
        self.via_forwarder = via_forwarder
        self._packets_received += 1
        self.quic.receive_datagram_ecn(data, address, now, tos)
        peer = self.quic.get_peer_address()
        if peer is not None:
            peer = (peer[0], peer[1])
            if self.peer_address is not None and peer != self.peer_address:
                self._migrations.append(
                    Migration(
                        from_address=format_address(self.peer_address),
                        to_address=format_address(peer),
                        gap_ms=(now - self._last_receive) * 1000,
                    )
                )
                self.telemetry.migrated(self._migrations[-1])
            self.peer_address = peer
        self._last_receive = now
        self.process_events(now)
        self.transmit_soon()
        session = self.session
        if session is not None and session.on_progress is not None:
            session.on_progress()

    def process_events(self, now: float) -> None:
        event = self.quic.next_event()
        while event is not None:
            self._on_quic_event(event, now)
            event = self.quic.next_event()

    def _on_quic_event(self, event: QuicEvent, now: float) -> None:
        if isinstance(event, ConnectionIdIssued):
            self.cids.add(event.connection_id)
            self.server.register(event.connection_id, self)
            return
        if isinstance(event, ConnectionIdRetired):
            self.cids.discard(event.connection_id)
            self.server.unregister(event.connection_id)
            return
        if isinstance(event, ProtocolNegotiated):
            transport: VoiceTransport
            if event.alpn_protocol == ALPN_H3:
                transport = WebTransportTransport(self.quic, status=self.server.status)
            else:
                transport = RawQuicTransport(self.quic)
            self._transport = transport
            self._voice = VoiceConnection(transport, limits=self.server.limits)
        if self._voice is not None:
            for voice_event in self._voice.handle_event(event, now):
                self._on_voice_event(voice_event)
        if isinstance(event, ConnectionTerminated):
            self.telemetry.closed(event.error_code, event.frame_type, event.reason_phrase)
            self.server.forget(self)

    def _on_voice_event(self, event: VoiceEvent) -> None:
        if isinstance(event, HelloReceived):
            self._task = asyncio.get_running_loop().create_task(self._accept(event.hello))
        elif self.session is not None:
            jitter = self.session.jitter_buffer
            if jitter is not None and isinstance(event, AudioReceived):
                frame = event.frame
                jitter.put(
                    sequence=frame.seq & 0xFFFF,
                    timestamp=frame.timestamp,
                    payload=frame.payload,
                    now=asyncio.get_running_loop().time(),
                )
            if isinstance(event, AudioReceived) and self.session.on_audio is not None:
                self.session.on_audio(event.frame)
                return
            if isinstance(event, TurnCancelled):
                self.telemetry.turn_ended(event.turn_id, cancelled_by="client")
            self.session.deliver(event)

    async def _accept(self, hello: Hello) -> None:
        voice = self.voice_connection()
        offered = []
        for text in hello.codecs:
            try:
                offered.append(CodecSpec.parse(text))
            except ValueError:
                continue  # a codec we cannot even parse is one we do not support
        codec = negotiate(offered, SUPPORTED_CODECS)
        if hello.version != PROTOCOL_VERSION:
            self._refuse(
                ErrorCode.VERSION_UNSUPPORTED,
                f"protocol version {hello.version} is not supported; this server speaks "
                f"version {PROTOCOL_VERSION}",
            )
            return
        if codec is None:
            names = ", ".join(str(spec) for spec in SUPPORTED_CODECS)
            self._refuse(ErrorCode.UNSUPPORTED, f"no common codec; supported codecs: {names}")
            return
        owner = f"{self.server.config.server_id.hex()}/{id(self):x}"
        record: SessionRecord | None = None
        state: dict[str, Any] = {}
        caller: Caller | None = None
        if hello.resume_token is not None:

            async def authorize(stored: SessionRecord) -> bytes | None:
                nonlocal caller
                caller = await self._authorize_resume(hello, str(codec), stored)
                blob = encode_caller(caller) if caller is not None else b""
                return None if blob == stored.caller else blob

            try:
                session_id, record, state = await self.server.resume(
                    hello.resume_token,
                    owner,
                    claim_if=lambda: voice.state is State.NEGOTIATING,
                    authorize=authorize,
                )
            except ResumeRefused as refusal:
                self.server.telemetry.resume_refused(refusal.reason.name)
                if voice.state is State.NEGOTIATING:
                    # A store that cannot answer now is no verdict on the session: the client
                    # tries again (STATE_UNAVAILABLE is not a definite refusal).
                    unavailable = refusal.reason is RefusalReason.STATE_UNAVAILABLE
                    code = ErrorCode.STATE_UNAVAILABLE if unavailable else ErrorCode.RESUME_REFUSED
                    self._refuse(code, str(refusal))
                return
            except _Refused as refusal:
                if voice.state is State.NEGOTIATING:
                    self._refuse(refusal.code, refusal.reason, refusal.detail)
                return
        else:
            session_id = secrets.token_hex(8)
            try:
                caller = self.server.credentials.authenticate(hello.token, time.time())
                await self._ask_hook(hello, str(codec), session_id, caller, resumed=False)
            except CredentialRefused as refusal:
                self._refuse(refusal.error_code, refusal.reason, refusal.detail)
                return
            except _Refused as refusal:
                if voice.state is State.NEGOTIATING:
                    self._refuse(refusal.code, refusal.reason, refusal.detail)
                return
        if voice.state is not State.NEGOTIATING:
            return  # the connection closed while the store or the hook was asked
        welcome = Welcome(
            session_id=session_id,
            codec=str(codec),
            frame_ms=hello.frame_ms,
            uplink=hello.uplink,
            server_id=self.server.config.server_id.hex(),
            resumed=record is not None,
            resume_token=self.server.resume_tokens.issue(session_id, time.time()),
            played_reports=True,
            home_cid=self.server.home_cid(),
        )
        started = voice.accept(welcome)
        checkpointer = AsyncCheckpointer(
            self.server.store,
            Checkpointer(
                session_id,
                ttl=self.server.config.state_ttl,
                base=record,
                owner=owner,
                caller=encode_caller(caller) if caller is not None else b"",
            ),
            on_event=self._on_checkpoint,
        )
        self.server.store_monitor.watch(checkpointer)
        self.session = ServerSession(
            self, hello, started, self.events, state, checkpointer, caller=caller
        )
        self.telemetry = self.server.telemetry.session_started(self.session)
        if record is None:
            # A new session is stored at once, empty: a call whose backend dies before its
            # first conversational event can still be resumed elsewhere.
            self.session.checkpoint()
        for early in voice.take_early_events():
            self._on_voice_event(early)
        self.transmit_soon()
        await self._run_handler(self.session)

    async def _authorize_resume(
        self, hello: Hello, codec: str, stored: SessionRecord
    ) -> Caller | None:
        """The caller of a session being resumed; ``_Refused`` when it may not resume."""
        try:
            caller = self.server.credentials.authenticate_resume(
                hello.token, time.time(), stored_caller(stored)
            )
        except CredentialRefused as refusal:
            raise _Refused(refusal.error_code, refusal.reason, refusal.detail) from None
        await self._ask_hook(hello, codec, stored.session_id, caller, resumed=True)
        return caller

    async def _ask_hook(
        self, hello: Hello, codec: str, session_id: str, caller: Caller | None, *, resumed: bool
    ) -> None:
        """Run the server's accept hook, if any; ``_Refused`` when it refuses the call."""
        hook = self.server.accept
        if hook is None:
            return
        request = CallRequest(
            caller=caller,
            metadata=hello.metadata,
            peer_address=self.peer_address,
            resumed=resumed,
            session_id=session_id,
            codec=codec,
            webtransport=isinstance(self._transport, WebTransportTransport),
        )
        decision = await run_accept_hook(
            hook, request, self.server.credentials.config.accept_timeout
        )
        if decision.refusal_code is not None:
            raise _Refused(decision.refusal_code, decision.reason, "the accept hook refused")

    def _refuse(self, code: int, reason: str, detail: str = "") -> None:
        """Refuse the session: an ``error`` message with ``code`` and ``reason``, then a close."""
        try:
            name = ErrorCode(code).name
        except ValueError:
            name = f"{code:#x}"
        address = format_address(self.peer_address) if self.peer_address else "?"
        logger.info(
            "session refused from %s: %s%s", address, name, f" ({detail})" if detail else ""
        )
        self.voice_connection().reject(code, reason)
        self.server.telemetry.refused(code)
        self.transmit_soon()

    def _on_checkpoint(self, event: CheckpointEvent) -> None:
        if isinstance(event, CheckpointConflicted) and self.session is not None:
            # The session was resumed on another connection (or backend): this one is stale.
            logger.info("session %s: resumed elsewhere, closing", self.session.session_id)
            self.session.close(ErrorCode.NO_ERROR, "session resumed elsewhere")
        elif isinstance(event, CheckpointFailed):
            self.server.telemetry.store_failed("checkpoint")
            logger.warning("session checkpoint failed: %s", event.error)

    async def _run_handler(self, session: ServerSession) -> None:
        try:
            await self.server.handler(session)
        except Exception as error:
            self.telemetry.handler_failed(error)
            logger.exception("session %s: handler failed", session.session_id)
            session.close(ErrorCode.INTERNAL_ERROR, "the server application failed")
        finally:
            await session.finish_checkpoints()

    def stats(self) -> SessionStats:
        return replace(
            self.voice_connection().stats(),
            migrations=tuple(self._migrations),
            packets_sent=self._packets_sent,
            packets_received=self._packets_received,
            ecn=self.quic.ecn.path_stats(),
            ecn_mode=self.quic.ecn.mode.value,
        )

    def transmit_soon(self) -> None:
        if self._transmit_handle is None:
            self._transmit_handle = asyncio.get_running_loop().call_soon(self.transmit)

    def transmit(self) -> None:
        self._transmit_handle = None
        loop = asyncio.get_running_loop()
        send = self.server.send
        forwarder = self.server.config.forwarder if self.via_forwarder else None
        quic = self.quic
        server = self.server
        for data, address in quic.datagrams_to_send(now=loop.time()):
            self._packets_sent += 1
            # A path whose ECN validation failed gets not-ECT on this datagram only; the
            # forwarder copies the encapsulated datagram's ECN bits onto what it relays.
            codepoint = quic.ecn_codepoint(address)
            if forwarder is not None:
                data, address = wrap((address[0], address[1]), data), forwarder
            if codepoint == server.ecn_codepoint:
                send(data, (address[0], address[1]))
            else:
                server.send_marked(data, (address[0], address[1]), codepoint)
        self._timer.update()

    def _on_timer(self, now: float) -> None:
        self.quic.handle_timer(now)
        self.process_events(now)
        self.transmit()

    def cancel_timers(self) -> None:
        self._timer.cancel()
        if self._transmit_handle is not None:
            self._transmit_handle.cancel()


class VoiceServer:
    """A backend serving voice sessions on raw QUIC (``quicvoice/1``) and WebTransport (``h3``)."""

    def __init__(
        self,
        config: BackendConfig,
        handler: SessionHandler,
        *,
        idle_timeout: float = 30.0,
        limits: SessionLimits | None = None,
        accept: AcceptHook | None = None,
        credentials: TokenVerifier | None = None,
    ) -> None:
        """``accept``: the accept hook (``quicvoice.auth.hook``), called for every session
        before it starts. ``credentials``: verifies callers' tokens; default: one built from
        ``config.auth``.
        """
        check_aioquic_version()
        self.config = config
        self.handler = handler
        self.limits = limits
        #: Asked about every call before it starts (``None``: every authenticated call starts).
        self.accept = accept
        #: Verifies the tokens callers present (``config.auth`` by default).
        self.credentials = credentials if credentials is not None else TokenVerifier(config.auth)
        active = config.configs[-1] if config.configs else None
        self.cid_generator = QuicLbConnectionIdGenerator(config.server_id, active, config.reset_key)
        for older in config.configs[:-1]:
            if older.cid_len <= self.cid_generator.cid_length:
                self.cid_generator.rotate(older, config.server_id)
        if active is not None:
            self.cid_generator.rotate(active, config.server_id)
        self._decoder = LoadBalancerDecoder(config.configs)
        #: Where session state is checkpointed (``config.session_store``).
        self.store = open_store(config.session_store)
        #: TLS session tickets, shared through the store so 0-RTT works on any backend.
        self.tickets = TicketCache(self.store)
        #: Tells the sessions' checkpointers when the store recovers or lost its records.
        self.store_monitor = StoreMonitor(self.store)
        self._pending_initials: dict[
            tuple[bytes, bytes], list[tuple[bytes, Address, bool, int | None]]
        ] = {}
        #: Connections by their client's first Initial (DCID, SCID): resume attempts all send
        #: their first flight to the session's home CID, each from its own SCID.
        self._origins: dict[tuple[bytes, bytes], _ServerConnection] = {}
        #: Issues and checks the resume tokens sent in ``welcome``.
        self.resume_tokens = ResumeTokenIssuer(
            {config.resume_key_id: config.effective_resume_key},
            config.resume_key_id,
            config.token_ttl,
        )
        self.quic_configuration = QuicConfiguration(
            is_client=False,
            alpn_protocols=[ALPN_VOICE, ALPN_H3],
            connection_id_length=self.cid_generator.cid_length,
            max_datagram_frame_size=65536,
            idle_timeout=idle_timeout,
        )
        if config.certificate is not None and config.private_key is not None:
            self.quic_configuration.load_cert_chain(config.certificate, config.private_key)
            self.certificate_sha256: bytes | None = None
        else:
            development = generate_certificate()
            self.quic_configuration.certificate = development.certificate
            self.quic_configuration.private_key = development.private_key
            self.certificate_sha256 = development.sha256
        self._connections: dict[bytes, _ServerConnection] = {}
        self._transport: UdpEndpoint | None = None
        #: The ECN codepoint the socket marks every datagram with (``config.ecn``); a path
        #: whose validation failed gets not-ECT datagram by datagram (specs/ecn.md).
        self.ecn_codepoint = int(config.ecn.codepoint)
        #: Which unknown-CID short headers get a stateless reset (strangers', probes').
        self._resets = ResetAllowance(config.reset_key)
        #: Datagrams by what happened to them.
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "datagrams",
                "unparsable",
                "bad_encapsulation",
                "version_negotiation",
                "new_connections",
                "stateless_resets",
                "dropped_unknown_cid",
                "probes_answered",
            ),
            0,
        )
        #: Metrics (``/metrics`` when ``config.metrics`` is set) and OpenTelemetry spans.
        self.telemetry = BackendTelemetry(
            server_id=config.server_id.hex(),
            version=__version__,
            endpoint_counters=self.counters,
            engine="aioquic",
        )

    @property
    def address(self) -> Address:
        """The bound UDP address."""
        if self._transport is None:
            raise InvalidStateError("the server is not started")
        return self._transport.local_address

    async def start(self) -> None:
        """Bind the UDP socket and start serving (and ``/metrics`` when configured)."""
        await self.telemetry.start(self.config.metrics)
        self._transport = await open_udp_endpoint(
            self.config.listen, self._on_datagram, ecn=self.config.ecn.codepoint
        )
        self.store_monitor.start()
        self._warn_if_open()

    def _warn_if_open(self) -> None:
        """Say loudly when this backend lets callers in without a credential."""
        if not self.credentials.enabled:
            decides = "it ACCEPTS ANYONE who can reach it"
            if self.accept is not None:
                decides = "the accept hook alone decides who may call"
            logger.warning(
                "no token keys configured ([auth] keys): callers are not authenticated and %s "
                "(specs/auth.md)",
                decides,
            )
        elif not self.credentials.required:
            logger.warning(
                "auth.required = false: callers without a token are accepted (specs/auth.md)"
            )

    def close(self) -> None:
        """Close every connection and the socket."""
        for connection in set(self._connections.values()):
            connection.quic.close(error_code=ErrorCode.NO_ERROR, reason_phrase="server shutdown")
            connection.transmit()
            connection.cancel_timers()
            connection.telemetry.closed(ErrorCode.NO_ERROR, None, "server shutdown")
        self._connections.clear()
        self._origins.clear()
        if self._transport is not None:
            self._transport.close()
        self.store_monitor.stop()
        self.telemetry.close()

    async def aclose(self) -> None:
        """``close()``, then release the ticket cache and the session store."""
        self.close()
        await self.telemetry.wait_closed()
        await self.store_monitor.aclose()
        await self.tickets.aclose()
        await self.store.aclose()

    async def resume(
        self,
        token: bytes,
        owner: str,
        *,
        claim_if: Callable[[], bool] | None = None,
        authorize: Callable[[SessionRecord], Awaitable[bytes | None]] | None = None,
    ) -> tuple[str, SessionRecord, dict[str, Any]]:
        """Verify a resume token, load the session and claim it for ``owner``.

        Raises ``ResumeRefused`` for a bad token, an unknown or expired session, or a store
        that cannot be read; claiming bumps the record's version, so the connection that held
        the session before sees its next checkpoint refused and closes. ``authorize`` is
        awaited with the loaded record before the claim: it raises to refuse (the session
        stays where it is) or returns a new caller blob for the record (``None``: keep it).
        ``claim_if`` is asked just before the claim: false (the asking connection closed while
        the record loaded) leaves the session where it is and refuses with ``ABANDONED``.
        """
        session_id = self.resume_tokens.verify(token, time.time())
        try:
            record = await self.store.load(session_id)
            if record is None:
                raise ResumeRefused(RefusalReason.UNKNOWN_SESSION, "no state for this session")
            state = unpack_state(record.state)
            if not isinstance(state, dict):
                raise ResumeRefused(RefusalReason.STATE_UNAVAILABLE, "stored state is not a map")
            caller = await authorize(record) if authorize is not None else None
            if claim_if is not None and not claim_if():
                raise ResumeRefused(RefusalReason.ABANDONED, "the connection closed meanwhile")
            claimed = await self.store.save(
                record.successor(
                    owner=owner, expires_at=time.time() + self.config.state_ttl, caller=caller
                ),
                record.version,
            )
        except StoreError as error:
            self.telemetry.store_failed("resume")
            raise ResumeRefused(RefusalReason.STATE_UNAVAILABLE, str(error)) from None
        return session_id, claimed, state

    def status(self) -> dict[str, Any]:
        """The JSON status served at ``GET /``."""
        sessions = {id(c) for c in self._connections.values() if c.session is not None}
        return {
            "server_id": self.config.server_id.hex(),
            "version": __version__,
            "sessions": len(sessions),
            "alpn": [ALPN_VOICE, ALPN_H3],
        }

    def sessions(self) -> list[ServerSession]:
        """The sessions currently open."""
        found = {id(c): c.session for c in self._connections.values() if c.session is not None}
        return [s for s in found.values() if s is not None]

    def send(self, data: bytes, address: Address) -> None:
        """Send one datagram from the server's socket (marked as ``ecn_codepoint`` says)."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.sendto(data, address)

    def send_marked(self, data: bytes, address: Address, codepoint: int) -> None:
        """Send one datagram with ECN ``codepoint`` instead of the socket's marking."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.send_marked(data, address, codepoint)

    def register(self, cid: bytes, connection: _ServerConnection) -> None:
        """Route datagrams for ``cid`` to ``connection``."""
        self._connections[cid] = connection

    def unregister(self, cid: bytes) -> None:
        """Stop routing ``cid``."""
        self._connections.pop(cid, None)

    def home_cid(self) -> bytes | None:
        """A CID of this backend for a session's resume attempts (``welcome``'s ``home_cid``),
        or ``None`` without a QUIC-LB config (nothing would route it here).

        It is freshly generated and registered nowhere: an Initial sent to it starts a new
        connection here, as any client-chosen DCID does (RFC 9000 §7.2).
        """
        if not self.config.configs:
            return None
        return self.cid_generator.generate()

    def forget(self, connection: _ServerConnection) -> None:
        """Drop a terminated connection."""
        for cid in connection.cids:
            if self._connections.get(cid) is connection:
                del self._connections[cid]
        if self._origins.get(connection.origin) is connection:
            del self._origins[connection.origin]
        connection.cancel_timers()

    def _on_datagram(self, data: bytes, address: Address, tos: int | None = None) -> None:
        self.counters["datagrams"] += 1
        via_forwarder = False
        if self.config.forwarder is not None and address == self.config.forwarder:
            try:
                address, data = unwrap(data)
            except ValueError:
                self.counters["bad_encapsulation"] += 1
                return
            via_forwarder = True
        cid_length = self.cid_generator.cid_length
        # Nearly every datagram is a short-header packet of a known connection (RFC 9000
        # §17.3: form bit 0, fixed bit 1, then the DCID): route it without a full header
        # parse; aioquic parses it anyway. Anything else takes the general path below.
        if len(data) > cid_length and data[0] & 0xC0 == 0x40:
            connection = self._connections.get(data[1 : 1 + cid_length])
            if connection is not None:
                now = asyncio.get_running_loop().time()
                connection.receive(data, address, via_forwarder, now, tos)
                return
        try:
            header = parse_header(data, cid_length)
        except ValueError:
            self.counters["unparsable"] += 1
            return
        loop = asyncio.get_running_loop()
        connection = self._connections.get(header.destination_cid)
        if (
            connection is not None
            and header.version is not None
            and connection.origin[0] == header.destination_cid
            and connection.origin[1] != header.source_cid
        ):
            # Another client connection sent to the same DCID (the next resume attempt to a
            # session's home CID): its own connection, or a new one.
            connection = self._origins.get((header.destination_cid, header.source_cid))
        if connection is not None:
            connection.receive(data, address, via_forwarder, loop.time(), tos)
            return
        if header.version is not None:
            self._on_unknown_long_header(data, header, address, via_forwarder, loop.time(), tos)
        else:
            self._maybe_reset(data, header.destination_cid, address, via_forwarder, loop.time())

    def _on_unknown_long_header(
        self,
        data: bytes,
        header: QuicHeader,
        address: Address,
        via_forwarder: bool,
        now: float,
        tos: int | None = None,
    ) -> None:
        if header.packet_type == QuicPacketType.VERSION_NEGOTIATION:
            return
        if header.version not in self.quic_configuration.supported_versions:
            self.counters["version_negotiation"] += 1
            self._reply(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=self.quic_configuration.supported_versions,
                ),
                address,
                via_forwarder,
            )
            return
        if header.packet_type != QuicPacketType.INITIAL or len(data) < MIN_INITIAL_SIZE:
            self.counters["dropped_unknown_cid"] += 1
            return
        origin = (header.destination_cid, header.source_cid)
        pending = self._pending_initials.get(origin)
        if pending is not None:
            if len(pending) < MAX_PENDING_DATAGRAMS:
                pending.append((data, address, via_forwarder, tos))
            return
        label = peek_psk_identity(data, self.cid_generator.cid_length)
        if label is not None and not self.tickets.has(label):
            if len(self._pending_initials) >= MAX_PENDING_CONNECTIONS:
                self.counters["dropped_unknown_cid"] += 1
                return
            # The client resumes with a ticket another backend issued: fetch it from the store
            # first (aioquic asks for it synchronously, inside the handshake).
            self._pending_initials[origin] = [(data, address, via_forwarder, tos)]
            asyncio.get_running_loop().create_task(self._prefetch(origin, label))
            return
        self._accept_connection(origin, data, address, via_forwarder, now, tos)

    async def _prefetch(self, origin: tuple[bytes, bytes], label: bytes) -> None:
        try:
            await self.tickets.prefetch(label)
        finally:
            datagrams = self._pending_initials.pop(origin, [])
        now = asyncio.get_running_loop().time()
        for index, (data, address, via_forwarder, tos) in enumerate(datagrams):
            connection = self._origins.get(origin)
            if index == 0 or connection is None:
                self._accept_connection(origin, data, address, via_forwarder, now, tos)
            else:
                connection.receive(data, address, via_forwarder, now, tos)

    def _accept_connection(
        self,
        origin: tuple[bytes, bytes],
        data: bytes,
        address: Address,
        via_forwarder: bool,
        now: float,
        tos: int | None = None,
    ) -> None:
        dcid = origin[0]
        quic = QuicLbConnection(
            configuration=self.quic_configuration,
            cid_generator=self.cid_generator,
            original_destination_connection_id=dcid,
            session_ticket_fetcher=self.tickets.fetch,
            session_ticket_handler=self.tickets.handle,
            ecn=self.config.ecn,
        )
        connection = _ServerConnection(self, quic, dcid, origin[1])
        for cid in connection.cids:
            self.register(cid, connection)
        self._origins[origin] = connection
        self.counters["new_connections"] += 1
        connection.receive(data, address, via_forwarder, now, tos)

    def _maybe_reset(
        self, data: bytes, dcid: bytes, address: Address, via_forwarder: bool, now: float
    ) -> None:
        # RFC 9000 §10.3: answer a short header for a CID of this deployment that no connection
        # here owns (e.g. after a restart) with a reset smaller than the packet that caused it.
        size = min(len(data) - 1, MAX_STATELESS_RESET)
        if size < MIN_STATELESS_RESET or not isinstance(self._decoder.decode(dcid), bytes):
            self.counters["dropped_unknown_cid"] += 1
            return
        if via_forwarder and address == PROBE_CLIENT and self._answer_probe(data, dcid, now):
            self.counters["probes_answered"] += 1
            self._send_reset(dcid, size, address, via_forwarder)
            return
        self.counters["dropped_unknown_cid"] += 1
        if not self._resets.allow_stranger(now):
            return
        self._send_reset(dcid, size, address, via_forwarder)

    def _answer_probe(self, data: bytes, dcid: bytes, now: float) -> bool:
        """Whether an authentic, fresh health probe may be answered (from its own allowance)."""
        return self._resets.answer_probe(data, len(dcid), now, time.time())

    def _send_reset(self, dcid: bytes, size: int, address: Address, via_forwarder: bool) -> None:
        token = stateless_reset_token(self.config.reset_key, dcid)
        unpredictable = os.urandom(size - len(token))
        # Short-header form: 0b01 then random bits (RFC 9000 §10.3, Figure 10).
        first = 0x40 | (unpredictable[0] & 0x3F)
        self.counters["stateless_resets"] += 1
        self._reply(bytes((first,)) + unpredictable[1:] + token, address, via_forwarder)

    def _reply(self, data: bytes, address: Address, via_forwarder: bool) -> None:
        if via_forwarder and self.config.forwarder is not None:
            self.send(wrap(address, data), self.config.forwarder)
        else:
            self.send(data, address)
