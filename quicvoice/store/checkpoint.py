"""Checkpointing a session's application state to the store, on conversational events only.

``Checkpointer`` is the sans-I/O core (``now`` passed in, aioquic-style ``get_timer``); it decides
*what* to write and *when*. ``AsyncCheckpointer`` drives one against a ``SessionStore``.

Rules (specs/store.md, "Checkpoint policy"):

    event                     effect
    update(state)             state becomes the latest; older unwritten state is dropped
                              (coalesced). Call it on conversational events, never per frame.
    next_write(now)           a write if: state is newer than the store (or a keep-alive is
                              due), nothing is in flight, no conflict, and the back-off and
                              ``min_interval`` have passed. At most one write is in flight.
    write_succeeded           the written record becomes the base; back-off resets.
    write_failed              the state stays pending; retry after a back-off that doubles
                              from ``retry_initial`` to ``retry_max``.
    write_overtaken           stale, but the store's record is ours (a late write of ours, or an
                              older version after a failover): continue from it, rewriting the
                              state unless the store holds it.
    write_conflicted          another writer won (StaleWriteError): writing stops, the store's
                              record is reported; only ``resolve`` resumes writing, so nothing is
                              ever overwritten silently.
    write_lost                the record is gone (expired, or the store lost its data): it is
                              re-created with the next version (expected_version 0).
    keep-alive                with no new state, the record is rewritten once half its TTL has
                              passed, so a quiet call does not expire from the store.
    store_recovered           the store answers again after failing (retry at once, no back-off)
                              or may have lost its records (``lost_records``: Redis restarted
                              empty): the state is written again at once, changed or not, so a
                              backend lost later still leaves the session resumable.

``StoreMonitor`` asks the store for its ``generation`` every second and tells the checkpointers
it watches.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from quicvoice.errors import StoreError

from .background import cancel_and_wait
from .base import (
    MAX_STATE_LEN,
    SessionRecord,
    SessionStore,
    StaleWriteError,
    StoreUnavailableError,
    check_session_id,
)

#: First retry delay after a failed write, in seconds.
DEFAULT_RETRY_INITIAL = 0.1
#: Longest retry delay, in seconds.
DEFAULT_RETRY_MAX = 5.0
#: Fraction of the TTL after which an unchanged record is rewritten to keep it alive.
KEEPALIVE_FRACTION = 0.5
#: Bound on one store call made by ``AsyncCheckpointer``, in seconds.
DEFAULT_CALL_TIMEOUT = 2.0
#: How often ``StoreMonitor`` asks the store whether it lost records, in seconds.
DEFAULT_MONITOR_INTERVAL = 1.0

_LOG = logging.getLogger(__name__)


class CheckpointEvent:
    """Base class of what a checkpointer reports."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointWritten(CheckpointEvent):
    """A write reached the store."""

    #: The record as stored.
    record: SessionRecord
    #: Whether it was a keep-alive (unchanged state) rather than new state.
    keepalive: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointFailed(CheckpointEvent):
    """A write failed; the state is kept and retried."""

    #: The store's error message.
    error: str
    #: Consecutive failures so far, this one included.
    attempt: int
    #: When the next attempt may start, seconds on the checkpointer's clock.
    retry_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointConflicted(CheckpointEvent):
    """Another writer changed the session first; writing stopped until ``resolve``."""

    #: The version this checkpointer expected.
    expected_version: int
    #: The store's record after the conflict (``None``: gone, or not reloaded).
    current: SessionRecord | None
    #: Whether ``current`` was read back from the store (``False``: the reload failed too).
    reloaded: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointWrite:
    """A write to perform: ``store.save(record, expected_version)``."""

    #: The record to save.
    record: SessionRecord
    #: The version the store must hold (0: create).
    expected_version: int
    #: Whether it is a keep-alive (unchanged state).
    keepalive: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointStatistics:
    """A snapshot of a checkpointer's counters."""

    #: ``update`` calls (conversational events).
    updates: int
    #: Updates replaced by a newer one before they were written.
    coalesced: int
    #: Saves attempted.
    writes: int
    #: Saves that succeeded (keep-alives included).
    written: int
    #: Of ``written``, keep-alives.
    keepalives: int
    #: Saves that failed with a store error (not conflicts).
    failures: int
    #: Saves refused as stale.
    conflicts: int
    #: Saves that found the record gone (expired, or the store lost it) and re-create it.
    lost: int
    #: Writes of unchanged state because the store may have lost its records.
    refreshes: int
    #: Loads made to learn the winner of a conflict.
    loads: int
    #: The last store error, if any.
    last_error: str | None
    #: The last version written, 0 if none.
    version: int
    #: Whether newer state than the store's is waiting.
    pending: bool

    @property
    def store_operations(self) -> int:
        """Store calls made: saves attempted plus loads."""
        return self.writes + self.loads

    def operations_per_minute(self, duration: float) -> float:
        """Store operations per minute over ``duration`` seconds of call time."""
        if not duration > 0:
            raise ValueError("duration must be positive")
        return self.store_operations * 60.0 / duration


