"""The client's bounded queue of events for the app, with its overflow policy (sans-I/O).

Two kinds of events wait here, in arrival order:

- **audio** (``AudioReceived``): the playout buffer already has every frame, so these copies
  are a convenience for apps that process received audio themselves. At most ``max_audio``
  wait; beyond that the oldest is dropped and counted (``audio_dropped``). An app that does
  not want them at all turns them off (``audio=False``) and none are queued.
- **control** (every other ``ClientEvent``): never dropped silently. At most ``max_control``
  wait; one more is refused (``push`` returns False) and the caller ends the call with a clear
  error, because an app that leaves that many unread is not reading at all. ``SessionClosed``
  is always taken, so that the app learns why its call ended.

``take_first`` removes one matching event from anywhere in the queue and leaves the others in
order, so ``wait_event(name)`` no longer loses what it skips.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .events import AudioReceived, ClientEvent, SessionClosed

#: Audio events kept for the app: 10 s of 20 ms frames.
DEFAULT_MAX_AUDIO = 500
#: Control events left unread before the call is ended: far more than a real app leaves.
DEFAULT_MAX_CONTROL = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class InboxStats:
    """Counters of an ``EventInbox``."""

    #: Audio events waiting.
    audio_waiting: int
    #: Control events waiting.
    control_waiting: int
    #: Audio events dropped (oldest first) because ``max_audio`` were waiting.
    audio_dropped: int


class EventInbox:
    """Events for the app in arrival order: audio bounded and dropped oldest first, control
    bounded and refused (never dropped) when full."""

    def __init__(
        self,
        *,
        audio: bool = True,
        max_audio: int = DEFAULT_MAX_AUDIO,
        max_control: int = DEFAULT_MAX_CONTROL,
    ) -> None:
        if max_audio <= 0 or max_control <= 0:
            raise ValueError("max_audio and max_control must be positive")
        #: Whether audio events are queued at all.
        self.audio = audio
        self.max_audio = max_audio
        self.max_control = max_control
        # Each event carries its arrival number, so the two queues merge back in order.
        self._audio: deque[tuple[int, AudioReceived]] = deque()
        self._control: deque[tuple[int, ClientEvent]] = deque()
        self._arrivals = 0
        self._audio_dropped = 0

    def push(self, event: ClientEvent) -> bool:
        """Queue ``event``; False when it is a control event and ``max_control`` are waiting
        (it was not queued: end the call)."""
        self._arrivals += 1
        if isinstance(event, AudioReceived):
            if self.audio:
                if len(self._audio) >= self.max_audio:
                    self._audio.popleft()
                    self._audio_dropped += 1
                self._audio.append((self._arrivals, event))
            return True
        if len(self._control) >= self.max_control and not isinstance(event, SessionClosed):
            return False
        self._control.append((self._arrivals, event))
        return True

    def pop(self) -> ClientEvent | None:
        """Remove and return the oldest event, or ``None`` when none waits."""
        audio, control = self._audio, self._control
        if audio and (not control or audio[0][0] < control[0][0]):
            return audio.popleft()[1]
        if control:
            return control.popleft()[1]
        return None

    def take_first(self, matches: Callable[[ClientEvent], bool]) -> ClientEvent | None:
        """Remove and return the oldest control event that ``matches``; the rest stay."""
        for index, (_, event) in enumerate(self._control):
            if matches(event):
                del self._control[index]
                return event
        return None

    def holds(self, matches: Callable[[ClientEvent], bool]) -> bool:
        """Whether a waiting control event ``matches``."""
        return any(matches(event) for _, event in self._control)

    def __len__(self) -> int:
        return len(self._audio) + len(self._control)

    def stats(self) -> InboxStats:
        """A snapshot of the counters."""
        return InboxStats(
            audio_waiting=len(self._audio),
            control_waiting=len(self._control),
            audio_dropped=self._audio_dropped,
        )
