"""How many concurrent voice calls one backend core carries, beside the WebSocket it replaces.

    python benchmarks/bench_calls.py [--quick] [--levels 20,40,60] [--seconds 5]
        [--loop asyncio|uvloop|asyncio,uvloop] [--backends websocket,stock,quicvoice,webtransport]
        [--workers 1,2] [--metrics] [--load-processes 2] [--quic-load native|client]

Each call sends one 20 ms frame (640 octets, L16 16 kHz) every 20 ms on the reliable uplink and
the backend echoes every frame at once, so audio flows 50 frames/s each way. The calls' sending
times are spread evenly over the 20 ms period (call i sends at phase i/calls of it), as
independent callers' would be. The backend runs alone in a subprocess (one process = one
core); the calls run in ``--load-processes`` other processes (default 2, every N-th call in
each; ``benchmarks/load/echo_calls.py``), on the same event loop kind as the backend, and this
process only decides the schedule (absolute ``time.monotonic()`` instants, shared by all
processes on Linux), measures CPU and aggregates. Which callers ran is printed above the table:
- ``websocket``: ``websockets`` clients;
- the raw-QUIC rows (``--quic-load``): ``native``, ngtcp2 client connections
  (``quicvoice._ngtcp2``; the default where it is built), one packet per frame each way as the
  project's client, at a fraction of its CPU; or ``client``, the project's client
  (``quicvoice.asyncio.client.connect``), which on 2 cores cannot sustain 40+ calls beside a
  backend (its rows then measure a cost, not a sustained load);
- ``webtransport``: always the project's client over WebTransport.
The "load generator CPU" column is all load processes' CPU over the window, "frames sent / due"
the frames the calls sent in it over the frames due (below 100 %: the load fell behind). For each
level the report gives the backend's CPU use, its CPU per echoed frame, the calls one fully
used core would carry at that cost (calls / CPU fraction), that figure as a ratio to the
WebSocket row of the same level and loop, the share of echoed frames whose round trip
exceeded that call's fastest one by more than 20 ms ("late"), and the QUIC packets per frame
each way seen by the clients (1.00 / 1.00: every ACK rode on audio). CPU per frame counts the
frames the calls really sent in the window: when the load generator falls behind (late frames),
the row is a cost measurement, not a sustained load.

Backends, all measured the same way in the same run:
- ``websocket``: a ``websockets`` echo server (TCP), what quicvoice replaces;
- ``stock``: aioquic's ``serve()`` and ``QuicConnectionProtocol`` speaking the quicvoice
  protocol with the same frame parser, i.e. what one writes with aioquic as it comes;
- ``quicvoice``: ``VoiceServer`` (own endpoint, QUIC-LB CIDs, ACKs bundled into audio
  packets), raw QUIC (ALPN ``quicvoice/1``);
- ``webtransport``: the same ``VoiceServer``, reached over WebTransport (HTTP/3);
- ``quicvoice-ngtcp2``: the same echo handler and voice layer on the ngtcp2 engine
  (``engine = "ngtcp2"``, ``quicvoice.engine_ngtcp2``; raw QUIC), where the extension is built;
- ``quicvoice-aioquic-acks``: ``VoiceServer`` with aioquic's own ACK policy (ACK-only packet
  1 ms after each frame) - the ACK lever switched off, for the before/after;
- ``quicvoice-baseline``: the ``quicvoice`` backend run from another copy of the package
  (``--baseline DIR``, a directory holding ``quicvoice/``, e.g. ``git archive`` of an earlier
  commit), for the before/after of a change in one run;
- ``serve-workers``: ``quicvoice serve --workers N`` (N from ``--workers``), calls spread over
  the workers' ports; CPU is every worker's together, so "calls per core" is per core used.
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
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Appended, not inserted: the quicvoice-baseline backend's PYTHONPATH copy must stay first.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from benchmarks.load.echo_calls import (  # noqa: E402
    FRAME_SECONDS,
    LATE_THRESHOLD,
    LoadProcesses,
    Schedule,
    cpu_seconds,
    sleep_until,
)

BACKENDS = ("websocket", "stock", "quicvoice", "webtransport")
ALL_BACKENDS = (
    *BACKENDS,
    "quicvoice-ngtcp2",
    "quicvoice-aioquic-acks",
    "quicvoice-baseline",
    "serve-workers",
)
QUIC_LOADS = ("native", "client")
LB_KEY = "8f95f09245765f80256934e50c66207f"


# -- the backends (run in a subprocess) ----------------------------------------------------


async def echo(session: Any) -> None:
    """The echo application: every uplink frame goes straight back on one response turn
    (``quicvoice serve --app benchmarks.bench_calls:echo`` runs it too)."""
    from quicvoice.session.events import SessionClosed
    from quicvoice.session.wire import MediaFrame

    if hasattr(session, "detach"):  # an app Session (serve --app): work on the lower level
        session = session.detach()
    turn = session.start_turn()

    def on_audio(frame: MediaFrame) -> None:
        session.send_turn_audio(turn, frame.payload, frame.timestamp)

    session.on_audio = on_audio
    async for event in session:
        if isinstance(event, SessionClosed):
            return


async def serve_quicvoice(
    port: int, metrics_port: int | None = None, aioquic_acks: bool = False
) -> None:
    from quicvoice.asyncio.config import BackendConfig
    from quicvoice.asyncio.server import VoiceServer
    from quicvoice.quiclb import LoadBalancerConfig

    if aioquic_acks:
        # The lever off, for this process only: aioquic's 1 ms ACK timer and no ACK riding
        # on audio, i.e. an ACK-only packet after every frame received.
        from quicvoice import quic

        quic.VOICE_ACK_DELAY = 0.001
        quic.VoiceQuicConnection._has_data_to_send = lambda self: False  # type: ignore[method-assign]

    config = BackendConfig(
        listen=("127.0.0.1", port),
        configs=(LoadBalancerConfig(0, 4, 12, os.urandom(16)),),
        metrics=None if metrics_port is None else ("127.0.0.1", metrics_port),
    )
    server = VoiceServer(config, echo)
    await server.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def serve_ngtcp2(port: int) -> None:
    from quicvoice.asyncio.config import BackendConfig
    from quicvoice.engine_ngtcp2.backend import voice_server
    from quicvoice.quiclb import LoadBalancerConfig

    config = BackendConfig(
        listen=("127.0.0.1", port),
        configs=(LoadBalancerConfig(0, 4, 12, os.urandom(16)),),
        reset_key=os.urandom(32),
        engine="ngtcp2",
    )
    server, _ = voice_server(config, echo)
    await server.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def serve_stock(port: int) -> None:
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.asyncio.server import serve
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


async def serve_websocket(port: int) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    async def echo_messages(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send(message)

    async with serve(echo_messages, "127.0.0.1", port, compression=None):
        print("ready", flush=True)
        await asyncio.Event().wait()


# -- the measurement ---------------------------------------------------------------------


@dataclass(frozen=True)
class Level:
    backend: str
    loop: str
    calls: int
    established: int
    server_cpu: float
    client_cpu: float
    frames: int
    late: int
    p50_ms: float
    p99_ms: float
    packets_out_per_frame: float | None
    packets_in_per_frame: float | None
    frames_sent: int
    seconds: float
    workers: int = 1
    load: str = "client"
    load_processes: int = 1

    @property
    def cpu_us_per_frame(self) -> float:
        """Backend CPU per frame echoed, from the frames the calls really sent in the window
        (a load generator that falls behind sends fewer than 50 a second)."""
        per_second = self.frames_sent / self.seconds
        return 1e6 * self.server_cpu / per_second if per_second else float("nan")

    @property
    def calls_per_core(self) -> float:
        """Calls of 50 frames/s one fully used core carries at this CPU per frame."""
        return 1e6 * FRAME_SECONDS / self.cpu_us_per_frame

    @property
    def sent_ratio(self) -> float:
        """Frames the calls sent in the window over the frames due (below 1: the load fell
        behind its schedule or calls were lost)."""
        return self.frames_sent * FRAME_SECONDS / (self.calls * self.seconds)

    @property
    def late_ratio(self) -> float:
        return self.late / self.frames if self.frames else 1.0

    @property
    def name(self) -> str:
        if self.backend == "serve-workers":
            return f"serve --workers {self.workers}"
        return self.backend


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its living children (the workers of ``serve --workers``)."""
    total = cpu_seconds(pid)
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        for child in children.read().split():
            try:
                total += cpu_seconds(int(child))
            except FileNotFoundError:
                pass
    return total


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free UDP ports (bounded search)."""
    for _ in range(200):
        first = free_port()
        sockets = []
        try:
            for offset in range(count):
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(probe)
                probe.bind(("127.0.0.1", first + offset))
            return first
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()
    raise RuntimeError(f"no {count} consecutive free ports")


async def scrape_every_second(port: int, stop: float, durations: list[float]) -> None:
    """GET /metrics once a second until ``stop``; record each scrape's wall time."""
    while time.monotonic() < stop:
        begin = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
        body = await reader.read()
        writer.close()
        if not body.startswith(b"HTTP/1.1 200"):
            raise RuntimeError("the metrics scrape failed")
        durations.append(time.monotonic() - begin)
        await sleep_until(begin + 1.0)