class Checkpointer:
    """The sans-I/O checkpoint policy for one session (see the module docstring)."""

    def __init__(
        self,
        session_id: str,
        *,
        ttl: float,
        base: SessionRecord | None = None,
        owner: str = "",
        caller: bytes = b"",
        min_interval: float = 0.0,
        retry_initial: float = DEFAULT_RETRY_INITIAL,
        retry_max: float = DEFAULT_RETRY_MAX,
        keepalive: bool = True,
    ) -> None:
        """``base``: the stored record this session continues (``None``: not stored yet).

        ``owner`` and ``caller`` go into the first record when there is no ``base``; a base
        record's own are kept.
        """
        check_session_id(session_id)
        if base is not None and base.session_id != session_id:
            raise ValueError("base record belongs to another session")
        for name, value in (("ttl", ttl), ("retry_initial", retry_initial)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds")
        if not (math.isfinite(min_interval) and min_interval >= 0):
            raise ValueError("min_interval must be a non-negative number of seconds")
        if not (math.isfinite(retry_max) and retry_max >= retry_initial):
            raise ValueError("retry_max must be at least retry_initial")
        self._session_id = session_id
        self._ttl = float(ttl)
        self._owner = owner if base is None else base.owner
        self._caller = caller if base is None else base.caller
        self._min_interval = float(min_interval)
        self._retry_initial = float(retry_initial)
        self._retry_max = float(retry_max)
        self._keepalive = keepalive
        self._base = base
        self._pending: bytes | None = None
        self._in_flight: CheckpointWrite | None = None
        self._lost = False
        self._refresh = False
        self._refreshing = False
        self._conflict: CheckpointConflicted | None = None
        self._failures = 0
        self._not_before = -math.inf
        self._last_write_at = -math.inf
        self._counts = {
            "updates": 0, "coalesced": 0, "writes": 0, "written": 0, "keepalives": 0,
            "failures": 0, "conflicts": 0, "loads": 0, "lost": 0, "refreshes": 0,
        }  # fmt: skip
        self._last_error: str | None = None

    @property
    def session_id(self) -> str:
        """The session checkpointed."""
        return self._session_id

    @property
    def base(self) -> SessionRecord | None:
        """The last record known to be in the store."""
        return self._base

    @property
    def conflict(self) -> CheckpointConflicted | None:
        """The unresolved conflict, if writing has stopped."""
        return self._conflict

    @property
    def in_flight(self) -> bool:
        """Whether a write is outstanding."""
        return self._in_flight is not None

    @property
    def pending(self) -> bool:
        """Whether state newer than the store's waits to be written."""
        return self._pending is not None

    def update(self, state: bytes, now: float) -> None:
        """Record the latest application state (a msgpack blob) at a conversational event."""
        if not isinstance(state, bytes):
            raise TypeError("state must be bytes (a msgpack blob)")
        if len(state) > MAX_STATE_LEN:
            raise StoreError(f"state of {len(state)} octets exceeds {MAX_STATE_LEN}")
        self._counts["updates"] += 1
        if self._pending is not None:
            self._counts["coalesced"] += 1
        self._pending = state

    def next_write(self, now: float) -> CheckpointWrite | None:
        """The write to start now, or ``None``; the caller reports its outcome."""
        if self._in_flight is not None or self._conflict is not None:
            return None
        due = self._due(now)
        if due is None or due > now:
            return None
        keepalive = self._pending is None
        state = self._pending if self._pending is not None else self._base_state()
        expires_at = now + self._ttl
        if self._base is None:
            record = SessionRecord.new(
                self._session_id,
                state,
                expires_at=expires_at,
                owner=self._owner,
                caller=self._caller,
            )
            expected = 0
        else:
            record = self._base.successor(state=state, expires_at=expires_at)
            expected = 0 if self._lost else self._base.version
        self._in_flight = CheckpointWrite(
            record=record, expected_version=expected, keepalive=keepalive
        )
        if self._refresh and keepalive:
            self._counts["refreshes"] += 1
        # Whatever is written now is the latest state; a failure sets the flag again.
        self._refreshing, self._refresh = self._refresh, False
        self._pending = None
        self._last_write_at = now
        self._counts["writes"] += 1
        return self._in_flight

    def write_succeeded(self, record: SessionRecord, now: float) -> CheckpointWritten:
        """The in-flight write was stored as ``record``."""
        write = self._take_in_flight()
        self._base = record
        self._lost = False
        self._failures = 0
        self._not_before = -math.inf
        self._counts["written"] += 1
        if write.keepalive:
            self._counts["keepalives"] += 1
        return CheckpointWritten(record=record, keepalive=write.keepalive)

    def write_overtaken(self, current: SessionRecord, now: float) -> CheckpointWritten:
        """The in-flight write was stale, but ``current`` is still ours (same owner): an
        earlier write of ours, given up on after a timeout, landed after all, or the store
        went back to an older version of ours (a failover promoted a replica that had not
        received the latest write). ``current`` becomes the base, and the in-flight state is
        written again unless the store already holds it (a keep-alive or refresh too: it
        carries the latest state this checkpointer knows)."""
        write = self._take_in_flight()
        self._base = current
        self._failures = 0
        self._not_before = -math.inf
        if self._pending is None and write.record.state != current.state:
            self._pending = write.record.state
        self._counts["written"] += 1
        return CheckpointWritten(record=current, keepalive=write.keepalive)

    def write_failed(self, error: StoreError | str, now: float) -> CheckpointFailed:
        """The in-flight write failed; its state stays pending (unless newer state arrived)."""
        write = self._take_in_flight()
        if self._pending is None and not write.keepalive:
            self._pending = write.record.state
        self._refresh = self._refresh or self._refreshing
        self._failures += 1
        self._counts["failures"] += 1
        self._last_error = str(error)
        delay = min(self._retry_max, self._retry_initial * 2.0 ** min(self._failures - 1, 62))
        self._not_before = now + delay
        return CheckpointFailed(error=str(error), attempt=self._failures, retry_at=now + delay)

    def write_conflicted(
        self, current: SessionRecord | None, now: float, *, reloaded: bool = True
    ) -> CheckpointConflicted:
        """The in-flight write was stale; ``current`` is what the store holds (if reloaded)."""
        write = self._take_in_flight()
        if self._pending is None and not write.keepalive:
            self._pending = write.record.state
        if current is not None and current.session_id != self._session_id:
            raise ValueError("current record belongs to another session")
        self._counts["conflicts"] += 1
        self._conflict = CheckpointConflicted(
            expected_version=write.expected_version, current=current, reloaded=reloaded
        )
        return self._conflict

    def write_lost(self, now: float) -> CheckpointFailed:
        """The in-flight write found no record (expired, or the store lost its data).

        Nobody holds newer state, so the next write re-creates the record (``expected_version``
        0) with the version counting on; a racing re-creator makes it a conflict.
        """
        write = self._take_in_flight()
        if self._pending is None and not write.keepalive:
            self._pending = write.record.state
        self._lost = True
        self._counts["lost"] += 1
        self._last_error = "the session record was gone from the store; re-creating it"
        return CheckpointFailed(error=self._last_error, attempt=self._failures, retry_at=now)

    def store_recovered(self, now: float, *, lost_records: bool) -> None:
        """The store answers again: retry a failed write at once (no back-off).

        With ``lost_records`` (it may have lost what it held: restarted without persistence,
        flushed), write the state again at once even if it has not changed: otherwise the
        record stays missing until the next change or keep-alive, and a session whose backend
        dies meanwhile cannot be resumed. A write in flight does not count: it may have
        reached the store before the loss.
        """
        self._not_before = -math.inf
        stored = self._base is not None or self._in_flight is not None
        if lost_records and (stored or self._pending is not None):
            self._refresh = True

    def count_load(self) -> None:
        """Count a load made on this checkpointer's behalf (to learn a conflict's winner)."""
        self._counts["loads"] += 1

    def resolve(self, base: SessionRecord | None, state: bytes | None, now: float) -> None:
        """Continue after a conflict from ``base`` (the record merged into ``state``).

        ``state=None`` drops this checkpointer's pending state and adopts ``base`` as it is.
        """
        if self._in_flight is not None:
            raise ValueError("cannot resolve while a write is in flight")
        if base is not None and base.session_id != self._session_id:
            raise ValueError("base record belongs to another session")
        self._conflict = None
        self._base = base
        self._lost = False
        self._pending = None
        self._failures = 0
        self._not_before = -math.inf
        if state is not None:
            self.update(state, now)

    def get_timer(self) -> float | None:
        """When ``next_write`` may next return a write, or ``None`` if only ``update`` can."""
        if self._in_flight is not None or self._conflict is not None:
            return None
        return self._due(-math.inf)

    def statistics(self) -> CheckpointStatistics:
        """Counters since the checkpointer was made."""
        return CheckpointStatistics(
            **self._counts,
            last_error=self._last_error,
            version=0 if self._base is None else self._base.version,
            pending=self._pending is not None
            or (self._in_flight is not None and not self._in_flight.keepalive),
        )

    def _due(self, now: float) -> float | None:
        if self._pending is not None or (self._base is not None and (self._refresh or self._lost)):
            wanted = now
        elif self._keepalive and self._base is not None:
            wanted = self._base.expires_at - self._ttl * KEEPALIVE_FRACTION
        else:
            return None
        return max(wanted, self._not_before, self._last_write_at + self._min_interval)

    def _base_state(self) -> bytes:
        return b"" if self._base is None else self._base.state

    def _take_in_flight(self) -> CheckpointWrite:
        if self._in_flight is None:
            raise ValueError("no write is in flight")
        write, self._in_flight = self._in_flight, None
        return write


class AsyncCheckpointer:
    """Drives a ``Checkpointer`` against a ``SessionStore`` in one background task.

    ``checkpoint(state)`` is synchronous and never waits: call it from the event handler of a
    conversational event. Events go to ``on_event``. ``flush`` waits for the store to catch up;
    ``aclose`` stops the task. Every store call is bounded by ``call_timeout``.
    """

    def __init__(
        self,
        store: SessionStore,
        checkpointer: Checkpointer,
        *,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[CheckpointEvent], None] | None = None,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
    ) -> None:
        if not (math.isfinite(call_timeout) and call_timeout > 0):
            raise ValueError("call_timeout must be a positive number of seconds")
        self._store = store
        self._core = checkpointer
        self._clock = clock
        self._on_event = on_event
        self._call_timeout = call_timeout
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def checkpointer(self) -> Checkpointer:
        """The policy core (for its properties and statistics)."""
        return self._core

    def checkpoint(self, state: bytes) -> None:
        """Checkpoint ``state`` (msgpack blob) soon; the latest state wins. Needs a running loop."""
        if self._closed:
            raise StoreError("checkpointer is closed")
        self._core.update(state, self._clock())
        self._kick()

    def resolve(self, base: SessionRecord | None, state: bytes | None) -> None:
        """Continue after a conflict (see ``Checkpointer.resolve``)."""
        self._core.resolve(base, state, self._clock())
        self._kick()

    def store_recovered(self, *, lost_records: bool) -> None:
        """The store answers again, and may have lost records (see ``Checkpointer``)."""
        if self._closed:
            return
        self._core.store_recovered(self._clock(), lost_records=lost_records)
        self._kick()

    async def reload(self) -> SessionRecord | None:
        """Load the session's record from the store (e.g. after a conflict whose reload failed).

        Raises ``StoreError`` (``StoreUnavailableError`` after ``call_timeout``).
        """
        self._core.count_load()
        try:
            async with asyncio.timeout(self._call_timeout):
                return await self._store.load(self._core.session_id)
        except TimeoutError as exc:
            raise StoreUnavailableError(
                f"store did not answer within {self._call_timeout} s"
            ) from exc

    async def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no state is pending; ``True`` if all was written."""
        self._kick()
        try:
            async with asyncio.timeout(timeout):
                while self._busy():
                    self._settled.clear()
                    await self._settled.wait()
        except TimeoutError:
            return False
        return not self._busy() and self._core.conflict is None

    def statistics(self) -> CheckpointStatistics:
        """The core's counters."""
        return self._core.statistics()

    async def aclose(self) -> None:
        """Stop writing (pending state is dropped; ``flush`` first to keep it)."""
        self._closed = True
        task, self._task = self._task, None
        await cancel_and_wait(task)

    def _busy(self) -> bool:
        core = self._core
        return core.conflict is None and (core.pending or core.in_flight)

    def _kick(self) -> None:
        if self._closed:
            return
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        core = self._core
        while not self._closed:  # see StoreMonitor._run
            now = self._clock()
            write = core.next_write(now)
            if write is None:
                self._settled.set()
                timer = core.get_timer()
                self._wake.clear()
                delay = None if timer is None else max(0.0, timer - now)
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            event = await self._perform(write)
            self._settled.set()
            if self._on_event is not None:
                try:
                    self._on_event(event)
                except Exception:  # a faulty callback must not stop checkpointing
                    _LOG.exception("checkpoint event handler failed")

    async def _perform(self, write: CheckpointWrite) -> CheckpointEvent:
        core = self._core
        try:
            async with asyncio.timeout(self._call_timeout):
                stored = await self._store.save(write.record, write.expected_version)
        except StaleWriteError as exc:
            if exc.actual_version == 0 and write.expected_version > 0:
                return core.write_lost(self._clock())
            try:
                current = await self.reload()
            except StoreError:
                return core.write_conflicted(None, self._clock(), reloaded=False)
            if current is not None and current.owner and current.owner == write.record.owner:
                # Nobody else holds the session (owners are unique per connection): the
                # version moved because a write of ours that timed out was applied after
                # all. Not a conflict.
                return core.write_overtaken(current, self._clock())
            return core.write_conflicted(current, self._clock())
        except StoreError as exc:
            return core.write_failed(exc, self._clock())
        except TimeoutError:
            message = f"store did not answer within {self._call_timeout} s"
            return core.write_failed(message, self._clock())
        return core.write_succeeded(stored, self._clock())


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorStatistics:
    """A snapshot of a ``StoreMonitor``'s counters."""

    #: ``generation`` calls that answered.
    checks: int
    #: Calls that failed or timed out.
    failures: int
    #: Times the checkpointers were told to retry: the store answered again after failing,
    #: or had lost its records.
    recoveries: int
    #: Times it had lost its records (its generation changed).
    losses: int
    #: Checkpointers watched now.
    watched: int


