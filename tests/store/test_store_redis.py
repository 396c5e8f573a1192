"""The Redis store against a real redis-server: garbage, outages, a frozen server, a restart."""

from __future__ import annotations

import asyncio
import time

import pytest

from quicvoice.errors import ConfigurationError, StoreError
from quicvoice.store import (
    AsyncCheckpointer,
    Checkpointer,
    CheckpointEvent,
    CorruptRecordError,
    SessionRecord,
    SessionStore,
    StoreConfig,
    StoreUnavailableError,
    open_store,
)
from quicvoice.store.codec import encode_record
from quicvoice.store.redis import MAX_CONNECTIONS

from ..conftest import RedisServer
from .conftest import FakeClock

TIMEOUT = 0.3


def test_garbage_under_a_session_key_is_a_store_error(
    redis_server: RedisServer, clock: FakeClock
) -> None:
    url = redis_server.unique_url()
    prefix = url.split("prefix=")[1]

    async def main() -> None:
        store = open_store(url, clock=clock)
        other = SessionRecord.new("victim", b"\x81\xa6secret\xc3", expires_at=clock() + 60)
        plants: dict[str, list[bytes | str]] = {
            "str": ["SET", f"{prefix}s:a", b"\x00garbage"],
            "list": ["RPUSH", f"{prefix}s:b", b"x"],
            "badv": ["HSET", f"{prefix}s:c", "v", "1x", "d", b"\x96"],
            "bigv": ["HSET", f"{prefix}s:d", "v", "9" * 30, "d", b"\x96"],
            "nod": ["HSET", f"{prefix}s:e", "v", "1"],
            "junk": ["HSET", f"{prefix}s:f", "v", "1", "d", b"\xc1\xff\x00"],
            "other": ["HSET", f"{prefix}s:g", "v", "1", "d", encode_record(other)],
            "vmis": ["HSET", f"{prefix}s:h", "v", "2", "d", encode_record(other)],
            "nov": ["HSET", f"{prefix}s:i", "d", b"\x90"],
        }
        for args in plants.values():
            redis_server.command(*args)
        for sid in "abcdefghi":
            with pytest.raises(CorruptRecordError):
                await store.load(sid)
        # A stale/garbage key is never overwritten by a create either.
        for sid in "abci":
            with pytest.raises(StoreError):
                await store.save(SessionRecord.new(sid, b"", expires_at=clock() + 60), 0)
        assert store.statistics().corrupt >= 13
        redis_server.command("SET", f"{prefix}t:{b'lbl'.hex()}", b"x" * 70_000)
        with pytest.raises(CorruptRecordError):
            await store.take_ticket(b"lbl")
        # The store still works.
        record = SessionRecord.new("ok", b"", expires_at=clock() + 60)
        assert await store.save(record, 0) == record
        await store.aclose()

    asyncio.run(main())


def test_killed_redis_fails_fast_and_a_restart_catches_up(own_redis_server: RedisServer) -> None:
    """The order cart keeps changing while Redis is down; the checkpointer catches up after."""
    server = own_redis_server

    async def main() -> None:
        store = open_store(server.unique_url(timeout=str(TIMEOUT)))
        events: list[CheckpointEvent] = []
        core = Checkpointer("call-1", ttl=60, retry_initial=0.05, retry_max=0.2)
        cp = AsyncCheckpointer(store, core, on_event=events.append, call_timeout=1.0)
        cp.checkpoint(b"\x91\xa5pizza")
        assert await cp.flush(2.0)
        assert (await store.load("call-1")).state == b"\x91\xa5pizza"  # type: ignore[union-attr]

        server.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            await store.load("call-1")
        assert time.monotonic() - started < TIMEOUT + 0.5
        cp.checkpoint(b"\x92\xa5pizza\xa4cola")
        cp.checkpoint(b"\x93\xa5pizza\xa4cola\xa4cake")  # coalesced: latest wins
        assert not await cp.flush(0.6)
        stats = cp.statistics()
        assert stats.failures >= 2 and stats.pending and stats.last_error

        server.start()  # same port, empty (no persistence): the record is gone
        assert await cp.flush(5.0)
        record = await store.load("call-1")
        assert record is not None and record.state == b"\x93\xa5pizza\xa4cola\xa4cake"
        assert record.version > 1  # re-created with versions counting on
        assert cp.statistics().lost == 1 and cp.statistics().coalesced == 1
        await cp.aclose()
        await store.aclose()

    asyncio.run(main())


