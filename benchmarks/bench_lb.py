"""The stateless forwarder beside a minimal C relay and a naive Python relay, in one run.

    python benchmarks/bench_lb.py [--quick] [--rounds R] [--packets N] [--seconds S]
                                  [--latency-rounds R] [--latency-packets N] [--only TEXT ...]
    python benchmarks/bench_lb.py --decode-cost
    python benchmarks/bench_lb.py --syscall-cost
    python benchmarks/bench_lb.py --python-cost

Every relay carries the same traffic on loopback: client -> relay -> echo backend -> relay ->
client, one UDP flow of 200-octet datagrams that start like QUIC short headers with a QUIC-LB
CID of the echo backend. A C load generator keeps a window of datagrams in flight
(throughput) or one at a time (latency); a C echo server answers. Both are built with gcc in
a temporary directory along with the floor, a minimal C relay (two threads, one blocking
recvfrom/sendto loop per direction, the last client's address in a variable: no parsing, no
table). The naive relay is stock asyncio with a dict of one upstream socket per client, what
people write first. quicvoice-lb runs on its native path (the default: lb._native, adaptive
recvmmsg/sendmmsg batches with UDP GSO) with one and two workers, and on its Python path
(--python-path) per datagram and with --batch. Two workers are loaded with 8 client flows (so
that SO_REUSEPORT has flows to spread), and one worker is measured with the same 8 flows too,
for the comparison; every other relay carries one flow.

Two "bare Python" relays give the ceiling of any pure-Python forwarder: the C relay's
structure in Python, one blocking loop per direction, a fixed backend address, the last
client's address in a variable, no parsing, no counting. The "loop" one calls recvfrom/sendto
per datagram (the downlink recv, as the C relay does); the "batched" one recvmmsg/sendmmsg
through lb/mmsg.py in place, as quicvoice-lb --batch does (each datagram sent from the receive
buffer: no bytes object, no address string). The two directions are two processes (fork), as
quicvoice-lb's pumps are, so that no GIL is shared; the uplink publishes a new client address
to the downlink through a shared page (a generation octet checked once per datagram or batch).

Per-core throughput is datagrams forwarded (two per round trip) divided by the CPU time of the
relay's processes, supervisor included: the scheduler's run time of every thread
(/proc/PID/task/TID/schedstat, nanoseconds) where the kernel keeps it, else utime + stime
(clock ticks). Added latency is the round-trip percentile through a relay minus the same
percentile sent straight to the echo server (its median over the rounds). All relays run side
by side for the whole benchmark and are measured in interleaved rounds, in the table's order
in even rounds and reversed in odd ones: --rounds of throughput (window 32), then
--latency-rounds of latency (one datagram in flight, the direct run first); the tables give
medians, and the ratio to the C relay is taken per round (same machine conditions) before its
median. Bounded: at most --packets (--latency-packets) round trips or --seconds per
measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import mmap
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from quicvoice.quiclb import LoadBalancerConfig, QuicLbConnectionIdGenerator

ROOT = Path(__file__).resolve().parent.parent
KEY = "8f95f09245765f80256934e50c66207f"
SERVER_ID = bytes.fromhex("0a000001")
HOST = "127.0.0.1"
CLIENT_HOST = "127.0.0.2"
DATAGRAM_LEN = 200
WINDOW = 32
#: Client flows (sockets) of the --workers 2 run and of the one-worker run beside it.
MANY_FLOWS = 8
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
    "syscalls": r"""
