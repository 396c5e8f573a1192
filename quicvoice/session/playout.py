"""The client's playout buffer for response turns: filled as fast as frames arrive, drained in time.

Text-to-speech runs faster than real time, so a turn arrives well ahead of when it is played.
The buffer holds it and hands out one frame per tick of the client's audio clock; a tick with
no frame available while a turn is still arriving is an underrun (concealed with silence and
counted). Sans-I/O: the caller owns the clock and calls ``pull()`` once per frame period.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


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

    def __init__(self, samples_per_frame: int, max_frames: int = 15_000) -> None:
        if samples_per_frame <= 0 or max_frames <= 0:
            raise ValueError("samples_per_frame and max_frames must be positive")
        self.samples_per_frame = samples_per_frame
        self.max_frames = max_frames
        self._frames: deque[tuple[int, bytes]] = deque()
        self._open_turns: set[int] = set()
        self._played = 0
        self._underruns = 0
        self._flushed = 0

    def start_turn(self, turn_id: int) -> None:
        """A turn opened: until ``end_turn``, an empty buffer is an underrun."""
        self._open_turns.add(turn_id)

    def push(self, turn_id: int, payload: bytes) -> None:
        """Queue one frame of ``turn_id``."""
        if len(self._frames) >= self.max_frames:
            self._frames.popleft()
            self._flushed += 1
        self._frames.append((turn_id, payload))

    def end_turn(self, turn_id: int) -> None:
        """The turn's last frame has been pushed."""
        self._open_turns.discard(turn_id)

    def cancel(self, turn_id: int) -> int:
        """Discard every frame of ``turn_id`` (barge-in); return how many were dropped."""
        self._open_turns.discard(turn_id)
        kept = deque(item for item in self._frames if item[0] != turn_id)
        dropped = len(self._frames) - len(kept)
        self._frames = kept
        self._flushed += dropped
        return dropped

    def pull(self) -> tuple[int, bytes] | None:
        """Return the next (turn ID, payload) to play, or ``None`` (silence) for this tick."""
        if self._frames:
            self._played += 1
            return self._frames.popleft()
        if self._open_turns:
            self._underruns += 1
        return None

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
