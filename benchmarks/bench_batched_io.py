"""What batched socket I/O (recvmmsg/sendmmsg) would save a backend per voice frame: a prototype.

    python benchmarks/bench_batched_io.py [--calls 100,300] [--seconds 5] [--loop asyncio,uvloop]

A UDP echo server runs alone in a subprocess, in one of two ways, on the chosen event loop:
- ``per-datagram``: what quicvoice's endpoint does today (``quicvoice.asyncio.udp``): the
  loop's datagram transport, one ``recvfrom`` and one ``sendto`` per datagram;
- ``mmsg``: the socket's readability callback takes every queued datagram in one
  ``recvmmsg`` and sends all the echoes in one ``sendmmsg`` (the forwarder's ``lb.mmsg``).
The load generator (this process, plain sockets and ``selectors``) plays ``--calls`` callers,
each sending a 640-octet datagram every 20 ms from its own socket, the callers' sending times
spread over the 20 ms. The report gives the server's CPU per echoed datagram and, for ``mmsg``,
the mean batch: the saving per frame is the difference between the two rows of a level (no
QUIC, no voice layer: only the socket and event-loop cost, which batching can cut). This is a
measurement in the benchmarks only; quicvoice's endpoint is unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DATAGRAM = bytes(640)
FRAME_SECONDS = 0.020
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MODES = ("per-datagram", "mmsg")


async def serve(mode: str, port: int) -> None:
    from quicvoice.asyncio.udp import bind_udp_socket, open_udp_endpoint

    loop = asyncio.get_running_loop()
    batches = [0, 0]  # calls, datagrams

    def report() -> None:
        print(f"batches {batches[0]} {batches[1]}", flush=True)

    loop.add_signal_handler(signal.SIGUSR1, report)
    if mode == "per-datagram":
        transport: asyncio.DatagramTransport | None = None

        def echo(data: bytes, address: tuple[str, int]) -> None:
            assert transport is not None
            transport.sendto(data, address)

        transport = await open_udp_endpoint(("127.0.0.1", port), echo)
    else:
        from lb.mmsg import Receiver, Sender

        sock = bind_udp_socket(("127.0.0.1", port))
        receiver, sender = Receiver(sock, 64), Sender(sock, 64)

        def on_readable() -> None:
            try:
                items = receiver.receive()
            except BlockingIOError:
                return
            if items:
                batches[0] += 1
                batches[1] += len(items)
                sender.send([(address, data) for data, address in items])

        loop.add_reader(sock.fileno(), on_readable)
    print("ready", flush=True)
    await asyncio.Event().wait()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def load(
    port: int, calls: int, seconds: float, warmup: float, server_pid: int
) -> tuple[int, float]:
    """Drive ``calls`` callers; return the echoes and the server's CPU seconds in the window."""
    selector = selectors.DefaultSelector()
    sockets = []
    for _ in range(calls):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        sockets.append(sock)
    target = ("127.0.0.1", port)
    start = time.monotonic() + 0.05
    window_start, window_end = start + warmup, start + warmup + seconds
    # Call i sends at start + i/calls of a period, then every period.
    due = [start + FRAME_SECONDS * i / calls for i in range(calls)]
    echoes = 0
    next_call = 0
    cpu_before: float | None = None
    try:
        while True:
            now = time.monotonic()
            if now >= window_end:
                break
            if cpu_before is None and now >= window_start:
                cpu_before = cpu_seconds(server_pid)
            while due[next_call] <= now:
                sockets[next_call].sendto(DATAGRAM, target)
                due[next_call] += FRAME_SECONDS
                next_call = (next_call + 1) % calls
            for key, _ in selector.select(max(0.0, due[next_call] - time.monotonic())):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                for _ in range(64):
                    try:
                        sock.recv(2048)
                    except BlockingIOError:
                        break
                    if window_start <= time.monotonic() < window_end:
                        echoes += 1
    finally:
        for sock in sockets:
            sock.close()
        selector.close()
    assert cpu_before is not None
    return echoes, cpu_seconds(server_pid) - cpu_before


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(mode: str, loop_kind: str, calls: int, seconds: float) -> tuple[float, float, float]:
    """(µs of server CPU per echo, mean batch or nan, echoes per second)."""
    port = free_port()
    command = [sys.executable, __file__, "--serve", mode, "--port", str(port), "--loop", loop_kind]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {mode} server did not start")
        echoes, cpu = load(port, calls, seconds, 1.0, process.pid)
        process.send_signal(signal.SIGUSR1)
        batch = float("nan")
        line = process.stdout.readline().split()
        if line and line[0] == "batches" and int(line[1]):
            batch = int(line[2]) / int(line[1])
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    return 1e6 * cpu / max(1, echoes), batch, echoes / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="100,300", help="callers, comma-separated levels")
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement window")
    parser.add_argument("--loop", default="asyncio", help="asyncio, uvloop or both")
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from quicvoice.asyncio.loops import run

    if args.serve:
        run(serve(args.serve, args.port), args.loop)
        return 0
    rows = []
    for loop_kind in args.loop.split(","):
        for calls in (int(n) for n in args.calls.split(",")):
            for mode in MODES:
                measured = measure(mode, loop_kind, calls, args.seconds)
                rows.append((loop_kind, calls, mode, *measured))
    load_average = os.getloadavg()
    print(f"UDP echo, 640 octets / 20 ms per caller, load average {load_average[0]:.2f}")
    print()
    print("| loop | callers | server | µs per datagram | mean batch | echoes/s |")
    print("|---|---:|---|---:|---:|---:|")
    for loop_kind, calls, mode, us, batch, rate in rows:
        shown = "-" if batch != batch else f"{batch:.1f}"
        print(f"| {loop_kind} | {calls} | {mode} | {us:.1f} | {shown} | {rate:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
