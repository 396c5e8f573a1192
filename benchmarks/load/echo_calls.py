"""Echo calls for the CPU benchmarks (``bench_calls.py``, ``bench_ngtcp2.py``), run in load
processes apart from the backend and from the process that measures it.

Each call sends one 20 ms frame (640 octets) every 20 ms on the reliable uplink and times the
echo of each frame: call ``i`` of ``n`` starts at ``begin + ramp * i / n`` and sends at phase
``20 ms * i / n``, so the calls' frames are spread evenly over the period. Frames sent from
``measure_from`` to ``stop`` are the window: their round trips, their count and the QUIC
packets sent and received meanwhile are the call's record. Three kinds of caller:

- ``websocket``: a ``websockets`` client; an 8-octet sequence number leads each message;
- ``client``: the project's client (``quicvoice.asyncio.client.connect``; ``webtransport``:
  the same over WebTransport); the frame's timestamp names it, the session's stats count
  packets;
- ``native``: an ngtcp2 client connection (``quicvoice._ngtcp2.client``) speaking the raw-QUIC
  voice protocol on its own UDP socket, about 10x cheaper than ``client``; datagrams that
  arrive are fed to ngtcp2 just before the next frame is written, so their ACK rides in that
  frame's packet (one packet per frame each way, as the project's client); each echo's round
  trip ends when its datagram arrived; datagrams in and out are counted here.

A load process (``python -m benchmarks.load.echo_calls``) imports what it needs, prints
``ready``, reads the schedule as one JSON line on stdin (absolute ``time.monotonic()``
instants: it is system-wide on Linux, so every process agrees), runs its share of the calls
on the chosen event loop and prints their records as one JSON line. ``LoadProcesses`` is the
parent's side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

FRAME = bytes(640)
FRAME_SECONDS = 0.020
#: An echo is late when its round trip exceeds its call's fastest one by more than this.
LATE_THRESHOLD = 0.020
#: The samples a frame's timestamp advances (16 kHz, 20 ms).
TIMESTAMP_STEP = 320
#: After ``stop``, how long a call waits for its last echoes before it hangs up.
DRAIN_SECONDS = 0.2
KINDS = ("websocket", "client", "webtransport", "native")
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """When the calls start and which frames count, in ``time.monotonic()`` seconds."""

    begin: float
    ramp: float
    measure_from: float
    stop: float

    @classmethod
    def starting_now(cls, calls: int, seconds: float, lead: float = 0.1) -> Schedule:
        """Calls ramped in over ``0.02 * calls`` s (at most 2 s), a 1 s settling time, then
        a window of ``seconds``."""
        begin = time.monotonic() + lead
        ramp = min(2.0, 0.02 * calls)
        measure_from = begin + ramp + 1.0
        return cls(begin=begin, ramp=ramp, measure_from=measure_from, stop=measure_from + seconds)

    def start_of(self, index: int, calls: int) -> float:
        """When call ``index`` of ``calls`` dials."""
        return self.begin + self.ramp * index / calls

    def to_json(self) -> str:
        """One line for a load process's stdin."""
        return json.dumps(
            {
                "begin": self.begin,
                "ramp": self.ramp,
                "measure_from": self.measure_from,
                "stop": self.stop,
            }
        )

    @classmethod
    def from_json(cls, line: str) -> Schedule:
        """The schedule a parent wrote with ``to_json``."""
        values = json.loads(line)
        return cls(
            **{name: float(values[name]) for name in ("begin", "ramp", "measure_from", "stop")}
        )


