"""The client's playout buffer for response turns: filled as fast as frames arrive, drained in time.

Text-to-speech runs faster than real time, so a turn arrives well ahead of when it is played.
The buffer holds it and hands out one frame per tick of the client's audio clock; a tick with
no frame available while a turn is still arriving is an underrun (concealed with silence and
counted). Sans-I/O: the caller owns the clock and calls ``pull()`` once per frame period.

It also counts how much of each turn was actually played (handed out by ``pull()``): when a
turn is cancelled, and when an ended turn's last frame is pulled, ``on_turn_played`` gets a
:class:`PlayedTurn`, which the client reports to the server (the ``played`` message).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

#: Turns whose played frames are counted at once; beyond it the oldest record is forgotten.
MAX_TRACKED_TURNS = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class PlayedTurn:
    """How much of one turn was played out."""

    #: The turn.
    turn_id: int
    #: Milliseconds of the turn handed out by ``pull()``.
    played_ms: int
    #: True when every frame of the ended turn was played; False when it was cut short
    #: (cancelled, or frames dropped for lack of room).
    complete: bool


@dataclass(slots=True)
class _TurnRecord:
    played: int = 0
    buffered: int = 0
    ended: bool = False
    dropped: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PlayoutStats:
    """Counters of a playout buffer."""

    #: Frames waiting to be played.
    buffered_frames: int
    #: Frames played.
    played_frames: int
    #: Ticks that found no frame while a turn was still open (each concealed with silence).
    underruns: int
    #: Samples of silence inserted for underruns.
    concealed_samples: int
    #: Frames discarded because their turn was cancelled.
    flushed_frames: int


class PlayoutBuffer:
    """Frames of response turns in order, played one per tick; cancelled turns flushed at once.

    ``max_frames`` bounds the memory a fast server can make a client use (5 minutes of
    20 ms frames by default); beyond it the oldest frames are dropped and counted as flushed.
    """

    def __init__(
        self,
        samples_per_frame: int,
        max_frames: int = 15_000,
        *,
        rate: int = 16000,
        on_turn_played: Callable[[PlayedTurn], None] | None = None,
    ) -> None:
        if samples_per_frame <= 0 or max_frames <= 0 or rate <= 0:
            raise ValueError("samples_per_frame, max_frames and rate must be positive")
        self.samples_per_frame = samples_per_frame
        self.max_frames = max_frames
        #: The codec's clock rate in Hz (turns ``played_ms`` from frames into time).
        self.rate = rate
        #: Called (synchronously, from ``pull``, ``end_turn``, ``cancel`` or ``push``) when
        #: a turn has played out or was cut short.
        self.on_turn_played = on_turn_played
        self._frames: deque[tuple[int, bytes]] = deque()
        self._open_turns: set[int] = set()
        self._turns: dict[int, _TurnRecord] = {}
        self._played = 0
        self._underruns = 0
        self._flushed = 0

    def start_turn(self, turn_id: int) -> None:
        """A turn opened: until ``end_turn``, an empty buffer is an underrun."""
        self._open_turns.add(turn_id)
        self._record(turn_id)

    def push(self, turn_id: int, payload: bytes) -> None:
        """Queue one frame of ``turn_id``."""
        if len(self._frames) >= self.max_frames:
            oldest, _ = self._frames.popleft()
            self._flushed += 1
            record = self._turns.get(oldest)
            if record is not None:
                record.buffered -= 1
                record.dropped = True
                self._maybe_finished(oldest, record)
        self._frames.append((turn_id, payload))
        self._record(turn_id).buffered += 1

    def end_turn(self, turn_id: int) -> None:
        """The turn's last frame has been pushed."""
        self._open_turns.discard(turn_id)
        record = self._turns.get(turn_id)
        if record is not None:
            record.ended = True
            self._maybe_finished(turn_id, record)

    def cancel(self, turn_id: int) -> int:
        """Discard every frame of ``turn_id`` (barge-in); return how many were dropped."""
        self._open_turns.discard(turn_id)
        kept = deque(item for item in self._frames if item[0] != turn_id)
        dropped = len(self._frames) - len(kept)
        self._frames = kept
        self._flushed += dropped
        record = self._turns.pop(turn_id, None)
        if record is not None:
            self._report(turn_id, record, complete=False)
        return dropped

    def pull(self) -> tuple[int, bytes] | None:
        """Return the next (turn ID, payload) to play, or ``None`` (silence) for this tick."""
        if self._frames:
            self._played += 1
            item = self._frames.popleft()
            record = self._turns.get(item[0])
            if record is not None:
                record.played += 1
                record.buffered -= 1
                self._maybe_finished(item[0], record)
            return item
        if self._open_turns:
            self._underruns += 1
        return None

    def played_ms(self, turn_id: int) -> int | None:
        """Milliseconds of ``turn_id`` played so far; ``None`` once reported (or unknown)."""
        record = self._turns.get(turn_id)
        return None if record is None else self._ms(record.played)

    def _ms(self, frames: int) -> int:
        return frames * self.samples_per_frame * 1000 // self.rate

    def _record(self, turn_id: int) -> _TurnRecord:
        record = self._turns.get(turn_id)
        if record is None:
            if len(self._turns) >= MAX_TRACKED_TURNS:
                del self._turns[next(iter(self._turns))]
            record = self._turns[turn_id] = _TurnRecord()
        return record

    def _maybe_finished(self, turn_id: int, record: _TurnRecord) -> None:
        if record.ended and record.buffered <= 0:
            del self._turns[turn_id]
            self._report(turn_id, record, complete=not record.dropped)

    def _report(self, turn_id: int, record: _TurnRecord, *, complete: bool) -> None:
        if self.on_turn_played is not None:
            self.on_turn_played(
                PlayedTurn(turn_id=turn_id, played_ms=self._ms(record.played), complete=complete)
            )

    @property
    def buffered_frames(self) -> int:
        """Frames waiting to be played."""
        return len(self._frames)

    def stats(self) -> PlayoutStats:
        """A snapshot of the counters."""
        return PlayoutStats(
            buffered_frames=len(self._frames),
            played_frames=self._played,
            underruns=self._underruns,
            concealed_samples=self._underruns * self.samples_per_frame,
            flushed_frames=self._flushed,
        )
