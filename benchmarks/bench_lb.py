"""The stateless forwarder beside a minimal C relay and a naive Python relay, in one run.

    python benchmarks/bench_lb.py [--quick] [--rounds R] [--packets N] [--seconds S]

Every relay carries the same traffic on loopback: client -> relay -> echo backend -> relay ->
client, one UDP flow of 200-octet datagrams that start like QUIC short headers with a QUIC-LB
CID of the echo backend. A C load generator keeps a window of datagrams in flight
(throughput) or one at a time (latency); a C echo server answers. Both are built with gcc in
a temporary directory along with the floor, a minimal C relay (two threads, one blocking
recvfrom/sendto loop per direction, the last client's address in a variable: no parsing, no
table). The naive relay is stock asyncio with a dict of one upstream socket per client, what
people write first. quicvoice-lb runs per datagram (recvfrom/sendto, its default) and with
--batch (recvmmsg/sendmmsg), each with one and two workers.

Per-core throughput is datagrams forwarded (two per round trip) divided by the CPU time
(utime + stime from /proc/PID/stat) of the relay's processes, supervisor included. Added
latency is the round-trip percentile through a relay minus the same percentile sent straight
to the echo server. All relays run side by side for the whole benchmark and are measured in
--rounds interleaved rounds; the tables give medians, and the ratio to the C relay is taken
per round (same machine conditions) before its median. Bounded: at most --packets round trips
or --seconds per measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from quicvoice.quiclb import LoadBalancerConfig, QuicLbConnectionIdGenerator

ROOT = Path(__file__).resolve().parent.parent
KEY = "8f95f09245765f80256934e50c66207f"
SERVER_ID = bytes.fromhex("0a000001")
HOST = "127.0.0.1"
CLIENT_HOST = "127.0.0.2"
DATAGRAM_LEN = 200
WINDOW = 32
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STARTUP_TIMEOUT = 5.0

C_SOURCES = {
    "echo": r"""
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdlib.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {0}; a.sin_family = AF_INET; a.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &a.sin_addr);
    int size = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    if (bind(fd, (struct sockaddr *)&a, sizeof a)) return 1;
    char buf[65536]; struct sockaddr_in6 peer; socklen_t len;
    for (;;) {
        len = sizeof peer;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&peer, &len);
        if (n >= 0) sendto(fd, buf, n, 0, (struct sockaddr *)&peer, len);
    }
}
""",
    "relay": r"""
