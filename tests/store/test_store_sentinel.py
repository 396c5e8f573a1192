"""The Redis store through Redis Sentinel: URLs, and failovers of real processes on loopback.

A primary, a replica and three sentinels (``tests/redis_sentinel.py``); the primary is
SIGKILLed and the sentinels promote the replica. What is checked: every call returns within
its bound while there is no primary; a save the replica confirmed (``WAIT``) is on the new
primary; a save the replica never got is lost by the failover, and the store's generation
change makes the live session write it again.
"""

from __future__ import annotations

import asyncio
import string
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicvoice.errors import ConfigurationError
from quicvoice.store import (
    AsyncCheckpointer,
    Checkpointer,
    SessionRecord,
    StoreConfig,
    StoreMonitor,
    StoreUnavailableError,
    open_store,
)
from quicvoice.store.base import SessionStore

from ..redis_sentinel import SentinelGroup, command

TIMEOUT = 0.3
#: Longest a failover may take here (sentinels: down after 300 ms, failover timeout 2 s).
FAILOVER_LIMIT = 15.0


# -- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://s1:26380,s2,10.0.0.3:1/mymaster",
            StoreConfig(
                kind="sentinel",
                sentinels=(("s1", 26380), ("s2", 26379), ("10.0.0.3", 1)),
                service="mymaster",
            ),
        ),
        (
            "redis+sentinel://u:p%40ss@[::1]:5,h/svc.1/3?timeout=0.25&prefix=qv2:&replicas=1"
            "&wait_ms=50&sentinel_username=watch&sentinel_password=s%26cret",
            StoreConfig(
                kind="sentinel",
                sentinels=(("::1", 5), ("h", 26379)),
                service="svc.1",
                db=3,
                username="u",
                password="p@ss",
                sentinel_username="watch",
                sentinel_password="s&cret",
                timeout=0.25,
                prefix="qv2:",
                replicas=1,
                wait_ms=50,
            ),
        ),
        (
            "REDIS+SENTINEL://:pw@h/m/",
            StoreConfig(kind="sentinel", sentinels=(("h", 26379),), service="m", password="pw"),
        ),
        (
            "redis://h:1/2?replicas=2",
            StoreConfig(kind="redis", host="h", port=1, db=2, replicas=2),
        ),
        ("redis://[::1]:7", StoreConfig(kind="redis", host="::1", port=7)),
    ],
)
def test_sentinel_urls(url: str, expected: StoreConfig) -> None:
    assert StoreConfig.from_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://", "redis+sentinel:///m", "redis+sentinel://h", "redis+sentinel://h/",
        "redis+sentinel://h/m/x", "redis+sentinel://h/m/1/2", "redis+sentinel://h/m b",
        "redis+sentinel://h//0", "redis+sentinel://h:0/m", "redis+sentinel://h:65536/m",
        "redis+sentinel://h:x/m", "redis+sentinel://h,/m", "redis+sentinel://h,h/m",
        "redis+sentinel://h:1,h:1/m", "redis+sentinel://[::1/m", "redis+sentinel://[zz]:1/m",
        "redis+sentinel://[::1]x/m", "redis+sentinel://-h/m", "redis+sentinel://h_!/m",
        "redis+sentinel://h/m#f", "redis+sentinel://h/m?bogus=1", "redis+sentinel://h/m?timeout=0",
        "redis+sentinel://h/m?replicas=x", "redis+sentinel://h/m?replicas=17",
        "redis+sentinel://h/m?wait_ms=5", "redis+sentinel://h/m?replicas=1&wait_ms=500",
        "redis+sentinel://h/m?replicas=1&wait_ms=0", "redis+sentinel://h/m?prefix=a&prefix=b",
        "redis+sentinel://h/" + "m" * 65,
        "redis+sentinel://" + ",".join(f"h{i}" for i in range(17)) + "/m",
        "rediss+sentinel://h/m", "redis://h/0?sentinel_password=x", "redis://h,g/0",
        "redis://h?replicas=1&timeout=0.05", "redis://h/\u00b2", "redis://bad host/0",
    ],
)  # fmt: skip
def test_bad_sentinel_urls_name_the_setting(url: str) -> None:
    with pytest.raises(ConfigurationError, match="^session_store"):
        open_store(url)


def test_sentinel_passwords_are_not_shown() -> None:
    config = StoreConfig.from_url("redis+sentinel://:hunter2@h/m?sentinel_password=swordfish")
    assert "hunter2" not in repr(config) and "swordfish" not in repr(config)
    for bad in (
        "redis+sentinel://:hunter2@h:0/m?sentinel_password=swordfish",
        "redis+sentinel://:hunter2@h/m?sentinel_password=swordfish&bogus=1",
        "redis+sentinel://:hunter2@h/m?sentinel_password=swordfish&timeout=x",
        "rediss+sentinel://:hunter2@h/m?sentinel_password=swordfish",
    ):
        with pytest.raises(ConfigurationError) as info:
            StoreConfig.from_url(bad)
        assert "hunter2" not in str(info.value) and "swordfish" not in str(info.value)


