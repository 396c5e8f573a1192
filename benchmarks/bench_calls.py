"""How many concurrent voice calls one backend core carries, beside stock aioquic.

    python benchmarks/bench_calls.py [--quick] [--levels 25,50,100] [--seconds 5] [--metrics]

Each call sends one 20 ms frame (640 octets, L16 16 kHz) every 20 ms on the reliable uplink and
the backend echoes every frame at once on a response turn, so audio flows 50 frames/s each way.
The backend runs alone in a subprocess (one process = one core); the load generator is this
process. For each level the report gives the backend's CPU use, the calls one fully used core
would carry at that cost (calls / CPU fraction), and the share of echoed frames whose round trip
exceeded that call's fastest one by more than 20 ms ("late").

Two backends are measured the same way, in the same run:
- ``quicvoice``: ``VoiceServer`` (own endpoint, QUIC-LB CIDs, ACKs bundled into audio packets);
- ``stock``: aioquic's ``serve()`` and ``QuicConnectionProtocol`` speaking the same protocol
  with the same frame parser, i.e. what one writes with aioquic as it comes.
The load generator is the same quicvoice client for both, so the difference is the backend's.
``--metrics`` also serves the quicvoice backend's Prometheus ``/metrics`` (its sampler runs) and
scrapes it once a second during the window, reporting the slowest scrape.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

FRAME = bytes(640)
FRAME_SECONDS = 0.020
LATE_THRESHOLD = 0.020
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- the two backends (run in a subprocess) ------------------------------------------------


async def serve_quicvoice(port: int, metrics_port: int | None = None) -> None:
    from quicvoice.asyncio.config import BackendConfig
    from quicvoice.asyncio.server import ServerSession, VoiceServer
    from quicvoice.quiclb import LoadBalancerConfig
    from quicvoice.session.events import SessionClosed
    from quicvoice.session.wire import MediaFrame

    async def echo(session: ServerSession) -> None:
        turn = session.start_turn()

        def on_audio(frame: MediaFrame) -> None:
            session.send_turn_audio(turn, frame.payload, frame.timestamp)

        session.on_audio = on_audio
        async for event in session:
            if isinstance(event, SessionClosed):
                return

    config = BackendConfig(
        listen=("127.0.0.1", port),
        configs=(LoadBalancerConfig(0, 4, 12, os.urandom(16)),),
        metrics=None if metrics_port is None else ("127.0.0.1", metrics_port),
    )
    server = VoiceServer(config, echo)
    await server.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def serve_stock(port: int) -> None:
    from aioquic.asyncio import QuicConnectionProtocol, serve
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import QuicEvent, StreamDataReceived

    from quicvoice.certificates import generate_certificate
    from quicvoice.session.messages import Hello, MessageReader, Welcome, encode_message
    from quicvoice.session.wire import (
        FrameReader,
        StreamHeaderReader,
        StreamKind,
        encode_frame,
        encode_stream_header,
    )

    class EchoProtocol(QuicConnectionProtocol):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            self.control = MessageReader()
            self.header = StreamHeaderReader()
            self.frames = FrameReader()
            self.turn_stream: int | None = None

        def quic_event_received(self, event: QuicEvent) -> None:
            if not isinstance(event, StreamDataReceived):
                return
            if event.stream_id == 0:
                for message in self.control.feed(event.data):
                    if isinstance(message, Hello):
                        welcome = Welcome(
                            session_id="stock",
                            codec=message.codecs[0],
                            frame_ms=message.frame_ms,
                            uplink=message.uplink,
                            server_id="00",
                        )
                        self._quic.send_stream_data(0, encode_message(welcome))
                        self.turn_stream = self._quic.get_next_available_stream_id(True)
                        self._quic.send_stream_data(
                            self.turn_stream, encode_stream_header(StreamKind.TURN, 0)
                        )
                        self.transmit()
                return
            data = event.data
            if self.header.kind is None:
                rest = self.header.feed(data)
                if rest is None:
                    return
                data = rest
            assert self.turn_stream is not None
            for frame in self.frames.feed(data):
                self._quic.send_stream_data(self.turn_stream, encode_frame(frame))
            self.transmit()

    certificate = generate_certificate()
    configuration = QuicConfiguration(
        is_client=False, alpn_protocols=["quicvoice/1"], max_datagram_frame_size=65536
    )
    configuration.certificate = certificate.certificate
    configuration.private_key = certificate.private_key
    await serve("127.0.0.1", port, configuration=configuration, create_protocol=EchoProtocol)
    print("ready", flush=True)
    await asyncio.Event().wait()


# -- the load generator --------------------------------------------------------------------


@dataclass
class CallRecord:
    sent_at: dict[int, float]
    latencies: list[float]


@dataclass(frozen=True)
class Level:
    backend: str
    calls: int
    established: int
    server_cpu: float
    client_cpu: float
    frames: int
    late: int
    p50_ms: float
    p99_ms: float

    @property
    def calls_per_core(self) -> float:
        return self.established / self.server_cpu if self.server_cpu > 0 else float("inf")

    @property
    def late_ratio(self) -> float:
        return self.late / self.frames if self.frames else 1.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def one_call(
    port: int, record: CallRecord, start: float, stop: float, measure_from: float
) -> bool:
    from quicvoice.asyncio.client import connect
    from quicvoice.session.events import AudioReceived

    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, start - loop.time()))
    try:
        async with connect("127.0.0.1", port, verify=False, timeout=10) as client:

            async def receive() -> None:
                while True:
                    event = await client.receive()
                    if isinstance(event, AudioReceived):
                        sent = record.sent_at.pop(event.frame.timestamp, None)
                        if sent is not None and sent >= measure_from:
                            record.latencies.append(loop.time() - sent)

            receiver = loop.create_task(receive())
            seq = 0
            first = loop.time()
            while loop.time() < stop:
                record.sent_at[seq * 320] = loop.time()
                client.send_audio(FRAME, seq * 320)
                seq += 1
                await asyncio.sleep(max(0.0, first + seq * FRAME_SECONDS - loop.time()))
            await asyncio.sleep(0.2)
            receiver.cancel()
        return True
    except (ConnectionError, TimeoutError):
        return False


async def scrape_every_second(port: int, stop: float, durations: list[float]) -> None:
    """GET /metrics once a second until ``stop``; record each scrape's wall time."""
    loop = asyncio.get_running_loop()
    while loop.time() < stop:
        begin = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
        body = await reader.read()
        writer.close()
        if not body.startswith(b"HTTP/1.1 200"):
            raise RuntimeError("the metrics scrape failed")
        durations.append(loop.time() - begin)
        await asyncio.sleep(max(0.0, begin + 1.0 - loop.time()))


