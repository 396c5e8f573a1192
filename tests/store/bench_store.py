"""Micro-benchmark of store operations on loopback (not a test; specs/store.md quotes it).

    .venv/bin/python -m tests.store.bench_store [--ops N] [--sentinel]

Starts its own redis-server on a free loopback port (killed by PID at the end), then times
sequential ``save`` (compare-and-set), ``load``, ``put_ticket``+``take_ticket`` on the memory and
Redis stores, and token ``issue``/``verify``; prints one JSON line per measurement.
``--sentinel`` instead starts a primary, a replica and three sentinels and times the same
operations through Sentinel, without and with ``replicas=1`` (``WAIT`` after each save).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable

from quicvoice.store import ResumeTokenIssuer, SessionRecord, SessionStore, open_store

from ..conftest import RedisServer, free_port


async def timed(ops: int, op: Callable[[int], Awaitable[object]]) -> dict[str, float]:
    samples = []
    for i in range(ops):
        started = time.perf_counter()
        await op(i)
        samples.append((time.perf_counter() - started) * 1e6)
    samples.sort()
    return {
        "median_us": round(statistics.median(samples), 1),
        "p99_us": round(samples[int(len(samples) * 0.99) - 1], 1),
        "ops_per_s": round(ops / (sum(samples) / 1e6)),
    }


async def bench_store(name: str, store: SessionStore, ops: int) -> None:
    state = bytes(2048)  # a typical order cart / dialogue summary
    current = {
        "r": await store.save(SessionRecord.new("bench", state, expires_at=time.time() + 600), 0)
    }

    async def save(_: int) -> None:
        record = current["r"]
        current["r"] = await store.save(record.successor(state=state), record.version)

    async def load(_: int) -> None:
        await store.load("bench")

    async def ticket(i: int) -> None:
        label = i.to_bytes(8, "big")
        await store.put_ticket(label, bytes(200), 60)
        await store.take_ticket(label)

    for label, op in (("save_cas_2KiB", save), ("load_2KiB", load), ("ticket_put_take", ticket)):
        print(json.dumps({"store": name, "op": label, "ops": ops, **await timed(ops, op)}))


def bench_tokens(ops: int) -> None:
    issuer = ResumeTokenIssuer({1: bytes(32)}, current_key_id=1, ttl=300)
    now = time.time()
    started = time.perf_counter()
    tokens = [issuer.issue(f"session-{i}", now) for i in range(ops)]
    issued = time.perf_counter() - started
    started = time.perf_counter()
    for token in tokens:
        issuer.verify(token, now)
    verified = time.perf_counter() - started
    print(json.dumps({"op": "token_issue", "us_each": round(issued / ops * 1e6, 2)}))
    print(json.dumps({"op": "token_verify", "us_each": round(verified / ops * 1e6, 2)}))


async def bench_sentinel(ops: int) -> None:
    import tempfile
    from pathlib import Path

    from ..redis_sentinel import started_group

    with tempfile.TemporaryDirectory() as directory:
        for group in started_group(Path(directory)):
            for name, options in (
                ("sentinel", {}),
                ("sentinel_wait_1", {"replicas": "1", "wait_ms": "100"}),
            ):
                store = open_store(group.url(**options))
                await bench_store(name, store, ops)
                unreplicated = store.statistics().unreplicated
                print(json.dumps({"store": name, "unreplicated_saves": unreplicated}))
                await store.aclose()


async def main(ops: int, sentinel: bool) -> None:
    if sentinel:
        await bench_sentinel(ops)
        return
    await bench_store("memory", open_store("memory://"), ops)
    server = RedisServer(port=free_port())
    server.start()
    try:
        store = open_store(server.unique_url())
        await bench_store("redis", store, ops)
        await store.aclose()
    finally:
        server.stop()
    bench_tokens(ops)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--sentinel", action="store_true", help="through Redis Sentinel")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.ops, arguments.sentinel))