class StoreMonitor:
    """Watches a store for lost records on behalf of every session's checkpointer.

    Every ``interval`` seconds it asks ``store.generation()`` (one store operation). When the
    store answers again after failing, every watched ``AsyncCheckpointer`` retries at once; when
    the generation changed (the store lost its records, e.g. Redis restarted empty), each also
    writes its state again at once. A store whose generation is ``None`` (memory) is not
    watched. Checkpointers are held weakly; ``watch`` them as sessions start.
    """

    def __init__(
        self,
        store: SessionStore,
        *,
        interval: float = DEFAULT_MONITOR_INTERVAL,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
    ) -> None:
        for name, value in (("interval", interval), ("call_timeout", call_timeout)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds")
        self._store = store
        self._interval = interval
        self._call_timeout = call_timeout
        self._watched: weakref.WeakSet[AsyncCheckpointer] = weakref.WeakSet()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._counts = {"checks": 0, "failures": 0, "recoveries": 0, "losses": 0}

    def watch(self, checkpointer: AsyncCheckpointer) -> None:
        """Tell ``checkpointer`` when the store recovers or loses its records."""
        self._watched.add(checkpointer)

    def start(self) -> None:
        """Start watching (needs a running event loop)."""
        self._stopped = False
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        """Stop watching (without waiting)."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()

    async def aclose(self) -> None:
        """Stop watching and wait for the task to end."""
        self._stopped = True
        task, self._task = self._task, None
        await cancel_and_wait(task)

    def statistics(self) -> MonitorStatistics:
        """Counters since the monitor was made."""
        return MonitorStatistics(**self._counts, watched=len(self._watched))

    async def _run(self) -> None:
        known: int | None = None
        failing = False
        # The flag, not only the cancellation, ends the loop: a cancellation that lands as a
        # call times out can come out as TimeoutError, and aclose() would then wait forever.
        while not self._stopped:
            try:
                async with asyncio.timeout(self._call_timeout):
                    generation = await self._store.generation()
            except (StoreError, TimeoutError) as error:
                self._counts["failures"] += 1
                if not failing:
                    _LOG.warning("session store check failed: %s", error)
                failing = True
                await asyncio.sleep(self._interval)
                continue
            if generation is None:
                return  # the store cannot lose records on its own
            self._counts["checks"] += 1
            lost = known is not None and generation != known
            if lost or failing:
                self._notify(lost_records=lost)
            known, failing = generation, False
            await asyncio.sleep(self._interval)

    def _notify(self, *, lost_records: bool) -> None:
        self._counts["recoveries"] += 1
        if lost_records:
            self._counts["losses"] += 1
            _LOG.warning(
                "session store lost its records: writing %d sessions again", len(self._watched)
            )
        for checkpointer in list(self._watched):
            checkpointer.store_recovered(lost_records=lost_records)
