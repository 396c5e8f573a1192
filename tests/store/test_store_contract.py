"""The ``SessionStore`` contract, run against the memory store and a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicvoice.errors import StoreError
from quicvoice.store import (
    MAX_STATE_LEN,
    SessionRecord,
    SessionStore,
    StaleWriteError,
    open_store,
)

from ..conftest import RedisServer
from ..redis_sentinel import SentinelGroup
from .conftest import FakeClock

KINDS = ["memory", "redis", "sentinel"]
TTL = 60.0

session_ids = st.text(
    st.characters(codec="utf-8", categories=("L", "N", "P", "S")), min_size=1, max_size=40
)


@asynccontextmanager
async def opened(
    kind: str, request: pytest.FixtureRequest, clock: FakeClock
) -> AsyncIterator[SessionStore]:
    if kind == "memory":
        store = open_store("memory://", clock=clock)
    elif kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        store = open_store(server.unique_url(), clock=clock)
    else:  # the primary a Sentinel group names, each save confirmed by its replica
        group: SentinelGroup = request.getfixturevalue("sentinel_group")
        store = open_store(group.url(replicas="1", wait_ms="200"), clock=clock)
    try:
        yield store
        if kind == "sentinel":
            assert store.statistics().unreplicated == 0  # the replica confirmed every save
    finally:
        await store.aclose()


def run(
    kind: str,
    request: pytest.FixtureRequest,
    clock: FakeClock,
    body: Callable[[SessionStore], Awaitable[None]],
) -> None:
    async def main() -> None:
        async with opened(kind, request, clock) as store:
            await body(store)

    asyncio.run(main())


def first(clock: FakeClock, sid: str = "s1", state: bytes = b"\x80") -> SessionRecord:
    return SessionRecord.new(sid, state, expires_at=clock() + TTL)


@pytest.mark.parametrize("kind", KINDS)
def test_the_caller_is_kept_across_versions(
    kind: str, request: pytest.FixtureRequest, clock: FakeClock
) -> None:
    async def body(store: SessionStore) -> None:
        caller = b'{"v":1,"sub":"alice"}'
        v1 = await store.save(
            SessionRecord.new("s1", b"\x80", expires_at=clock() + TTL, caller=caller), 0
        )
        v2 = await store.save(v1.successor(state=b"\x81"), v1.version)
        loaded = await store.load("s1")
        assert loaded == v2 and loaded is not None and loaded.caller == caller

    run(kind, request, clock, body)


@pytest.mark.parametrize("kind", KINDS)
def test_create_load_update_delete(
    kind: str, request: pytest.FixtureRequest, clock: FakeClock
) -> None:
    async def body(store: SessionStore) -> None:
        assert isinstance(store, SessionStore)
        assert await store.load("s1") is None
        v1 = await store.save(first(clock, state=b"\x81\xa4cart\x90"), 0)
        assert await store.load("s1") == v1
        v2 = await store.save(v1.successor(state=b"\x81\xa4cart\x91\x01"), v1.version)
        assert v2.version == 2
        assert await store.load("s1") == v2
        assert await store.delete("s1") is True
        assert await store.delete("s1") is False
        assert await store.load("s1") is None
        stats = store.statistics()
        assert stats.operations >= 7 and stats.errors == 0

    run(kind, request, clock, body)


@pytest.mark.parametrize("kind", KINDS)
def test_stale_writer_is_refused_never_overwrites(
    kind: str, request: pytest.FixtureRequest, clock: FakeClock
) -> None:
    async def body(store: SessionStore) -> None:
        v1 = await store.save(first(clock), 0)
        with pytest.raises(StaleWriteError) as info:
            await store.save(first(clock, state=b"\x01"), 0)  # create over an existing one
        assert info.value.actual_version == 1
        v2 = await store.save(v1.successor(state=b"\x02"), 1)
        with pytest.raises(StaleWriteError) as info:
            await store.save(v1.successor(state=b"\x03"), 1)  # based on the old version
        assert (info.value.expected_version, info.value.actual_version) == (1, 2)
        assert await store.load("s1") == v2
        assert store.statistics().stale_writes == 2

    run(kind, request, clock, body)


@pytest.mark.parametrize("kind", KINDS)
def test_two_writers_race_exactly_one_wins(
    kind: str, request: pytest.FixtureRequest, clock: FakeClock
) -> None:
    async def body(store: SessionStore) -> None:
        base = await store.save(first(clock), 0)
        for round_ in range(20):
            a = base.successor(state=b"A%d" % round_)
            b = base.successor(state=b"B%d" % round_)
            results = await asyncio.gather(
                store.save(a, base.version), store.save(b, base.version), return_exceptions=True
            )
            winners = [r for r in results if isinstance(r, SessionRecord)]
            losers = [r for r in results if isinstance(r, StaleWriteError)]
            assert len(winners) == 1 and len(losers) == 1, results
            assert await store.load("s1") == winners[0]
            base = winners[0]

    run(kind, request, clock, body)


@pytest.mark.parametrize("kind", KINDS)
def test_expired_records_and_tickets_are_gone(
    kind: str, request: pytest.FixtureRequest, clock: FakeClock
) -> None:
    ttl = 0.15

    async def body(store: SessionStore) -> None:
        await store.save(SessionRecord.new("s1", b"\x01", expires_at=clock() + ttl), 0)
        await store.put_ticket(b"label", b"ticket", ttl)
        assert (await store.load("s1")) is not None
        clock.advance(ttl * 2)
        if kind != "memory":
            await asyncio.sleep(ttl * 2)  # Redis expires on its own clock
        assert await store.load("s1") is None
        assert await store.take_ticket(b"label") is None
        # An expired session can be created again from version 0.
        await store.save(SessionRecord.new("s1", b"\x02", expires_at=clock() + TTL), 0)

    run(kind, request, clock, body)


@pytest.mark.parametrize("kind", KINDS)
def test_tickets_are_taken_once(
    kind: str, request: pytest.FixtureRequest, clock: FakeClock
) -> None:
    async def body(store: SessionStore) -> None:
        await store.put_ticket(b"\x00label", b"blob", 30)
        results = await asyncio.gather(*(store.take_ticket(b"\x00label") for _ in range(5)))
        assert sorted(results, key=lambda r: r is None) == [b"blob", None, None, None, None]
        assert await store.take_ticket(b"other") is None

    run(kind, request, clock, body)


@pytest.mark.parametrize("kind", KINDS)
def test_oversized_state_and_ticket_are_refused(
    kind: str, request: pytest.FixtureRequest, clock: FakeClock
) -> None:
    async def body(store: SessionStore) -> None:
        await store.save(first(clock, state=bytes(MAX_STATE_LEN)), 0)  # the limit itself is fine
        with pytest.raises(StoreError, match="exceeds"):
            await store.save(first(clock, sid="s2", state=bytes(MAX_STATE_LEN + 1)), 0)
        with pytest.raises(StoreError, match="exceeds"):
            await store.put_ticket(b"l", bytes(64 * 1024), 10)
        assert await store.load("s2") is None

    run(kind, request, clock, body)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_arguments_are_type_or_value_errors(
    kind: str, request: pytest.FixtureRequest, clock: FakeClock
) -> None:
    async def body(store: SessionStore) -> None:
        with pytest.raises(ValueError):
            await store.load("")
        with pytest.raises(ValueError):
            await store.load("x" * 129)
        with pytest.raises(TypeError):
            await store.load(b"s1")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await store.save(first(clock), 3)  # version must be expected + 1
        with pytest.raises(ValueError):
            await store.save(SessionRecord.new("s1", b"", expires_at=clock() - 1), 0)
        with pytest.raises(ValueError):
            await store.put_ticket(b"", b"x", 1)
        with pytest.raises(ValueError):
            await store.put_ticket(b"l", b"x", 0)

    run(kind, request, clock, body)


@pytest.mark.parametrize("kind", KINDS)
def test_no_state_of_one_session_is_served_to_another(
    kind: str, request: pytest.FixtureRequest, clock: FakeClock
) -> None:
    @settings(
        max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(ids=st.lists(session_ids, min_size=1, max_size=6, unique=True))
    def check(ids: list[str]) -> None:
        async def body(store: SessionStore) -> None:
            for sid in ids:
                await store.save(first(clock, sid=sid, state=sid.encode()), 0)
            for sid in ids:
                record = await store.load(sid)
                assert record is not None
                assert record.session_id == sid and record.state == sid.encode()
            await store.delete(ids[0])
            for sid in ids[1:]:
                assert (await store.load(sid)) is not None

        run(kind, request, clock, body)

    check()


def test_create_with_a_higher_version_keeps_versions_increasing(clock: FakeClock) -> None:
    """A record lost from the store is re-created with its next version (no ABA)."""

    async def main() -> None:
        store = open_store("memory://", clock=clock)
        lost = SessionRecord(session_id="s1", version=7, state=b"", expires_at=clock() + TTL)
        assert (await store.save(lost, 0)).version == 7
        with pytest.raises(StaleWriteError):
            await store.save(SessionRecord.new("s1", b"", expires_at=clock() + TTL).successor(), 1)

    asyncio.run(main())


def test_a_real_clock_is_the_default() -> None:
    async def main() -> None:
        store = open_store()
        record = SessionRecord.new("s", b"", expires_at=time.time() + 5)
        assert await store.save(record, 0) == record

    asyncio.run(main())