@dataclass(slots=True)
class CallRecord:
    """One call's frames in flight, round trips and QUIC packet counts in the window."""

    index: int = 0
    established: bool = False
    sent_at: dict[int, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    frames_sent: int = 0
    #: Echoes received in all (window or not).
    echoed: int = 0
    #: (out, in) during the window; None for WebSocket.
    packets: tuple[int, int] | None = None

    def echo_received(self, key: int, arrived: float, measure_from: float) -> None:
        """Close the round trip of the frame named ``key`` (counted if sent in the window)."""
        self.echoed += 1
        sent = self.sent_at.pop(key, None)
        if sent is not None and sent >= measure_from:
            self.latencies.append(arrived - sent)

    def to_dict(self) -> dict[str, Any]:
        """What a load process reports (the frames still in flight stay behind)."""
        return {
            "index": self.index,
            "established": self.established,
            "latencies": self.latencies,
            "frames_sent": self.frames_sent,
            "echoed": self.echoed,
            "packets": self.packets,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CallRecord:
        """A record a load process reported."""
        packets = values["packets"]
        return cls(
            index=int(values["index"]),
            established=bool(values["established"]),
            latencies=[float(x) for x in values["latencies"]],
            frames_sent=int(values["frames_sent"]),
            echoed=int(values["echoed"]),
            packets=None if packets is None else (int(packets[0]), int(packets[1])),
        )


def first_send(start: float, phase: float, now: float) -> float:
    """The first instant >= ``now`` that is ``phase`` seconds into a 20 ms period from
    ``start``: every call keeps its own phase, so the calls' frames are spread evenly."""
    periods = max(0, -(-(now - start - phase) // FRAME_SECONDS))
    return start + phase + periods * FRAME_SECONDS


async def sleep_until(instant: float) -> None:
    """Sleep until ``instant`` of ``time.monotonic()`` (uvloop's ``loop.time()`` is its own)."""
    await asyncio.sleep(max(0.0, instant - time.monotonic()))


# -- the three callers ---------------------------------------------------------------------


async def websocket_call(
    port: int, record: CallRecord, start: float, phase: float, schedule: Schedule
) -> None:
    """One call on a ``websockets`` client; sets ``record.established`` once connected."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import WebSocketException

    loop = asyncio.get_running_loop()
    await sleep_until(start)
    try:
        async with connect(f"ws://127.0.0.1:{port}", compression=None, open_timeout=10) as ws:
            record.established = True

            async def receive() -> None:
                async for message in ws:
                    assert isinstance(message, bytes)
                    (seq,) = struct.unpack_from("!Q", message)
                    record.echo_received(seq, time.monotonic(), schedule.measure_from)

            receiver = loop.create_task(receive())
            seq = 0
            first = first_send(start - phase, phase, time.monotonic())
            message = bytearray(FRAME)
            while (now := time.monotonic()) < schedule.stop:
                record.sent_at[seq] = now
                struct.pack_into("!Q", message, 0, seq)
                await ws.send(bytes(message))
                if now >= schedule.measure_from:
                    record.frames_sent += 1
                seq += 1
                await sleep_until(first + seq * FRAME_SECONDS)
            await asyncio.sleep(DRAIN_SECONDS)
            receiver.cancel()
    except (OSError, TimeoutError, WebSocketException):
        return


async def client_call(
    port: int,
    record: CallRecord,
    start: float,
    phase: float,
    schedule: Schedule,
    webtransport: bool = False,
) -> None:
    """One call on the project's client (raw QUIC or WebTransport)."""
    from quicvoice.asyncio.client import connect
    from quicvoice.session.events import AudioReceived

    loop = asyncio.get_running_loop()
    await sleep_until(start)
    try:
        async with connect(
            "127.0.0.1", port, verify=False, timeout=10, webtransport=webtransport
        ) as client:
            record.established = True

            async def receive() -> None:
                while True:
                    event = await client.receive()
                    if isinstance(event, AudioReceived):
                        record.echo_received(
                            event.frame.timestamp, time.monotonic(), schedule.measure_from
                        )

            receiver = loop.create_task(receive())
            seq = 0
            first = first_send(start - phase, phase, time.monotonic())
            before: tuple[int, int] | None = None
            while (now := time.monotonic()) < schedule.stop:
                if before is None and now >= schedule.measure_from:
                    stats = client.stats()
                    before = (stats.packets_sent, stats.packets_received)
                record.sent_at[seq * TIMESTAMP_STEP] = now
                client.send_audio(FRAME, seq * TIMESTAMP_STEP)
                if now >= schedule.measure_from:
                    record.frames_sent += 1
                seq += 1
                await sleep_until(first + seq * FRAME_SECONDS)
            stats = client.stats()
            if before is not None:
                record.packets = (
                    stats.packets_sent - before[0],
                    stats.packets_received - before[1],
                )
            await asyncio.sleep(DRAIN_SECONDS)
            receiver.cancel()
    except (ConnectionError, TimeoutError):
        return


class NativeCall(asyncio.DatagramProtocol):
    """An ngtcp2 client connection on one connected UDP socket, with the voice protocol's
    client side as far as the echo needs it: ``hello``, one uplink stream, turn streams."""

    def __init__(self, record: CallRecord, measure_from: float) -> None:
        from quicvoice.engine_ngtcp2 import require
        from quicvoice.session.wire import FrameReader, StreamHeaderReader

        self.native = require()
        self.record = record
        self.measure_from = measure_from
        self.conn: Any = None
        self.transport: asyncio.DatagramTransport | None = None
        self.server: tuple[str, int] = ("127.0.0.1", 0)
        self.timer: asyncio.TimerHandle | None = None
        self.inbox: list[tuple[bytes, float]] = []
        self.control = -1
        self.welcomed = asyncio.Event()
        self.closed = asyncio.Event()
        self.turns: dict[int, tuple[Any, Any]] = {}
        self.new_turn: Callable[[], tuple[Any, Any]] = lambda: (StreamHeaderReader(), FrameReader())
        #: Counting datagrams (out, in) while true: the window.
        self.counting = False
        self.datagrams_out = 0
        self.datagrams_in = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Python 3.11's selector transport is no asyncio.DatagramTransport subclass.
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.server = transport.get_extra_info("peername")[:2]
        local = transport.get_extra_info("sockname")[:2]
        self.conn = self.native.client(
            b"quicvoice/1",
            "localhost",
            local,
            self.server,
            time.monotonic_ns(),
            lambda length: (os.urandom(length), os.urandom(16)),
            lambda cid: None,
            30_000,
        )
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.counting:
            self.datagrams_in += 1
        if self.welcomed.is_set():
            self.inbox.append((data, time.monotonic()))
            return
        self.take(data, time.monotonic())
        self.flush()

    def take(self, data: bytes, arrived: float) -> None:
        """Feed one datagram to ngtcp2; time the echoes it completes."""
        from quicvoice.session.messages import Hello, encode_message

        _, events = self.conn.receive(data, self.server, time.monotonic_ns())
        for stream_id, payload, _fin in events:
            if stream_id == self.control:
                self.welcomed.set()
            elif stream_id % 4 == 3:
                header, frames = self.turns.get(stream_id) or self.turns.setdefault(
                    stream_id, self.new_turn()
                )
                if header.kind is None:
                    payload = header.feed(payload)
                    if payload is None:
                        continue
                for frame in frames.feed(payload):
                    self.record.echo_received(frame.timestamp, arrived, self.measure_from)
        if self.control < 0 and self.conn.handshake_completed:
            self.control = self.conn.open_bidi_stream()
            self.conn.send_stream(self.control, encode_message(Hello()))

    def flush(self) -> None:
        """Write what ngtcp2 has to send and re-arm its timer."""
        if self.transport is None or self.transport.is_closing():
            return
        _, out = self.conn.flush(time.monotonic_ns())
        for data, _ in out:
            self.transport.sendto(data)
        if self.counting:
            self.datagrams_out += len(out)
        expiry = self.conn.expiry
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if expiry is not None:
            delay = max(0.0, (expiry - time.monotonic_ns()) / 1e9)
            self.timer = asyncio.get_running_loop().call_later(delay, self.on_timer)

    def on_timer(self) -> None:
        self.timer = None
        self.conn.handle_expiry(time.monotonic_ns())
        self.flush()

    def send(self, stream_id: int, data: bytes, fin: bool = False) -> None:
        """Take the datagrams that arrived since the last send, then write ``data``: their
        ACK rides in its packet."""
        for datagram, arrived in self.inbox:
            self.take(datagram, arrived)
        self.inbox.clear()
        self.conn.send_stream(stream_id, data, fin)
        self.flush()


async def native_call(
    port: int, record: CallRecord, start: float, phase: float, schedule: Schedule
) -> None:
    """One call on an ngtcp2 client connection (``NativeCall``)."""
    from quicvoice.session.wire import MediaFrame, StreamKind, encode_frame, encode_stream_header

    loop = asyncio.get_running_loop()
    await sleep_until(start)
    transport, call = await loop.create_datagram_endpoint(
        lambda: NativeCall(record, schedule.measure_from), remote_addr=("127.0.0.1", port)
    )
    try:
        try:
            await asyncio.wait_for(call.welcomed.wait(), 10)
        except TimeoutError:
            return
        record.established = True
        uplink = call.conn.open_uni_stream()
        call.conn.send_stream(uplink, encode_stream_header(StreamKind.UPLINK))
        seq = 0
        first = first_send(start - phase, phase, time.monotonic())
        while (now := time.monotonic()) < schedule.stop and not call.closed.is_set():
            if not call.counting and now >= schedule.measure_from:
                call.counting = True
            record.sent_at[seq * TIMESTAMP_STEP] = now
            call.send(uplink, encode_frame(MediaFrame(seq, seq * TIMESTAMP_STEP, FRAME)))
            if now >= schedule.measure_from:
                record.frames_sent += 1
            seq += 1
            await sleep_until(first + seq * FRAME_SECONDS)
        if call.counting:
            record.packets = (call.datagrams_out, call.datagrams_in)
        call.counting = False
        await asyncio.sleep(DRAIN_SECONDS)
        call.send(uplink, b"", fin=True)
    finally:
        transport.close()


# -- a load process ------------------------------------------------------------------------


async def run_calls(
    kind: str, ports: Sequence[int], calls: int, indices: Sequence[int], schedule: Schedule
) -> list[CallRecord]:
    """Run calls ``indices`` of ``calls`` (call ``i`` dials ``ports[i % len(ports)]``)."""
    records = [CallRecord(index=i) for i in indices]
    running = []
    for record in records:
        i = record.index
        start, phase = schedule.start_of(i, calls), FRAME_SECONDS * i / calls
        port = ports[i % len(ports)]
        if kind == "websocket":
            running.append(websocket_call(port, record, start, phase, schedule))
        elif kind == "native":
            running.append(native_call(port, record, start, phase, schedule))
        else:
            running.append(
                client_call(port, record, start, phase, schedule, kind == "webtransport")
            )
    await asyncio.gather(*running)
    return records


def share(calls: int, processes: int, which: int) -> list[int]:
    """The calls process ``which`` of ``processes`` runs: every ``processes``-th, so each
    process's phases spread over the whole period."""
    return list(range(which, calls, processes))


def load_process_main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.load.echo_calls``: one load process (see the module doc)."""
    parser = argparse.ArgumentParser(description="one echo-call load process")
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--ports", required=True, help="comma-separated backend ports")
    parser.add_argument("--calls", type=int, required=True, help="calls in all processes")
    parser.add_argument("--process", type=int, default=0, help="this process's number")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--loop", default="asyncio")
    args = parser.parse_args(argv)
    from quicvoice.asyncio.loops import run

    # Import the caller's modules before ``ready``: the schedule starts right after it.
    if args.kind == "websocket":
        import websockets.asyncio.client  # noqa: F401
    elif args.kind == "native":
        from quicvoice.engine_ngtcp2 import require

        require()
        import quicvoice.session.messages  # noqa: F401
    else:
        import quicvoice.asyncio.client  # noqa: F401
    print("ready", flush=True)
    schedule = Schedule.from_json(sys.stdin.readline())
    ports = [int(port) for port in args.ports.split(",")]
    indices = share(args.calls, args.processes, args.process)
    records = run(run_calls(args.kind, ports, args.calls, indices, schedule), args.loop)
    # Written by hand: under uvloop, print() of a line longer than the pipe (64 KiB) lost the
    # rest after a partial write; os.write says how much went.
    line = memoryview((json.dumps([record.to_dict() for record in records]) + "\n").encode())
    sys.stdout.flush()
    for _ in range(len(line)):  # bounded: every round writes at least one octet
        if not line:
            break
        line = line[os.write(sys.stdout.fileno(), line) :]
    return 0


# -- the parent's side ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LoadProcesses:
    """``processes`` load processes running ``calls`` calls of ``kind`` between them."""

    def __init__(
        self, kind: str, ports: Sequence[int], calls: int, processes: int, loop: str
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"load kind {kind!r} is not one of {', '.join(KINDS)}")
        processes = max(1, min(processes, calls))
        self.kind = kind
        self.procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.load.echo_calls",
                    "--kind",
                    kind,
                    "--ports",
                    ",".join(map(str, ports)),
                    "--calls",
                    str(calls),
                    "--process",
                    str(which),
                    "--processes",
                    str(processes),
                    "--loop",
                    loop,
                ],  # fmt: skip
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            for which in range(processes)
        ]

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until every process has imported what it needs (bounded)."""
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            assert proc.stdout is not None
            ready, _, _ = select.select(
                [proc.stdout], [], [], max(0.0, deadline - time.monotonic())
            )
            if not ready or proc.stdout.readline().strip() != "ready":
                raise ChildProcessError(f"a {self.kind} load process did not start")

    def start(self, schedule: Schedule) -> None:
        """Hand every process the schedule."""
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(schedule.to_json() + "\n")
            proc.stdin.close()
            proc.stdin = None  # communicate() would flush it

    def cpu_seconds(self) -> float:
        """CPU seconds all load processes used so far."""
        return sum(cpu_seconds(proc.pid) for proc in self.procs)

    def records(self, timeout: float) -> list[CallRecord]:
        """Every call's record, in call order, once the processes are done."""
        deadline = time.monotonic() + timeout
        records = []
        for proc in self.procs:
            out, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            if proc.returncode != 0 or not out.strip():
                raise ChildProcessError(f"a {self.kind} load process failed ({proc.returncode})")
            records += [CallRecord.from_dict(values) for values in json.loads(out.splitlines()[-1])]
        return sorted(records, key=lambda record: record.index)

    def kill(self) -> None:
        """End every process still running (after an error)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


if __name__ == "__main__":
    sys.exit(load_process_main())
