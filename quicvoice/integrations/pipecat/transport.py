"""A Pipecat transport over one :class:`quicvoice.Session` (server side).

Input: the caller's audio from ``session.audio()`` as ``InputAudioRawFrame`` s at the
pipeline's input rate. Output: ``OutputAudioRawFrame`` s (any rate, channel count and
chunking) become quicvoice turns, one per bot utterance: a turn opens with the first
audio written after the bot was silent and ends when Pipecat's output says the bot stopped
speaking (``BotStoppedSpeakingFrame``, which follows ``TTSStoppedFrame``). Interruptions go
both ways; the client's playout reports come back as :class:`TurnPlayedFrame` and events.
Design: ``specs/integrations.md``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Literal

from pipecat.frames.frames import (
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    InterruptionWorkerFrame,
    OutputAudioRawFrame,
    StartFrame,
    SystemFrame,
)
from pipecat.observers.base_observer import BaseObserver
from pipecat.processors.frame_processor import FrameDirection
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pydantic import Field, model_validator

from ...app import (
    CallerMigrated,
    Session,
    SessionEnded,
    Turn,
    TurnInterrupted,
    TurnInterruptedByCaller,
    TurnPlayed,
    UserEvent,
)
from .pcm import AudioFormatError, PcmConverter

#: Interrupted turns remembered until their playout report arrives (as ``quicvoice.app``).
MAX_AWAITED_REPORTS = 64

logger = logging.getLogger("quicvoice.integrations.pipecat")

#: The reason the backend gives when a session it held was resumed on another connection:
#: the call goes on elsewhere, so this pipeline ends without a disconnect.
RESUMED_ELSEWHERE = "session resumed elsewhere"

Interrupter = Literal["caller", "pipeline"]


class QuicVoiceParams(TransportParams):
    """Pipecat's transport parameters with quicvoice's defaults and two of its own.

    Audio is on both ways and mono. The rates default to the pipeline's
    (``PipelineParams``); the transport converts to and from the session's rate.
    """

    audio_in_enabled: bool = True
    audio_out_enabled: bool = True
    #: quicvoice's client plays each turn out to its end: no trailing silence is needed.
    audio_out_end_silence_secs: int = 0
    #: How far ahead of real time a turn is written, in seconds. The client buffers that
    #: much against network hiccups; Pipecat's bot-speaking frames stay this close to what
    #: the caller hears.
    audio_out_lead_secs: float = Field(default=0.3, ge=0.0, le=10.0)

    @model_validator(mode="after")
    def _mono(self) -> QuicVoiceParams:
        if self.audio_in_channels != 1 or self.audio_out_channels != 1:
            raise ValueError(
                "quicvoice sessions carry mono audio: audio_in_channels and "
                "audio_out_channels must be 1 (output frames of more channels are downmixed)"
            )
        return self


@dataclass(kw_only=True)
class TurnPlayedFrame(SystemFrame):
    """The client reported how much of a bot turn its caller heard.

    Pushed downstream from the output transport when the report arrives (after each
    turn plays out, or at once when it is cut short), so processors after it (the
    assistant context aggregator, your own) can use it.
    """

    #: The quicvoice turn.
    turn_id: int = 0
    #: Milliseconds of the turn the caller's device played.
    played_ms: int = 0
    #: True when the whole turn played out.
    complete: bool = True
    #: Who cut the turn short: ``"caller"`` (barge-in), ``"pipeline"`` (an
    #: ``InterruptionFrame``), or ``None`` when it was not interrupted by either.
    interrupted_by: Interrupter | None = None

    def __str__(self) -> str:
        return (
            f"{self.name}(turn: {self.turn_id}, played_ms: {self.played_ms}, "
            f"complete: {self.complete}, interrupted_by: {self.interrupted_by})"
        )


class QuicVoiceInputTransport(BaseInputTransport):
    """Pushes the caller's audio into the pipeline at its input rate."""

    def __init__(self, transport: QuicVoiceTransport, params: QuicVoiceParams, **kwargs: Any):
        """An input for ``transport``'s session (made by :meth:`QuicVoiceTransport.input`)."""
        super().__init__(params, **kwargs)
        self._owner = transport
        self._uplink: asyncio.Task[None] | None = None

    async def start(self, frame: StartFrame) -> None:
        """Start reading the caller's audio once the pipeline starts."""
        await super().start(frame)
        await self.set_transport_ready(frame)
        if self._uplink is None:
            self._uplink = self.create_task(self._read_uplink(), "quicvoice-uplink")
        await self._owner.started()

    async def stop(self, frame: EndFrame) -> None:
        """Stop reading audio."""
        await self._stop_uplink()
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame) -> None:
        """Stop reading audio."""
        await self._stop_uplink()
        await super().cancel(frame)

    async def interrupt_from_caller(self) -> None:
        """The caller barged in: interrupt the pipeline (the worker broadcasts it)."""
        await self.push_frame(InterruptionWorkerFrame(), FrameDirection.UPSTREAM)

    async def _stop_uplink(self) -> None:
        if self._uplink is not None:
            await self.cancel_task(self._uplink)
            self._uplink = None

    async def _read_uplink(self) -> None:
        session = self._owner.session
        rate = self.sample_rate
        converter = None if rate == session.sample_rate else PcmConverter(rate)
        async for pcm in session.audio():
            data = (
                pcm.data if converter is None else converter.convert(pcm.data, pcm.sample_rate, 1)
            )
            if data:
                await self.push_audio_frame(
                    InputAudioRawFrame(audio=data, sample_rate=rate, num_channels=1)
                )