/* syscalls [BLOCKS]: what the native loop's system calls cost, one datagram at a time.
   Interleaved blocks of 500 operations per variant, median block (ns per operation). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static uint64_t now_ns(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec;
}
static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y;
}
static char buffers[64][2048], packet[200] = {0x41};
static struct mmsghdr rx[64];
static struct iovec rx_iov[64];
static struct sockaddr_in names[64];
static int bound(struct sockaddr_in *a, int timeout_us) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    memset(a, 0, sizeof *a); a->sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", &a->sin_addr);
    bind(fd, (struct sockaddr *)a, sizeof *a);
    socklen_t len = sizeof *a; getsockname(fd, (struct sockaddr *)a, &len);
    if (timeout_us) {
        struct timeval tv = {0, timeout_us};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    }
    return fd;
}
enum { OPS = 500, MAX_BLOCKS = 1000 };
#define VARIANTS 8
static const char *names_of[VARIANTS] = {
    "sendto + recvfrom (one queued datagram)",
    "sendto + recvmsg",
    "sendto + recvmmsg(64, MSG_WAITFORONE)",
    "sendmmsg(1 message) + recvfrom",
    "sendmsg + recvfrom",
    "clock_gettime(CLOCK_MONOTONIC)",
    "clock_gettime(CLOCK_MONOTONIC_COARSE)",
    "sched_yield (nothing else runnable on this core?)",
};
static int in, out;
static struct sockaddr_in to;
static void op(int v) {
    struct timespec ts;
    struct iovec iov = {packet, sizeof packet};
    struct msghdr h = {.msg_name = &to, .msg_namelen = sizeof to, .msg_iov = &iov, .msg_iovlen = 1};
    struct mmsghdr m = {.msg_hdr = h};
    socklen_t len = sizeof names[0];
    switch (v) {
    case 5: clock_gettime(CLOCK_MONOTONIC, &ts); return;
    case 6: clock_gettime(CLOCK_MONOTONIC_COARSE, &ts); return;
    case 7: sched_yield(); return;
    case 3: sendmmsg(out, &m, 1, 0); break;
    case 4: sendmsg(out, &h, 0); break;
    default: sendto(out, packet, sizeof packet, 0, (struct sockaddr *)&to, sizeof to);
    }
    if (v == 1) {
        rx[0].msg_hdr.msg_namelen = sizeof names[0];
        recvmsg(in, &rx[0].msg_hdr, 0);
    } else if (v == 2) {
        for (int i = 0; i < 64; i++) rx[i].msg_hdr.msg_namelen = sizeof names[0];
        recvmmsg(in, rx, 64, MSG_WAITFORONE, NULL);
    } else {
        recvfrom(in, buffers[0], sizeof buffers[0], 0, (struct sockaddr *)&names[0], &len);
    }
}
/* Ping-pong with an echo in another process: each round trip is two receives that wait. */
static int echo_fd[2];
static void *echo(void *arg) {
    int fd = echo_fd[(long)arg]; char b[2048]; struct sockaddr_in peer; socklen_t len;
    for (;;) {
        len = sizeof peer;
        ssize_t n = recvfrom(fd, b, sizeof b, 0, (struct sockaddr *)&peer, &len);
        if (n > 0) sendto(fd, b, n, 0, (struct sockaddr *)&peer, len);
    }
    return NULL;
}
int main(int argc, char **argv) {
    int blocks = argc > 1 ? atoi(argv[1]) : 200;
    if (blocks < 2 || blocks > MAX_BLOCKS) return 2;
    struct sockaddr_in unused;
    in = bound(&to, 0); out = bound(&unused, 0);
    for (int i = 0; i < 64; i++) {
        rx_iov[i].iov_base = buffers[i]; rx_iov[i].iov_len = sizeof buffers[i];
        rx[i].msg_hdr.msg_iov = &rx_iov[i]; rx[i].msg_hdr.msg_iovlen = 1;
        rx[i].msg_hdr.msg_name = &names[i];
    }
    static double cost[VARIANTS + 2][MAX_BLOCKS];
    for (int b = 0; b < blocks; b++)
        for (int k = 0; k < VARIANTS; k++) {
            int v = (k + b) % VARIANTS;
            uint64_t start = now_ns();
            for (int i = 0; i < OPS; i++) op(v);
            cost[v][b] = (double)(now_ns() - start) / OPS;
        }
    struct sockaddr_in echo_at[2], client_at[2]; int client[2];
    for (int t = 0; t < 2; t++) {
        echo_fd[t] = bound(&echo_at[t], t ? 250000 : 0);
        client[t] = bound(&client_at[t], t ? 250000 : 0);
    }
    pid_t child = fork();
    if (child == 0) {
        pthread_t thread; pthread_create(&thread, NULL, echo, (void *)1L);
        echo((void *)0L);
    }
    char b[2048];
    for (int b0 = 0; b0 < blocks / 4; b0++)
        for (int t = 0; t < 2; t++)  /* warm up */
            for (int i = 0; i < 10; i++) {
                sendto(client[t], packet, sizeof packet, 0, (struct sockaddr *)&echo_at[t],
                       sizeof echo_at[t]);
                recv(client[t], b, sizeof b, 0);
            }
    for (int bl = 0; bl < blocks; bl++)
        for (int k = 0; k < 2; k++) {
            int t = (k + bl) % 2; uint64_t start = now_ns();
            for (int i = 0; i < OPS; i++) {
                sendto(client[t], packet, sizeof packet, 0, (struct sockaddr *)&echo_at[t],
                       sizeof echo_at[t]);
                recv(client[t], b, sizeof b, 0);
            }
            cost[VARIANTS + t][bl] = (double)(now_ns() - start) / OPS;
        }
    kill(child, SIGKILL); waitpid(child, NULL, 0);
    for (int v = 0; v < VARIANTS + 2; v++) {
        qsort(cost[v], blocks, sizeof(double), by_value);
        const char *name = v < VARIANTS ? names_of[v] : v == VARIANTS
            ? "round trip to an echo process, receives wait without SO_RCVTIMEO"
            : "round trip to an echo process, receives wait with SO_RCVTIMEO";
        printf("%s\t%.1f\t%.1f\t%.1f\n", name, cost[v][blocks / 4], cost[v][blocks / 2],
               cost[v][3 * blocks / 4]);
    }
    return 0;
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
           "\"p50_us\": %.2f, \"p90_us\": %.2f, \"p99_us\": %.2f, \"p999_us\": %.2f}\n",
           done, sent, lost, elapsed, done ? rtt[done / 2] / 1e3 : 0.0,
           done ? rtt[(long)(done * 0.9)] / 1e3 : 0.0, done ? rtt[(long)(done * 0.99)] / 1e3 : 0.0,
           done ? rtt[(long)(done * 0.999)] / 1e3 : 0.0);
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
    p90_us: float = 0.0
    p999_us: float = 0.0

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