def workers_config(directory: Path, port: int) -> Path:
    """A backend file for ``serve --workers``: shared QUIC-LB key and reset key."""
    path = directory / "backend.toml"
    path.write_text(
        f'listen = "127.0.0.1:{port}"\n'
        'server_id = "0a000001"\n'
        f'reset_key = "{bytes(range(32)).hex()}"\n'
        "[[configs]]\nid = 0\nserver_id_len = 4\nnonce_len = 12\n"
        f'key = "{LB_KEY}"\n'
    )
    return path


def start_backend(
    backend: str,
    loop_kind: str,
    port: int,
    metrics_port: int | None,
    workers: int,
    scratch: Path,
    baseline: str | None = None,
) -> subprocess.Popen[str]:
    if backend == "serve-workers":
        root = Path(__file__).resolve().parent.parent
        command = [
            sys.executable, "-m", "quicvoice.cli", "serve",
            "--config", str(workers_config(scratch, port)),
            "--app", "benchmarks.bench_calls:echo",
            "--workers", str(workers), "--loop", loop_kind,
        ]  # fmt: skip
        return subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=root
        )
    serve = "quicvoice" if backend in ("webtransport", "quicvoice-baseline") else backend
    command = [sys.executable, __file__, "--serve", serve, "--port", str(port)]
    command += ["--loop", loop_kind]
    if metrics_port is not None:
        command += ["--metrics-port", str(metrics_port)]
    env = None
    if backend == "quicvoice-baseline":
        if baseline is None:
            raise SystemExit("quicvoice-baseline needs --baseline DIR")
        env = dict(os.environ, PYTHONPATH=baseline)  # its quicvoice/ comes first
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)


