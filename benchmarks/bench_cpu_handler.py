"""What a handler's blocking CPU work does to the other calls of its backend, and the remedy.

    python benchmarks/bench_cpu_handler.py [--seconds 3] [--calls 3] [--work-ms 50]

A backend (``quicvoice serve --app benchmarks.bench_cpu_handler:app``, its own process) runs
one "heavy" call whose handler spends ``--work-ms`` of pure-Python CPU on every uplink frame,
and ``--calls`` light calls that echo each frame at once. This process places the calls and
measures the light calls' echo round trip per frame. Three ways to run the heavy work:

- ``inline``: in the handler, on the event loop (what a naive handler does);
- ``thread``: ``await asyncio.to_thread(work)`` (pure Python still holds the GIL; numpy or
  C code that releases it would fare better);
- ``process``: ``await loop.run_in_executor(process_pool, work)``.

"late" is the share of echoed frames whose round trip exceeded the call's fastest by 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

FRAME_SECONDS = 0.020
LATE_MS = 20.0
ROOT = Path(__file__).resolve().parents[1]

# -- the backend's application (imported by ``quicvoice serve --app``) --------------------


def burn(seconds: float) -> int:
    """Pure-Python CPU work for ``seconds`` (holds the GIL throughout)."""
    end = time.perf_counter() + seconds
    spins = 0
    while time.perf_counter() < end:
        spins += 1
    return spins


_POOL: concurrent.futures.ProcessPoolExecutor | None = None


async def handler(session: object) -> None:
    """Light calls echo every frame; the heavy call burns CPU per frame, as configured."""
    from quicvoice.app import Session

    assert isinstance(session, Session)
    global _POOL
    if session.metadata.get("heavy") == "1":
        mode = os.environ.get("BENCH_OFFLOAD", "inline")
        work = float(os.environ.get("BENCH_WORK_MS", "50")) / 1000
        loop = asyncio.get_running_loop()
        if mode == "process" and _POOL is None:
            _POOL = concurrent.futures.ProcessPoolExecutor(1)
        async for _ in session.audio():
            if mode == "inline":
                burn(work)
            elif mode == "thread":
                await asyncio.to_thread(burn, work)
            else:
                await loop.run_in_executor(_POOL, burn, work)
        return
    async with session.turn() as turn:
        async for frame in session.audio():
            await turn.write(frame.data)


def _app() -> object:
    from quicvoice.app import App

    return App(handler, sample_rate=16000)


app = _app()

# -- the measurement (this process) --------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _call(port: int, seconds: float, heavy: bool) -> list[float]:
    from quicvoice.asyncio.client import connect
    from quicvoice.session.events import AudioReceived
    from quicvoice.session.messages import Hello

    hello = Hello(codecs=("L16/16000",), metadata={"heavy": "1"} if heavy else {})
    sent: list[float] = []
    rtts: list[float] = []
    async with connect("127.0.0.1", port, hello=hello, verify=False) as client:
        loop = asyncio.get_running_loop()

        async def receive() -> None:
            while True:
                event = await client.receive()
                if isinstance(event, AudioReceived) and event.turn_id is not None:
                    index = len(rtts)
                    if index < len(sent):
                        rtts.append((loop.time() - sent[index]) * 1000)

        receiver = loop.create_task(receive())
        start = loop.time()
        for index in range(int(seconds / FRAME_SECONDS)):
            await asyncio.sleep(max(0.0, start + index * FRAME_SECONDS - loop.time()))
            sent.append(loop.time())
            client.send_audio(bytes(640))
        await asyncio.sleep(0.3)
        receiver.cancel()
    return rtts


async def _measure(mode: str, calls: int, seconds: float, work_ms: float) -> dict[str, object]:
    port = _free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "quicvoice"), "serve", "--listen",
         f"127.0.0.1:{port}", "--app", "benchmarks.bench_cpu_handler:app"],
        cwd=ROOT,
        env={**os.environ, "BENCH_OFFLOAD": mode, "BENCH_WORK_MS": str(work_ms)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 20)
        tasks = [_call(port, seconds, heavy=False) for _ in range(calls)]
        if mode != "none":
            tasks.append(_call(port, seconds, heavy=True))
        results = await asyncio.gather(*tasks)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(10)
    light = results[:calls]
    rtts = sorted(r for call in light for r in call)
    late = sum(r > min(call) + LATE_MS for call in light for r in call)
    return {
        "heavy work": "none" if mode == "none" else mode,
        "echoed": len(rtts),
        "rtt p50 ms": round(statistics.median(rtts), 1),
        "rtt p95 ms": round(rtts[int(0.95 * (len(rtts) - 1))], 1),
        "rtt max ms": round(rtts[-1], 1),
        "late %": round(100 * late / max(1, len(rtts)), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--calls", type=int, default=3, help="light calls")
    parser.add_argument("--work-ms", type=float, default=50.0, help="CPU per heavy frame")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [
        asyncio.run(_measure(mode, args.calls, args.seconds, args.work_ms))
        for mode in ("none", "inline", "thread", "process")
    ]
    if args.json:
        print(json.dumps(rows))
        return
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()
