"""The checkpoint policy (sans-I/O, fake time) and its asyncio driver against misbehaving stores."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from quicvoice.errors import StoreError
from quicvoice.store import (
    AsyncCheckpointer,
    CheckpointConflicted,
    Checkpointer,
    CheckpointEvent,
    CheckpointFailed,
    CheckpointWritten,
    MemoryStore,
    SessionRecord,
    StaleWriteError,
    StoreStatistics,
)
from quicvoice.store.checkpoint import KEEPALIVE_FRACTION

from .conftest import FakeClock

TTL = 60.0
T0 = 1_700_000_000.0


def test_writes_coalesce_and_one_is_in_flight() -> None:
    core = Checkpointer("s", ttl=TTL)
    assert core.next_write(T0) is None and core.get_timer() is None
    core.update(b"1", T0)
    write = core.next_write(T0)
    assert write is not None and write.expected_version == 0 and write.record.version == 1
    core.update(b"2", T0)
    core.update(b"3", T0)
    assert core.next_write(T0) is None  # one in flight
    core.write_succeeded(write.record, T0 + 0.01)
    write2 = core.next_write(T0 + 0.01)
    assert write2 is not None and write2.record.state == b"3" and write2.expected_version == 1
    core.write_succeeded(write2.record, T0 + 0.02)
    stats = core.statistics()
    assert (stats.updates, stats.coalesced, stats.writes, stats.written) == (3, 1, 2, 2)
    assert not stats.pending and stats.version == 2


def test_failures_back_off_and_keep_the_latest_state() -> None:
    core = Checkpointer("s", ttl=TTL, retry_initial=0.1, retry_max=0.4)
    core.update(b"1", T0)
    now = T0
    delays = []
    for _ in range(5):
        write = core.next_write(now)
        assert write is not None
        event = core.write_failed(StoreError("down"), now)
        delays.append(round(event.retry_at - now, 6))
        assert core.next_write(now) is None  # not before the back-off
        assert core.get_timer() == event.retry_at
        now = event.retry_at
    assert delays == [0.1, 0.2, 0.4, 0.4, 0.4]
    core.update(b"2", now)  # newer state while failing: it replaces the failed one
    write = core.next_write(now)
    assert write is not None and write.record.state == b"2"
    core.write_succeeded(write.record, now)
    stats = core.statistics()
    assert stats.failures == 5 and stats.last_error == "down" and not stats.pending
    assert core.next_write(now) is None  # back-off reset, nothing pending


def test_a_failure_while_newer_state_waits_keeps_the_newer() -> None:
    core = Checkpointer("s", ttl=TTL)
    core.update(b"old", T0)
    write = core.next_write(T0)
    assert write is not None
    core.update(b"new", T0)
    core.write_failed("down", T0)
    retry = core.next_write(T0 + 1)
    assert retry is not None and retry.record.state == b"new"


def test_a_conflict_stops_writing_until_resolved() -> None:
    base = SessionRecord.new("s", b"a", expires_at=T0 + TTL)
    core = Checkpointer("s", ttl=TTL, base=base)
    core.update(b"mine", T0)
    write = core.next_write(T0)
    assert write is not None and write.expected_version == 1
    theirs = base.successor(state=b"theirs", owner="other")
    event = core.write_conflicted(theirs, T0)
    assert event.current == theirs and core.conflict == event
    core.update(b"more", T0)
    assert core.next_write(T0 + 100) is None and core.get_timer() is None
    core.resolve(theirs, b"merged", T0)
    write = core.next_write(T0)
    assert write is not None and write.expected_version == 2 and write.record.state == b"merged"
    with pytest.raises(ValueError):
        core.resolve(theirs, None, T0)  # in flight


def test_min_interval_and_keepalive() -> None:
    core = Checkpointer("s", ttl=TTL, min_interval=1.0)
    core.update(b"1", T0)
    write = core.next_write(T0)
    assert write is not None
    core.write_succeeded(write.record, T0)
    core.update(b"2", T0 + 0.1)
    assert core.next_write(T0 + 0.1) is None and core.get_timer() == T0 + 1.0
    write = core.next_write(T0 + 1.0)
    assert write is not None
    core.write_succeeded(write.record, T0 + 1.0)
    keepalive_at = T0 + 1.0 + TTL * KEEPALIVE_FRACTION
    assert core.get_timer() == keepalive_at
    write = core.next_write(keepalive_at)
    assert write is not None and write.keepalive and write.record.state == b"2"
    assert write.record.expires_at == keepalive_at + TTL
    core.write_succeeded(write.record, keepalive_at)
    assert core.statistics().keepalives == 1


def test_a_lost_record_is_recreated_with_the_next_version() -> None:
    base = SessionRecord(session_id="s", version=4, state=b"", expires_at=T0 + TTL)
    core = Checkpointer("s", ttl=TTL, base=base)
    core.update(b"x", T0)
    assert core.next_write(T0) is not None
    core.write_lost(T0)
    write = core.next_write(T0)
    assert write is not None and (write.expected_version, write.record.version) == (0, 5)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Checkpointer("s", ttl=0)
    with pytest.raises(ValueError):
        Checkpointer("s", ttl=1, retry_initial=2, retry_max=1)
    with pytest.raises(ValueError):
        Checkpointer("s", ttl=1, base=SessionRecord.new("t", b"", expires_at=1))
    core = Checkpointer("s", ttl=1)
    with pytest.raises(StoreError, match="exceeds"):
        core.update(bytes(256 * 1024 + 1), T0)
    with pytest.raises(ValueError):
        core.write_failed("x", T0)  # nothing in flight


class SlowStore(MemoryStore):
    """A memory store whose saves take ``delay`` seconds and may fail, counting concurrency."""

    def __init__(self, delay: float, fail: bool = False) -> None:
        super().__init__()
        self.delay = delay
        self.fail = fail
        self.concurrent = 0
        self.max_concurrent = 0
        self.saves = 0

    async def save(self, record: SessionRecord, expected_version: int) -> SessionRecord:
        self.saves += 1
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            await asyncio.sleep(self.delay)
            if self.fail:
                raise StoreError("injected failure")
            return await super().save(record, expected_version)
        finally:
            self.concurrent -= 1


def test_slow_store_errors_are_reported_and_nothing_queues_up() -> None:
    async def main() -> None:
        store = SlowStore(delay=0.5)
        events: list[CheckpointEvent] = []
        cp = AsyncCheckpointer(
            store, Checkpointer("s", ttl=TTL, retry_initial=0.02, retry_max=0.05),
            on_event=events.append, call_timeout=0.1,
        )  # fmt: skip
        for i in range(500):  # a burst of events, far faster than the store
            cp.checkpoint(b"%d" % i)
            if i % 50 == 0:
                await asyncio.sleep(0.02)
        assert not await cp.flush(0.5)
        stats = cp.statistics()
        assert stats.failures >= 2 and "did not answer" in (stats.last_error or "")
        assert store.max_concurrent == 1 and stats.writes <= 20
        assert all(isinstance(e, CheckpointFailed) for e in events)
        store.delay = 0.0  # the store recovers: the latest state lands
        assert await cp.flush(2.0)
        assert (await store.load("s")).state == b"499"  # type: ignore[union-attr]
        assert isinstance(events[-1], CheckpointWritten)
        await cp.aclose()

    asyncio.run(main())


def test_failing_store_then_recovery() -> None:
    async def main() -> None:
        store = SlowStore(delay=0, fail=True)
        cp = AsyncCheckpointer(
            store, Checkpointer("s", ttl=TTL, retry_initial=0.01, retry_max=0.02)
        )
        cp.checkpoint(b"cart")
        await asyncio.sleep(0.15)
        assert cp.statistics().failures >= 3
        store.fail = False
        assert await cp.flush(1.0)
        assert cp.statistics().version == 1
        await cp.aclose()

    asyncio.run(main())


def test_two_checkpointers_race_one_is_refused_and_reports_the_winner() -> None:
    async def main() -> None:
        store = MemoryStore()
        base = await store.save(SessionRecord.new("s", b"0", expires_at=time.time() + TTL), 0)
        events: dict[str, list[CheckpointEvent]] = {"a": [], "b": []}
        a = AsyncCheckpointer(
            store, Checkpointer("s", ttl=TTL, base=base), on_event=events["a"].append
        )
        b = AsyncCheckpointer(
            store, Checkpointer("s", ttl=TTL, base=base), on_event=events["b"].append
        )
        a.checkpoint(b"A")
        b.checkpoint(b"B")
        await asyncio.gather(a.flush(1), b.flush(1))
        kinds = sorted(type(e[0]).__name__ for e in events.values())
        assert kinds == ["CheckpointConflicted", "CheckpointWritten"]
        loser = a if isinstance(events["a"][0], CheckpointConflicted) else b
        conflict = loser.checkpointer.conflict
        stored = await store.load("s")
        assert conflict is not None and conflict.current == stored and conflict.reloaded
        assert loser.statistics().loads == 1
        # The loser merges and goes on from the winner's version.
        assert stored is not None
        loser.resolve(stored, stored.state + b"+merged")
        assert await loser.flush(1)
        assert (await store.load("s")).state.endswith(b"+merged")  # type: ignore[union-attr]
        await a.aclose()
        await b.aclose()

    asyncio.run(main())


def test_operations_per_call_minute(clock: FakeClock) -> None:
    """A 3-minute call with a conversational event every 5 s (turns, cart changes)."""
    core = Checkpointer("s", ttl=600)
    for second in range(0, 180):
        now = T0 + second
        if second % 5 == 0:
            core.update(b"%d" % second, now)
        write = core.next_write(now)
        if write is not None:
            core.write_succeeded(write.record, now)
    stats = core.statistics()
    assert stats.operations_per_minute(180) == 12.0


def test_store_statistics_count_operations() -> None:
    async def main() -> None:
        store = MemoryStore()
        with pytest.raises(StaleWriteError):
            await store.save(SessionRecord.new("s", b"", expires_at=time.time() + 9), 0)
            await store.save(SessionRecord.new("s", b"", expires_at=time.time() + 9), 0)
        assert store.statistics() == StoreStatistics(
            operations=2, errors=0, stale_writes=1, corrupt=0
        )

    asyncio.run(main())


def test_a_write_that_timed_out_but_landed_is_not_a_conflict() -> None:
    """A slow store applies a write after the checkpointer gave up on it: the retry finds a
    newer version that it wrote itself, and carries on instead of reporting a conflict."""

    class LateStore(MemoryStore):
        def __init__(self) -> None:
            super().__init__()
            self.slow = True

        async def save(self, record: SessionRecord, expected_version: int) -> SessionRecord:
            stored = await super().save(record, expected_version)
            if self.slow:
                self.slow = False
                await asyncio.sleep(1)  # applied, but the answer comes too late
            return stored

    async def main() -> None:
        store = LateStore()
        events: list[CheckpointEvent] = []
        writer = AsyncCheckpointer(
            store,
            Checkpointer("s", ttl=TTL, owner="backend-1/conn-7", retry_initial=0.01),
            on_event=events.append,
            call_timeout=0.1,
        )
        writer.checkpoint(b"first")
        await asyncio.sleep(0.3)
        writer.checkpoint(b"second")
        assert await writer.flush(2)
        assert not any(isinstance(e, CheckpointConflicted) for e in events)
        stored = await store.load("s")
        assert stored is not None and stored.state == b"second"
        await writer.aclose()

    asyncio.run(main())


def test_a_store_that_lost_its_records_gets_the_state_again_at_once() -> None:
    """Redis restarted empty while nothing changed: without a rewrite the record would stay
    missing until the next change or keep-alive (5 minutes at the default TTL), and a
    session whose backend died meanwhile could not be resumed."""
    core = Checkpointer("s", ttl=600)
    core.update(b"cart", T0)
    write = core.next_write(T0)
    assert write is not None
    core.write_succeeded(write.record, T0)
    assert core.next_write(T0 + 1) is None and core.get_timer() == T0 + 300  # keep-alive only
    core.store_recovered(T0 + 1, lost_records=True)
    assert (core.get_timer() or math.inf) <= T0 + 1
    refresh = core.next_write(T0 + 1)
    assert refresh is not None and refresh.record.state == b"cart"
    assert (refresh.expected_version, refresh.record.version) == (1, 2)
    core.write_lost(T0 + 1)  # the CAS found no record: re-create it, now
    recreate = core.next_write(T0 + 1)
    assert recreate is not None and recreate.record.state == b"cart"
    assert (recreate.expected_version, recreate.record.version) == (0, 2)
    core.write_succeeded(recreate.record, T0 + 1)
    assert core.next_write(T0 + 2) is None
    stats = core.statistics()
    assert (stats.refreshes, stats.lost, stats.version) == (1, 1, 2)


def test_a_refresh_that_finds_an_older_version_of_its_own_writes_it_again() -> None:
    """A Sentinel failover promoted a replica that never got version 2: the refresh (expected
    2) is stale against version 1, which is still ours; the state of version 2 must be written
    again on top of it, not dropped (the refresh is a keep-alive, which used to be dropped)."""
    v1 = SessionRecord(session_id="s", version=1, state=b"cart", expires_at=T0 + 600, owner="b/1")
    v2 = v1.successor(state=b"cart+cola", expires_at=T0 + 600)
    core = Checkpointer("s", ttl=600, base=v2)
    core.store_recovered(T0, lost_records=True)
    refresh = core.next_write(T0)
    assert refresh is not None and refresh.keepalive and refresh.expected_version == 2
    core.write_overtaken(v1, T0)  # what the new primary holds
    again = core.next_write(T0)
    assert again is not None and again.record.state == b"cart+cola"
    assert (again.expected_version, again.record.version) == (1, 2)


def test_a_failed_refresh_is_retried() -> None:
    """The first write after a Redis restart often fails (a pooled connection to the old
    process): the rewrite must not be forgotten until the next keep-alive."""
    base = SessionRecord(session_id="s", version=3, state=b"cart", expires_at=T0 + 600)
    core = Checkpointer("s", ttl=600, base=base, retry_initial=0.1)
    core.store_recovered(T0, lost_records=True)
    refresh = core.next_write(T0)
    assert refresh is not None
    event = core.write_failed("connection closed by server", T0)
    assert core.get_timer() == event.retry_at == T0 + 0.1
    retry = core.next_write(T0 + 0.1)
    assert retry is not None and retry.record.state == b"cart" and retry.expected_version == 3
    core.write_succeeded(retry.record, T0 + 0.1)
    assert core.next_write(T0 + 0.2) is None


def test_a_write_in_flight_during_the_loss_is_followed_by_another() -> None:
    core = Checkpointer("s", ttl=600)
    core.update(b"a", T0)
    write = core.next_write(T0)
    assert write is not None
    core.store_recovered(T0, lost_records=True)  # it may have landed before the loss
    core.write_succeeded(write.record, T0)
    again = core.next_write(T0)
    assert again is not None and again.record.state == b"a" and again.expected_version == 1


def test_recovery_without_loss_only_cuts_the_back_off() -> None:
    core = Checkpointer("s", ttl=600, retry_initial=1.0, retry_max=5.0)
    core.update(b"a", T0)
    for now in (T0, T0 + 1.0, T0 + 3.0):
        write = core.next_write(now)
        assert write is not None
        core.write_failed("down", now)
    assert core.get_timer() == T0 + 7.0
    core.store_recovered(T0 + 3.5, lost_records=False)
    retry = core.next_write(T0 + 3.5)
    assert retry is not None and retry.record.state == b"a"
    core.write_succeeded(retry.record, T0 + 3.5)
    core.store_recovered(T0 + 4, lost_records=False)
    assert core.next_write(T0 + 4) is None  # nothing to write
    fresh = Checkpointer("t", ttl=600)
    fresh.store_recovered(T0, lost_records=True)
    assert fresh.next_write(T0) is None  # never stored: nothing was lost


class ForgetfulStore(MemoryStore):
    """A memory store that can lose every record at once, as Redis restarted empty does."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0
        self.down = False

    def lose_everything(self) -> None:
        self._records.clear()
        self.lost += 1

    async def generation(self) -> int | None:
        if self.down:
            raise StoreError("unreachable")
        return self.lost