/* The floor: a minimal UDP relay. One thread per direction, blocking calls, no parsing. */
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
static int front, back;
static struct sockaddr_in backend, client;
static void *down(void *arg) {
    char buf[65536];
    for (;;) {
        ssize_t n = recv(back, buf, sizeof buf, 0);
        if (n >= 0) sendto(front, buf, n, 0, (struct sockaddr *)&client, sizeof client);
    }
    return arg;
}
int main(int argc, char **argv) {
    struct sockaddr_in a = {0}; a.sin_family = AF_INET; a.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &a.sin_addr);
    backend = a; backend.sin_port = htons(atoi(argv[3]));
    front = socket(AF_INET, SOCK_DGRAM, 0); back = socket(AF_INET, SOCK_DGRAM, 0);
    int size = 4 << 20;
    setsockopt(front, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    setsockopt(back, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    if (bind(front, (struct sockaddr *)&a, sizeof a)) return 1;
    pthread_t t; pthread_create(&t, 0, down, 0);
    char buf[65536]; socklen_t len;
    for (;;) {
        len = sizeof client;
        ssize_t n = recvfrom(front, buf, sizeof buf, 0, (struct sockaddr *)&client, &len);
        if (n >= 0) sendto(back, buf, n, 0, (struct sockaddr *)&backend, sizeof backend);
    }
}
""",
    "loadgen": r"""
/* loadgen HOST PORT SRC_HOST FLOWS WINDOW MAX_PACKETS MAX_SECONDS TEMPLATE_HEX
   Keeps WINDOW datagrams in flight over FLOWS sockets; prints JSON with the round trips
   completed, the elapsed time and RTT percentiles (microseconds). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
static uint64_t now_ns(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec;
}
static int cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b; return x < y ? -1 : x > y;
}
#define STAMP 24
int main(int argc, char **argv) {
    struct sockaddr_in to = {0}; to.sin_family = AF_INET; to.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &to.sin_addr);
    int flows = atoi(argv[4]), window = atoi(argv[5]);
    long max_packets = atol(argv[6]); double max_seconds = atof(argv[7]);
    const char *hex = argv[8]; size_t len = strlen(hex) / 2;
    unsigned char packet[65536];
    for (size_t i = 0; i < len; i++) sscanf(hex + 2 * i, "%2hhx", &packet[i]);
    struct pollfd fds[64];
    for (int f = 0; f < flows; f++) {
        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        struct sockaddr_in src = {0}; src.sin_family = AF_INET;
        inet_pton(AF_INET, argv[3], &src.sin_addr);
        if (bind(fd, (struct sockaddr *)&src, sizeof src)) return 1;
        int size = 4 << 20; setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
        fds[f].fd = fd; fds[f].events = POLLIN;
    }
    uint64_t *rtt = malloc(sizeof(uint64_t) * (max_packets + 1));
    long done = 0, sent = 0, lost = 0; uint64_t start = now_ns(), seq = 0;
    uint64_t deadline = start + (uint64_t)(max_seconds * 1e9);
    for (int i = 0; i < window; i++) {
        uint64_t t = now_ns(); memcpy(packet + STAMP, &t, 8); memcpy(packet + STAMP + 8, &seq, 8);
        sendto(fds[seq % flows].fd, packet, len, 0, (struct sockaddr *)&to, sizeof to);
        seq++; sent++;
    }
    unsigned char buf[65536];
    while (done < max_packets && now_ns() < deadline) {
        int ready = poll(fds, flows, 200);
        if (ready == 0) {  /* lost in flight: refill the window */
            for (int i = 0; i < window; i++) {
                uint64_t t = now_ns(); memcpy(packet + STAMP, &t, 8);
                sendto(fds[seq % flows].fd, packet, len, 0, (struct sockaddr *)&to, sizeof to);
                seq++; sent++; lost++;
            }
            continue;
        }
        for (int f = 0; f < flows; f++) {
            if (!(fds[f].revents & POLLIN)) continue;
            ssize_t n = recv(fds[f].fd, buf, sizeof buf, MSG_DONTWAIT);
            if (n < STAMP + 16) continue;
            uint64_t t0; memcpy(&t0, buf + STAMP, 8);
            uint64_t t = now_ns();
            if (done < max_packets) rtt[done++] = t - t0;
            memcpy(packet + STAMP, &t, 8); memcpy(packet + STAMP + 8, &seq, 8);
            sendto(fds[seq % flows].fd, packet, len, 0, (struct sockaddr *)&to, sizeof to);
            seq++; sent++;
        }
    }
    double elapsed = (now_ns() - start) / 1e9;
    qsort(rtt, done, sizeof(uint64_t), cmp);
    printf("{\"done\": %ld, \"sent\": %ld, \"refills\": %ld, \"elapsed\": %.6f, "
           "\"p50_us\": %.2f, \"p99_us\": %.2f}\n", done, sent, lost, elapsed,
           done ? rtt[done / 2] / 1e3 : 0.0, done ? rtt[(long)(done * 0.99)] / 1e3 : 0.0);
    return 0;
}
""",
}


@dataclass(frozen=True)
class Result:
    """One measurement."""

    name: str
    round_trips: int
    elapsed: float
    cpu_seconds: float
    p50_us: float
    p99_us: float

    @property
    def per_core_pps(self) -> float:
        """Datagrams forwarded (two per round trip) per CPU-second of the relay."""
        return 2 * self.round_trips / self.cpu_seconds if self.cpu_seconds else 0.0

    @property
    def wall_pps(self) -> float:
        """Datagrams forwarded per wall-clock second."""
        return 2 * self.round_trips / self.elapsed if self.elapsed else 0.0


def free_port(host: str = HOST) -> int:
    """A UDP port nobody on ``host`` uses right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def build(directory: Path) -> dict[str, Path]:
    """Compile the C programs with gcc -O2."""
    binaries = {}
    for name, source in C_SOURCES.items():
        path = directory / f"{name}.c"
        path.write_text(source)
        binary = directory / name
        subprocess.run(
            ["gcc", "-O2", "-o", str(binary), str(path), "-lpthread"],
            check=True,
            capture_output=True,
        )
        binaries[name] = binary
    return binaries


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc)."""
    found = [pid]
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except OSError:
            continue
        for child in children:
            found.extend(process_tree(int(child)))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of ``pids`` (all threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def template() -> str:
    """A 200-octet datagram: short-header first octet, a QUIC-LB CID of the echo backend."""
    config = LoadBalancerConfig(0, 4, 12, bytes.fromhex(KEY))
    cid = QuicLbConnectionIdGenerator(SERVER_ID, config, bytes(32)).generate()
    packet = bytes([0x41]) + cid
    return (packet + bytes(DATAGRAM_LEN - len(packet))).hex()


def wait_for_udp(address: tuple[str, int], process: subprocess.Popen[bytes]) -> None:
    """Wait until something answers a datagram sent to ``address`` through the relay."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    packet = bytes.fromhex(template())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((CLIENT_HOST, 0))
        probe.settimeout(0.1)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"relay exited with {process.returncode}")
            probe.sendto(packet, address)
            try:
                probe.recvfrom(65536)
                return
            except TimeoutError:
                continue
    raise RuntimeError(f"nothing answers through {address}")