class QuicVoiceOutputTransport(BaseOutputTransport):
    """Turns the bot's audio into quicvoice turns, and interruptions into cancels."""

    def __init__(self, transport: QuicVoiceTransport, params: QuicVoiceParams, **kwargs: Any):
        """An output for ``transport``'s session (made by :meth:`QuicVoiceTransport.output`)."""
        super().__init__(params, **kwargs)
        self._owner = transport
        self._lead = params.audio_out_lead_secs
        self._turn: Turn | None = None
        self._turn_due = 0.0
        self._to_pipeline: PcmConverter | None = None
        self._to_session: PcmConverter | None = None
        #: Turns cut short, and by whom, until their playout report arrives.
        self._interrupted: dict[int, Interrupter] = {}
        self._discarding = False

    @property
    def current_turn(self) -> Turn | None:
        """The quicvoice turn the bot is speaking now, if any."""
        return self._turn

    async def start(self, frame: StartFrame) -> None:
        """Ready to write once the pipeline starts."""
        await super().start(frame)
        self._to_pipeline = PcmConverter(self.sample_rate)
        self._to_session = PcmConverter(self._owner.session.sample_rate)
        await self.set_transport_ready(frame)
        await self._owner.started()

    async def stop(self, frame: EndFrame) -> None:
        """Let the queued audio out, then end the turn in progress."""
        await super().stop(frame)
        await self._finish_turn()

    async def cancel(self, frame: CancelFrame) -> None:
        """Cancel the turn in progress."""
        await super().cancel(frame)
        await self._cancel_turn("pipeline")

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Convert bot audio to mono at the output rate; cancel the turn on interruptions."""
        if isinstance(frame, OutputAudioRawFrame) and direction is FrameDirection.DOWNSTREAM:
            try:
                self._normalize(frame)
            except AudioFormatError as error:
                await self.push_error(f"{self}: refused an audio frame: {error}", error)
                return
        elif isinstance(frame, InterruptionFrame):
            await self._cancel_turn("pipeline")
            await super().process_frame(frame, direction)
            # The queue of the interrupted utterance is gone: what comes next is new.
            self._discarding = False
            return
        await super().process_frame(frame, direction)

    async def push_frame(
        self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM
    ) -> None:
        """Pass ``frame`` on; the bot stopping to speak ends its quicvoice turn first."""
        if isinstance(frame, BotStoppedSpeakingFrame) and direction is FrameDirection.DOWNSTREAM:
            await self._finish_turn()
        await super().push_frame(frame, direction)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        """Write one chunk into the current turn (opening one if the bot was silent)."""
        assert self._to_session is not None
        data = self._to_session.convert(frame.audio, frame.sample_rate, frame.num_channels)
        if self._discarding:  # the caller barged in; the pipeline has not flushed yet
            return False
        turn = await self._open_turn()
        if turn is None:
            return False
        loop = asyncio.get_running_loop()
        ahead = self._turn_due - loop.time() - self._lead
        if ahead > 0:
            await asyncio.sleep(ahead)
        self._turn_due = max(self._turn_due, loop.time()) + frame.num_frames / frame.sample_rate
        try:
            await turn.write(data)
        except TurnInterrupted:
            return False
        return True

    async def caller_interrupted(self, turn_id: int) -> None:
        """The caller cut ``turn_id`` short: drop its audio until the pipeline's interruption."""
        self._interrupted[turn_id] = "caller"
        if self._turn is not None and self._turn.turn_id == turn_id:
            self._discarding = True
            await self._cancel_turn("caller")

    def take_interrupter(self, turn_id: int) -> Interrupter | None:
        """Who cut ``turn_id`` short, forgotten once asked (its report arrived)."""
        return self._interrupted.pop(turn_id, None)

    def _normalize(self, frame: OutputAudioRawFrame) -> None:
        """Make ``frame`` mono at the output rate in place, or raise ``AudioFormatError``."""
        if frame.num_channels == 1 and frame.sample_rate == self.sample_rate:
            if len(frame.audio) % 2:
                raise AudioFormatError(
                    f"{len(frame.audio)} octets of s16le audio is not whole samples"
                )
            return
        assert self._to_pipeline is not None
        frame.audio = self._to_pipeline.convert(frame.audio, frame.sample_rate, frame.num_channels)
        frame.sample_rate = self.sample_rate
        frame.num_channels = 1
        frame.num_frames = len(frame.audio) // 2

    async def _open_turn(self) -> Turn | None:
        if self._turn is None:
            turn = self._owner.session.turn()
            await turn.__aenter__()
            if turn.interrupted:  # the session has closed
                return None
            self._turn = turn
            self._turn_due = asyncio.get_running_loop().time()
        return self._turn

    async def _finish_turn(self) -> None:
        turn, self._turn = self._turn, None
        if turn is not None:
            await turn.__aexit__(None, None, None)
        self._reset_converters()

    async def _cancel_turn(self, by: Interrupter) -> None:
        turn, self._turn = self._turn, None
        if turn is None:
            return
        if turn.turn_id is not None:
            self._interrupted.setdefault(turn.turn_id, by)
            while len(self._interrupted) > MAX_AWAITED_REPORTS:
                del self._interrupted[next(iter(self._interrupted))]
        turn.cancel()
        await turn.__aexit__(None, None, None)  # ends it here (checkpointing the state)
        self._reset_converters()

    def _reset_converters(self) -> None:
        for converter in (self._to_pipeline, self._to_session):
            if converter is not None:
                converter.reset()


