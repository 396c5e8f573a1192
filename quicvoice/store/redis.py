"""The Redis session store (``redis://``, ``redis+sentinel://``), on redis-py's asyncio client.

The only module that imports ``redis``; ``open_store`` imports it when a Redis URL is opened.
With Sentinel, every new connection asks the sentinels for the current primary (redis-py's
``SentinelConnectionPool``), so after a failover the store reconnects to the promoted replica.
Keys (``P`` is the configured prefix, specs/store.md):

    P s:<session_id>    hash  v = version (decimal), d = record envelope (codec.py); PEXPIRE
    P t:<label hex>     string, an encoded TLS session ticket; PX
    P g:<store hex>     string "1", this store object's marker (``generation``); PX 1 hour

A save is one Lua script (atomic on the server): compare ``v`` with the expected version, then
write both fields and the expiry. Every call returns within ``timeout``, however redis-py
behaves; redis-py retries only a connection error, once and at once (a pooled connection to a
Redis that restarted fails its first command), so a slow or dead Redis gives
``StoreUnavailableError`` within that bound.

With ``replicas`` set, a save is followed by ``WAIT replicas wait_ms`` in the same round trip;
a save the replicas did not confirm in time still succeeded on the primary and is counted as
``unreplicated`` (the next second's saves then skip the wait, so a lost replica costs one wait
per second, not one per save). ``generation`` also changes when the primary's address changes
(a failover may have lost the writes not yet replicated), so every live session writes its
state again.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from quicvoice.errors import StoreError

from .base import (
    MAX_TICKET_LEN,
    CorruptRecordError,
    SessionRecord,
    StaleWriteError,
    StoreStatistics,
    StoreUnavailableError,
    check_for_save,
    check_session_id,
    check_ticket_label,
    check_ttl,
)
from .codec import decode_record, encode_record
from .config import StoreConfig

#: Most pooled connections to Redis per store.
MAX_CONNECTIONS = 32
#: Lifetime of a store's marker key, refreshed by every ``generation`` call, in ms.
MARKER_TTL_MS = 3_600_000
#: After the replicas failed to confirm a save, how long saves skip ``WAIT``, in seconds.
WAIT_PAUSE = 1.0

#: Compare-and-set. KEYS[1] record key; ARGV: expected version, new version, envelope, TTL ms.
#: Returns {1, new} on success, {0, actual} when stale, {-1, ""} when the key holds garbage.
#: Versions are compared as decimal strings, so no Lua number precision is involved.
CAS_SCRIPT = """
local current = redis.call('HGET', KEYS[1], 'v')
if not current then
  if redis.call('EXISTS', KEYS[1]) == 1 then return {-1, ''} end
  current = '0'
end
if current ~= ARGV[1] then return {0, current} end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1, ARGV[2]}
"""

_T = TypeVar("_T")


@dataclass(slots=True)
class _Counters:
    operations: int = 0
    errors: int = 0
    stale_writes: int = 0
    corrupt: int = 0
    unreplicated: int = 0
    failovers: int = 0


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's primary discovery for each new connection, within the blocking pool's bound
    on connections (a command beyond it waits for a free one instead of failing at once)."""


