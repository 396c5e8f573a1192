"""One phone call bridged to one voice session: the gateway's thin asyncio shell.

The carrier's WebSocket stays here for the whole call; the session is a ``quicvoice.connect``
call, which resumes by itself on another backend when its backend is lost, so the phone
hears at most a gap. Three tasks run per call:

- **uplink**: each carrier message through the dialect's parser
  (:class:`~quicvoice.gateway.twilio.TwilioMediaStream`); the caller's µ-law goes out as
  whole frames (kept across a resume, reliable uplink), a key press as the event ``dtmf``
  ``{"digit": "5"}``, a returned mark into the line's model;
- **downlink**: one frame per 20 ms tick from the call's playout buffer to the carrier,
  then a mark after each turn's last frame (:class:`~quicvoice.gateway.line.Line`);
- **session events**: a turn's end (its mark may be due), a cancel (``clear`` when its
  audio is on the line), a resume, the session's close.

A message that breaks the carrier protocol ends that call only: the WebSocket is closed
with 1008 and the reason logged (never the payload). The socket is reached through
:class:`CarrierSocket`, so this module does not know the WebSocket library.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from quicvoice.asyncio.client import VoiceClient, connect
from quicvoice.errors import (
    CallEndedError,
    CallReconnectingError,
    CarrierProtocolError,
    QuicVoiceError,
)
from quicvoice.gateway.config import GatewayConfig
from quicvoice.gateway.events import (
    DtmfReceived,
    MarkPlayed,
    MediaReceived,
    StreamStarted,
    StreamStopped,
)
from quicvoice.gateway.line import FrameClock, Line, LineStats, mark_name
from quicvoice.gateway.transcode import DownlinkDecoder, UplinkFramer, ulaw_duration
from quicvoice.gateway.twilio import StreamState, TwilioMediaStream
from quicvoice.session.events import (
    EventReceived,
    SessionClosed,
    SessionResumed,
    TurnCancelled,
    TurnEnded,
)
from quicvoice.session.messages import Hello

logger = logging.getLogger("quicvoice.gateway")

#: WebSocket close codes (RFC 6455 §7.4.1).
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_SERVER_ERROR = 1011
CLOSE_TRY_AGAIN = 1013
#: The event a key press becomes on the session.
DTMF_EVENT = "dtmf"
#: Seconds to wait for the backend's goodbye after the carrier stopped the stream.
BYE_TIMEOUT = 2.0
#: Longest close reason sent to the carrier (RFC 6455 allows 123 octets).
MAX_CLOSE_REASON = 120


class CarrierSocket(Protocol):
    """The carrier's WebSocket, as the bridge needs it."""

    async def receive(self) -> str | bytes | None:
        """The next message; ``None`` once the carrier closed the socket. Raises
        ``CarrierProtocolError`` when the WebSocket layer closed it for a protocol fault
        (a message over the size bound, invalid UTF-8...)."""
        ...

    async def send(self, message: str) -> bool:
        """Send a text message; ``False`` when the socket has closed."""
        ...


Connector = Callable[..., contextlib.AbstractAsyncContextManager[VoiceClient]]


@dataclass(frozen=True, slots=True, kw_only=True)
class CallOutcome:
    """How a bridged call ended, for the log line and the gateway's counters."""

    #: Why it ended, in words (never the carrier's payload).
    reason: str
    #: ``"stopped"`` (the carrier's ``stop``), ``"carrier closed"``, ``"session ended"``,
    #: ``"protocol error"``, ``"backend unavailable"``, ``"timeout"`` or ``"failed"``.
    kind: str
    #: How to close the carrier's WebSocket (the reason is ``reason``, cut to fit);
    #: ``None`` when the carrier closed it.
    close_code: int | None = CLOSE_NORMAL
    #: The stream's and the call's IDs at the carrier (``None`` before ``start``).
    stream_sid: str | None = None
    call_sid: str | None = None
    #: The voice session (``None`` if none was made).
    session_id: str | None = None
    #: Uplink frames sent to the session.
    uplink_frames: int = 0
    #: How many times the session resumed on another backend.
    resumptions: int = 0
    #: The line's counters.
    line: LineStats | None = None


