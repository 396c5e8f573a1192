"""The phone line as the gateway sees it: when to send the next frame, what the carrier has
played, which turn needs a mark and when a barge-in needs a ``clear`` (sans-I/O).

The carrier plays the audio it is sent in real time from when it arrives, one frame after
another; it returns a mark once the audio sent before the mark has played. The gateway
sends the downlink paced at real time (:class:`FrameClock`): each tick takes one frame from
the call's playout buffer and sends it at once, so the playout buffer's count of frames
handed out, which the client reports to the backend as ``played``, is the line's own clock
(ahead of what the caller has heard by the one frame now playing plus the carrier's
latency). :class:`Line` models the carrier's playout (a frame sent at ``t`` plays from
``max(t, end of the previous one)``), decides which turn to mark and when a cancel must
``clear`` the carrier, and measures how late the carrier returns marks against the model.

Time is passed in (``now``, seconds on any monotonic clock); nothing here reads a clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

#: Mark names are ``turn-<the call's turn ID>`` (IDs are unique over a call, resumes included).
MARK_PREFIX = "turn-"


def mark_name(turn_id: int) -> str:
    """The name of the mark sent after ``turn_id``'s last frame."""
    return f"{MARK_PREFIX}{turn_id}"


class FrameClock:
    """Ticks every ``period`` seconds without drift: tick *k* is due at ``start + k·period``.

    A tick late by less than ``max_burst`` periods is caught up (several ticks due at once);
    a longer stall (the event loop was blocked) is not: at most ``max_burst`` ticks are
    given and the schedule restarts from ``now``, since the line was silent meanwhile and a
    burst would only push audio ahead of it. ``skipped`` counts the ticks given up.
    """

    def __init__(self, start: float, period: float = 0.02, *, max_burst: int = 2) -> None:
        if period <= 0 or max_burst < 1:
            raise ValueError("period must be positive and max_burst at least 1")
        self.period = period
        self.max_burst = max_burst
        self._anchor = start
        self._ticks = 0
        #: Ticks given up after stalls.
        self.skipped = 0

    @property
    def next_at(self) -> float:
        """When the next tick is due."""
        return self._anchor + self._ticks * self.period

    def due(self, now: float) -> int:
        """How many ticks are due at ``now`` (0 when early); they count as taken."""
        # The epsilon keeps a tick due at exactly its time (0.06 / 0.02 is 2.9999...).
        behind = int((now - self._anchor) / self.period + 1e-9) - self._ticks + 1
        if behind <= 0:
            return 0
        if behind > self.max_burst:
            self.skipped += behind - self.max_burst
            self._anchor, self._ticks = now + self.period, 0
            return self.max_burst
        self._ticks += behind
        return behind


@dataclass(frozen=True, slots=True, kw_only=True)
class LineStats:
    """Counters of one call's line."""

    #: Downlink frames sent to the carrier.
    frames_sent: int
    #: Their audio, in milliseconds.
    audio_sent_ms: float
    #: Marks sent (one after each turn that played to its end).
    marks_sent: int
    #: Marks the carrier returned as played.
    marks_played: int
    #: Marks the carrier returned because of a ``clear``.
    marks_cleared: int
    #: ``clear`` messages sent (barge-ins that cut audio on the line).
    clears_sent: int
    #: How much later than the model's end of playout the carrier returned the last mark
    #: (network and carrier buffering), in milliseconds; ``None`` before the first.
    last_mark_lag_ms: float | None
    #: The largest such lag so far.
    max_mark_lag_ms: float | None


@dataclass(slots=True)
class _Turn:
    frames: int = 0
    ended: bool = False
    orphaned: bool = False
    mark: str | None = None