class RedisStore:
    """A ``SessionStore`` in Redis, shared by every backend that names the same Redis."""

    def __init__(self, config: StoreConfig, *, clock: Callable[[], float] = time.time) -> None:
        if config.kind not in ("redis", "sentinel"):
            raise ValueError("RedisStore needs a redis:// or redis+sentinel:// configuration")
        self._config = config
        self._clock = clock
        self._timeout = config.timeout
        self._prefix = config.prefix.encode("utf-8")
        self._sentinel: Sentinel | None = None
        self._client = self._connect(config)
        self._cas = self._client.register_script(CAS_SCRIPT)
        self._wait_paused_until = -math.inf
        self._primary: Any = None
        self._counters = _Counters()
        self._marker = self._prefix + b"g:" + os.urandom(8).hex().encode("ascii")
        self._marked = False
        self._generation = 0
        self._overrun: set[asyncio.Future[Any]] = set()

    def __repr__(self) -> str:
        return f"RedisStore({self._config!r})"

    def _connect(self, config: StoreConfig) -> aioredis.Redis:
        """The client: one node's blocking pool, or the primary that the sentinels name."""
        # A blocking pool: beyond MAX_CONNECTIONS commands in flight, a command waits for a
        # connection (within the call's bound) instead of failing at once with "Too many
        # connections", as a burst of resumes onto one backend would otherwise.
        options: dict[str, Any] = {
            "max_connections": MAX_CONNECTIONS,
            "timeout": config.timeout,
            "db": config.db,
            "username": config.username,
            "password": config.password,
            "socket_timeout": config.timeout,
            "socket_connect_timeout": config.timeout,
            # One immediate retry on a connection error only: a pooled connection to a
            # Redis that restarted (or died in a failover) fails its first command without
            # running it; with Sentinel the retry's new connection asks for the primary.
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            "health_check_interval": 0,
            "decode_responses": False,
        }
        if config.kind == "redis":
            pool = aioredis.BlockingConnectionPool(host=config.host, port=config.port, **options)
            return aioredis.Redis.from_pool(pool)  # closes the pool with the client
        # Discovery asks the sentinels one after another (a refused one costs nothing, a
        # frozen one its whole timeout), then connects and runs the command: bound each
        # sentinel so that all of them and the command fit in one call's bound.
        per_sentinel = config.timeout / (len(config.sentinels) + 1)
        self._sentinel = Sentinel(
            config.sentinels,
            sentinel_kwargs={
                "socket_timeout": per_sentinel,
                "socket_connect_timeout": per_sentinel,
                "username": config.sentinel_username,
                "password": config.sentinel_password,
                "retry": Retry(NoBackoff(), 0),
                "health_check_interval": 0,
            },
        )
        client: aioredis.Redis = self._sentinel.master_for(
            config.service, connection_pool_class=_BlockingSentinelPool, **options
        )
        return client

    async def load(self, session_id: str) -> SessionRecord | None:
        """The session's current record, or ``None`` if there is none or it has expired."""
        check_session_id(session_id)
        fields = await self._call(self._client.hmget(self._record_key(session_id), "v", "d"))
        if not isinstance(fields, list | tuple) or len(fields) != 2:
            raise self._corrupt(f"session {session_id!r}: unexpected reply to HMGET")
        raw_version, envelope = fields
        if raw_version is None and envelope is None:
            return None
        version = self._parse_version(raw_version, session_id)
        try:
            record = decode_record(envelope, session_id)
        except CorruptRecordError:
            self._counters.errors += 1
            self._counters.corrupt += 1
            raise
        if record.version != version:
            raise self._corrupt(f"session {session_id!r}: version field disagrees with record")
        if record.expires_at <= self._clock():
            return None
        return record

    async def save(self, record: SessionRecord, expected_version: int) -> SessionRecord:
        """Compare-and-set ``record`` against ``expected_version`` (see ``SessionStore.save``)."""
        now = self._clock()
        check_for_save(record, expected_version, now)
        ttl_ms = max(1, math.ceil((record.expires_at - now) * 1000))
        key = self._record_key(record.session_id)
        args: list[bytes | str] = [
            str(expected_version),
            str(record.version),
            encode_record(record),
            str(ttl_ms),
        ]
        replicas = self._config.replicas
        if replicas and time.monotonic() >= self._wait_paused_until:
            reply, confirmed = await self._call(self._cas_and_wait(key, args))
            if confirmed < replicas:
                self._counters.unreplicated += 1
                self._wait_paused_until = time.monotonic() + WAIT_PAUSE
        else:
            reply = await self._call(self._cas(keys=[key], args=args))
            if replicas:
                self._counters.unreplicated += 1
        if not isinstance(reply, list | tuple) or len(reply) != 2 or type(reply[0]) is not int:
            raise self._corrupt(f"session {record.session_id!r}: unexpected reply to the CAS")
        outcome, detail = reply
        if outcome == 1:
            return record
        if outcome == 0:
            actual = self._parse_version(detail, record.session_id)
            self._counters.stale_writes += 1
            raise StaleWriteError(record.session_id, expected_version, actual)
        raise self._corrupt(f"session {record.session_id!r}: the key holds no valid record")

    async def delete(self, session_id: str) -> bool:
        """Remove the session's record; ``True`` if there was one."""
        check_session_id(session_id)
        removed = await self._call(self._client.delete(self._record_key(session_id)))
        return bool(removed)

    async def put_ticket(self, label: bytes, ticket: bytes, ttl: float) -> None:
        """Keep ``ticket`` under ``label`` for ``ttl`` seconds."""
        check_ticket_label(label)
        check_ttl(ttl)
        if not isinstance(ticket, bytes):
            raise TypeError("ticket must be bytes")
        if len(ticket) > MAX_TICKET_LEN:
            self._counters.operations += 1
            self._counters.errors += 1
            raise StoreError(f"ticket of {len(ticket)} octets exceeds {MAX_TICKET_LEN}")
        ttl_ms = max(1, math.ceil(ttl * 1000))
        await self._call(self._client.set(self._ticket_key(label), ticket, px=ttl_ms))

    async def take_ticket(self, label: bytes) -> bytes | None:
        """Remove and return the ticket under ``label`` (GETDEL: one taker wins), or ``None``."""
        check_ticket_label(label)
        value = await self._call(self._client.getdel(self._ticket_key(label)))
        if value is None:
            return None
        if not isinstance(value, bytes) or len(value) > MAX_TICKET_LEN:
            raise self._corrupt("ticket entry is not a bounded byte string")
        return value

    async def generation(self) -> int:
        """Changes when Redis lost what this store wrote (restarted empty, flushed).

        The store keeps a marker key of its own; each call refreshes its expiry (PEXPIRE,
        one operation) and, when the marker is gone, counts a loss and writes it again.
        """
        if not await self._call(self._client.pexpire(self._marker, MARKER_TTL_MS)):
            if self._marked:
                self._generation += 1
            await self._call(self._client.set(self._marker, b"1", px=MARKER_TTL_MS))
            self._marked = True
        primary = self._primary_address()
        if primary != self._primary:
            if self._primary is not None:
                # A failover: the writes the old primary had not yet replicated are lost.
                self._counters.failovers += 1
                self._generation += 1
            self._primary = primary
        return self._generation

    def statistics(self) -> StoreStatistics:
        """Counters since the store was opened."""
        return StoreStatistics(
            operations=self._counters.operations,
            errors=self._counters.errors,
            stale_writes=self._counters.stale_writes,
            corrupt=self._counters.corrupt,
            unreplicated=self._counters.unreplicated,
            failovers=self._counters.failovers,
        )

    async def aclose(self) -> None:
        """Close the connection pool (cancelling any command that overran its bound)."""
        for task in list(self._overrun):
            task.cancel()
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.aclose()
                if self._sentinel is not None:
                    await self._sentinel.aclose()
        except (RedisError, OSError, TimeoutError):
            pass

    async def _cas_and_wait(self, key: bytes, args: list[bytes | str]) -> tuple[Any, int]:
        """The compare-and-set then ``WAIT`` on the same connection, in one round trip.

        Returns the script's reply and how many replicas confirmed it. The script goes as
        EVAL, not EVALSHA: a primary that lacks it (just promoted) would otherwise answer
        NOSCRIPT and the pair would wait twice.
        """
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.execute_command("EVAL", CAS_SCRIPT, 1, key, *args)
            pipe.execute_command("WAIT", self._config.replicas, self._config.wait_ms)
            reply, confirmed = await pipe.execute(raise_on_error=False)
        for outcome in (reply, confirmed):
            if isinstance(outcome, Exception):
                raise outcome
        if type(confirmed) is not int:
            raise ResponseError("unexpected reply to WAIT")
        return reply, confirmed

    def _primary_address(self) -> Any:
        """The primary the sentinels named for the latest connection (``None``: one node)."""
        pool = self._client.connection_pool
        return pool.master_address if isinstance(pool, SentinelConnectionPool) else None

    def _record_key(self, session_id: str) -> bytes:
        return self._prefix + b"s:" + session_id.encode("utf-8")

    def _ticket_key(self, label: bytes) -> bytes:
        return self._prefix + b"t:" + label.hex().encode("ascii")

    async def _call(self, command: Awaitable[_T]) -> _T:
        """Run one Redis command under the timeout, turning every failure into ``StoreError``.

        The command runs as its own task and the wait for it is bounded here, so the bound
        holds even where redis-py waits through a cancellation (a ``Condition`` reacquiring
        its lock in the blocking pool); a command that overran is cancelled and left to end.
        """
        self._counters.operations += 1
        task = asyncio.ensure_future(command)
        try:
            done, _ = await asyncio.wait((task,), timeout=self._timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        try:
            if not done:
                task.cancel()
                self._overrun.add(task)
                task.add_done_callback(self._forget_overrun)
                raise TimeoutError
            return task.result()
        except TimeoutError as exc:
            self._counters.errors += 1
            raise StoreUnavailableError(
                f"{self._config.location} did not answer within {self._timeout} s"
            ) from exc
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._counters.errors += 1
            raise StoreUnavailableError(f"{self._config.location} unavailable: {exc}") from exc
        except ResponseError as exc:
            self._counters.errors += 1
            if "WRONGTYPE" in str(exc):
                self._counters.corrupt += 1
                raise CorruptRecordError(f"redis key holds the wrong type: {exc}") from exc
            raise StoreError(f"redis refused the command: {exc}") from exc
        except RedisError as exc:
            self._counters.errors += 1
            raise StoreError(f"redis failed: {exc}") from exc

    def _forget_overrun(self, task: asyncio.Future[Any]) -> None:
        self._overrun.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: its failure was already reported as a timeout

    def _parse_version(self, raw: Any, session_id: str) -> int:
        if isinstance(raw, bytes) and 0 < len(raw) <= 19 and raw.isdigit():
            return int(raw)
        raise self._corrupt(f"session {session_id!r}: version field is not a decimal number")

    def _corrupt(self, message: str) -> CorruptRecordError:
        self._counters.errors += 1
        self._counters.corrupt += 1
        return CorruptRecordError(message)