async def _store_holding_one_session(server: RedisServer) -> SessionStore:
    """A store with the tests' short timeout, holding one session record ``"s"``."""
    store = open_store(server.unique_url(timeout=str(TIMEOUT)))
    await store.save(SessionRecord.new("s", b"", expires_at=time.time() + 60), 0)
    return store


def test_frozen_redis_times_out_within_the_bound(own_redis_server: RedisServer) -> None:
    server = own_redis_server

    async def main() -> None:
        store = await _store_holding_one_session(server)
        server.pause()
        try:
            for call in (store.load("s"), store.take_ticket(b"t"), store.delete("s")):
                started = time.monotonic()
                with pytest.raises(StoreUnavailableError, match="did not answer"):
                    await call
                assert time.monotonic() - started < TIMEOUT + 0.3
        finally:
            server.resume()
        assert (await store.load("s")) is not None  # answers again once thawed
        await store.aclose()

    asyncio.run(main())


def test_a_frozen_redis_bounds_commands_waiting_for_the_pool(
    own_redis_server: RedisServer,
) -> None:
    """More commands than pooled connections while Redis is frozen: those holding a
    connection and those queued for one all fail within the bound, and the store works again
    once Redis thaws (no connection is lost to the pool)."""
    server = own_redis_server

    async def main() -> None:
        store = await _store_holding_one_session(server)
        server.pause()
        try:
            for _ in range(3):
                started = time.monotonic()
                results = await asyncio.gather(
                    *(store.load("s") for _ in range(MAX_CONNECTIONS + 16)),
                    return_exceptions=True,
                )
                assert time.monotonic() - started < TIMEOUT + 0.5
                assert all(isinstance(r, StoreUnavailableError) for r in results), results
        finally:
            server.resume()
        loaded = await asyncio.gather(*(store.load("s") for _ in range(MAX_CONNECTIONS + 16)))
        assert all(record is not None for record in loaded)
        await store.aclose()

    asyncio.run(main())


def test_nothing_listening_is_unavailable(clock: FakeClock) -> None:
    from ..conftest import free_port

    async def main() -> None:
        store = open_store(f"redis://127.0.0.1:{free_port()}/0?timeout=0.2", clock=clock)
        with pytest.raises(StoreUnavailableError):
            await store.load("s")
        await store.aclose()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("memory://", StoreConfig()),
        ("redis://127.0.0.1:7000/3", StoreConfig(kind="redis", host="127.0.0.1", port=7000, db=3)),
        ("redis://db.example", StoreConfig(kind="redis", host="db.example")),
        (
            "redis://u:p%40ss@h:1/0?timeout=0.25&prefix=qv2:",
            StoreConfig(
                kind="redis",
                host="h",
                port=1,
                username="u",
                password="p@ss",
                timeout=0.25,
                prefix="qv2:",
            ),
        ),  # fmt: skip
    ],
)
def test_store_urls(url: str, expected: StoreConfig) -> None:
    assert StoreConfig.from_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "", "memory://x", "mem://", "redis://", "redis://h:0/0", "redis://h:99999/0",
        "redis://h:1/x", "redis://h:1/0?timeout=0", "redis://h:1/0?timeout=nan",
        "redis://h:1/0?timeout=abc", "redis://h:1/0?bogus=1", "redis://h:1/0?prefix=",
        "rediss://h:1/0", "redis://h:1/0#frag", "redis://h:1/99999",
    ],
)  # fmt: skip
def test_bad_store_urls_name_the_setting(url: str) -> None:
    with pytest.raises(ConfigurationError, match="session_store"):
        open_store(url)