class QuicVoiceTransport(BaseTransport):
    """Pipecat's transport for one quicvoice call, on the server.

    Build your pipeline around ``transport.input()`` and ``transport.output()``, as with
    any Pipecat transport. Events (``@transport.event_handler(name)``), each handler
    called with the transport first:

    - ``on_client_connected(transport, session)``: a new call started (greet here);
    - ``on_session_resumed(transport, session)``: this pipeline continues a call whose
      backend was lost (``session.state`` is restored; do not greet again);
    - ``on_client_migrated(transport, event)``: the caller's address changed
      (:class:`~quicvoice.app.CallerMigrated`); the call goes on, nothing to do;
    - ``on_client_disconnected(transport, event)``: the call ended
      (:class:`~quicvoice.app.SessionEnded`); not fired for a migration, nor when the
      session moved to another connection (a resume);
    - ``on_turn_played(transport, frame)``: the client's playout report for a turn, a
      :class:`TurnPlayedFrame` (also pushed downstream);
    - ``on_bot_interrupted(transport, frame)``: the same, for a turn cut short (by the
      caller's barge-in or a pipeline interruption), with ``played_ms``;
    - ``on_client_message(transport, event)``: an application event from the caller
      (:class:`~quicvoice.app.UserEvent`).
    """

    def __init__(
        self,
        session: Session,
        params: QuicVoiceParams | None = None,
        *,
        name: str | None = None,
        input_name: str | None = None,
        output_name: str | None = None,
    ) -> None:
        """A transport for ``session``; ``params`` default to :class:`QuicVoiceParams`."""
        super().__init__(name=name, input_name=input_name, output_name=output_name)
        self.session = session
        self._params = params or QuicVoiceParams()
        self._input: QuicVoiceInputTransport | None = None
        self._output: QuicVoiceOutputTransport | None = None
        self._events: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._ended: SessionEnded | None = None
        #: Observers the runner adds to the pipeline worker (a context checkpoint).
        self.observers: list[BaseObserver] = []
        for event in (
            "on_client_connected",
            "on_session_resumed",
            "on_client_migrated",
            "on_client_disconnected",
            "on_turn_played",
            "on_bot_interrupted",
            "on_client_message",
        ):
            self._register_event_handler(event)

    @property
    def resumed(self) -> bool:
        """True when this pipeline continues a call resumed from another backend or link."""
        return self.session.resumed

    @property
    def ended(self) -> SessionEnded | None:
        """How the call ended, once it has."""
        return self._ended

    def input(self) -> QuicVoiceInputTransport:
        """The processor that pushes the caller's audio into the pipeline."""
        if self._input is None:
            self._input = QuicVoiceInputTransport(self, self._params, name=self._input_name)
        return self._input

    def output(self) -> QuicVoiceOutputTransport:
        """The processor that speaks the bot's audio to the caller."""
        if self._output is None:
            self._output = QuicVoiceOutputTransport(self, self._params, name=self._output_name)
        return self._output

    def get_client_id(self, client: Any) -> str:
        """The session's ID (stable across migrations and resumes)."""
        return self.session.id

    async def wait_closed(self) -> SessionEnded:
        """Wait until the call ends (not when it moved to another connection)."""
        await self._closed.wait()
        assert self._ended is not None
        return self._ended

    async def started(self) -> None:
        """The pipeline started: announce the caller and start following the session."""
        if self._events is not None:
            return
        self._events = asyncio.get_running_loop().create_task(self._follow_session())
        if self.session.resumed:
            await self._call_event_handler("on_session_resumed", self.session)
        else:
            await self._call_event_handler("on_client_connected", self.session)

    async def cleanup(self) -> None:
        """Stop following the session."""
        await super().cleanup()  # type: ignore[no-untyped-call]
        if self._events is not None:
            self._events.cancel()

    async def _follow_session(self) -> None:
        async for event in self.session.events():
            if isinstance(event, TurnInterruptedByCaller):
                if self._output is not None:
                    await self._output.caller_interrupted(event.turn_id)
                if self._input is not None:
                    await self._input.interrupt_from_caller()
            elif isinstance(event, TurnPlayed):
                await self._report_played(event)
            elif isinstance(event, CallerMigrated):
                await self._call_event_handler("on_client_migrated", event)
            elif isinstance(event, UserEvent):
                await self._call_event_handler("on_client_message", event)
            elif isinstance(event, SessionEnded):
                self._ended = event
                if event.reason == RESUMED_ELSEWHERE:
                    logger.info("session %s moved to another connection", self.session.id)
                else:
                    await self._call_event_handler("on_client_disconnected", event)
                self._closed.set()

    async def _report_played(self, event: TurnPlayed) -> None:
        by = self._output.take_interrupter(event.turn_id) if self._output is not None else None
        if by is None and not event.complete:
            by = "caller"  # cut short during the client's playout, after it arrived in full
        frame = TurnPlayedFrame(
            turn_id=event.turn_id,
            played_ms=event.played_ms,
            complete=event.complete,
            interrupted_by=by,
        )
        if self._output is not None:
            await self._output.push_frame(frame)
        await self._call_event_handler("on_turn_played", frame)
        if by is not None:
            await self._call_event_handler("on_bot_interrupted", frame)
