"""The server application API: ``async def app(session)`` with PCM in, PCM turns out.

A :class:`Session` wraps the lower-level :class:`~quicvoice.asyncio.server.ServerSession`:
it decodes and resamples the uplink to the app's rate (:meth:`Session.audio`), frames,
encodes and paces what the app says (:meth:`Session.turn`), and turns the protocol's events
into the :data:`~quicvoice.app.events.AppEvent` union (:meth:`Session.events`). Bounds and
overflow policies are in ``specs/api.md``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import KW_ONLY, dataclass
from types import TracebackType
from typing import Any

from ..asyncio.server import ServerSession
from ..audio.jitter import PlayoutKind
from ..audio.pcm import EncodedFrame, PcmDecoder, PcmEncoder, PcmFrame, check_app_rate
from ..auth import AcceptHook, Caller
from ..errors import CodecError, QuicVoiceError
from ..session.codes import ErrorCode
from ..session.congestion import CongestionResponse
from ..session.events import (
    AudioReceived,
    ByeReceived,
    ErrorReceived,
    EventReceived,
    SessionClosed,
    TurnCancelled,
    VoiceEvent,
)
from ..session.events import TurnPlayed as VoiceTurnPlayed
from ..session.events import UplinkEnded as VoiceUplinkEnded
from ..session.messages import UplinkMode
from ..session.stats import SessionStats
from ..session.wire import MediaFrame
from ..settings import Address
from .events import (
    AppEvent,
    Bye,
    CallerMigrated,
    SessionEnded,
    TurnInterruptedByCaller,
    TurnPlayed,
    UplinkEnded,
    UserEvent,
)

logger = logging.getLogger("quicvoice.app")

Handler = Callable[["Session"], Awaitable[None]]
"""An application: ``async def handler(session: Session) -> None``."""

#: Turns whose ``played`` report is awaited at once; older ones give up waiting.
MAX_AWAITED_REPORTS = 64
#: How long the end of a handler waits for its turns to be acknowledged before closing.
CLOSE_DRAIN_SECONDS = 10.0
#: PlayoutKinds that mean "the caller's audio, decoded from its own packet".
_DECODED = (PlayoutKind.NORMAL, PlayoutKind.ACCELERATED)


class TurnInterrupted(QuicVoiceError):
    """The turn was cancelled (the caller barged in, or the session ended) while writing.

    Raised by :meth:`Turn.write`; ``async with session.turn()`` swallows it, so the code
    after the block runs with ``turn.interrupted`` set.
    """


class SessionDetachedError(QuicVoiceError):
    """The session was detached (``detach()``): use the lower-level session instead."""


@dataclass(frozen=True, slots=True)
class App:
    """A server application and what it asks of the library.

    ``quicvoice serve --app module:attr`` names either an ``App`` or a bare handler
    (``async def app(session)``), which runs as ``App(handler)``.
    """

    #: ``async def handler(session: Session) -> None``; returning ends the call.
    handler: Handler
    _: KW_ONLY
    #: The PCM rate of ``audio()`` and of what ``Turn.write`` takes, in Hz (8000, 16000,
    #: 24000, 44100 or 48000); the library resamples to and from the negotiated codec.
    sample_rate: int = 16000
    #: Who may call, decided after the credentials are checked (``quicvoice.auth``; sync or
    #: async), or ``None``: anyone with valid credentials.
    accept: AcceptHook | None = None
    #: Uplink audio held for an app that falls behind, in milliseconds; beyond it the
    #: oldest frames are dropped and counted (``Session.audio_frames_dropped``).
    audio_buffer_ms: int = 2000
    #: Events held for an app that does not read ``events()``; one more closes the
    #: session with ``LIMIT_EXCEEDED`` (events are never dropped silently).
    max_pending_events: int = 256
    #: Audio of a turn written but not yet acknowledged by the client, in milliseconds;
    #: ``Turn.write`` waits while more is outstanding.
    turn_buffer_ms: int = 1000

    def __post_init__(self) -> None:
        check_handler(self.handler)
        check_app_rate(self.sample_rate)
        for name in ("audio_buffer_ms", "max_pending_events", "turn_buffer_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"App.{name} must be a positive integer, not {value!r}")


def check_handler(handler: object) -> None:
    """Raise ``TypeError`` unless ``handler`` is an async callable taking one session."""
    if not callable(handler):
        raise TypeError(f"the handler must be callable, not {type(handler).__name__}")
    call = type(handler).__call__  # noqa: B004 - an object with ``async def __call__``
    if not (inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)):
        raise TypeError("the handler must be an async function: async def app(session): ...")
    try:
        inspect.signature(handler).bind(None)
    except TypeError:
        raise TypeError("the handler must take exactly one argument, the session") from None
    except ValueError:
        pass  # no signature to inspect (a builtin): trust it


class Turn:
    """One response turn: ``async with session.turn() as turn: await turn.write(pcm)``."""

    def __init__(self, session: Session) -> None:
        self._session = session
        #: The turn's ID on this connection (set on entering the ``async with``).
        self.turn_id: int | None = None
        #: True once the turn was cancelled (barge-in, ``cancel()``, or the session ended),
        #: also after it was written in full when the caller cut its playout short.
        self.interrupted = False
        #: Milliseconds of this turn the caller heard, from the client's ``played`` report;
        #: ``None`` until it arrives (and always with clients that do not report).
        self.played_ms: int | None = None
        #: Whether the report said the whole turn played out.
        self.complete: bool | None = None
        self._encoder: PcmEncoder | None = None
        self._outstanding: deque[tuple[int, float]] = deque()
        self._reported = asyncio.Event()

    async def __aenter__(self) -> Turn:
        session = self._session
        session.check_usable()
        if session.closed:
            self.interrupted = True
            return self
        self._encoder = PcmEncoder(session.codec, session.sample_rate, frame_ms=session.frame_ms)
        self.turn_id = session.lower.start_turn()
        session.track_turn(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        session = self._session
        if exc is None and not self.interrupted:
            try:
                await self._send(self._encoder.flush() if self._encoder else [])
            except TurnInterrupted:
                pass
            else:
                if self.turn_id is not None:
                    session.lower.end_turn(self.turn_id)
        elif exc is not None and not isinstance(exc, TurnInterrupted):
            self.cancel()  # the app failed or was cancelled: the caller must not wait
            return False
        session.turn_finished()
        return isinstance(exc, TurnInterrupted)

    async def write(self, pcm: bytes | bytearray | memoryview | Any) -> None:
        """Say ``pcm`` (s16le bytes or an int16 numpy array at the app's rate, any length).

        Whole frames are encoded and queued at once; less than a frame is held until the
        next write or the end of the turn. Waits while more than ``App.turn_buffer_ms`` of
        the turn is unacknowledged. Raises :class:`TurnInterrupted` once the turn was
        cancelled.
        """
        if self.interrupted or self._encoder is None:
            raise TurnInterrupted("the turn was interrupted")
        self._encoder.set_bitrate(self._session.congestion.target_bitrate)
        await self._send(self._encoder.write(pcm))

    def cancel(self) -> None:
        """Stop the turn from this side (the agent changed its mind); the client flushes it."""
        if self.turn_id is not None and not self.interrupted and not self._session.closed:
            self._session.lower.cancel_turn(self.turn_id)
        self.interrupted = True

    async def wait_played(self, timeout: float = 1.0) -> int | None:
        """Wait (at most ``timeout`` s) for the client's report; return ``played_ms``."""
        if self.played_ms is None:
            try:
                await asyncio.wait_for(self._reported.wait(), timeout)
            except TimeoutError:
                pass
        return self.played_ms

    @property
    def outstanding_ms(self) -> float:
        """Milliseconds of this turn written and not yet acknowledged by the client."""
        self._forget_acknowledged()
        return sum(duration for _, duration in self._outstanding)

    def interrupt(self) -> None:
        """The session's side of a cancel: mark the turn and wake its writer."""
        self.interrupted = True

    def report(self, played_ms: int, complete: bool) -> None:
        """The session's side of a ``played`` report (cut short: the turn was interrupted)."""
        self.played_ms = played_ms
        self.complete = complete
        if not complete:
            self.interrupted = True
        self._reported.set()

    async def _send(self, frames: list[EncodedFrame]) -> None:
        session = self._session
        frame_ms = float(session.frame_ms)
        for frame in frames:
            await session.wait_for_room(self)
            if self.interrupted or self.turn_id is None:
                raise TurnInterrupted("the turn was interrupted")
            if not session.lower.send_turn_audio(self.turn_id, frame.payload, frame.timestamp):
                self.interrupted = True
                raise TurnInterrupted("the turn was interrupted")
            offsets = session.lower.turn_send_offsets(self.turn_id)
            if offsets is not None:
                self._outstanding.append((offsets[1], frame_ms))

    def _forget_acknowledged(self) -> None:
        if self.turn_id is None:
            return
        offsets = self._session.lower.turn_send_offsets(self.turn_id)
        if offsets is None:  # finished and delivered: the connection forgot the stream
            self._outstanding.clear()
            return
        acknowledged = offsets[0]
        while self._outstanding and self._outstanding[0][0] <= acknowledged:
            self._outstanding.popleft()


class Session:
    """One call as the application sees it: PCM audio, turns, events and state."""

    def __init__(self, lower: ServerSession, app: App) -> None:
        self._lower = lower
        self._app = app
        started = lower.started
        self._frame_ms = started.frame_ms
        self._decoder = PcmDecoder(started.codec, app.sample_rate, frame_ms=started.frame_ms)
        self._audio: deque[PcmFrame] = deque()
        self._audio_limit = max(1, app.audio_buffer_ms // started.frame_ms)
        self._audio_ready = asyncio.Event()
        self._audio_ended = False
        self._events: deque[AppEvent] = deque()
        self._events_ready = asyncio.Event()
        self._progress = asyncio.Event()
        self._turns: dict[int, Turn] = {}
        self._closed: SessionEnded | None = None
        self._detached = False
        self._bye_pending = False
        self._uplink_complete = started.uplink is UplinkMode.REALTIME
        self._peer = lower.peer_address
        self._listener: asyncio.Task[None] | None = None
        self._attached = False
        #: Uplink frames dropped because the app did not read ``audio()`` fast enough.
        self.audio_frames_dropped = 0
        #: Uplink payloads that did not decode (skipped; the stream goes on).
        self.audio_decode_errors = 0
        #: The downlink's congestion response (specs/l4s.md), fed by the connection's ECN
        #: feedback and losses; turns encode Opus at its ``target_bitrate``.
        self.congestion: CongestionResponse = lower.congestion

    # -- what the session is ---------------------------------------------------------

    @property
    def id(self) -> str:
        """The session's ID (stable across resumes)."""
        return self._lower.session_id

    @property
    def resumed(self) -> bool:
        """True when this connection continues an earlier one (``state`` was restored)."""
        return self._lower.started.resumed

    @property
    def codec(self) -> str:
        """The codec on the wire, ``"NAME/RATE"`` (the app sees PCM regardless)."""
        return self._lower.started.codec

    @property
    def sample_rate(self) -> int:
        """The app's PCM rate in Hz."""
        return self._app.sample_rate

    @property
    def frame_ms(self) -> int:
        """Duration of one network frame in milliseconds."""
        return self._frame_ms

    @property
    def uplink(self) -> UplinkMode:
        """How the caller's audio travels: reliable stream or realtime datagrams."""
        return self._lower.started.uplink

    @property
    def server_id(self) -> str:
        """The backend's QUIC-LB server ID in hex."""
        return self._lower.started.server_id

    @property
    def peer_address(self) -> Address | None:
        """The caller's current address (changes when it migrates)."""
        return self._lower.peer_address

    @property
    def metadata(self) -> Mapping[str, str]:
        """The bounded string map the caller sent in its ``hello``."""
        return self._lower.hello.metadata

    @property
    def caller(self) -> Caller | None:
        """The caller's verified identity (``[auth]``, specs/auth.md); ``None`` without one."""
        return self.lower.caller

    @property
    def state(self) -> dict[str, Any]:
        """Application state, msgpack-serialisable, restored on resume.

        Saved by :meth:`save` and automatically at the end of each turn.
        """
        return self._lower.state

    @property
    def closed(self) -> bool:
        """True once the session's connection has closed."""
        return self._closed is not None

    @property
    def lower(self) -> ServerSession:
        """The lower-level session this one wraps (codec payloads, integer turn IDs)."""
        return self._lower

    # -- what the app does -----------------------------------------------------------

    async def audio(self) -> AsyncIterator[PcmFrame]:
        """The caller's audio as :class:`PcmFrame` s at the app's rate, until it ends.

        Reliable uplink: frames as they arrive, ending after the last one. Realtime:
        one frame per frame period from the jitter buffer, losses concealed (``concealed``
        set), while the caller's stream plays; ends with the session.
        """
        self.check_usable()
        while True:
            while self._audio:
                yield self._audio.popleft()
            if self._audio_ended or self._closed is not None:
                return
            self._audio_ready.clear()
            await self._audio_ready.wait()

    async def events(self) -> AsyncIterator[AppEvent]:
        """Every event of the session in order; the last is :class:`SessionEnded`."""
        self.check_usable()
        while True:
            while self._events:
                event = self._events.popleft()
                yield event
                if isinstance(event, SessionEnded):
                    return
            self._events_ready.clear()
            await self._events_ready.wait()

    def turn(self) -> Turn:
        """A new response turn, for ``async with``."""
        self.check_usable()
        return Turn(self)

    def send_event(self, name: str, data: Any = None) -> None:
        """Send an application event to the caller (ignored once the session closed)."""
        self.check_usable()
        if self._closed is None:
            self._lower.send_event(name, data)

    def save(self) -> None:
        """Checkpoint ``state`` to the session store soon (never blocks; the latest wins)."""
        self._lower.checkpoint()

    def close(self, code: ErrorCode | int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """End the call with ``code`` (``NO_ERROR``, or an application code)."""
        if self._closed is None:
            self._lower.close(code, reason)

    def stats(self) -> SessionStats:
        """A snapshot of the session's network statistics."""
        return self._lower.stats()

    def detach(self) -> ServerSession:
        """Hand the call to lower-level code that works with codec payloads (the demo agent).

        Only before this session is used (see :meth:`check_usable`); afterwards
        ``audio()``, ``events()`` and ``turn()`` raise :class:`SessionDetachedError`.
        """
        if self._attached:
            raise SessionDetachedError("detach() must come before the session is used")
        self._detached = True
        return self._lower

    # -- the library's side ----------------------------------------------------------

    def check_usable(self) -> None:
        """Raise :class:`SessionDetachedError` after ``detach()``; else take the call over.

        The session takes over the lower-level one on first use (``audio()``,
        ``events()``, ``turn()``, ``send_event()``): from then on it decodes the audio,
        routes the events and answers ``bye``. Until then events wait in the lower
        session's queue, where ``detach()`` leaves them.
        """
        if self._detached:
            raise SessionDetachedError("this session was detached; use the lower-level one")
        if self._attached:
            return
        self._attached = True
        lower = self._lower
        lower.on_audio = self._on_audio
        lower.on_event = self._on_event
        lower.on_progress = self._on_progress
        for queued in lower.take_pending():  # arrived before the app took over
            self._on_event(queued)
        if self.uplink is UplinkMode.REALTIME and lower.jitter_buffer is not None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    def track_turn(self, turn: Turn) -> None:
        """Route the ``played`` report and cancel of ``turn`` to it."""
        if turn.turn_id is None:
            return
        if len(self._turns) >= MAX_AWAITED_REPORTS:
            del self._turns[next(iter(self._turns))]
        self._turns[turn.turn_id] = turn

    def turn_finished(self) -> None:
        """A turn ended: checkpoint the state it may have changed."""
        self.save()

    async def wait_for_room(self, turn: Turn) -> None:
        """Wait while ``turn`` has more than the app's bound unacknowledged."""
        bound = self._app.turn_buffer_ms
        while not turn.interrupted and self._closed is None and turn.outstanding_ms >= bound:
            self._progress.clear()
            await self._progress.wait()

    async def finish(self) -> None:
        """The handler returned: let its turns arrive (bounded), then end the call."""
        if self._detached or self._closed is not None:
            return
        deadline = asyncio.get_running_loop().time() + CLOSE_DRAIN_SECONDS
        for turn in list(self._turns.values()):
            while not turn.interrupted and self._closed is None and turn.outstanding_ms > 0:
                self._progress.clear()
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._progress.wait(), remaining)
                except TimeoutError:
                    break
        self.close(ErrorCode.NO_ERROR, "the application ended the call")

    def release(self) -> None:
        """Stop the session's own task (the handler is over)."""
        if self._listener is not None:
            self._listener.cancel()

    def _on_audio(self, frame: MediaFrame) -> None:
        if self._lower.jitter_buffer is not None:
            return  # realtime: the jitter buffer has it; _listen() plays it out
        try:
            pcm = self._decoder.decode(frame.payload, sequence=frame.seq)
        except (CodecError, ValueError):
            self.audio_decode_errors += 1
            return
        self._push_audio(pcm)

    def _push_audio(self, pcm: PcmFrame) -> None:
        if len(self._audio) >= self._audio_limit:
            self._audio.popleft()
            self.audio_frames_dropped += 1
        self._audio.append(pcm)
        self._audio_ready.set()

    def _on_event(self, event: VoiceEvent) -> None:
        if isinstance(event, EventReceived):
            self._emit(UserEvent(name=event.name, data=event.data))
        elif isinstance(event, AudioReceived):
            self._on_audio(event.frame)
        elif isinstance(event, TurnCancelled):
            turn = self._turns.get(event.turn_id)
            if turn is not None:
                turn.interrupt()
                self._progress.set()
            if event.by_peer:
                self._emit(TurnInterruptedByCaller(turn_id=event.turn_id))
        elif isinstance(event, VoiceTurnPlayed):
            turn = self._turns.pop(event.turn_id, None)
            if turn is not None:
                turn.report(event.played_ms, event.complete)
            self._emit(
                TurnPlayed(
                    turn_id=event.turn_id, played_ms=event.played_ms, complete=event.complete
                )
            )
        elif isinstance(event, VoiceUplinkEnded):
            self._audio_ended = self._uplink_complete = True
            self._audio_ready.set()
            self._emit(UplinkEnded())
            self._answer_bye()
        elif isinstance(event, ByeReceived):
            self._bye_pending = True
            self._emit(Bye(uplink_frames=event.uplink_frames))
            self._answer_bye()
        elif isinstance(event, ErrorReceived):
            logger.info("session %s: the caller reported error %#x", self.id, event.code)
        elif isinstance(event, SessionClosed):
            self._on_closed(event)

    def _answer_bye(self) -> None:
        if self._bye_pending and self._uplink_complete and self._closed is None:
            self._bye_pending = False
            self._lower.send_bye()

    def _on_closed(self, event: SessionClosed) -> None:
        if self._closed is not None:
            return
        self._closed = SessionEnded(code=event.error_code, reason=event.reason)
        for turn in self._turns.values():
            turn.interrupt()
        self._progress.set()
        self._audio_ready.set()
        self._events.append(self._closed)  # always room for the last event
        self._events_ready.set()
        if self._listener is not None:
            self._listener.cancel()

    def _emit(self, event: AppEvent) -> None:
        if self._closed is not None:
            return
        if len(self._events) >= self._app.max_pending_events:
            logger.warning(
                "session %s: the application left %d events unread; closing the session",
                self.id,
                len(self._events),
            )
            self._lower.close(ErrorCode.LIMIT_EXCEEDED, "the application fell behind on events")
            return
        self._events.append(event)
        self._events_ready.set()

    def _on_progress(self) -> None:
        self._progress.set()
        peer = self._lower.peer_address
        if peer != self._peer:
            previous, self._peer = self._peer, peer
            migrations = self._lower.migrations
            if previous is not None and peer is not None and migrations:
                last = migrations[-1]
                self._emit(
                    CallerMigrated(
                        from_address=last.from_address,
                        to_address=last.to_address,
                        gap_ms=last.gap_ms,
                    )
                )

    async def _listen(self) -> None:
        """Realtime: play the jitter buffer out once per frame period, drift-free."""
        jitter = self._lower.jitter_buffer
        if jitter is None:
            return
        loop = asyncio.get_running_loop()
        period = jitter.config.frame_duration
        due = loop.time()
        while self._closed is None:
            due += period
            # Sleep even when late (0 s): after a stall the loop reads one queued datagram
            # per iteration, so catching up frame by frame lets each packet in before its frame.
            await asyncio.sleep(max(0.0, due - loop.time()))
            played = jitter.get(loop.time())
            if played.kind is PlayoutKind.BUFFERING:
                continue  # the caller is not talking (yet, or any more)
            self._push_audio(
                self._decoder.convert(
                    played.samples,
                    sequence=played.sequence,
                    concealed=played.kind not in _DECODED,
                )
            )


def session_handler(app: App) -> Callable[[ServerSession], Awaitable[None]]:
    """The ``VoiceServer`` handler that runs ``app`` for each session."""

    async def run(lower: ServerSession) -> None:
        session = Session(lower, app)
        try:
            await app.handler(session)
            await session.finish()
        finally:
            session.release()

    return run
