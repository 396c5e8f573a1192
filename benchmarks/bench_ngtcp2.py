"""Server CPU per echoed voice frame: the ngtcp2 engine prototype beside a WebSocket echo, one run.

    python benchmarks/bench_ngtcp2.py [--levels 60,100] [--seconds 10] [--load-processes 2]
                                      [--quic-load native|client]

Each call sends one 640-octet frame every 20 ms (sending times spread over the 20 ms) and the
server echoes it at once: 50 frames/s each way per call.
- ``ngtcp2``: ``quicvoice.engine_ngtcp2`` (ngtcp2 + gnutls in C, the endpoint and the echo in
  Python, stock asyncio), raw QUIC ALPN ``quicvoice/1``: hello, welcome, the reliable uplink
  stream echoed on one turn stream, QUIC-LB CIDs.
- ``voice``: the same engine with the project's real voice layer
  (``quicvoice.engine_ngtcp2.voice_server``: ``Ngtcp2Transport``, ``VoiceConnection``,
  ``ServerSession``) running the echo handler ``bench_calls.py``'s quicvoice row runs
  (``start_turn``, every uplink frame sent on the turn from ``on_audio``); same load as ngtcp2.
- ``websocket``: a ``websockets`` echo server (binary messages, no compression), stock asyncio.
Each server runs alone in a subprocess and prints, once a second, its echo count and its own CPU
time (getrusage); CPU per frame = CPU delta / echo delta over the window after the calls' ramp and a
settling second. The load runs in ``--load-processes`` other processes
(``benchmarks/load/echo_calls.py``, shared with ``bench_calls.py``): for WebSocket, ``websockets``
clients; for QUIC (``--quic-load``), by default ngtcp2 client connections (``native``:
``quicvoice._ngtcp2.client``, cheap enough to leave the cores to the server), each echo fed to
ngtcp2 just before the next frame so that its ACK rides in that frame's packet: one packet per frame
each way, as the project's client sends; or ``client``, the project's client
(``quicvoice.asyncio.client.connect``), which on a shared 2-core machine cannot keep 60 calls at 50
frames/s (see specs/engine-ngtcp2.md). Calls per core = 1 s / (50 × CPU per frame). The load average
is printed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quicvoice.engine_ngtcp2.endpoint import EngineConfig

sys.path.append(str(Path(__file__).resolve().parents[1]))

from benchmarks.load.echo_calls import LoadProcesses, Schedule  # noqa: E402

RATE = 50.0
BACKENDS = ("ngtcp2", "voice", "websocket")


# -- servers (subprocess) ---------------------------------------------------------------------


async def report_forever(count: Any) -> None:
    while True:
        await asyncio.sleep(1.0)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print(
            f"stat {time.monotonic():.3f} {count()} {usage.ru_utime:.4f} {usage.ru_stime:.4f}",
            flush=True,
        )


def engine_config(port: int) -> EngineConfig:
    """The servers' engine configuration: loopback ``port``, fresh keys, a development
    certificate."""
    from quicvoice.certificates import generate_certificate
    from quicvoice.engine_ngtcp2.endpoint import EngineConfig
    from quicvoice.quiclb import LoadBalancerConfig

    certificate = generate_certificate()
    return EngineConfig(
        local=("127.0.0.1", port),
        server_id=bytes.fromhex("0a0b0c0d"),
        lb_config=LoadBalancerConfig(0, 4, 12, os.urandom(16)),
        reset_key=os.urandom(32),
        certificate=certificate.certificate_pem(),
        private_key=certificate.private_key_pem(),
    )


async def serve_ngtcp2(port: int) -> None:
    from quicvoice.engine_ngtcp2.echo import EchoSession, StreamSink
    from quicvoice.engine_ngtcp2.endpoint import Ngtcp2Endpoint
    from quicvoice.engine_ngtcp2.server import Ngtcp2Server

    sessions: list[EchoSession] = []

    def application(sink: StreamSink, server_id: str) -> EchoSession:
        session = EchoSession(sink, server_id)
        sessions.append(session)
        return session

    config = engine_config(port)
    server = Ngtcp2Server(config, Ngtcp2Endpoint(config, application=application))
    await server.start()
    print("ready", flush=True)
    await report_forever(lambda: sum(session.echoed for session in sessions))


async def serve_voice(port: int) -> None:
    from quicvoice.asyncio.server import ServerSession
    from quicvoice.engine_ngtcp2.voice_server import Ngtcp2VoiceServer
    from quicvoice.session.events import SessionClosed
    from quicvoice.session.wire import MediaFrame

    count = 0

    async def echo(session: ServerSession) -> None:
        turn = session.start_turn()

        def on_audio(frame: MediaFrame) -> None:
            nonlocal count
            if session.send_turn_audio(turn, frame.payload, frame.timestamp):
                count += 1

        session.on_audio = on_audio
        async for event in session:
            if isinstance(event, SessionClosed):
                return

    config = engine_config(port)
    server = Ngtcp2VoiceServer(config, echo)
    await server.start()
    print("ready", flush=True)
    await report_forever(lambda: count)


async def serve_websocket(port: int) -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    count = 0

    async def echo(websocket: ServerConnection) -> None:
        nonlocal count
        try:
            async for message in websocket:
                await websocket.send(message)
                count += 1
        except ConnectionClosed:
            return  # the client left with an echo in flight

    async with serve(echo, "127.0.0.1", port, compression=None, max_queue=64):
        print("ready", flush=True)
        await report_forever(lambda: count)


# -- driver ----------------------------------------------------------------------------------


def run_level(
    backend: str, calls: int, seconds: float, processes: int, port: int, quic_load: str
) -> tuple[str, float]:
    """Run one backend at ``calls``; return its result line and its CPU µs per frame."""
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", backend, "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    load: LoadProcesses | None = None
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise SystemExit(f"{backend} server did not start")
        kind = "websocket" if backend == "websocket" else quic_load
        load = LoadProcesses(kind, [port], calls, processes, "asyncio")
        load.wait_ready()
        schedule = Schedule.starting_now(calls, seconds)
        load.start(schedule)
        stats: list[tuple[float, int, float, float]] = []
        while time.monotonic() < schedule.stop + 1.5:
            line = server.stdout.readline()
            if not line:
                break
            _, t, n, user, system = line.split()
            stats.append((float(t), int(n), float(user), float(system)))
        received = sum(record.echoed for record in load.records(timeout=30.0))
    finally:
        server.kill()
        server.wait()
        if load is not None:
            load.kill()
    window = [s for s in stats if schedule.measure_from <= s[0] <= schedule.stop]
    if len(window) < 2:
        raise SystemExit(f"{backend}: no steady window (--seconds of at least 2)")
    (t0, n0, u0, s0), (t1, n1, u1, s1) = window[0], window[-1]
    frames = n1 - n0
    cpu = (u1 - u0) + (s1 - s0)
    us = 1e6 * cpu / frames
    return (
        f"{backend:9} calls={calls:4} echoes/s={frames / (t1 - t0):7.0f} "
        f"(expected {calls * RATE:.0f}) server_cpu={100 * cpu / (t1 - t0):5.1f}% "
        f"us_per_frame={us:6.1f} (user {1e6 * (u1 - u0) / frames:.1f}, "
        f"sys {1e6 * (s1 - s0) / frames:.1f}) calls_per_core={1e6 / (RATE * us):5.0f} "
        f"client_received={received}"
    ), us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="60,100")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--load-processes", type=int, default=2)
    parser.add_argument("--port", type=int, default=24433)
    parser.add_argument("--serve", choices=BACKENDS)
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"which of {', '.join(BACKENDS)} to run, in this order (default: all)",
    )
    parser.add_argument(
        "--quic-load",
        choices=["native", "client"],
        default="native",
        help="QUIC load callers: native (ngtcp2 client connections, cheap, default) or client "
        "(the project's client)",
    )
    args = parser.parse_args()
    if args.serve == "ngtcp2":
        asyncio.run(serve_ngtcp2(args.port))
        return
    if args.serve == "voice":
        asyncio.run(serve_voice(args.port))
        return
    if args.serve == "websocket":
        asyncio.run(serve_websocket(args.port))
        return
    print(f"load average before: {os.getloadavg()} (QUIC load: {args.quic_load})", flush=True)
    backends = args.backends.split(",")
    if not set(backends) <= set(BACKENDS):
        parser.error(f"--backends: choose among {', '.join(BACKENDS)}")
    for level in (int(x) for x in args.levels.split(",")):
        results: dict[str, float] = {}
        for index, backend in enumerate(backends):
            line, us = run_level(
                backend,
                level,
                args.seconds,
                args.load_processes,
                args.port + index,
                args.quic_load,
            )
            results[backend] = us
            print(line, flush=True)
        if "websocket" in results:
            ratios = ", ".join(
                f"{name} {results['websocket'] / us:.2f}x"
                for name, us in results.items()
                if name != "websocket"
            )
            print(f"calls per core as a ratio to websocket at {level} calls: {ratios}", flush=True)
    print(f"load average after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