def _schedstat_seconds(pid: int) -> float | None:
    """CPU time of all threads of ``pid`` from /proc/PID/task/*/schedstat (nanoseconds, exact),
    ``None`` where the kernel keeps no schedstat."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except FileNotFoundError:
            if not Path(f"/proc/{pid}/task/{tid}").exists():
                continue  # the thread is gone
            return None
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of ``pids`` (all threads), in seconds: the scheduler's exact run time where the
    kernel has schedstat, else utime + stime from /proc/PID/stat (clock ticks: 10 ms steps,
    a bias of its own for processes that sleep and wake thousands of times a second)."""
    total = 0.0
    for pid in pids:
        exact = _schedstat_seconds(pid)
        if exact is not None:
            total += exact
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


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
    return Result(
        name,
        data["done"],
        data["elapsed"],
        used,
        data["p50_us"],
        data["p99_us"],
        data["p90_us"],
        data["p999_us"],
    )


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


#: The shared page of the bare relays: octet 0 a generation (1..255), then the client's port
#: and IPv4 address (6 octets, network order, as in a sockaddr_in).
_BARE_PAGE = 16


def _bare_sockets(port: int) -> tuple[socket.socket, socket.socket]:
    """The C relay's two sockets: the VIP bound to ``port``, the backend side unbound."""
    front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for sock in (front, back):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    front.bind((HOST, port))
    back.bind((HOST, 0))
    return front, back


def _client_of(page: mmap.mmap) -> tuple[str, int]:
    return (socket.inet_ntoa(page[3:7]), int.from_bytes(page[1:3], "big"))


def _publish(page: mmap.mmap, port_and_address: bytes, generation: int) -> int:
    page[1:7] = port_and_address
    generation = generation % 255 + 1
    page[0] = generation
    return generation


def _fork_downlink() -> bool:
    """Fork the downlink process; True in the child. Each side takes the other down with it."""
    child = os.fork()
    if child == 0:
        with contextlib.suppress(OSError, AttributeError):  # PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
        return True

    def stop(signum: int, frame: object) -> None:
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return False


def bare_relay(port: int, backend_port: int) -> None:
    """The ceiling of a per-datagram Python relay: the C relay's loops, in Python."""
    front, back = _bare_sockets(port)
    backend = (HOST, backend_port)
    page = mmap.mmap(-1, _BARE_PAGE)  # MAP_SHARED: both processes see it
    if _fork_downlink():  # downlink: backend -> last client
        recv = back.recv
        to_client = front.sendto
        seen = 0
        client = ("0.0.0.0", 9)
        while True:
            data = recv(65536)
            if page[0] != seen:
                seen = page[0]
                client = _client_of(page)
            to_client(data, client)
    recvfrom = front.recvfrom
    to_backend = back.sendto
    last = None
    generation = 0
    while True:  # uplink: client -> fixed backend
        data, source = recvfrom(65536)
        if source != last:
            last = source
            raw = source[1].to_bytes(2, "big") + socket.inet_aton(source[0])
            generation = _publish(page, raw, generation)
        to_backend(data, backend)


