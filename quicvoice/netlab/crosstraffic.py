"""Classic cross traffic for the lab's bottleneck: a loss-based AIMD sender over UDP and its sink.

    python -m quicvoice.netlab.crosstraffic sink --bind 198.18.0.2:7100 --max-seconds 60
    python -m quicvoice.netlab.crosstraffic send --bind 198.18.2.2 --to 198.18.0.2:7100 \\
        --seconds 20 --size 250 [--tos 0]

The sender keeps a window of packets in flight (TCP Reno's arithmetic without its bytes):
+1 packet per window acknowledged, halved (at most once per RTT) when a packet is found lost
(three later ones acknowledged first) or times out. Being loss-based and not-ECT by default,
it fills the classic queue of a DualQ bottleneck until the AQM drops, so that queue sits near
its target delay, which is what a voice flow sharing it must not suffer. The sink acknowledges
every packet (its sequence number, on the reverse path). Both are bounded in packets and time;
the sender prints one JSON line of counters when it ends.

The window logic (``AimdWindow``) is sans-I/O: sends, acknowledgements and the clock in.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass

#: A data packet starts with its sequence number; an acknowledgement is just that number.
SEQUENCE = struct.Struct("!Q")
#: Packets acknowledged after a missing one before it is declared lost (TCP's dupthresh).
REORDER_THRESHOLD = 3
MIN_WINDOW = 2.0
MAX_WINDOW = 10_000.0
#: A packet unacknowledged this long (and at least 4 smoothed RTTs) is lost; the window
#: collapses to its minimum (a retransmission timeout).
MIN_TIMEOUT = 0.2
#: Acknowledgements read per wake-up at most.
READ_BATCH = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class AimdStats:
    """What an AIMD sender did."""

    sent: int
    acked: int
    lost: int
    timeouts: int
    reductions: int
    window: float
    srtt_ms: float


class AimdWindow:
    """Additive increase, multiplicative decrease of a window counted in packets."""

    def __init__(self, *, initial: float = 4.0) -> None:
        if not MIN_WINDOW <= initial <= MAX_WINDOW:
            raise ValueError(f"initial window must be within {MIN_WINDOW}..{MAX_WINDOW}")
        self.window = initial
        self._in_flight: dict[int, float] = {}
        self._next = 0
        self._srtt: float | None = None
        self._last_cut = float("-inf")
        self._sent = self._acked = self._lost = self._timeouts = self._reductions = 0

    @property
    def sent(self) -> int:
        """Packets sent so far."""
        return self._sent

    @property
    def in_flight(self) -> int:
        """Packets sent and neither acknowledged nor declared lost."""
        return len(self._in_flight)

    def can_send(self) -> bool:
        """True while the window has room."""
        return len(self._in_flight) < int(self.window)

    def on_send(self, now: float) -> int:
        """Record a packet sent at ``now``; returns its sequence number."""
        sequence = self._next
        self._next += 1
        self._in_flight[sequence] = now
        self._sent += 1
        return sequence

    def on_ack(self, sequence: int, now: float) -> None:
        """The sink acknowledged ``sequence`` (unknown or repeated numbers are ignored)."""
        sent_at = self._in_flight.pop(sequence, None)
        if sent_at is None:
            return
        self._acked += 1
        sample = max(0.0, now - sent_at)
        self._srtt = sample if self._srtt is None else 0.875 * self._srtt + 0.125 * sample
        self.window = min(MAX_WINDOW, self.window + 1.0 / self.window)
        lost = [s for s in self._in_flight if s < sequence - REORDER_THRESHOLD]
        if lost:
            for s in lost:
                del self._in_flight[s]
            self._lost += len(lost)
            if now - self._last_cut >= (self._srtt or 0.0):
                self._last_cut = now
                self._reductions += 1
                self.window = max(MIN_WINDOW, self.window / 2)

    def on_timer(self, now: float) -> None:
        """Declare lost what waited longer than the timeout (window back to the minimum)."""
        timeout = max(MIN_TIMEOUT, 4 * (self._srtt or 0.0))
        expired = [s for s, sent_at in self._in_flight.items() if now - sent_at > timeout]
        if expired:
            for s in expired:
                del self._in_flight[s]
            self._lost += len(expired)
            self._timeouts += 1
            self._last_cut = now
            self.window = MIN_WINDOW

    def statistics(self) -> AimdStats:
        """A snapshot of the counters."""
        return AimdStats(
            sent=self._sent,
            acked=self._acked,
            lost=self._lost,
            timeouts=self._timeouts,
            reductions=self._reductions,
            window=round(self.window, 2),
            srtt_ms=round(1000 * (self._srtt or 0.0), 3),
        )


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} has no numeric port") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return host, number


def send(
    sock: socket.socket,
    *,
    seconds: float,
    size: int,
    max_packets: int,
) -> AimdStats:
    """Run an AIMD sender on a connected UDP socket for ``seconds`` (or ``max_packets``)."""
    window = AimdWindow()
    sock.setblocking(False)
    padding = bytes(max(0, size - 28 - SEQUENCE.size))  # 28: IPv4 + UDP headers
    start = time.monotonic()
    deadline = start + seconds
    while True:
        now = time.monotonic()
        if now >= deadline or window.sent >= max_packets:
            break
        while window.can_send() and window.sent < max_packets:
            sequence = window.on_send(now)
            try:
                sock.send(SEQUENCE.pack(sequence) + padding)
            except BlockingIOError:
                break  # the socket buffer is full: the packet counts as sent and lost
            except OSError:
                break
        readable, _, _ = select.select([sock], [], [], 0.005)
        now = time.monotonic()
        if readable:
            for _ in range(READ_BATCH):
                try:
                    data = sock.recv(64)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                if len(data) >= SEQUENCE.size:
                    window.on_ack(SEQUENCE.unpack_from(data)[0], now)
        window.on_timer(now)
    return window.statistics()


def sink(sock: socket.socket, *, seconds: float) -> int:
    """Acknowledge every packet for ``seconds``; returns how many arrived."""
    deadline = time.monotonic() + seconds
    received = 0
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            data, peer = sock.recvfrom(65535)
        except TimeoutError:
            continue
        if len(data) < SEQUENCE.size:
            continue  # not ours: counted nowhere, never trusted
        received += 1
        try:
            sock.sendto(data[: SEQUENCE.size], peer)
        except OSError:
            pass
    return received


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quicvoice.netlab.crosstraffic", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    sink_parser = commands.add_parser("sink", help="acknowledge every packet")
    sink_parser.add_argument("--bind", type=_address, required=True, metavar="IP:PORT")
    sink_parser.add_argument("--max-seconds", type=float, default=60.0)
    send_parser = commands.add_parser("send", help="an AIMD sender")
    send_parser.add_argument("--bind", default="0.0.0.0", metavar="IP")
    send_parser.add_argument("--to", type=_address, required=True, metavar="IP:PORT")
    send_parser.add_argument("--seconds", type=float, default=10.0)
    send_parser.add_argument("--size", type=int, default=250, help="IP packet size, octets")
    send_parser.add_argument("--max-packets", type=int, default=2_000_000)
    send_parser.add_argument("--tos", type=int, default=0, help="IP TOS octet (ECN bits)")
    args = parser.parse_args(argv)
    if args.command == "sink":
        if not 0 < args.max_seconds <= 3600:
            parser.error("--max-seconds must be within (0, 3600]")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(args.bind)
        print(json.dumps({"event": "ready", "port": sock.getsockname()[1]}), flush=True)
        received = sink(sock, seconds=args.max_seconds)
        print(json.dumps({"event": "done", "received": received}), flush=True)
        return 0
    if not 0 < args.seconds <= 3600:
        parser.error("--seconds must be within (0, 3600]")
    if not 40 <= args.size <= 1500:
        parser.error("--size must be within 40..1500")
    if not 0 <= args.tos <= 255:
        parser.error("--tos must be within 0..255")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, args.tos)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    sock.bind((args.bind, 0))
    sock.connect(args.to)
    stats = send(sock, seconds=args.seconds, size=args.size, max_packets=args.max_packets)
    print(json.dumps({"event": "done", **asdict(stats)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