def test_the_monitor_has_lost_state_written_again() -> None:
    from quicvoice.store import StoreMonitor

    async def main() -> None:
        store = ForgetfulStore()
        monitor = StoreMonitor(store, interval=0.02)
        checkpointers = [AsyncCheckpointer(store, Checkpointer(f"s{i}", ttl=600)) for i in range(3)]
        for i, cp in enumerate(checkpointers):
            monitor.watch(cp)
            cp.checkpoint(b"cart %d" % i)
            assert await cp.flush(1)
        monitor.start()
        await asyncio.sleep(0.05)
        store.down = True
        store.lose_everything()
        await asyncio.sleep(0.05)
        assert await store.load("s0") is None
        store.down = False
        await asyncio.sleep(0.1)
        for i in range(3):
            record = await store.load(f"s{i}")
            assert record is not None and record.state == b"cart %d" % i
        stats = monitor.statistics()
        assert stats.losses == 1 and stats.failures >= 1 and stats.watched == 3
        store.lose_everything()  # lost between two checks, with no failure seen
        await asyncio.sleep(0.1)
        assert await store.load("s2") is not None and monitor.statistics().losses == 2
        await monitor.aclose()
        for cp in checkpointers:
            await cp.aclose()

    asyncio.run(main())


def test_the_monitor_stops_for_a_memory_store() -> None:
    from quicvoice.store import StoreMonitor

    async def main() -> None:
        monitor = StoreMonitor(MemoryStore(), interval=0.01)
        monitor.start()
        await asyncio.sleep(0.05)
        assert monitor.statistics().checks == 0
        await monitor.aclose()

    asyncio.run(main())


def test_the_caller_goes_into_every_record_and_survives_a_lost_record() -> None:
    core = Checkpointer("s", ttl=TTL, owner="b/1", caller=b"caller-blob")
    core.update(b"1", T0)
    write = core.next_write(T0)
    assert write is not None and write.record.caller == b"caller-blob"
    core.write_succeeded(write.record, T0)
    core.update(b"2", T0 + 1)
    write = core.next_write(T0 + 1)
    assert write is not None and write.record.caller == b"caller-blob"
    core.write_lost(T0 + 1)
    rewrite = core.next_write(T0 + 10)
    assert rewrite is not None and rewrite.expected_version == 0
    assert rewrite.record.caller == b"caller-blob"
    # A resumed session continues its stored record: the record's caller wins.
    base = SessionRecord.new("s", b"", expires_at=T0 + TTL, caller=b"stored")
    resumed = Checkpointer("s", ttl=TTL, base=base, caller=b"ignored")
    resumed.update(b"3", T0)
    write = resumed.next_write(T0)
    assert write is not None and write.record.caller == b"stored"