def bare_batched_relay(port: int, backend_port: int) -> None:
    """The ceiling of a batched Python relay: lb.mmsg in place (Receiver.receive_count, Outbox),
    as quicvoice-lb --batch uses it, with no parsing: each datagram is sent from where recvmmsg
    left it, one stage_one() per datagram."""
    from lb import mmsg

    front, back = _bare_sockets(port)
    page = mmap.mmap(-1, _BARE_PAGE)
    downlink = _fork_downlink()
    receiver = mmsg.Receiver(back if downlink else front)
    outbox = mmsg.Outbox(front if downlink else back)
    receive = receiver.receive_count
    starts = receiver.starts
    data_address = receiver.data_address
    stage_one = outbox.stage_one
    slots = outbox.slots
    slot_len = outbox.slot_len
    flush = outbox.flush
    family = int(socket.AF_INET)
    if downlink:  # backend -> last client
        seen = 0
        destination = bytes(6)
    else:  # client -> fixed backend
        destination = backend_port.to_bytes(2, "big") + socket.inet_aton(HOST)
        names = receiver.names
        name_len = receiver.name_len
        last = b""
        generation = 0
    while True:
        count = receive()
        if downlink:
            if page[0] != seen:
                seen = page[0]
                destination = page[1:7]
        elif count:
            source = names[(count - 1) * name_len + 2 : (count - 1) * name_len + 8]
            if source != last:
                last = source
                generation = _publish(page, source, generation)
        position = 0
        lengths = receiver.lengths
        for index in range(count):
            stage_one(
                slots, position, data_address + starts[index], lengths[index], family, destination
            )
            position += slot_len
        flush(position)


@dataclass(frozen=True)
class Relay:
    """A relay under test: how to start it and how to load it."""

    name: str
    command: list[str]
    port: int
    #: Client flows of the throughput run (MANY_FLOWS for --workers 2, so that SO_REUSEPORT
    #: spreads them, and for one worker beside it, so that the two see the same traffic).
    flows: int
    #: Whether the latency run is made too.
    latency: bool


def relays(directory: Path, binaries: dict[str, Path], echo_port: int) -> list[Relay]:
    """The C floor, the bare Python ceilings, the naive relay, quicvoice-lb (batched or not)."""
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
    for name, flag, latency in (
        ("bare Python loop (ceiling)", "--bare-relay", True),
        ("bare Python batched (ceiling)", "--bare-batched-relay", False),
    ):
        port = free_port()
        command = [sys.executable, __file__, flag, str(port), str(echo_port)]
        made.append(Relay(name, command, port, 1, latency))
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
    for workers, flows, flags in (
        (1, 1, ()),
        (1, MANY_FLOWS, ()),
        (2, MANY_FLOWS, ()),
        (1, 1, ("--python-path",)),
        (1, 1, ("--python-path", "--batch")),
    ):
        port = free_port()
        config = forwarder_config(directory, port, free_port(), echo_port)
        command = [sys.executable, "-m", "lb", "--config", str(config)]
        command += ["--workers", str(workers), *flags]
        name = " ".join([f"quicvoice-lb --workers {workers}", *flags])
        if flows > 1:
            name += f" ({flows} flows)"
        made.append(Relay(name, command, port, flows, workers == 1 and flows == 1))
    return made


Rounds = list[dict[str, Result]]


DIRECT = "direct to echo (no relay)"


