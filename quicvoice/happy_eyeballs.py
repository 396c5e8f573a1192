"""Happy eyeballs for voice sessions (RFC 8305), sans-I/O: which address to try when.

The addresses a name resolved to are ordered IPv6 first, the families interleaved (§4). The
first attempt starts at once; each next one starts a Connection Attempt Delay later (§5:
250 ms by default), or as soon as the attempt before it fails. Attempts overlap: the first to
*win* (for a voice session: its handshake done and ``welcome`` received, not merely a QUIC
handshake) ends the race, and every other attempt still running is abandoned; the shell
closes those with CONNECTION_CLOSE, so no backend keeps a half-open session. An attempt that
fails *finally* (the server answered and refused, or its certificate failed a check) ends the
race at once: another address of the same name would only repeat it.

``ConnectionRace`` follows aioquic's timer convention: feed it ``attempt_succeeded`` /
``attempt_failed`` and ``handle_timer(now)`` when ``get_timer()`` is due, and drain
``next_action()``. It reads no clock and opens nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from .settings import Address

#: RFC 8305 §8: the recommended Connection Attempt Delay, seconds.
DEFAULT_ATTEMPT_DELAY = 0.25
#: RFC 8305 §5: never less than 10 ms (100 ms recommended as the floor when adapting).
MIN_ATTEMPT_DELAY = 0.01
#: Addresses raced at most; a name with more is cut to this many after ordering.
MAX_ADDRESSES = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class RaceAction:
    """Base class of what the race asks the shell to do."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StartAttempt(RaceAction):
    """Open a connection to ``address`` now."""

    index: int
    address: Address


@dataclass(frozen=True, slots=True, kw_only=True)
class AbandonAttempt(RaceAction):
    """Stop attempt ``index`` and close its connection (it lost, or the race ended)."""

    index: int
    address: Address


@dataclass(frozen=True, slots=True, kw_only=True)
class RaceWon(RaceAction):
    """Attempt ``index`` won: its connection is the call's."""

    index: int
    address: Address


@dataclass(frozen=True, slots=True, kw_only=True)
class RaceFailed(RaceAction):
    """No attempt can win: every address failed, or one failed finally (``final_index``)."""

    final_index: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RaceTimedOut(RaceAction):
    """The deadline passed with no winner and no final failure."""


def interleave_families(addresses: Sequence[Address]) -> list[Address]:
    """RFC 8305 §4: IPv6 first, then alternate families, each keeping the resolver's order
    (RFC 6724's preference); duplicates dropped, at most ``MAX_ADDRESSES``."""
    seen: set[Address] = set()
    ipv6: deque[Address] = deque()
    ipv4: deque[Address] = deque()
    for address in addresses:
        if address in seen:
            continue
        seen.add(address)
        (ipv6 if ":" in address[0] else ipv4).append(address)
    ordered: list[Address] = []
    while ipv6 or ipv4:
        for family in (ipv6, ipv4):
            if family:
                ordered.append(family.popleft())
    return ordered[:MAX_ADDRESSES]


class ConnectionRace:
    """The attempts of one connect over ``addresses`` (already ordered), until ``deadline``."""

    def __init__(
        self,
        addresses: Sequence[Address],
        *,
        deadline: float,
        attempt_delay: float = DEFAULT_ATTEMPT_DELAY,
    ) -> None:
        if not addresses:
            raise ValueError("a connection race needs at least one address")
        if attempt_delay < MIN_ATTEMPT_DELAY:
            raise ValueError(f"attempt_delay must be at least {MIN_ATTEMPT_DELAY} s")
        self._addresses = tuple(addresses)
        self._deadline = deadline
        self._attempt_delay = attempt_delay
        self._next_index = 0
        self._next_start_at: float | None = None
        self._running: set[int] = set()
        self._actions: deque[RaceAction] = deque()
        self._started = False
        self._finished = False

    @property
    def finished(self) -> bool:
        """Whether the race is decided (won, failed or timed out)."""
        return self._finished

    @property
    def running(self) -> frozenset[int]:
        """Attempts started and not yet succeeded, failed or abandoned."""
        return frozenset(self._running)

    def start(self, now: float) -> None:
        """Start the first attempt."""
        if self._started:
            raise ValueError("the race has already started")
        self._started = True
        self._start_next(now)

    def attempt_succeeded(self, index: int, now: float) -> None:
        """Attempt ``index`` has its session: it wins unless the race is already decided."""
        self._check_index(index)
        self._running.discard(index)
        if self._finished:
            self._actions.append(AbandonAttempt(index=index, address=self._addresses[index]))
            return
        self._finish()
        self._actions.append(RaceWon(index=index, address=self._addresses[index]))

    def attempt_failed(self, index: int, now: float, *, final: bool = False) -> None:
        """Attempt ``index`` failed; ``final``: the server refused (no other address helps)."""
        self._check_index(index)
        if index not in self._running or self._finished:
            self._running.discard(index)
            return
        self._running.discard(index)
        if final:
            self._finish()
            self._actions.append(RaceFailed(final_index=index))
        elif self._next_index < len(self._addresses):
            self._start_next(now)  # RFC 8305 §5: the next attempt starts at once
        elif not self._running:
            self._finish()
            self._actions.append(RaceFailed(final_index=None))

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must next be called (``None`` once decided)."""
        if self._finished or not self._started:
            return None
        if self._next_start_at is not None:
            return min(self._next_start_at, self._deadline)
        return self._deadline

    def handle_timer(self, now: float) -> None:
        """Start the next attempt, or end the race at the deadline."""
        if self._finished or not self._started:
            return
        if now >= self._deadline:
            self._finish()
            self._actions.append(RaceTimedOut())
            return
        if self._next_start_at is not None and now >= self._next_start_at:
            self._start_next(now)

    def next_action(self) -> RaceAction | None:
        """The next thing for the shell to do, or ``None``."""
        return self._actions.popleft() if self._actions else None

    def _start_next(self, now: float) -> None:
        index = self._next_index
        self._next_index += 1
        self._running.add(index)
        self._actions.append(StartAttempt(index=index, address=self._addresses[index]))
        more = self._next_index < len(self._addresses)
        self._next_start_at = now + self._attempt_delay if more else None

    def _finish(self) -> None:
        self._finished = True
        self._next_start_at = None
        for index in sorted(self._running):
            self._actions.append(AbandonAttempt(index=index, address=self._addresses[index]))
        self._running.clear()

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self._next_index:
            raise ValueError(f"attempt {index} was never started")