def test_password_is_not_shown() -> None:
    config = StoreConfig.from_url("redis://:hunter2@h:1/0")
    assert "hunter2" not in repr(config)
    with pytest.raises(ConfigurationError) as info:
        open_store("redis://:hunter2@h:1/x")
    assert "hunter2" not in str(info.value)


def test_redis_is_imported_only_when_opened() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, quicvoice.store as s\n"
        "s.open_store('memory://')\n"
        "print('redis' in sys.modules, 'quicvoice.store.redis' in sys.modules)\n"
        "s.open_store('redis://127.0.0.1:1/0')\n"
        "print('redis' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "True"]


def test_a_restart_changes_the_generation_and_state_comes_back(
    own_redis_server: RedisServer,
) -> None:
    """Redis restarted empty while the session was quiet: the monitor sees the loss and the
    checkpointer writes the unchanged state again, so the session stays resumable."""
    from quicvoice.store import StoreMonitor

    server = own_redis_server

    async def main() -> None:
        store = open_store(server.unique_url(timeout=str(TIMEOUT)))
        first = await store.generation()
        assert first is not None and await store.generation() == first
        monitor = StoreMonitor(store, interval=0.05, call_timeout=1.0)
        cp = AsyncCheckpointer(store, Checkpointer("quiet", ttl=600), call_timeout=1.0)
        monitor.watch(cp)
        monitor.start()
        cp.checkpoint(b"\x91\xa5pizza")
        assert await cp.flush(2.0)
        server.stop()
        server.start()  # same port, empty
        deadline = time.monotonic() + 3.0
        while await _load_or_none(store, "quiet") is None:
            assert time.monotonic() < deadline, "the state never came back"
            await asyncio.sleep(0.05)
        record = await store.load("quiet")
        assert record is not None and record.state == b"\x91\xa5pizza"
        assert await store.generation() == first + 1
        assert monitor.statistics().losses == 1 and cp.statistics().refreshes == 1
        await monitor.aclose()
        await cp.aclose()
        await store.aclose()

    asyncio.run(main())


async def _load_or_none(store: object, session_id: str) -> object:
    try:
        return await store.load(session_id)  # type: ignore[attr-defined]
    except StoreError:
        return None


def test_pooled_connections_survive_a_restart(own_redis_server: RedisServer) -> None:
    """Every pooled connection to the old process fails its first command; the store retries
    that once, at once, so a resume right after a Redis restart is not refused."""
    server = own_redis_server

    async def main() -> None:
        store = open_store(server.unique_url(timeout=str(TIMEOUT)))
        expires = time.time() + 60
        await asyncio.gather(
            *(store.save(SessionRecord.new(f"s{i}", b"", expires_at=expires), 0) for i in range(8))
        )
        server.stop()
        server.start()
        loaded = await asyncio.gather(*(store.load(f"s{i}") for i in range(8)))
        assert loaded == [None] * 8  # empty, and no StoreUnavailableError
        server.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            await store.load("s0")  # still fails fast when nothing listens
        assert time.monotonic() - started < TIMEOUT + 0.5
        await store.aclose()

    asyncio.run(main())


def test_a_burst_beyond_the_pool_waits_instead_of_failing(redis_server: RedisServer) -> None:
    """A backend taking over another's calls resumes them all at once (a load and a save
    each, plus tickets): past the pool's 32 connections, commands wait for a free one (within
    the timeout) instead of failing with "Too many connections" (68 of 100 did)."""

    async def main() -> None:
        store = open_store(redis_server.unique_url())
        results = await asyncio.gather(
            *(store.load(f"s{i}") for i in range(100)), return_exceptions=True
        )
        assert results == [None] * 100
        assert store.statistics().errors == 0
        await store.aclose()

    asyncio.run(main())