def run(args: argparse.Namespace) -> tuple[Rounds, Rounds]:
    """Measure every relay in interleaved rounds; return throughput and latency rounds.

    All relays run for the whole benchmark (an idle one blocks in ``recv``). First
    ``args.rounds`` throughput rounds, then ``args.latency_rounds`` latency rounds; each round
    measures each relay once (a latency round starts with the echo server alone), in the
    order of the table in even rounds and in the reverse order in odd ones, so that a burst
    of load from elsewhere on the machine, or a drift, hits one round of every relay rather
    than every round of one relay, and no relay always runs next to the same one.
    """
    throughput: Rounds = []
    latency: Rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-lb-") as temporary, ExitStack() as stack:
        directory = Path(temporary)
        binaries = build(directory)
        echo_port = free_port()
        echo = stack.enter_context(running([str(binaries["echo"]), HOST, str(echo_port)]))
        started: list[tuple[Relay, list[int]]] = []
        chosen = [
            relay
            for index, relay in enumerate(relays(directory, binaries, echo_port))
            if not index or not args.only or any(text in relay.name for text in args.only)
        ]
        for relay in chosen:
            process = stack.enter_context(running(relay.command))
            wait_for_udp((HOST, relay.port), process)
            started.append((relay, process_tree(process.pid)))

        def one(relay: Relay | None, pids: list[int], window: int, packets: int) -> Result:
            port = echo_port if relay is None else relay.port
            return measure(
                DIRECT if relay is None else relay.name,
                binaries["loadgen"],
                port,
                pids,
                window=window,
                flows=1 if relay is None or window == 1 else relay.flows,
                packets=packets,
                seconds=args.seconds,
            )

        for round_ in range(args.rounds):
            print(f"throughput round {round_ + 1} of {args.rounds}", file=sys.stderr)
            order = started if round_ % 2 == 0 else started[::-1]
            speeds = {relay.name: one(relay, pids, WINDOW, args.packets) for relay, pids in order}
            throughput.append({relay.name: speeds[relay.name] for relay, _ in started})
        timed = [(relay, pids) for relay, pids in started if relay.latency]
        for round_ in range(args.latency_rounds):
            print(f"latency round {round_ + 1} of {args.latency_rounds}", file=sys.stderr)
            delays = {DIRECT: one(None, [echo.pid], 1, args.latency_packets)}
            order = timed if round_ % 2 == 0 else timed[::-1]
            for relay, pids in order:
                delays[relay.name] = one(relay, pids, 1, args.latency_packets)
            latency.append({DIRECT: delays[DIRECT]} | {r.name: delays[r.name] for r, _ in timed})
    return throughput, latency


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _spread(values: list[float]) -> str:
    """The middle half of ``values`` (quartiles), or the one value."""
    if len(values) < 2:
        return f"{_median(values):.2f}"
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return f"{low:.2f}–{high:.2f}"


def _per_trip(result: Result) -> float:
    return 1e6 * result.cpu_seconds / result.round_trips if result.round_trips else 0.0


def table(throughput: Rounds, latency: Rounds) -> str:
    """The Markdown tables of specs/forwarder.md: medians over rounds, ratios per round."""
    lines: list[str] = []
    if throughput:
        lines += _throughput_table(throughput)
    if latency:
        lines += _latency_table(latency)
    return "\n".join(lines)


def _throughput_table(throughput: Rounds) -> list[str]:
    floor = next(iter(throughput[0]))
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
        lines.append(
            f"| {name} | {sum(r.round_trips for r in results)} "
            f"| {_median([r.wall_pps for r in results]):,.0f} "
            f"| {_median([r.per_core_pps for r in results]):,.0f} "
            f"| {_median(ratios):.2f} | {min(ratios, default=0):.2f}–{max(ratios, default=0):.2f} "
            f"| {_median([_per_trip(r) for r in results]):.1f} |"
        )
    one, two = (f"quicvoice-lb --workers {n} ({MANY_FLOWS} flows)" for n in (1, 2))
    if one in throughput[0] and two in throughput[0]:
        ratios = [
            speeds[two].per_core_pps / speeds[one].per_core_pps
            for speeds in throughput
            if speeds[one].per_core_pps
        ]
        lines += [
            "",
            f"--workers 2 against --workers 1 on the same {MANY_FLOWS} flows, datagrams per "
            f"CPU-second, per round: {_median(ratios):.2f} "
            f"({min(ratios, default=0):.2f}–{max(ratios, default=0):.2f})",
        ]
    return lines