@contextmanager
def running(command: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` for the duration of the block; SIGTERM, then SIGKILL."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measure(
    name: str,
    loadgen: Path,
    port: int,
    pids: list[int],
    *,
    window: int,
    flows: int,
    packets: int,
    seconds: float,
) -> Result:
    """Run the load generator against ``port`` and account the CPU of ``pids``."""
    before = cpu_seconds(pids)
    output = subprocess.run(
        [
            str(loadgen),
            HOST,
            str(port),
            CLIENT_HOST,
            str(flows),
            str(window),
            str(packets),
            str(seconds),
            template(),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=seconds + 10,
    ).stdout
    used = cpu_seconds(pids) - before
    data = json.loads(output)
    return Result(name, data["done"], data["elapsed"], used, data["p50_us"], data["p99_us"])


def forwarder_config(directory: Path, port: int, backend_port: int, echo_port: int) -> Path:
    """An lb.toml with one backend: the echo server."""
    path = directory / f"lb-{port}.toml"
    path.write_text(
        f"""listen = "{HOST}:{port}"
backend_listen = "{HOST}:{backend_port}"
log_level = "warning"
[[configs]]
id = 0
server_id_len = 4
nonce_len = 12
key = "{KEY}"
[[backends]]
server_id = "{SERVER_ID.hex()}"
address = "{HOST}:{echo_port}"
"""
    )
    return path


def naive_relay(port: int, backend_port: int) -> None:
    """What people write first: asyncio, one upstream socket per client, kept in a dict."""

    class Upstream(asyncio.DatagramProtocol):
        def __init__(self, front: asyncio.DatagramTransport, client: tuple[str, int]) -> None:
            self.front = front
            self.client = client

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            self.front.sendto(data, self.client)

    class Front(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.clients: dict[tuple[str, int], asyncio.DatagramTransport | None] = {}
            self.pending: dict[tuple[str, int], list[bytes]] = {}
            self.transport: asyncio.DatagramTransport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.DatagramTransport, transport)

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            upstream = self.clients.get(addr)
            if upstream is not None:
                upstream.sendto(data)
            elif addr in self.pending:
                self.pending[addr].append(data)
            else:
                self.pending[addr] = [data]
                asyncio.ensure_future(self.connect(addr))

        async def connect(self, addr: tuple[str, int]) -> None:
            assert self.transport is not None
            front = self.transport
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: Upstream(front, addr), remote_addr=(HOST, backend_port)
            )
            self.clients[addr] = transport
            for data in self.pending.pop(addr):
                transport.sendto(data)

    async def serve() -> None:
        await asyncio.get_running_loop().create_datagram_endpoint(Front, local_addr=(HOST, port))
        await asyncio.Event().wait()

    asyncio.run(serve())


@dataclass(frozen=True)
class Relay:
    """A relay under test: how to start it and how to load it."""

    name: str
    command: list[str]
    port: int
    #: Client flows of the throughput run (--workers 2: 8, so that SO_REUSEPORT spreads them).
    flows: int
    #: Whether the latency run is made too.
    latency: bool


def relays(directory: Path, binaries: dict[str, Path], echo_port: int) -> list[Relay]:
    """The C floor, the naive relay and quicvoice-lb with and without batching."""
    port = free_port()
    made = [
        Relay(
            "C relay (floor)",
            [str(binaries["relay"]), HOST, str(port), str(echo_port)],
            port,
            1,
            True,
        )
    ]
    port = free_port()
    made.append(
        Relay(
            "naive asyncio relay, per-client dict",
            [sys.executable, __file__, "--naive-relay", str(port), str(echo_port)],
            port,
            1,
            True,
        )
    )
    for workers in (1, 2):
        for batch in (False, True):
            port = free_port()
            config = forwarder_config(directory, port, free_port(), echo_port)
            command = [sys.executable, "-m", "lb", "--config", str(config)]
            command += ["--workers", str(workers)] + (["--batch"] if batch else [])
            name = f"quicvoice-lb --workers {workers}" + (" --batch" if batch else "")
            made.append(Relay(name, command, port, 8 if workers > 1 else 1, workers == 1))
    return made


Rounds = list[dict[str, Result]]


def run(args: argparse.Namespace) -> tuple[Rounds, Rounds]:
    """Measure every relay ``args.rounds`` times, interleaved; return throughput and latency.

    All relays run for the whole benchmark (an idle one blocks in ``recv``) and each round
    measures each of them once, so that a burst of load from elsewhere on the machine hits
    one round of every relay rather than every round of one relay.
    """
    throughput: Rounds = []
    latency: Rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-lb-") as temporary, ExitStack() as stack:
        directory = Path(temporary)
        binaries = build(directory)
        echo_port = free_port()
        echo = stack.enter_context(running([str(binaries["echo"]), HOST, str(echo_port)]))
        started: list[tuple[Relay, list[int]]] = []
        for relay in relays(directory, binaries, echo_port):
            process = stack.enter_context(running(relay.command))
            wait_for_udp((HOST, relay.port), process)
            started.append((relay, process_tree(process.pid)))
        for round_ in range(args.rounds):
            print(f"round {round_ + 1} of {args.rounds}", file=sys.stderr)
            speeds: dict[str, Result] = {}
            delays: dict[str, Result] = {}
            name = "direct to echo (no relay)"
            delays[name] = measure(
                name,
                binaries["loadgen"],
                echo_port,
                [echo.pid],
                window=1,
                flows=1,
                packets=args.latency_packets,
                seconds=args.seconds,
            )
            for relay, pids in started:
                speeds[relay.name] = measure(
                    relay.name,
                    binaries["loadgen"],
                    relay.port,
                    pids,
                    window=WINDOW,
                    flows=relay.flows,
                    packets=args.packets,
                    seconds=args.seconds,
                )
                if relay.latency:
                    delays[relay.name] = measure(
                        relay.name,
                        binaries["loadgen"],
                        relay.port,
                        pids,
                        window=1,
                        flows=1,
                        packets=args.latency_packets,
                        seconds=args.seconds,
                    )
            throughput.append(speeds)
            latency.append(delays)
    return throughput, latency


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def table(throughput: Rounds, latency: Rounds) -> str:
    """The Markdown tables of specs/forwarder.md: medians over rounds, ratio ranges."""
    floor = next(iter(throughput[0]))
    direct = next(iter(latency[0]))
    lines = [
        f"Throughput: window {WINDOW}, {DATAGRAM_LEN}-octet datagrams, {len(throughput)} "
        "rounds (medians; x C relay is per round, against the C relay of the same round)",
        "",
        "| relay | round trips | datagrams/s (wall) | datagrams per CPU-second "
        "| x C relay (median) | x C relay (range) | CPU µs per round trip |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in throughput[0]:
        results = [speeds[name] for speeds in throughput]
        ratios = [
            speeds[name].per_core_pps / speeds[floor].per_core_pps
            for speeds in throughput
            if speeds[floor].per_core_pps
        ]
        per_trip = [1e6 * r.cpu_seconds / r.round_trips for r in results if r.round_trips]
        lines.append(
            f"| {name} | {sum(r.round_trips for r in results)} "
            f"| {_median([r.wall_pps for r in results]):,.0f} "
            f"| {_median([r.per_core_pps for r in results]):,.0f} "
            f"| {_median(ratios):.2f} | {min(ratios, default=0):.2f}–{max(ratios, default=0):.2f} "
            f"| {_median(per_trip):.1f} |"
        )
    lines += [
        "",
        "Latency: one datagram in flight; added = relay percentile - direct percentile of the "
        "same round (medians over rounds)",
        "",
        "| path | round trips | RTT p50 µs | RTT p99 µs | added p50 µs | added p99 µs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in latency[0]:
        results = [delays[name] for delays in latency]
        added50 = [delays[name].p50_us - delays[direct].p50_us for delays in latency]
        added99 = [delays[name].p99_us - delays[direct].p99_us for delays in latency]
        lines.append(
            f"| {name} | {sum(r.round_trips for r in results)} "
            f"| {_median([r.p50_us for r in results]):.1f} "
            f"| {_median([r.p99_us for r in results]):.1f} "
            f"| {_median(added50):.1f} | {_median(added99):.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (20k round trips)")
    parser.add_argument("--packets", type=int, default=100_000, help="round trips per run")
    parser.add_argument("--latency-packets", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="time limit per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--naive-relay", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.naive_relay:
        naive_relay(*args.naive_relay)
        return 0
    if args.quick:
        args.packets, args.latency_packets, args.seconds, args.rounds = 20_000, 5_000, 5.0, 1
    throughput, latency = run(args)
    print(table(throughput, latency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