class Line:
    """The carrier's playout model and the downlink's turns and marks."""

    def __init__(self, *, max_turns: int = 64) -> None:
        if max_turns < 1:
            raise ValueError("max_turns must be positive")
        self.max_turns = max_turns
        self._busy_until = float("-inf")
        self._turns: OrderedDict[int, _Turn] = OrderedDict()
        #: Marks in flight: name -> (turn ID, when the model says its audio ends).
        self._marks: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._frames_sent = 0
        self._audio_sent = 0.0
        self._marks_sent = 0
        self._marks_played = 0
        self._marks_cleared = 0
        self._clears = 0
        self._last_lag: float | None = None
        self._max_lag: float | None = None

    def playing_until(self) -> float:
        """When the audio sent so far will have played out (``-inf`` before any)."""
        return self._busy_until

    def audible(self, now: float) -> bool:
        """Whether the carrier is still playing audio the gateway sent."""
        return self._busy_until > now

    def sent(self, turn_id: int | None, duration: float, now: float) -> None:
        """A frame of ``turn_id`` (``None``: outside any turn) lasting ``duration`` s went out."""
        self._busy_until = max(now, self._busy_until) + duration
        self._frames_sent += 1
        self._audio_sent += duration
        if turn_id is not None:
            self._turn(turn_id).frames += 1

    def turn_ended(self, turn_id: int) -> None:
        """The backend finished sending ``turn_id`` (its frames may still be queued, none
        of them sent yet: a turn often arrives whole, faster than real time)."""
        self._turn(turn_id).ended = True

    def turn_cancelled(self, turn_id: int, now: float) -> bool:
        """The turn was cancelled (barge-in); return whether to send ``clear``: some of its
        audio went to the carrier and may not have played yet. The carrier then drops all
        it holds, so the model's line falls silent at ``now``."""
        turn = self._turns.pop(turn_id, None)
        if turn is None or turn.frames == 0 or not self.audible(now):
            return False
        self._busy_until = now
        self._clears += 1
        return True

    def session_resumed(self) -> None:
        """The call resumed on another backend: turns of the lost connection never end, so
        each is marked once the line has moved past its last buffered frame."""
        for turn in self._turns.values():
            if not turn.ended:
                turn.orphaned = True

    def marks_due(self, *, current: int | None, finished: Callable[[int], bool]) -> list[int]:
        """Turns whose every frame has gone out and that still need their mark.

        ``current`` is the turn of the frame just sent (``None``: none); ``finished(t)``
        says whether the playout buffer has handed out the last frame of ended turn ``t``.
        """
        due = []
        for turn_id, turn in self._turns.items():
            if turn.mark is not None or turn.frames == 0:
                continue
            if (turn.ended and finished(turn_id)) or (turn.orphaned and turn_id != current):
                due.append(turn_id)
        return due

    def mark_sent(self, turn_id: int, name: str | None, now: float) -> None:
        """The mark ``name`` for ``turn_id`` went out after its last frame (``None``: the
        turn was due but no mark could be sent; it is not asked for again)."""
        turn = self._turn(turn_id)
        if name is None:
            self._turns.pop(turn_id, None)
            return
        turn.mark = name
        self._marks[name] = (turn_id, max(now, self._busy_until))
        self._marks_sent += 1
        while len(self._marks) > self.max_turns:
            self._marks.popitem(last=False)

    def mark_returned(self, name: str, *, cleared: bool, now: float) -> int | None:
        """The carrier returned ``name``; return its turn (``None`` if unknown)."""
        entry = self._marks.pop(name, None)
        if entry is None:
            return None
        turn_id, ends = entry
        self._turns.pop(turn_id, None)
        if cleared:
            self._marks_cleared += 1
            return turn_id
        self._marks_played += 1
        lag = (now - ends) * 1000
        self._last_lag = lag
        self._max_lag = lag if self._max_lag is None else max(self._max_lag, lag)
        return turn_id

    def stats(self) -> LineStats:
        """A snapshot of the counters."""
        return LineStats(
            frames_sent=self._frames_sent,
            audio_sent_ms=self._audio_sent * 1000,
            marks_sent=self._marks_sent,
            marks_played=self._marks_played,
            marks_cleared=self._marks_cleared,
            clears_sent=self._clears,
            last_mark_lag_ms=self._last_lag,
            max_mark_lag_ms=self._max_lag,
        )

    def _turn(self, turn_id: int) -> _Turn:
        turn = self._turns.get(turn_id)
        if turn is None:
            turn = self._turns[turn_id] = _Turn()
            while len(self._turns) > self.max_turns:
                self._turns.popitem(last=False)
        return turn