def _latency_table(latency: Rounds) -> list[str]:
    floor = next((name for name in latency[0] if name != DIRECT), DIRECT)
    # One baseline for every round: a burst of load during one round's direct run would
    # otherwise shift that round's added figures (even below zero) and its ratios.
    direct50 = _median([delays[DIRECT].p50_us for delays in latency])
    direct99 = _median([delays[DIRECT].p99_us for delays in latency])
    lines = [
        "",
        f"Latency: one datagram in flight, {len(latency)} rounds; added = relay percentile - "
        "the direct percentile's median over the rounds; medians over rounds; x C relay per "
        "round (the C relay of the same round), then its median and middle half (quartiles)",
        "",
        "| path | round trips | RTT p50 µs | RTT p90 µs | RTT p99 µs | RTT p99.9 µs "
        "| added p50 µs | added p99 µs | added p99 x C relay | CPU µs per round trip "
        "| CPU x C relay |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in latency[0]:
        results = [delays[name] for delays in latency]
        cells = [
            name,
            str(sum(r.round_trips for r in results)),
            *(
                f"{_median([getattr(r, key) for r in results]):.1f}"
                for key in ("p50_us", "p90_us", "p99_us", "p999_us")
            ),
        ]
        added50 = [delays[name].p50_us - direct50 for delays in latency]
        added99 = [delays[name].p99_us - direct99 for delays in latency]
        floor99 = [delays[floor].p99_us - direct99 for delays in latency]
        ratios = [ours / its for ours, its in zip(added99, floor99, strict=True) if its > 0]
        cpu = [
            _per_trip(delays[name]) / _per_trip(delays[floor])
            for delays in latency
            if _per_trip(delays[floor])
        ]
        cells += [f"{_median(added50):.1f}", f"{_median(added99):.1f}"]
        cells.append(f"{_median(ratios):.2f} ({_spread(ratios)})" if name != DIRECT else "")
        cells.append(f"{_median([_per_trip(r) for r in results]):.1f}")
        cells.append(f"{_median(cpu):.2f} ({_spread(cpu)})" if name != DIRECT else "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def python_cost(datagrams: int = 192_000) -> str:
    """quicvoice-lb's Python cost per round trip with the system calls taken out (--python-cost).

    The real pump loops run in this process on real sockets whose receive calls hand back the
    same datagrams again and again (one short header with a QUIC-LB CID of the backend, one
    wrapped reply) and whose send calls return at once; a bare loop on the same fakes is
    subtracted from the per-datagram figures. CPU time of this process, best of 3.
    """
    import io

    from lb import mmsg, python_path
    from lb import pump as pump_module
    from lb.config import Backend, ForwarderConfig
    from lb.log import JsonLogger
    from quicvoice.encapsulation import wrap

    def udp(host: str = HOST) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        return sock

    vip, back, echo, client = udp(), udp(), udp(), udp(CLIENT_HOST)
    config = ForwarderConfig(
        listen=vip.getsockname(),
        backend_listen=back.getsockname(),
        configs=(LoadBalancerConfig(0, 4, 12, bytes.fromhex(KEY)),),
        backends=(Backend(SERVER_ID, echo.getsockname()),),
        health_interval=0.0,
    )
    datagram = bytes.fromhex(template())
    reply = wrap(client.getsockname(), datagram)

    class Fake:
        family = socket.AF_INET

        def __init__(self, item: tuple[bytes, tuple[str, int]], count: int) -> None:
            self.item = item
            self.left = count

        def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
            self.left -= 1
            if self.left < 0:
                raise pump_module.Stopped
            return self.item

        def sendto(self, data: bytes, address: object) -> int:
            return 0

    directory = Path(tempfile.gettempdir())  # nothing is written: no tick, no snapshot

    def pump(direction: str, vip_: object, back_: object, batch: bool) -> pump_module.Pump:
        return pump_module.Pump(
            direction=direction,
            worker=0,
            config_path=directory / "bench-lb-unused.toml",
            config=config,
            vip=cast(socket.socket, vip_),
            backend=cast(socket.socket, back_),
            snapshot=directory / "bench-lb-unused.json",
            parent_pid=os.getppid(),
            logger=JsonLogger("error", io.StringIO()),
            batch=batch,
            native=False,
        )

    def timed(run: Callable[[], object]) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.process_time()
            with contextlib.suppress(pump_module.Stopped):
                run()
            best = min(best, time.process_time() - start)
        return best

    def bare(item: tuple[bytes, tuple[str, int]]) -> float:
        def run() -> None:
            fake = Fake(item, datagrams)
            recvfrom, sendto = fake.recvfrom, fake.sendto
            while True:
                data, address = recvfrom(65536)
                sendto(data, address)

        return timed(run)

    def unbatched(direction: str, item: tuple[bytes, tuple[str, int]]) -> float:
        def run() -> None:
            fake = Fake(item, datagrams)
            made = pump(direction, fake, fake, False)
            made.next_tick = float("inf")
            loop = python_path.uplink_loop if direction == "uplink" else python_path.downlink_loop
            loop(made)

        return timed(run)

    def batched(direction: str, size: int) -> float:
        """The in-place batched loop on ``size`` real datagrams, received once, then handed
        back by a recvmmsg that returns at once (and sent by a sendmmsg that does nothing)."""
        receiver_class, outbox_class = mmsg.Receiver, mmsg.Outbox
        calls = datagrams // size

        def recvmmsg(*args: object) -> int:
            nonlocal calls
            calls -= 1
            if calls < 0:
                raise pump_module.Stopped
            return size

        class Receiver(receiver_class):  # type: ignore[misc, valid-type]
            def receive_count(self) -> int:
                if not self.lengths:  # the first time: really receive them
                    while super().receive_count() < size:
                        pass
                    self._recvmmsg = recvmmsg
                return int(super().receive_count())

        class Outbox(outbox_class):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, sendmmsg=lambda fd, pointer, count, flags: count)

        sender, receiver = (client, vip) if direction == "uplink" else (echo, back)
        for _ in range(size):
            sender.sendto(datagram if direction == "uplink" else reply, receiver.getsockname())
        setattr(mmsg, "Receiver", Receiver)  # noqa: B010 (a class attribute of the module)
        setattr(mmsg, "Outbox", Outbox)  # noqa: B010
        try:
            made = pump(direction, vip, back, True)
            made.next_tick = float("inf")
            relay = (
                python_path.uplink_relay if direction == "uplink" else python_path.downlink_relay
            )
            start = time.process_time()
            with contextlib.suppress(pump_module.Stopped):
                relay(made)
            return time.process_time() - start
        finally:
            setattr(mmsg, "Receiver", receiver_class)  # noqa: B010
            setattr(mmsg, "Outbox", outbox_class)  # noqa: B010

    try:
        base = bare((datagram, client.getsockname()))
        up = unbatched("uplink", (datagram, client.getsockname()))
        down = unbatched("downlink", (reply, echo.getsockname()))
        lines = [
            "Python cost per round trip, system calls taken out (CPU µs, best of 3)",
            "",
            "| path | uplink | downlink | round trip |",
            "|---|---:|---:|---:|",
            "| per datagram (minus a bare loop on the same fakes) "
            f"| {1e6 * (up - base) / datagrams:.2f} | {1e6 * (down - base) / datagrams:.2f} "
            f"| {1e6 * (up + down - 2 * base) / datagrams:.2f} |",
        ]
        if mmsg.AVAILABLE:
            for size in (32, 1):
                up = min(batched("uplink", size) for _ in range(3))
                down = min(batched("downlink", size) for _ in range(3))
                n = (datagrams // size) * size
                lines.append(
                    f"| --batch, {size} per recvmmsg | {1e6 * up / n:.2f} | {1e6 * down / n:.2f} "
                    f"| {1e6 * (up + down) / n:.2f} |"
                )
        return "\n".join(lines)
    finally:
        for sock in (vip, back, echo, client):
            sock.close()


def syscall_cost(blocks: int = 200) -> str:
    """What the native loop's system calls cost here, one datagram at a time (--syscall-cost).

    A C program (built like the relays) times interleaved blocks of 500 operations of each
    kind on loopback: a datagram sent to its own socket and received by each receive call the
    loop could use, the send calls, the two clocks, ``sched_yield``, and a ping-pong with an
    echo process whose receives wait with and without ``SO_RCVTIMEO``. Quartiles of the
    blocks, nanoseconds per operation (per round trip for the ping-pong).
    """
    with tempfile.TemporaryDirectory(prefix="bench-lb-") as temporary:
        directory = Path(temporary)
        source = directory / "syscalls.c"
        source.write_text(C_SOURCES["syscalls"])
        binary = directory / "syscalls"
        subprocess.run(
            ["gcc", "-O2", "-o", str(binary), str(source), "-lpthread"],
            check=True,
            capture_output=True,
        )
        output = subprocess.run(
            [str(binary), str(blocks)], check=True, capture_output=True, text=True, timeout=600
        ).stdout
    lines = [
        f"System calls of the native loop, ns per operation ({blocks} interleaved blocks of 500; "
        "quartiles)",
        "",
        "| operation | 25 % | median | 75 % |",
        "|---|---:|---:|---:|",
    ]
    for row in output.splitlines():
        name, *figures = row.split("\t")
        lines.append(f"| {name} | " + " | ".join(f"{float(f):,.0f}" for f in figures) + " |")
    return "\n".join(lines)


def decode_cost(rounds: int = 9, calls: int = 2_000_000) -> str:
    """QUIC-LB decoding inside the native path, against one bare AES block (--decode-cost).

    Timed in C (``lb._native.Tables.decode_cost`` / ``aes_cost``): each call's input depends on
    the last call's output, so both measure latency, not a pipeline. Best of ``rounds``
    interleaved rounds of ``calls`` each.
    """
    from lb import native_path

    if native_path.native is None or not native_path.AESNI:
        return f"no native path with AES-NI here: {native_path.UNAVAILABLE or 'no AES-NI'}"
    cases = [
        ("plaintext 4+8: decode", LoadBalancerConfig(1, 4, 8), 4),
        ("single-pass 4+12: decode", LoadBalancerConfig(0, 4, 12, bytes.fromhex(KEY)), 4),
        ("four-pass 3+4 (3-pass decode): decode", LoadBalancerConfig(2, 3, 4, bytes(16)), 3),
        ("four-pass 10+5 (4-pass decode): decode", LoadBalancerConfig(3, 10, 5, bytes(16)), 10),
    ]
    slots: list[LoadBalancerConfig | None] = [None] * 8
    for _, config, _ in cases:
        slots[config.config_id] = config
    tables = native_path.native.Tables(
        [native_path.config_spec(config) for config in slots], [], [], bytes(6)
    )
    cids = [
        config.encode(bytes(range(1, 1 + length)), bytes(config.nonce_len))
        for _, config, length in cases
    ]
    floor = float("inf")
    best = [float("inf")] * len(cases)
    for _ in range(rounds):
        floor = min(floor, tables.aes_cost(0, calls))
        for index, cid in enumerate(cids):
            best[index] = min(best[index], tables.decode_cost(cid, calls))
    lines = [
        f"QUIC-LB decode in lb._native (best of {rounds} rounds of {calls:,} calls)",
        "",
        "| operation | ns per CID | x AES decrypt |",
        "|---|---:|---:|",
        f"| floor: AES-128 decrypt 1 block (AES-NI) | {floor:.1f} | 1.00 |",
    ]
    for (name, _, _), cost in zip(cases, best, strict=True):
        lines.append(f"| {name} | {cost:.1f} | {cost / floor:.2f} |")
    return "\n".join(lines)


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (20k round trips)")
    parser.add_argument("--packets", type=int, default=100_000, help="round trips per run")
    parser.add_argument(
        "--latency-packets", type=int, default=10_000, help="round trips per latency run"
    )
    parser.add_argument(
        "--latency-rounds",
        type=int,
        default=15,
        help="interleaved latency rounds (one datagram in flight; ratios per round)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="time limit per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="TEXT",
        help="measure only the relays whose name contains TEXT (repeatable; the C relay always)",
    )
    parser.add_argument(
        "--python-cost",
        action="store_true",
        help="only quicvoice-lb's Python cost per round trip, system calls taken out",
    )
    parser.add_argument(
        "--decode-cost",
        action="store_true",
        help="only the native path's QUIC-LB decoding against one bare AES block, timed in C",
    )
    parser.add_argument(
        "--syscall-cost",
        action="store_true",
        help="only what the native loop's system calls cost, one datagram at a time, in C",
    )
    parser.add_argument("--naive-relay", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bare-relay", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bare-batched-relay", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.naive_relay:
        naive_relay(*args.naive_relay)
        return 0
    if args.bare_relay:
        bare_relay(*args.bare_relay)
        return 0
    if args.bare_batched_relay:
        bare_batched_relay(*args.bare_batched_relay)
        return 0
    if args.python_cost:
        print(python_cost())
        return 0
    if args.decode_cost:
        print(decode_cost())
        return 0
    if args.syscall_cost:
        print(syscall_cost())
        return 0
    # SIGTERM ends the run like Ctrl-C: the relays it started are stopped on the way out.
    signal.signal(signal.SIGTERM, _interrupted)
    if args.quick:
        args.packets, args.latency_packets, args.seconds = 20_000, 5_000, 5.0
        args.rounds, args.latency_rounds = 1, 2
    start = time.monotonic()
    loads = [os.getloadavg()[0]]
    throughput, latency = run(args)
    loads.append(os.getloadavg()[0])
    print(table(throughput, latency))
    print(
        f"\n{time.monotonic() - start:.0f} s; load average (1 min) {loads[0]:.2f} at the start, "
        f"{loads[1]:.2f} at the end; CPU time: "
        + ("schedstat" if _schedstat_seconds(os.getpid()) is not None else "clock ticks")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
