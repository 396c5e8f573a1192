"""A raw-QUIC voice backend on the ngtcp2 engine: the real voice layer and the app per call.

server = Ngtcp2VoiceServer(engine_config, session_handler(app))
address = await server.start()
...
server.close()

Each connection gets an ``Ngtcp2Transport`` and a ``VoiceConnection`` (the same sans-I/O voice
layer aioquic backends run); a ``hello`` is answered with ``welcome`` and the handler runs with
the same ``ServerSession`` ``VoiceServer`` gives it, so ``quicvoice.app`` apps
(``session_handler(app)``) run unchanged; callers' tokens are checked and the accept hook asked
as ``VoiceServer`` does. Given ``services`` (a ``VoiceServer`` that is never started: its session
store, resume tokens, credentials and ``resume()``, which are engine-independent), sessions are
checkpointed, ``welcome`` carries a resume token and a ``hello`` with one resumes the stored
state; without it such a ``hello`` is refused with ``RESUME_REFUSED``. ``welcome``
carries a ``home_cid`` (a fresh CID of this backend, given to no connection) for resume
attempts; behind a forwarder the endpoint unwraps and wraps its datagrams. Its
``telemetry`` (a ``BackendTelemetry``, ``/metrics`` when given ``metrics``) gets the hooks the
aioquic backend calls, at the same moments, and the endpoint's counters under the same names
(``telemetry.py`` here). Not done yet (specs/engine-ngtcp2.md): WebTransport, 0-RTT.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from ..asyncio.accept import run_accept_hook
from ..asyncio.server import ServerSession, VoiceServer, stored_caller
from ..audio.codecs import DEFAULT_CODECS, CodecSpec, negotiate
from ..auth import (
    AcceptHook,
    AuthConfig,
    Caller,
    CallRequest,
    CredentialRefused,
    TokenVerifier,
    encode_caller,
)
from ..observability.metrics import error_code_name
from ..observability.telemetry import NO_SESSION, BackendTelemetry, SessionTelemetry
from ..session.codes import ErrorCode
from ..session.congestion import CongestionConfig, CongestionResponse
from ..session.connection import SessionLimits, State, VoiceConnection
from ..session.events import AudioReceived, HelloReceived, TurnCancelled, VoiceEvent
from ..session.messages import PROTOCOL_VERSION, Hello, Welcome
from ..session.stats import Migration, SessionStats
from ..session.transport import Closed, Datagram, Ready, StreamAborted
from ..settings import format_address
from ..store import (
    AsyncCheckpointer,
    CheckpointConflicted,
    Checkpointer,
    CheckpointEvent,
    CheckpointFailed,
    RefusalReason,
    ResumeRefused,
    SessionRecord,
)
from ..version import __version__
from .endpoint import Address, ConnectionEnd, EngineConfig, Ngtcp2Endpoint
from .server import Ngtcp2Server
from .telemetry import EndpointCounters, close_terms
from .transport import NS, Ngtcp2Transport

if TYPE_CHECKING:
    from .. import _ngtcp2

logger = logging.getLogger(__name__)

SessionHandler = Callable[[ServerSession], Awaitable[None]]


class _HookRefused(Exception):
    """Inside ``_accept``: the accept hook refused the call."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Ngtcp2Call:
    """One connection of the ngtcp2 voice backend: its voice session and the app running it.

    The endpoint feeds it (``receive_events``, ``close_request``, ``connection_closed``);
    ``ServerSession`` drives it back (``voice_connection``, ``transmit_soon``, ``stats``).
    """

    def __init__(self, server: Ngtcp2VoiceServer, native: _ngtcp2.Connection) -> None:
        self.server = server
        self.transport = Ngtcp2Transport(native)
        self.voice = VoiceConnection(self.transport, limits=server.limits)
        self.session: ServerSession | None = None
        #: Metrics and spans of the session (``NO_SESSION`` until it is welcomed).
        self.telemetry: SessionTelemetry = NO_SESSION
        self.peer_address: Address | None = None
        self.events: asyncio.Queue[VoiceEvent] = asyncio.Queue()
        #: The downlink's congestion response (``ServerSession.congestion``). This engine
        #: neither marks ECN nor reports losses yet, so it keeps the encoder's bitrate.
        self.congestion = CongestionResponse(CongestionConfig(mode="off"))
        self._migrations: list[Migration] = []
        self._last_receive = 0
        self._handshake_seen = False
        self._task: asyncio.Task[None] | None = None
        self._transmit_handle: asyncio.Handle | None = None
        self._packets_received = 0
        #: Inside ``receive_events``: the endpoint flushes right after, no transmit needed.
        self._receiving = False

    @property
    def migrations(self) -> tuple[Migration, ...]:
        """The peer's moves seen so far, oldest first."""
        return tuple(self._migrations)

    def voice_connection(self) -> VoiceConnection:
        """The session's voice layer."""
        return self.voice

    # -- fed by the endpoint --------------------------------------------------------------

    def stream_data(self, stream_id: int, data: bytes, fin: bool) -> None:
        """Unused: the endpoint calls ``receive_events`` for a session application."""
        self.receive_events([(stream_id, data, fin)], self.peer_address or ("", 0), 0)

    def receive_events(
        self, events: list[tuple[int, bytes, bool]], remote: Address, now: int
    ) -> None:
        """Feed what one datagram brought to the voice layer and act on its events."""
        self._packets_received += 1
        if self.peer_address is not None and remote != self.peer_address:
            self._migrations.append(
                Migration(
                    from_address=format_address(self.peer_address),
                    to_address=format_address(remote),
                    gap_ms=(now - self._last_receive) / 1e6,
                )
            )
            self.telemetry.migrated(self._migrations[-1])
        self.peer_address = remote
        self._last_receive = now
        native = self.transport.native
        self._receiving = True
        try:
            self._feed(native, events, now / NS)
            session = self.session
            if session is not None and session.on_progress is not None:
                session.on_progress()
        finally:
            self._receiving = False

    def _feed(
        self, native: _ngtcp2.Connection, events: list[tuple[int, bytes, bool]], seconds: float
    ) -> None:
        """Hand the voice layer, in order, the handshake's completion (once), the stream data
        and DATAGRAM frames, then the peer's stream aborts; act on each one's voice events.
        The voice layer's transport events are made here, without aioquic's in between, and
        stream data (once per frame) without an event at all."""
        voice = self.voice
        on_voice_event = self._on_voice_event
        aborts = native.take_aborts()
        if not self._handshake_seen and native.handshake_completed:
            self._handshake_seen = True
            for voice_event in voice.handle_transport_event(Ready(), seconds):
                on_voice_event(voice_event)
        handle_stream_data = voice.handle_stream_data
        for stream_id, data, fin in events:
            if stream_id >= 0:
                voice_events = handle_stream_data(stream_id, data, fin, seconds)
            else:
                voice_events = voice.handle_transport_event(Datagram(data), seconds)
            for voice_event in voice_events:
                on_voice_event(voice_event)
        for stream_id, code, reset in aborts:
            aborted = StreamAborted(stream_id, code, reset=reset)
            for voice_event in voice.handle_transport_event(aborted, seconds):
                on_voice_event(voice_event)

    def close_request(self, now: int) -> tuple[int, str] | None:
        """The close the voice layer asked for, once its last words are delivered."""
        return self.transport.close_request(now)

    def connection_closed(
        self, error_code: int, reason: str, end: ConnectionEnd = ConnectionEnd.APPLICATION
    ) -> None:
        """The connection ended: the voice layer and the app learn it (``SessionClosed``),
        then the session's telemetry (its close code)."""
        code = 0 if end is ConnectionEnd.FAILED else error_code  # (ngtcp2's own error there)
        for voice_event in self.voice.handle_transport_event(Closed(code, reason), 0.0):
            self._on_voice_event(voice_event)
        self.telemetry.closed(*close_terms(error_code, reason, end))
        if self._transmit_handle is not None:
            self._transmit_handle.cancel()
            self._transmit_handle = None
        self.server.forget(self)

    # -- voice events -----------------------------------------------------------------------

    def _on_voice_event(self, event: VoiceEvent) -> None:
        session = self.session
        if session is None:
            if isinstance(event, HelloReceived):
                loop = asyncio.get_running_loop()
                self._task = loop.create_task(self._accept(event.hello))
            return
        if isinstance(event, AudioReceived):
            jitter = session.jitter_buffer
            if jitter is not None:  # realtime uplink: the app plays it out of the buffer
                frame = event.frame
                now = asyncio.get_running_loop().time()
                jitter.put(
                    sequence=frame.seq & 0xFFFF,
                    timestamp=frame.timestamp,
                    payload=frame.payload,
                    now=now,
                )
            if session.on_audio is not None:
                session.on_audio(event.frame)
                return
        elif isinstance(event, TurnCancelled):
            self.telemetry.turn_ended(event.turn_id, cancelled_by="client")
        session.deliver(event)

    async def _accept(self, hello: Hello) -> None:
        voice = self.voice
        server = self.server
        services = server.services
        refusal = _refusal(hello, resumable=services is not None)
        if refusal is not None:
            self._refuse(*refusal)
            return
        codec = negotiate(_offered(hello), server.codecs)
        assert codec is not None  # _refusal checked it
        owner = f"{server.config.server_id.hex()}/{id(self):x}"
        record: SessionRecord | None = None
        state: dict[str, Any] = {}
        caller: Caller | None = None
        try:
            if hello.resume_token is not None:
                assert services is not None  # _refusal checked it

                async def authorize(stored: SessionRecord) -> bytes | None:
                    nonlocal caller
                    caller = await self._authorize_resume(hello, str(codec), stored)
                    blob = encode_caller(caller) if caller is not None else b""
                    return None if blob == stored.caller else blob

                session_id, record, state = await services.resume(
                    hello.resume_token,
                    owner,
                    claim_if=lambda: voice.state is State.NEGOTIATING,
                    authorize=authorize,
                )
            else:
                session_id = secrets.token_hex(8)
                caller = server.credentials.authenticate(hello.token, time.time())
                await self._ask_hook(hello, str(codec), session_id, caller, resumed=False)
        except ResumeRefused as refused:
            server.telemetry.resume_refused(refused.reason.name)
            # A store that cannot answer now is no verdict on the session: the client retries.
            unavailable = refused.reason is RefusalReason.STATE_UNAVAILABLE
            code = ErrorCode.STATE_UNAVAILABLE if unavailable else ErrorCode.RESUME_REFUSED
            self._refuse(code, str(refused))
            return
        except CredentialRefused as refused:
            self._refuse(refused.error_code, refused.reason)
            return
        except _HookRefused as refused:
            self._refuse(refused.code, refused.reason)
            return
        if voice.state is not State.NEGOTIATING:
            return  # the connection closed while the store or the hook was asked
        checkpointer = None
        if services is not None:
            checkpointer = AsyncCheckpointer(
                services.store,
                Checkpointer(
                    session_id,
                    ttl=services.config.state_ttl,
                    base=record,
                    owner=owner,
                    caller=encode_caller(caller) if caller is not None else b"",
                ),
                on_event=self._on_checkpoint,
            )
            services.store_monitor.watch(checkpointer)
        welcome = Welcome(
            session_id=session_id,
            codec=str(codec),
            frame_ms=hello.frame_ms,
            uplink=hello.uplink,
            server_id=server.config.server_id.hex(),
            resumed=record is not None,
            resume_token=(
                services.resume_tokens.issue(session_id, time.time())
                if services is not None
                else None
            ),
            played_reports=True,
            home_cid=server.endpoint.generator.generate(),
        )
        started = voice.accept(welcome)
        # ServerSession needs of its connection only what this class has (voice_connection,
        # telemetry, transmit_soon, peer_address, migrations, stats): it is typed with the
        # aioquic shell's private class, so the type checker is told so here.
        session = ServerSession(
            cast(Any, self), hello, started, self.events, state, checkpointer, caller=caller
        )
        self.session = session
        self.telemetry = server.telemetry.session_started(session)
        if checkpointer is not None and record is None:
            session.checkpoint()  # stored at once: resumable even before its first event
        for early in voice.take_early_events():
            self._on_voice_event(early)
        self.transmit_soon()
        try:
            await server.handler(session)
        except Exception as error:
            self.telemetry.handler_failed(error)
            logger.exception("session %s: handler failed", session_id)
            session.close(ErrorCode.INTERNAL_ERROR, "the server application failed")
        finally:
            await session.finish_checkpoints()

    async def _authorize_resume(
        self, hello: Hello, codec: str, stored: SessionRecord
    ) -> Caller | None:
        """The caller of a session being resumed (its stored caller, re-checked)."""
        credentials = self.server.credentials
        caller = credentials.authenticate_resume(hello.token, time.time(), stored_caller(stored))
        await self._ask_hook(hello, codec, stored.session_id, caller, resumed=True)
        return caller

    async def _ask_hook(
        self, hello: Hello, codec: str, session_id: str, caller: Caller | None, *, resumed: bool
    ) -> None:
        """Ask the accept hook, if any; ``_HookRefused`` when it refuses."""
        server = self.server
        if server.accept is None:
            return
        request = CallRequest(
            caller=caller,
            metadata=hello.metadata,
            peer_address=self.peer_address,
            resumed=resumed,
            session_id=session_id,
            codec=codec,
        )
        timeout = server.credentials.config.accept_timeout
        decision = await run_accept_hook(server.accept, request, timeout)
        if decision.refusal_code is not None:
            raise _HookRefused(decision.refusal_code, decision.reason)

    def _refuse(self, code: int, reason: str) -> None:
        """Refuse the session (an ``error`` message, then a close) and count it, unless the
        connection closed meanwhile."""
        if self.voice.state is not State.NEGOTIATING:
            return
        address = format_address(self.peer_address) if self.peer_address else "?"
        logger.info("session refused from %s: %s", address, error_code_name(code))
        self.voice.reject(code, reason)
        self.server.telemetry.refused(code)
        self.transmit_soon()

    def _on_checkpoint(self, event: CheckpointEvent) -> None:
        session = self.session
        if isinstance(event, CheckpointConflicted) and session is not None:
            # The session was resumed on another connection (or backend): this one is stale.
            session.close(ErrorCode.NO_ERROR, "session resumed elsewhere")
        elif isinstance(event, CheckpointFailed):
            self.server.telemetry.store_failed("checkpoint")
            logger.warning("session checkpoint failed: %s", event.error)

    # -- driven by ServerSession -------------------------------------------------------------

    def transmit_soon(self) -> None:
        """Send what the app wrote at the end of this event-loop iteration (at once, when
        written while a datagram is handled: the endpoint flushes then)."""
        if self._transmit_handle is None and not self._receiving:
            loop = asyncio.get_running_loop()
            self._transmit_handle = loop.call_soon(self._transmit)

    def _transmit(self) -> None:
        self._transmit_handle = None
        self.server.transmit(self)

    def stats(self) -> SessionStats:
        """The session's statistics."""
        return replace(
            self.voice.stats(),
            migrations=tuple(self._migrations),
            packets_received=self._packets_received,
        )

    def cancel(self) -> None:
        """Stop the app's task (the server is closing)."""
        if self._task is not None:
            self._task.cancel()