def wait_ready(process: subprocess.Popen[str], backend: str, workers: int) -> None:
    assert process.stdout is not None
    expected = workers if backend == "serve-workers" else 1
    ready = 0
    for _ in range(20):  # bounded: a few lines per worker
        line = process.stdout.readline()
        if not line:
            break
        if line.strip() == "ready" or line.startswith('{"listening"'):
            ready += 1
            if ready == expected:
                return
    raise RuntimeError(f"{backend} backend did not start")


def load_kind(backend: str, quic_load: str) -> str:
    """The callers a backend's row runs: WebSocket clients, the project's client over
    WebTransport, or ``quic_load`` (``native`` or ``client``) for the raw-QUIC rows."""
    if backend == "websocket":
        return "websocket"
    if backend == "webtransport":
        return "webtransport"
    return quic_load


async def run_level(
    backend: str,
    loop_kind: str,
    calls: int,
    seconds: float,
    metrics: bool = False,
    workers: int = 1,
    baseline: str | None = None,
    quic_load: str = "client",
    load_processes: int = 2,
) -> tuple[Level, list[float]]:
    count = workers if backend == "serve-workers" else 1
    port = free_ports(count)
    metrics_port = free_port() if metrics and backend == "quicvoice" else None
    scrapes: list[float] = []
    kind = load_kind(backend, quic_load)
    with tempfile.TemporaryDirectory() as scratch:
        process = start_backend(
            backend, loop_kind, port, metrics_port, count, Path(scratch), baseline
        )
        load: LoadProcesses | None = None
        try:
            wait_ready(process, backend, count)
            ports = [port + i for i in range(count)]
            load = LoadProcesses(kind, ports, calls, load_processes, loop_kind)
            load.wait_ready()
            schedule = Schedule.starting_now(calls, seconds)
            load.start(schedule)
            await sleep_until(schedule.measure_from)
            scraper = None
            if metrics_port is not None:
                scraper = asyncio.get_running_loop().create_task(
                    scrape_every_second(metrics_port, schedule.stop, scrapes)
                )
            server_before, load_before = tree_cpu_seconds(process.pid), load.cpu_seconds()
            await sleep_until(schedule.stop)
            server_cpu = (tree_cpu_seconds(process.pid) - server_before) / seconds
            client_cpu = (load.cpu_seconds() - load_before) / seconds
            if scraper is not None:
                await scraper
            records = load.records(timeout=30.0)
        finally:
            if load is not None:
                load.kill()
            process.send_signal(signal.SIGTERM if backend == "serve-workers" else signal.SIGKILL)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    established = sum(record.established for record in records)
    late = frames = 0
    all_latencies: list[float] = []
    packets_out = packets_in = counted_sent = 0
    counted = False
    for record in records:
        if record.packets is not None:
            counted = True
            packets_out += record.packets[0]
            packets_in += record.packets[1]
            counted_sent += record.frames_sent
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
    # Seen from the clients: what they send is what the backend receives, and vice versa.
    in_per_frame = packets_out / counted_sent if counted and counted_sent else None
    out_per_frame = packets_in / frames if counted and frames else None
    level = Level(
        backend, loop_kind, calls, established, server_cpu, client_cpu, frames, late, p50, p99,
        out_per_frame, in_per_frame, sum(record.frames_sent for record in records), seconds,
        count, kind, len(load.procs),
    )  # fmt: skip
    return level, scrapes