_URL_ALPHABET = string.ascii_letters + string.digits + ":/@,[]?&=%.+-_#;~ \u00b2\u00e9\x00\n"
_pieces = st.sampled_from(
    ["redis+sentinel://", "redis://", "memory://", "REDIS+SENTINEL://", "h", "127.0.0.1", "[::1]",
     ":26379", ":0", ":99999", ",", "@", ":pw@", "u:p%40@", "/", "/m", "/m/1", "/1", "?", "&",
     "timeout=0.2", "timeout=nan", "prefix=x:", "replicas=1", "replicas=99", "wait_ms=50",
     "wait_ms=900", "sentinel_password=pw", "sentinel_username=u", "bogus=1", "#", "[", "]"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    url=st.one_of(
        st.text(alphabet=_URL_ALPHABET, max_size=80),
        st.lists(_pieces, max_size=12).map("".join),
        st.builds(
            lambda head, tail: head + tail,
            st.sampled_from(["redis+sentinel://", "redis://"]),
            st.text(max_size=60),
        ),
    )
)
def test_any_url_gives_a_config_or_a_configuration_error(url: str) -> None:
    """Whatever the text, parsing gives a valid config or ``ConfigurationError`` naming the
    setting, nothing else."""
    try:
        config = StoreConfig.from_url(url)
    except ConfigurationError as error:
        assert str(error).startswith("session_store")
        return
    assert config.kind in ("memory", "redis", "sentinel")
    if config.kind == "sentinel":
        assert 1 <= len(config.sentinels) <= 16 and config.service
        assert all(0 < port < 65536 and host for host, port in config.sentinels)
    assert 0 < config.timeout <= 60 and 0 <= config.db <= 1023


@settings(max_examples=300, deadline=None)
@given(
    scheme=st.sampled_from(["redis+sentinel://", "redis://", "rediss://", "memory://", ""]),
    user=st.sampled_from(["", "u"]),
    hosts=st.lists(_pieces, max_size=4).map("".join),
    tail=st.lists(_pieces, max_size=6).map("".join),
    in_query=st.booleans(),
)
def test_passwords_never_reach_an_error(
    scheme: str, user: str, hosts: str, tail: str, in_query: bool
) -> None:
    """A password in the URL's userinfo or in ``sentinel_password`` is never in a message."""
    url = f"{scheme}{user}:SECRET@{hosts}{tail}"
    if in_query:
        url = f"{scheme}{hosts}{tail}{'&' if '?' in tail else '?'}sentinel_password=SECRET"
    try:
        StoreConfig.from_url(url)
    except ConfigurationError as error:
        assert "SECRET" not in str(error)


# -- Failover ----------------------------------------------------------------------------------


async def _load_until_promoted(
    store: SessionStore, session_id: str
) -> tuple[SessionRecord | None, float, float, int]:
    """Load until the store answers again: (record, seconds until then, slowest call, failures)."""
    started = time.monotonic()
    slowest, failures = 0.0, 0
    while time.monotonic() - started < FAILOVER_LIMIT:
        call = time.monotonic()
        try:
            record = await store.load(session_id)
        except StoreUnavailableError:
            failures += 1
            slowest = max(slowest, time.monotonic() - call)
            await asyncio.sleep(0.02)
            continue
        slowest = max(slowest, time.monotonic() - call)
        return record, time.monotonic() - started, slowest, failures
    raise AssertionError("no primary within the failover limit")


@pytest.mark.asyncio
async def test_a_confirmed_save_survives_the_primary(own_sentinel_group: SentinelGroup) -> None:
    group = own_sentinel_group
    store = open_store(group.url(timeout=str(TIMEOUT), replicas="1", wait_ms="200"))
    try:
        before = await store.generation()
        record = await store.save(
            SessionRecord.new("call-1", b"\x91\xa9taro milk", expires_at=time.time() + 60), 0
        )
        assert store.statistics().unreplicated == 0  # the replica confirmed it (WAIT 1)
        group.kill(group.primary_port)  # at once: no time for replication but the WAIT's
        loaded, outage, slowest, failures = await _load_until_promoted(store, "call-1")
        print(f"\nstore answered again {outage:.2f} s after the kill ({failures} failed calls)")
        assert loaded is not None and (loaded.version, loaded.state) == (1, record.state)
        assert slowest < TIMEOUT + 0.15, f"a call took {slowest:.3f} s, over its bound"
        assert group.primary_named() == {group.replica_port}
        assert await store.generation() != before  # a failover: live sessions write again
        assert store.statistics().failovers == 1
        # The new primary has no replica: the first save waits wait_ms, then for a second
        # saves skip the wait; all succeed and are counted as unreplicated.
        started = time.monotonic()
        second = await store.save(record.successor(state=b"\x90"), record.version)
        waited = time.monotonic() - started
        started = time.monotonic()
        await store.save(second.successor(), second.version)
        skipped = time.monotonic() - started
        assert waited >= 0.19 and skipped < 0.1, (waited, skipped)
        assert store.statistics().unreplicated == 2
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_a_write_the_failover_lost_is_written_again(
    own_sentinel_group: SentinelGroup,
) -> None:
    """A checkpoint the primary acknowledged but never replicated is lost when the replica is
    promoted; the store's generation changes with the primary, so the monitor has the live
    session write its state again (without that, the record would stay old until the
    session's next change or keep-alive)."""
    group = own_sentinel_group
    store = open_store(group.url(timeout=str(TIMEOUT), replicas="1", wait_ms="100"))
    monitor = StoreMonitor(store, interval=0.1, call_timeout=1.0)
    checkpointer = AsyncCheckpointer(
        store,
        Checkpointer("quiet", ttl=600, owner="backend-a/conn-1", retry_max=0.5),
        call_timeout=1.0,
    )
    monitor.watch(checkpointer)
    monitor.start()
    try:
        await _until(lambda: monitor.statistics().checks > 0, 2.0)  # its marker is written
        checkpointer.checkpoint(b"\x91\xa5pizza")
        assert await checkpointer.flush(2.0)  # confirmed: so is the marker, written before
        assert store.statistics().unreplicated == 0
        # Cut the replica off the stream (frozen, so it cannot reconnect), write, then lose
        # the primary: the second checkpoint exists on the primary only.
        group.pause(group.replica_port)
        command(group.primary_port, "CLIENT", "KILL", "TYPE", "replica")
        checkpointer.checkpoint(b"\x92\xa5pizza\xa4cola")
        assert await checkpointer.flush(2.0)
        assert store.statistics().unreplicated == 1  # the store says so
        group.kill(group.primary_port)
        killed = time.monotonic()
        group.resume(group.replica_port)
        await _until(group.failover_done, FAILOVER_LIMIT)
        promoted = time.monotonic() - killed
        stored = command(group.replica_port, "HGET", _record_key(store, "quiet"), "v")
        assert stored == b"1", "the promoted replica should hold only the first checkpoint"
        deadline = time.monotonic() + 5.0
        while True:
            record = await _load_or_none(store, "quiet")
            if record is not None and record.state == b"\x92\xa5pizza\xa4cola":
                break
            assert time.monotonic() < deadline, "the lost checkpoint was never written again"
            await asyncio.sleep(0.02)
        repaired = time.monotonic() - killed
        print(
            f"\npromoted {promoted:.2f} s after the kill, lost write repaired at {repaired:.2f} s"
        )
        assert monitor.statistics().losses >= 1
        assert checkpointer.statistics().conflicts == 0  # the rolled-back version is ours
    finally:
        group.resume(group.replica_port)
        await monitor.aclose()
        await checkpointer.aclose()
        await store.aclose()


@pytest.mark.asyncio
async def test_a_frozen_sentinel_costs_a_share_of_the_bound(
    own_sentinel_group: SentinelGroup,
) -> None:
    """Discovery asks the sentinels in turn; a frozen first one costs at most its share of the
    call's bound, and the store answers through the others."""
    group = own_sentinel_group
    group.pause(group.sentinel_ports[0])
    store = open_store(group.url(timeout=str(TIMEOUT)))
    try:
        started = time.monotonic()
        assert await store.load("nobody") is None
        assert time.monotonic() - started < TIMEOUT
        assert store.statistics().errors == 0
    finally:
        group.resume(group.sentinel_ports[0])
        await store.aclose()


async def _until(condition: Callable[[], bool], limit: float) -> None:
    """Poll ``condition`` (a quick check) without blocking the event loop, up to ``limit``."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def _record_key(store: SessionStore, session_id: str) -> bytes:
    return store._record_key(session_id)  # type: ignore[attr-defined, no-any-return]


async def _load_or_none(store: SessionStore, session_id: str) -> SessionRecord | None:
    try:
        return await store.load(session_id)
    except StoreUnavailableError:
        return None


def test_a_password_swallowed_by_another_option_stays_out_of_the_error() -> None:
    # Found by test_passwords_never_reach_an_error: the float parser quoted the timeout value,
    # which a second '?' had made "0.2?sentinel_password=SECRET".
    with pytest.raises(ConfigurationError) as raised:
        StoreConfig.from_url("redis:?timeout=0.2?sentinel_password=SECRET")
    assert "SECRET" not in str(raised.value)
