"""What a ``/metrics`` scrape and a histogram sample cost the backend's event loop.

    python benchmarks/bench_metrics.py [--sessions 10,100,300] [--repeat 30]

For each level, one process runs a ``VoiceServer`` and that many real calls to it on loopback
(each has sent 20 frames and heard them echoed on a turn), then times ``telemetry.render()`` (what a
scrape runs on the loop) and ``telemetry.sample()`` (what the sampler runs every 10 s), and a
whole scrape over HTTP. The figures are medians; both run on the loop, so this is also how
long a scrape delays the packets of every call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time

FRAME = bytes(640)


async def level(sessions: int, repeat: int) -> tuple[float, float, float, int]:
    from quicvoice.asyncio.client import VoiceClient, connect
    from quicvoice.asyncio.config import BackendConfig
    from quicvoice.asyncio.server import ServerSession, VoiceServer
    from quicvoice.session.events import AudioReceived, SessionClosed
    from quicvoice.session.wire import MediaFrame

    async def echo(session: ServerSession) -> None:
        turn = session.start_turn()

        def on_audio(frame: MediaFrame) -> None:
            session.send_turn_audio(turn, frame.payload, frame.timestamp)

        session.on_audio = on_audio
        while not isinstance(await session.receive(), SessionClosed):
            pass

    config = BackendConfig(listen=("127.0.0.1", 0), metrics=("127.0.0.1", 0))
    server = VoiceServer(config, echo)
    await server.start()
    host, port = server.address

    async def talk(client: VoiceClient) -> None:
        for _ in range(20):
            client.send_audio(FRAME)
        echoed = 0
        while echoed < 20:
            echoed += isinstance(await client.receive(), AudioReceived)

    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(connect(host, port, verify=False, timeout=30))
            for _ in range(sessions)
        ]
        for first in range(0, sessions, 25):  # in batches: one process plays every client
            batch = clients[first : first + 25]
            await asyncio.wait_for(asyncio.gather(*(talk(c) for c in batch)), 30)
        telemetry = server.telemetry
        render, sample, scrape = [], [], []
        size = 0
        address = telemetry.metrics_address
        assert address is not None
        for _ in range(repeat):
            begin = time.perf_counter()
            size = len(telemetry.render())
            render.append(time.perf_counter() - begin)
            begin = time.perf_counter()
            telemetry.sample()
            sample.append(time.perf_counter() - begin)
            begin = time.perf_counter()
            reader, writer = await asyncio.open_connection(*address)
            writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
            await reader.read()
            writer.close()
            scrape.append(time.perf_counter() - begin)
    await server.aclose()
    return statistics.median(render), statistics.median(sample), statistics.median(scrape), size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="10,100,300", help="open calls to try")
    parser.add_argument("--repeat", type=int, default=30, help="measurements per level")
    args = parser.parse_args(argv)
    print(f"Python {sys.version.split()[0]}; medians of {args.repeat}")
    print()
    print("| open sessions | render() | per session | sample() | HTTP scrape | body |")
    print("|---:|---:|---:|---:|---:|---:|")
    for sessions in (int(n) for n in args.sessions.split(",")):
        render, sample, scrape, size = asyncio.run(level(sessions, args.repeat))
        print(
            f"| {sessions} | {render * 1e6:.0f} µs | {render / sessions * 1e6:.1f} µs | "
            f"{sample * 1e6:.0f} µs | {scrape * 1e3:.2f} ms | {size} B |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