def run_on(loop_kind: str, main: Coroutine[Any, Any, Any]) -> Any:
    """Run ``main`` on a new loop of ``loop_kind`` (standalone: a baseline copy of quicvoice
    may predate ``quicvoice.asyncio.loops``)."""
    if loop_kind == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)


LOAD_NAMES = {
    "websocket": "websockets clients",
    "client": "the project's client (quicvoice.asyncio.client)",
    "webtransport": "the project's client over WebTransport",
    "native": "ngtcp2 client connections (quicvoice._ngtcp2)",
}


def print_table(results: list[Level], seconds: float) -> None:
    load = os.getloadavg()
    print(
        f"Concurrent calls, 50 frames/s each way, {seconds:.0f} s windows, Python "
        f"{sys.version.split()[0]}, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
    )
    print()
    processes = sorted({r.load_processes for r in results})
    loads = {r.load: None for r in results}
    print(
        f"Load: {' or '.join(map(str, processes))} load process(es) per row, beside the backend; "
        + "; ".join(
            f"{', '.join(dict.fromkeys(r.name for r in results if r.load == kind))}: "
            f"{LOAD_NAMES[kind]}"
            for kind in loads
        )
        + " (WebTransport rows always run the project's client)."
    )
    print()
    print(
        "| backend | loop | calls | backend CPU | µs per frame | calls per core | x WebSocket | "
        "late > 20 ms | RTT p50 / p99 ms | packets in / out per frame | load generator CPU | "
        "frames sent / due |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    websocket = {(r.loop, r.calls): r for r in results if r.backend == "websocket"}
    for r in results:
        anchor = websocket.get((r.loop, r.calls))
        ratio = f"{r.calls_per_core / anchor.calls_per_core:.2f}" if anchor else "-"
        packets = (
            f"{r.packets_in_per_frame:.2f} / {r.packets_out_per_frame:.2f}"
            if r.packets_in_per_frame is not None and r.packets_out_per_frame is not None
            else "-"
        )
        print(
            f"| {r.name} | {r.loop} | {r.established}/{r.calls} | {100 * r.server_cpu:.0f} % | "
            f"{r.cpu_us_per_frame:.0f} | {r.calls_per_core:.0f} | {ratio} | "
            f"{100 * r.late_ratio:.2f} % | {r.p50_ms:.1f} / {r.p99_ms:.1f} | {packets} | "
            f"{100 * r.client_cpu:.0f} % | {100 * r.sent_ratio:.0f} % |"
        )


def default_quic_load() -> str:
    """``native`` where the ngtcp2 extension is built, else ``client``."""
    from quicvoice.engine_ngtcp2 import AVAILABLE

    return "native" if AVAILABLE else "client"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small level per backend")
    parser.add_argument("--levels", default="20,40,60", help="concurrent calls to try")
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement window")
    parser.add_argument(
        "--loop", default="asyncio", help="event loop(s), comma-separated: asyncio, uvloop"
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated, from {', '.join(ALL_BACKENDS)}",
    )
    parser.add_argument(
        "--workers", default="1,2", help="worker counts for the serve-workers backend"
    )
    parser.add_argument(
        "--baseline", metavar="DIR", help="the quicvoice-baseline backend's copy of quicvoice"
    )
    parser.add_argument(
        "--load-processes",
        type=int,
        default=2,
        help="processes the calls of each row are split between (default 2)",
    )
    parser.add_argument(
        "--quic-load",
        choices=QUIC_LOADS,
        default=default_quic_load(),
        help="the raw-QUIC rows' callers: native (ngtcp2 client connections, the default where "
        "quicvoice._ngtcp2 is built) or client (the project's client)",
    )
    parser.add_argument("--serve", choices=["quicvoice", "stock", "websocket",
                        "quicvoice-aioquic-acks", "quicvoice-ngtcp2"],
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--metrics-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--metrics", action="store_true", help="serve and scrape the quicvoice backend's /metrics"
    )
    args = parser.parse_args(argv)
    loops = args.loop.split(",")
    if args.serve:
        serving: Coroutine[Any, Any, None]
        if args.serve == "quicvoice":
            serving = serve_quicvoice(args.port, args.metrics_port)
        elif args.serve == "quicvoice-aioquic-acks":
            serving = serve_quicvoice(args.port, aioquic_acks=True)
        elif args.serve == "websocket":
            serving = serve_websocket(args.port)
        elif args.serve == "quicvoice-ngtcp2":
            serving = serve_ngtcp2(args.port)
        else:
            serving = serve_stock(args.port)
        run_on(loops[0], serving)
        return 0
    from quicvoice.asyncio.loops import check_loop
    from quicvoice.errors import ConfigurationError

    for kind in loops:
        try:
            check_loop(kind, "--loop")
        except ConfigurationError as error:
            parser.error(str(error))
    if args.load_processes < 1:
        parser.error("--load-processes: at least 1")
    if args.quic_load == "native":
        from quicvoice.engine_ngtcp2 import AVAILABLE, UNAVAILABLE

        if not AVAILABLE:
            parser.error(f"--quic-load native: {UNAVAILABLE}")
    backends = args.backends.split(",")
    for backend in backends:
        if backend not in ALL_BACKENDS:
            parser.error(f"--backends: {backend!r} is not one of {', '.join(ALL_BACKENDS)}")
    levels = [10] if args.quick else [int(n) for n in args.levels.split(",")]
    seconds = 2.0 if args.quick else args.seconds
    worker_counts = [int(n) for n in args.workers.split(",")]
    results = []
    scrapes: list[float] = []
    for kind in loops:
        for calls in levels:
            for backend in backends:
                for workers in worker_counts if backend == "serve-workers" else [1]:
                    level, durations = run_on(
                        kind,
                        run_level(
                            backend,
                            kind,
                            calls,
                            seconds,
                            args.metrics,
                            workers,
                            args.baseline,
                            args.quic_load,
                            args.load_processes,
                        ),  # fmt: skip
                    )
                    results.append(level)
                    scrapes += durations
    print_table(results, seconds)
    command = " ".join(["python", "benchmarks/bench_calls.py", *(argv or sys.argv[1:])])
    print()
    print(f"Command: `{command}`")
    if scrapes:
        print()
        print(f"/metrics: {len(scrapes)} scrapes, slowest {1000 * max(scrapes):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
