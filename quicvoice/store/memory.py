"""The in-process session store (``memory://``): the default, for one backend and for tests.

Nothing survives the process and nothing is shared between backends. Expiry is checked against
an injected clock on every access, so tests move time by hand. The methods are coroutines only to
satisfy ``SessionStore``; none of them waits, so a sequence of calls is atomic.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from quicvoice.errors import StoreError

from .base import (
    MAX_TICKET_LEN,
    SessionRecord,
    StaleWriteError,
    StoreStatistics,
    check_for_save,
    check_session_id,
    check_ticket_label,
    check_ttl,
)

#: Most sessions kept at once; a save of a new session beyond it raises ``StoreError``.
DEFAULT_MAX_SESSIONS = 100_000
#: Most tickets kept at once; the oldest is dropped to make room.
DEFAULT_MAX_TICKETS = 100_000


@dataclass(slots=True)
class _Counters:
    operations: int = 0
    errors: int = 0
    stale_writes: int = 0


class MemoryStore:
    """A ``SessionStore`` in a dictionary, with an injectable clock (seconds, Unix time)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_tickets: int = DEFAULT_MAX_TICKETS,
    ) -> None:
        if max_sessions < 1 or max_tickets < 1:
            raise ValueError("max_sessions and max_tickets must be at least 1")
        self._clock = clock
        self._max_sessions = max_sessions
        self._max_tickets = max_tickets
        self._records: dict[str, SessionRecord] = {}
        self._tickets: dict[bytes, tuple[bytes, float]] = {}
        self._counters = _Counters()
        self._closed = False

    async def load(self, session_id: str) -> SessionRecord | None:
        """The session's current record, or ``None`` if there is none or it has expired."""
        check_session_id(session_id)
        self._begin()
        return self._live(session_id)

    async def save(self, record: SessionRecord, expected_version: int) -> SessionRecord:
        """Compare-and-set ``record`` against ``expected_version`` (see ``SessionStore.save``)."""
        now = self._clock()
        check_for_save(record, expected_version, now)
        self._begin()
        current = self._live(record.session_id)
        actual = 0 if current is None else current.version
        if actual != expected_version:
            self._counters.stale_writes += 1
            raise StaleWriteError(record.session_id, expected_version, actual)
        if current is None and len(self._records) >= self._max_sessions:
            self._purge(now)
            if len(self._records) >= self._max_sessions:
                self._counters.errors += 1
                raise StoreError(f"memory store full ({self._max_sessions} sessions)")
        self._records[record.session_id] = record
        return record

    async def delete(self, session_id: str) -> bool:
        """Remove the session's record; ``True`` if there was a live one."""
        check_session_id(session_id)
        self._begin()
        found = self._live(session_id) is not None
        self._records.pop(session_id, None)
        return found

    async def put_ticket(self, label: bytes, ticket: bytes, ttl: float) -> None:
        """Keep ``ticket`` under ``label`` for ``ttl`` seconds (the oldest goes when full)."""
        check_ticket_label(label)
        check_ttl(ttl)
        if not isinstance(ticket, bytes):
            raise TypeError("ticket must be bytes")
        self._begin()
        if len(ticket) > MAX_TICKET_LEN:
            self._counters.errors += 1
            raise StoreError(f"ticket of {len(ticket)} octets exceeds {MAX_TICKET_LEN}")
        self._tickets.pop(label, None)
        while len(self._tickets) >= self._max_tickets:
            del self._tickets[next(iter(self._tickets))]
        self._tickets[label] = (ticket, self._clock() + ttl)

    async def take_ticket(self, label: bytes) -> bytes | None:
        """Remove and return the live ticket under ``label``, or ``None``."""
        check_ticket_label(label)
        self._begin()
        entry = self._tickets.pop(label, None)
        if entry is None or entry[1] <= self._clock():
            return None
        return entry[0]

    async def generation(self) -> int | None:
        """``None``: the records live and die with this process; nothing to watch."""
        return None

    def statistics(self) -> StoreStatistics:
        """Counters since the store was made."""
        return StoreStatistics(
            operations=self._counters.operations,
            errors=self._counters.errors,
            stale_writes=self._counters.stale_writes,
            corrupt=0,
        )

    async def aclose(self) -> None:
        """Forget everything; later calls raise ``StoreError``."""
        self._closed = True
        self._records.clear()
        self._tickets.clear()

    def _begin(self) -> None:
        self._counters.operations += 1
        if self._closed:
            self._counters.errors += 1
            raise StoreError("the memory store is closed")

    def _live(self, session_id: str) -> SessionRecord | None:
        record = self._records.get(session_id)
        if record is not None and record.expires_at <= self._clock():
            del self._records[session_id]
            return None
        return record

    def _purge(self, now: float) -> None:
        expired = [sid for sid, rec in self._records.items() if rec.expires_at <= now]
        for sid in expired:
            del self._records[sid]
