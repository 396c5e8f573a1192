"""What the agent says as a LiveKit ``AudioOutput``: one quicvoice turn per speech segment.

LiveKit's contract and how it maps onto a session:

=========================  ===============================================================
``capture_frame(frame)``   the first frame of a segment opens a turn; frames are converted
                           to the session's rate (mono) and written; ``write`` waits while
                           the client has not acknowledged ``App.turn_buffer_ms`` of it
``flush()``                ends the turn (FIN); the segment is finished when the client
                           reports what it played
``clear_buffer()``         cancels the current turn, or the one still playing out at the
                           client (barge-in from the agent's side)
``on_playback_finished``   from the client's ``played`` report: ``played_ms`` is the
                           position, ``complete`` false means interrupted
=========================  ===============================================================

A caller's barge-in (the client cancels a turn) calls ``on_caller_barge_in`` once for the
segment, before its playback is reported finished, so an ``AgentSession`` hears of it as
an interruption (``AgentCall`` wires it to ``AgentSession.interrupt()``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from livekit import rtc
from livekit.agents.voice import io

from ...app import Session, Turn, TurnInterrupted
from ...audio.frames import Pcm
from .frames import FrameConverter

logger = logging.getLogger("quicvoice.integrations.livekit")

#: How long past the expected end of its playout a segment waits for the client's report
#: before it is finished from an estimate (clients that do not report, or a lost caller).
REPORT_GRACE_SECONDS = 5.0


@dataclass(slots=True, kw_only=True)
class _Segment:
    """One speech segment: its turn and what is known of its playout."""

    turn: Turn
    converter: FrameConverter
    #: Seconds of audio written to the turn.
    written: float = 0.0
    #: Wall-clock (``time.time()``) and loop time of the first frame written.
    started_at: float | None = None
    started_loop: float | None = None
    #: True once this side cleared it (``clear_buffer``).
    cleared: bool = False
    #: True once the caller's barge-in on it was signalled.
    barged_in: bool = False
    finishing: asyncio.Task[None] | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class SessionAudioOutput(io.AudioOutput):
    """Plays an ``AgentSession``'s speech to the caller, one quicvoice turn per segment."""

    def __init__(self, session: Session, *, label: str = "quicvoice") -> None:
        super().__init__(
            label=label,
            capabilities=io.AudioOutputCapabilities(pause=False),
            sample_rate=session.sample_rate,
        )
        self._session = session
        self._current: _Segment | None = None
        self._previous: _Segment | None = None
        self._playing: dict[int, _Segment] = {}
        self._closed = asyncio.Event()
        #: Called (no arguments) when the caller barges in on the agent's speech.
        self.on_caller_barge_in: Callable[[], None] | None = None
        #: Frames dropped because their segment was cleared or interrupted.
        self.frames_dropped = 0

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        """Write ``frame`` to the current segment's turn, opening one for a new segment."""
        before = self.captured_playout_segments
        await super().capture_frame(frame)
        if self.captured_playout_segments != before:
            await self._open_segment()
        segment = self._current
        if segment is None or segment.cleared or segment.turn.interrupted:
            self.frames_dropped += 1
            return
        samples = segment.converter.convert(frame)
        await self._write(segment, samples)

    def flush(self) -> None:
        """The segment is complete: end its turn; it finishes when the client has played it."""
        super().flush()
        segment, self._current = self._current, None
        if segment is not None:
            self._finish(segment)

    def clear_buffer(self) -> None:
        """Stop the agent's speech now: cancel the turn being written or still playing out."""
        segment = self._current
        if segment is not None:
            self._current = None
            segment.cleared = True
            segment.turn.cancel()
            self._finish(segment)
            return
        for playing in self._playing.values():
            if not playing.turn.interrupted:
                playing.cleared = True
                playing.turn.cancel()

    def caller_interrupted(self, turn_id: int) -> None:
        """The caller barged in on turn ``turn_id`` (``TurnInterruptedByCaller``)."""
        segment = self._current
        if segment is None or segment.turn.turn_id != turn_id:
            segment = self._playing.get(turn_id)
        if segment is not None:
            self._barge_in(segment)

    def session_ended(self) -> None:
        """The session closed: finish every segment from what is known."""
        self._closed.set()

    async def aclose(self) -> None:
        """Wait (bounded by the reports' own deadlines) for segments still finishing."""
        tasks = [s.finishing for s in self._playing.values() if s.finishing is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _open_segment(self) -> None:
        previous = self._previous
        if previous is not None:
            await previous.ended.wait()  # one turn on the wire at a time, in order
        turn = self._session.turn()
        await turn.__aenter__()
        segment = _Segment(turn=turn, converter=FrameConverter(self._session.sample_rate))
        self._current = self._previous = segment
        if turn.turn_id is not None:
            self._playing[turn.turn_id] = segment

    async def _write(self, segment: _Segment, samples: Pcm) -> None:
        if not len(samples) or segment.cleared or segment.turn.interrupted:
            return
        if segment.started_at is None:
            segment.started_at = time.time()
            segment.started_loop = asyncio.get_running_loop().time()
            self.on_playback_started(created_at=segment.started_at)
        segment.written += len(samples) / self._session.sample_rate
        try:
            await segment.turn.write(samples)
        except TurnInterrupted:  # the caller barged in, or the call ended: drop the rest
            self.frames_dropped += 1

    def _finish(self, segment: _Segment) -> None:
        segment.finishing = asyncio.get_running_loop().create_task(self._complete(segment))

    async def _complete(self, segment: _Segment) -> None:
        turn = segment.turn
        try:
            await self._write(segment, segment.converter.flush())
            await turn.__aexit__(None, None, None)  # ends the turn (FIN) unless interrupted
        finally:
            segment.ended.set()
        played_ms = await self._wait_report(segment)
        interrupted = segment.cleared or turn.interrupted or turn.complete is False
        if interrupted:
            self._barge_in(segment)  # cut short, not by this side: the caller's doing
        if played_ms is not None:
            position = played_ms / 1000
        else:  # no report: what was written, as far as time allows it to have played
            position = segment.written
            if interrupted and segment.started_loop is not None:
                elapsed = asyncio.get_running_loop().time() - segment.started_loop
                position = min(position, max(0.0, elapsed))
        if turn.turn_id is not None:
            self._playing.pop(turn.turn_id, None)
        self.on_playback_finished(playback_position=position, interrupted=interrupted)

    async def _wait_report(self, segment: _Segment) -> int | None:
        """The client's ``played_ms`` for the segment's turn, or ``None`` when none came."""
        turn = segment.turn
        if turn.played_ms is not None or turn.turn_id is None or self._closed.is_set():
            return turn.played_ms
        loop = asyncio.get_running_loop()
        started = segment.started_loop if segment.started_loop is not None else loop.time()
        timeout = max(0.0, started + segment.written - loop.time()) + REPORT_GRACE_SECONDS
        report = loop.create_task(turn.wait_played(timeout))
        closed = loop.create_task(self._closed.wait())
        try:
            await asyncio.wait({report, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            report.cancel()
            closed.cancel()
        if turn.played_ms is None:
            logger.debug("turn %s: no played report from the client", turn.turn_id)
        return turn.played_ms

    def _barge_in(self, segment: _Segment) -> None:
        if segment.barged_in or segment.cleared or self._session.closed:
            return
        segment.barged_in = True
        if self.on_caller_barge_in is not None:
            self.on_caller_barge_in()