def _offered(hello: Hello) -> list[CodecSpec]:
    offered = []
    for text in hello.codecs:
        try:
            offered.append(CodecSpec.parse(text))
        except ValueError:
            continue  # a codec we cannot even parse is one we do not support
    return offered


def _refusal(hello: Hello, *, resumable: bool) -> tuple[int, str] | None:
    """Why this shell refuses ``hello`` (code, message), or None."""
    if hello.version != PROTOCOL_VERSION:
        return (
            ErrorCode.VERSION_UNSUPPORTED,
            f"protocol version {hello.version} is not supported; this server speaks "
            f"version {PROTOCOL_VERSION}",
        )
    if negotiate(_offered(hello), DEFAULT_CODECS) is None:
        names = ", ".join(str(spec) for spec in DEFAULT_CODECS)
        return ErrorCode.UNSUPPORTED, f"no common codec; supported codecs: {names}"
    if hello.resume_token is not None and not resumable:
        return (
            ErrorCode.RESUME_REFUSED,
            "this backend (engine ngtcp2) has no session store: it cannot resume sessions",
        )
    return None


class Ngtcp2VoiceServer:
    """A backend serving raw-QUIC voice sessions (``quicvoice/1``) on the ngtcp2 engine."""

    def __init__(
        self,
        config: EngineConfig,
        handler: SessionHandler,
        *,
        limits: SessionLimits | None = None,
        accept: AcceptHook | None = None,
        credentials: TokenVerifier | None = None,
        services: VoiceServer | None = None,
        metrics: Address | None = None,
    ) -> None:
        """``accept``: the accept hook, asked about every call before it starts;
        ``credentials``: verifies callers' tokens (default: ``services``' or an open
        backend's); ``services``: an unstarted ``VoiceServer`` whose session store, resume
        tokens and ``resume()`` this backend uses (``None``: no store, no resume);
        ``metrics``: where ``start`` serves ``/metrics`` (``None``: nowhere)."""
        self.config = config
        self.metrics = metrics
        self.handler = handler
        self.limits = limits or SessionLimits()
        self.accept = accept
        self.services = services
        if credentials is None and services is not None:
            credentials = services.credentials
        self.credentials = credentials or TokenVerifier(AuthConfig())
        self.codecs = DEFAULT_CODECS
        self._calls: set[Ngtcp2Call] = set()
        #: The sans-I/O endpoint (its ``stats``, ``generator`` and CIDs are public).
        self.endpoint = Ngtcp2Endpoint(config, application=self._new_call)
        self._io = Ngtcp2Server(config, self.endpoint)
        #: Metrics (``/metrics`` when ``metrics`` is set) and OpenTelemetry spans, as the
        #: aioquic backend's; ``services`` reports its store failures to it too.
        self.telemetry = BackendTelemetry(
            server_id=config.server_id.hex(),
            version=__version__,
            endpoint_counters=EndpointCounters(self.endpoint.stats, self._io),
            engine="ngtcp2",
        )
        if services is not None:
            services.telemetry = self.telemetry

    def _new_call(self, native: Any, server_id: str) -> Ngtcp2Call:
        call = Ngtcp2Call(self, native)
        self._calls.add(call)
        return call

    async def start(self) -> Address:
        """Serve ``/metrics`` (when configured), bind ``config.local`` and serve; return the
        bound address. ``ConfigurationError`` naming ``metrics`` when its address cannot be
        bound (nothing is left listening then)."""
        await self.telemetry.start(self.metrics)
        try:
            return await self._io.start()
        except BaseException:
            self.telemetry.close()
            await self.telemetry.wait_closed()
            raise

    def sessions(self) -> list[ServerSession]:
        """The sessions running now."""
        return [call.session for call in self._calls if call.session is not None]

    def transmit(self, call: Ngtcp2Call) -> None:
        """Send what ``call``'s connection has queued."""
        self._io.send(self.endpoint.transmit(call, time.monotonic_ns()))

    def forget(self, call: Ngtcp2Call) -> None:
        """``call``'s connection has ended."""
        self._calls.discard(call)

    async def wait_closed(self) -> None:
        """Wait until the socket and ``/metrics`` are closed (after ``close`` or ``abort``):
        their ports are free."""
        await self._io.socket_closed.wait()
        await self.telemetry.wait_closed()

    def abort(self) -> None:
        """Stop as a crash would: the socket closes and no peer is told (the apps' tasks are
        cancelled). What was checkpointed stays in the store for a resume elsewhere."""
        calls = list(self._calls)
        self._io.abort()
        for call in calls:
            call.cancel()
        self.telemetry.close()

    def close(self) -> None:
        """Close every connection and the socket; the apps see ``SessionClosed``."""
        calls = list(self._calls)
        self._io.close()
        for call in calls:
            if call.voice.state is not State.CLOSED:
                call.connection_closed(0, "server shutting down")
            call.cancel()
        self.telemetry.close()
