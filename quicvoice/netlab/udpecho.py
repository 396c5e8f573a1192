"""UDP probes across a lab: an echo server (``python -m quicvoice.netlab.udpecho echo``) and a
paced sender that measures round-trip times and losses, one packet at a time.

The sender is one thread with a blocking schedule: it sends probe ``k`` at ``start + k *
interval`` and reads echoes in between, so its own overhead is the same on every path and
cancels out when two paths are compared (cellular minus Wi-Fi = what the delay line adds).
"""

from __future__ import annotations

import argparse
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass

#: A probe: sequence number, send time (ns, sender's monotonic clock), then padding.
PROBE = struct.Struct("!IQ")
#: Voice-sized: a 20 ms L16/16 kHz frame is 640 octets, an Opus one ~80.
DEFAULT_SIZE = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    """What ``probe`` measured."""

    #: Probes sent.
    sent: int
    #: Round-trip time of every echoed probe, ms, in sequence order.
    rtts_ms: tuple[float, ...]
    #: Sequence numbers never echoed.
    lost: tuple[int, ...]

    @property
    def received(self) -> int:
        return len(self.rtts_ms)

    @property
    def loss_fraction(self) -> float:
        return len(self.lost) / self.sent if self.sent else 0.0

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0–100) of the RTTs, ms."""
        values = sorted(self.rtts_ms)
        if not values:
            return float("nan")
        index = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
        return values[index]

    @property
    def mean_ms(self) -> float:
        return sum(self.rtts_ms) / len(self.rtts_ms) if self.rtts_ms else float("nan")


def probe(
    sock: socket.socket,
    destination: tuple[str, int],
    *,
    count: int = 500,
    interval: float = 0.005,
    size: int = DEFAULT_SIZE,
    linger: float = 1.0,
) -> ProbeResult:
    """Send ``count`` probes every ``interval`` s from ``sock``, then wait ``linger`` s more.

    Bounded: at most ``count`` packets and ``count * interval + linger`` seconds.
    """
    if not 0 < count <= 100_000 or interval < 0 or size < PROBE.size:
        raise ValueError("count must be 1..100000, interval ≥ 0, size ≥ 12")
    sock.setblocking(False)
    padding = bytes(size - PROBE.size)
    rtts: dict[int, float] = {}
    start = time.monotonic()
    end_of_sending = start + count * interval
    sent = 0

    def drain(until: float) -> None:
        while True:
            timeout = until - time.monotonic()
            if timeout <= 0 or not select.select([sock], [], [], timeout)[0]:
                if timeout <= 0:
                    return
                continue
            while True:
                try:
                    data = sock.recv(65535)
                except BlockingIOError:
                    break
                now_ns = time.monotonic_ns()
                if len(data) >= PROBE.size:
                    seq, sent_ns = PROBE.unpack_from(data)
                    if seq < count and seq not in rtts:
                        rtts[seq] = (now_ns - sent_ns) / 1e6

    while sent < count:
        drain(start + sent * interval)
        sock.sendto(PROBE.pack(sent, time.monotonic_ns()) + padding, destination)
        sent += 1
        if len(rtts) == count:
            break
    drain(max(end_of_sending, time.monotonic()) + linger)
    return ProbeResult(
        sent=sent,
        rtts_ms=tuple(rtts[seq] for seq in sorted(rtts)),
        lost=tuple(seq for seq in range(sent) if seq not in rtts),
    )


def echo(bind: tuple[str, int], max_seconds: float, max_packets: int) -> int:
    """Echo every datagram back to its sender; stop after either bound or on SIGTERM."""
    stopping = False

    def on_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_stop)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(bind)
        sock.settimeout(0.2)
        print(f"echo {bind[0]}:{sock.getsockname()[1]}", flush=True)
        deadline = time.monotonic() + max_seconds
        echoed = 0
        while not stopping and echoed < max_packets and time.monotonic() < deadline:
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                continue
            sock.sendto(data, peer)
            echoed += 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quicvoice.netlab.udpecho")
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("echo", help="a bounded UDP echo server")
    server.add_argument("--bind", default="0.0.0.0:7", metavar="HOST:PORT")
    server.add_argument("--max-seconds", type=float, default=60.0)
    server.add_argument("--max-packets", type=int, default=200_000)
    args = parser.parse_args(argv)
    host, _, port = args.bind.rpartition(":")
    return echo((host, int(port)), args.max_seconds, args.max_packets)


if __name__ == "__main__":
    sys.exit(main())