class _Ended(Exception):
    """A task of the bridge saw the call end (carried out of the task group)."""

    def __init__(
        self, kind: str, reason: str, code: int = CLOSE_NORMAL, *, detail: str | None = None
    ) -> None:
        super().__init__(reason)
        self.kind = kind
        #: For the carrier (the close frame) and the log.
        self.reason = reason
        self.code = code
        #: For the log only (backend addresses and errors stay off the carrier's side).
        self.detail = detail


class CallBridge:
    """One carrier WebSocket bridged to one voice session; ``run()`` until either ends."""

    def __init__(
        self,
        carrier: CarrierSocket,
        config: GatewayConfig,
        *,
        connector: Connector = connect,
    ) -> None:
        self._carrier = carrier
        self._config = config
        self._connector = connector
        self._stream = TwilioMediaStream(config.limits)
        self._line = Line(max_turns=config.limits.max_pending_marks)
        self._loop = asyncio.get_running_loop()
        self._started: StreamStarted | None = None
        self._session_id: str | None = None
        self._uplink_frames = 0
        #: The turn of the frame last sent to the line (``None``: none or silence).
        self._current: int | None = None

    async def run(self) -> CallOutcome:
        """Bridge the call until the carrier or the session ends it; never raises for
        anything the carrier or the backend does. The caller closes the carrier's socket
        as the outcome says (after counting it)."""
        call: VoiceClient | None = None
        try:
            started = await self._await_start()
            token, metadata = self._credentials(started)
            hello = Hello(codecs=self._config.codecs, frame_ms=20)
            try:
                async with self._open(hello, token, metadata) as call:
                    try:
                        await self._bridge(call)
                    except _Ended as end:
                        if end.kind == "stopped":  # the caller hung up: say goodbye
                            with contextlib.suppress(TimeoutError, ConnectionError, QuicVoiceError):
                                await call.bye(timeout=BYE_TIMEOUT)
                        raise
            except _Ended:
                raise
            except (ConnectionError, QuicVoiceError, OSError) as error:
                if call is None:
                    raise _Ended(
                        "backend unavailable",
                        "no voice session",
                        CLOSE_SERVER_ERROR,
                        detail=f"{type(error).__name__}: {error}",
                    ) from None
                raise
        except _Ended as end:
            return self._finish(end, call)
        except CarrierProtocolError as error:
            return self._finish(
                _Ended("protocol error", f"carrier protocol error: {error}", CLOSE_POLICY), call
            )
        except Exception as error:  # a bug here must end this call only, loudly
            logger.exception("stream %s: bridge failed", self._sid())
            return self._finish(
                _Ended("failed", f"gateway error: {type(error).__name__}", CLOSE_SERVER_ERROR),
                call,
            )
        return self._finish(_Ended("failed", "the bridge stopped"), call)  # pragma: no cover

    # -- set-up --------------------------------------------------------------------------

    async def _await_start(self) -> StreamStarted:
        try:
            async with asyncio.timeout(self._config.start_timeout):
                while True:
                    message = await self._carrier.receive()
                    if message is None:
                        raise _Ended("carrier closed", "the carrier closed before 'start'")
                    event = self._stream.receive(message)
                    if isinstance(event, StreamStarted):
                        self._started = event
                        return event
        except TimeoutError:
            raise _Ended(
                "timeout", f"no 'start' within {self._config.start_timeout} s", CLOSE_POLICY
            ) from None

    def _credentials(self, started: StreamStarted) -> tuple[str | None, dict[str, str]]:
        """The hello's token and metadata: the stream's parameters (less the token) and
        the carrier's IDs."""
        config = self._config
        parameters = dict(started.custom_parameters)
        token = config.token
        if config.token_parameter is not None:
            carried = parameters.pop(config.token_parameter, None)
            if token is None and carried:
                token = carried
        metadata = {
            **parameters,
            "carrier": config.dialect,
            "carrier.call_sid": started.call_sid,
            "carrier.stream_sid": started.stream_sid,
            "carrier.account_sid": started.account_sid,
        }
        return token, metadata

    def _open(
        self, hello: Hello, token: str | None, metadata: dict[str, str]
    ) -> contextlib.AbstractAsyncContextManager[VoiceClient]:
        config = self._config
        options: dict[str, Any] = {
            "hello": hello,
            "token": token,
            "metadata": metadata,
            "server_name": config.server_name,
            "ca_file": config.ca_file,
            "certificate_hashes": config.certificate_hashes,
            "verify": config.verify,
            "timeout": config.connect_timeout,
            "liveness_timeout": config.liveness_timeout,
            "reconnect_timeout": config.reconnect_timeout,
        }
        return self._connector(config.backend, **options)

    # -- the call ------------------------------------------------------------------------

    async def _bridge(self, call: VoiceClient) -> None:
        session = call.session
        if session is None:  # connect() yields only a welcomed call
            raise _Ended("failed", "the session has no welcome", CLOSE_SERVER_ERROR)
        self._session_id = session.session_id
        started = self._started
        logger.info(
            "stream %s: call %s bridged to session %s on backend %s (%s)",
            self._sid(),
            started.call_sid if started else "-",
            session.session_id,
            session.server_id,
            session.codec,
        )
        framer = UplinkFramer(session.codec, frame_ms=session.frame_ms)
        decoder = DownlinkDecoder(session.codec, frame_ms=session.frame_ms)
        period = session.frame_ms / 1000
        tasks = [
            asyncio.create_task(self._uplink(call, framer)),
            asyncio.create_task(self._downlink(call, decoder, period)),
            asyncio.create_task(self._session_events(call, decoder)),
        ]
        try:
            # Each task runs until the call ends, which it says by raising.
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        # Several may have ended in the same loop iteration: the first to say why wins,
        # in a fixed order (the carrier's side first).
        errors = [task.exception() for task in tasks if task in done]
        for error in errors:
            if isinstance(error, _Ended | CarrierProtocolError):
                raise error
        for error in errors:
            if error is not None:
                raise error

    async def _uplink(self, call: VoiceClient, framer: UplinkFramer) -> None:
        idle = self._config.idle_timeout
        while True:
            try:
                async with asyncio.timeout(idle):
                    message = await self._carrier.receive()
            except TimeoutError:
                raise _Ended(
                    "timeout", f"no message from the carrier for {idle} s", CLOSE_POLICY
                ) from None
            if message is None:
                raise _Ended("carrier closed", "the carrier closed the WebSocket")
            event = self._stream.receive(message)
            if isinstance(event, MediaReceived):
                if event.track == "inbound":
                    self._send_audio(call, framer.write(event.payload))
            elif isinstance(event, DtmfReceived):
                try:
                    call.send_event(DTMF_EVENT, {"digit": event.digit})
                except CallReconnectingError:
                    logger.warning("stream %s: key press dropped while resuming", self._sid())
                except CallEndedError:
                    raise _Ended("session ended", "the voice session ended") from None
            elif isinstance(event, MarkPlayed):
                self._line.mark_returned(event.name, cleared=event.cleared, now=self._loop.time())
            elif isinstance(event, StreamStopped):
                self._send_audio(call, framer.flush())
                raise _Ended("stopped", "the carrier stopped the stream")

    def _send_audio(self, call: VoiceClient, payloads: list[bytes]) -> None:
        try:
            for payload in payloads:
                call.send_audio(payload)
                self._uplink_frames += 1
        except CallEndedError:
            raise _Ended("session ended", "the voice session ended") from None

    async def _downlink(self, call: VoiceClient, decoder: DownlinkDecoder, period: float) -> None:
        clock = FrameClock(self._loop.time(), period)
        while True:
            delay = clock.next_at - self._loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = self._loop.time()
            for _ in range(clock.due(now)):
                await self._tick(call, decoder, now)

    async def _tick(self, call: VoiceClient, decoder: DownlinkDecoder, now: float) -> None:
        """One frame period of the line: the next frame of the playout buffer, if any."""
        if not self._streaming():
            return
        playout = call.playout
        item = playout.pull() if playout is not None else None
        self._current = None
        if item is not None:
            turn_id, payload = item
            self._current = turn_id
            ulaw = decoder.decode(turn_id, payload)
            if ulaw:
                self._line.sent(turn_id, ulaw_duration(ulaw), now)
                await self._send(self._stream.media(ulaw))
        await self._send_marks(call, decoder, now)

    async def _send_marks(self, call: VoiceClient, decoder: DownlinkDecoder, now: float) -> None:
        playout = call.playout
        if playout is None or not self._streaming():
            return

        def finished(turn_id: int) -> bool:
            return playout.played_ms(turn_id) is None

        for turn_id in self._line.marks_due(current=self._current, finished=finished):
            decoder.end_turn(turn_id)
            if not self._stream.can_mark():
                # The carrier keeps that many marks unreturned: mark no more until it does.
                self._line.mark_sent(turn_id, None, now)
                continue
            name = mark_name(turn_id)
            message = self._stream.mark(name)
            self._line.mark_sent(turn_id, name, now)  # before the await: no second mark
            await self._send(message)

    async def _session_events(self, call: VoiceClient, decoder: DownlinkDecoder) -> None:
        while True:
            try:
                event = await call.receive()
            except CallEndedError:
                raise _Ended("session ended", "the voice session ended") from None
            now = self._loop.time()
            if isinstance(event, TurnEnded):
                self._line.turn_ended(event.turn_id)
                await self._send_marks(call, decoder, now)
            elif isinstance(event, TurnCancelled):
                decoder.end_turn(event.turn_id)
                if self._line.turn_cancelled(event.turn_id, now) and self._streaming():
                    await self._send(self._stream.clear())
            elif isinstance(event, SessionResumed):
                self._line.session_resumed()
                logger.info(
                    "stream %s: session %s resumed on backend %s after %.0f ms (%s)",
                    self._sid(),
                    event.session_id,
                    event.server_id,
                    event.gap_ms,
                    event.reason,
                )
            elif isinstance(event, SessionClosed):
                detail = event.reason or f"code {event.error_code:#x}"
                raise _Ended("session ended", f"the voice session ended: {detail}")
            elif isinstance(event, EventReceived):
                logger.debug("stream %s: backend event %s ignored", self._sid(), event.name)

    def _streaming(self) -> bool:
        """Whether messages may go to the carrier (not after its ``stop``)."""
        return self._stream.state is StreamState.STREAMING

    async def _send(self, message: str) -> None:
        if not await self._carrier.send(message):
            raise _Ended("carrier closed", "the carrier closed the WebSocket")

    # -- the end -------------------------------------------------------------------------

    def _finish(self, end: _Ended, call: VoiceClient | None) -> CallOutcome:
        log = logger.warning if end.code != CLOSE_NORMAL else logger.info
        detail = f" ({end.detail})" if end.detail else ""
        log("stream %s: call ended (%s): %s%s", self._sid(), end.kind, end.reason, detail)
        return CallOutcome(
            reason=end.reason,
            kind=end.kind,
            close_code=None if end.kind == "carrier closed" else end.code,
            stream_sid=self._started.stream_sid if self._started else None,
            call_sid=self._started.call_sid if self._started else None,
            session_id=self._session_id,
            uplink_frames=self._uplink_frames,
            resumptions=len(call.resumptions) if call is not None else 0,
            line=self._line.stats(),
        )

    def _sid(self) -> str:
        return self._started.stream_sid if self._started is not None else "(not started)"


async def run_bridge(
    carrier: CarrierSocket, config: GatewayConfig, *, connector: Connector = connect
) -> CallOutcome:
    """Bridge one carrier WebSocket to a voice session until either ends."""
    return await CallBridge(carrier, config, connector=connector).run()


def close_reason(outcome: CallOutcome) -> str:
    """The outcome's reason cut to what a WebSocket close frame holds."""
    return outcome.reason.encode()[:MAX_CLOSE_REASON].decode(errors="ignore")