async def run_level(
    backend: str, calls: int, seconds: float, metrics: bool = False
) -> tuple[Level, list[float]]:
    port = free_port()
    metrics_port = free_port() if metrics and backend == "quicvoice" else None
    command = [sys.executable, __file__, "--serve", backend, "--port", str(port)]
    if metrics_port is not None:
        command += ["--metrics-port", str(metrics_port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    scrapes: list[float] = []
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{backend} backend did not start")
        loop = asyncio.get_running_loop()
        ramp = min(2.0, 0.02 * calls)
        begin = loop.time() + 0.1
        measure_from = begin + ramp + 1.0
        stop = measure_from + seconds
        records = [CallRecord({}, []) for _ in range(calls)]
        tasks = [
            loop.create_task(
                one_call(port, records[i], begin + ramp * i / calls, stop, measure_from)
            )
            for i in range(calls)
        ]
        await asyncio.sleep(max(0.0, measure_from - loop.time()))
        scraper = None
        if metrics_port is not None:
            scraper = loop.create_task(scrape_every_second(metrics_port, stop, scrapes))
        server_before, client_before = cpu_seconds(process.pid), time.process_time()
        await asyncio.sleep(max(0.0, stop - loop.time()))
        server_cpu = (cpu_seconds(process.pid) - server_before) / seconds
        client_cpu = (time.process_time() - client_before) / seconds
        established = sum(await asyncio.gather(*tasks))
        if scraper is not None:
            await scraper
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    late = frames = 0
    all_latencies: list[float] = []
    for record in records:
        if not record.latencies:
            continue
        floor = min(record.latencies)
        frames += len(record.latencies)
        late += sum(1 for latency in record.latencies if latency - floor > LATE_THRESHOLD)
        all_latencies += record.latencies
    all_latencies.sort()
    p50 = statistics.median(all_latencies) * 1000 if all_latencies else float("nan")
    p99 = (
        all_latencies[int(0.99 * (len(all_latencies) - 1))] * 1000
        if all_latencies
        else float("nan")
    )
    level = Level(backend, calls, established, server_cpu, client_cpu, frames, late, p50, p99)
    return level, scrapes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small level per backend")
    parser.add_argument("--levels", default="25,50,100", help="concurrent calls to try")
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement window")
    parser.add_argument("--serve", choices=["quicvoice", "stock"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--metrics-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--metrics", action="store_true", help="serve and scrape the quicvoice backend's /metrics"
    )
    args = parser.parse_args(argv)
    if args.serve:
        if args.serve == "quicvoice":
            serving = serve_quicvoice(args.port, args.metrics_port)
        else:
            serving = serve_stock(args.port)
        if os.environ.get("BENCH_UVLOOP"):
            import uvloop

            uvloop.run(serving)
        else:
            asyncio.run(serving)
        return 0
    levels = [10] if args.quick else [int(n) for n in args.levels.split(",")]
    seconds = 2.0 if args.quick else args.seconds
    results = []
    scrapes: list[float] = []
    for calls in levels:
        for backend in ("stock", "quicvoice"):
            level, durations = asyncio.run(run_level(backend, calls, seconds, args.metrics))
            results.append(level)
            scrapes += durations
    print(
        f"Concurrent calls, 50 frames/s each way, {seconds:.0f} s windows, Python "
        f"{sys.version.split()[0]}"
    )
    print()
    print(
        "| backend | calls | backend CPU | calls per core at this cost | x stock | "
        "late > 20 ms | RTT p50 / p99 ms | load generator CPU |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    stock = {r.calls: r for r in results if r.backend == "stock"}
    for r in results:
        ratio = r.calls_per_core / stock[r.calls].calls_per_core
        print(
            f"| {r.backend} | {r.established}/{r.calls} | {100 * r.server_cpu:.0f} % | "
            f"{r.calls_per_core:.0f} | {ratio:.2f} | {100 * r.late_ratio:.2f} % | "
            f"{r.p50_ms:.1f} / {r.p99_ms:.1f} | {100 * r.client_cpu:.0f} % |"
        )
    if scrapes:
        print()
        print(f"/metrics: {len(scrapes)} scrapes, slowest {1000 * max(scrapes):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
