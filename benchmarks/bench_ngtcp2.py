"""Server CPU per echoed voice frame: the ngtcp2 engine prototype beside a WebSocket echo, one run.

    python benchmarks/bench_ngtcp2.py [--levels 60,100] [--seconds 10] [--load-processes 2]
                                      [--quic-load ngtcp2|aioquic]

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
Each server runs alone in a subprocess and prints, once a second, its echo count and its own
CPU time (getrusage); CPU per frame = CPU delta / echo delta over the steady window (the first
2 s skipped). The load runs in ``--load-processes`` other processes: for WebSocket,
``websockets`` clients; for QUIC (``--quic-load``), by default ngtcp2 client connections
(``quicvoice._ngtcp2.client``, cheap enough to leave the cores to the server), each echo read
just before the next frame so that its ACK rides in that frame's packet: one packet per frame
each way, as the project's client sends; or ``aioquic``: the client's
``quicvoice.quic.VoiceQuicConnection`` (the same one-packet pattern) without the call machine,
which on a shared 2-core machine cannot keep 60 calls at 50 frames/s (see
specs/engine-ngtcp2.md).
Calls per core = 1 s / (50 × CPU per frame). The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import ssl
import subprocess
import sys
import time
from typing import Any

FRAME_PAYLOAD = bytes(640)
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


async def serve_ngtcp2(port: int) -> None:
    from cryptography.hazmat.primitives import serialization

    from quicvoice.certificates import generate_certificate
    from quicvoice.engine_ngtcp2.echo import EchoSession, StreamSink
    from quicvoice.engine_ngtcp2.endpoint import EngineConfig, Ngtcp2Endpoint
    from quicvoice.engine_ngtcp2.server import Ngtcp2Server
    from quicvoice.quiclb import LoadBalancerConfig

    sessions: list[EchoSession] = []

    def application(sink: StreamSink, server_id: str) -> EchoSession:
        session = EchoSession(sink, server_id)
        sessions.append(session)
        return session

    certificate = generate_certificate()
    config = EngineConfig(
        local=("127.0.0.1", port),
        server_id=bytes.fromhex("0a0b0c0d"),
        lb_config=LoadBalancerConfig(0, 4, 12, os.urandom(16)),
        reset_key=os.urandom(32),
        certificate=certificate.certificate.public_bytes(serialization.Encoding.PEM),
        private_key=certificate.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    server = Ngtcp2Server(config, Ngtcp2Endpoint(config, application=application))
    await server.start()
    print("ready", flush=True)
    await report_forever(lambda: sum(session.echoed for session in sessions))


async def serve_voice(port: int) -> None:
    from cryptography.hazmat.primitives import serialization

    from quicvoice.asyncio.server import ServerSession
    from quicvoice.certificates import generate_certificate
    from quicvoice.engine_ngtcp2.endpoint import EngineConfig
    from quicvoice.engine_ngtcp2.voice_server import Ngtcp2VoiceServer
    from quicvoice.quiclb import LoadBalancerConfig
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

    certificate = generate_certificate()
    config = EngineConfig(
        local=("127.0.0.1", port),
        server_id=bytes.fromhex("0a0b0c0d"),
        lb_config=LoadBalancerConfig(0, 4, 12, os.urandom(16)),
        reset_key=os.urandom(32),
        certificate=certificate.certificate.public_bytes(serialization.Encoding.PEM),
        private_key=certificate.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
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


# -- load (subprocess) -------------------------------------------------------------------------


async def load_quic(port: int, calls: int, stop_at: float) -> int:
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import StreamDataReceived

    from quicvoice.quic import VoiceQuicConnection
    from quicvoice.session.messages import Hello, encode_message
    from quicvoice.session.wire import MediaFrame, StreamKind, encode_frame, encode_stream_header

    loop = asyncio.get_running_loop()
    server = ("127.0.0.1", port)
    received = 0

    class Call(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            configuration = QuicConfiguration(
                is_client=True, alpn_protocols=["quicvoice/1"], verify_mode=ssl.CERT_NONE
            )
            self.quic = VoiceQuicConnection(configuration=configuration)
            self.transport: Any = None
            self.timer: asyncio.TimerHandle | None = None
            self.welcomed = asyncio.Event()

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.quic.connect(server, loop.time())
            self.quic.send_stream_data(0, encode_message(Hello()))
            self.transmit()

        def datagram_received(self, data: bytes, addr: Any) -> None:
            nonlocal received
            self.quic.receive_datagram(data, addr, loop.time())
            while (event := self.quic.next_event()) is not None:
                if isinstance(event, StreamDataReceived):
                    if event.stream_id == 0:
                        self.welcomed.set()
                    elif event.stream_id % 4 == 3:
                        # Turn header (2 octets) first, then 2 + 8 + 640 octets a frame.
                        received += len(event.data) // 650
            self.transmit()

        def transmit(self) -> None:
            for data, addr in self.quic.datagrams_to_send(loop.time()):
                self.transport.sendto(data, addr)
            when = self.quic.get_timer()
            if self.timer is not None:
                self.timer.cancel()
            self.timer = loop.call_at(when, self.on_timer) if when is not None else None

        def on_timer(self) -> None:
            self.timer = None
            self.quic.handle_timer(loop.time())
            self.transmit()

    async def one(index: int) -> None:
        _, call = await loop.create_datagram_endpoint(Call, remote_addr=server)
        await asyncio.wait_for(call.welcomed.wait(), 10)
        uplink = call.quic.get_next_available_stream_id(is_unidirectional=True)
        call.quic.send_stream_data(uplink, encode_stream_header(StreamKind.UPLINK))
        period = 1.0 / RATE
        t = loop.time() + (index % 50) * period / 50
        seq = 0
        while time.monotonic() < stop_at:
            await asyncio.sleep(max(0.0, t - loop.time()))
            call.quic.send_stream_data(
                uplink, encode_frame(MediaFrame(seq, seq * 320, FRAME_PAYLOAD))
            )
            call.transmit()
            seq += 1
            t += period
        await asyncio.sleep(0.3)
        call.transport.close()

    await asyncio.gather(*(one(i) for i in range(calls)))
    return received


async def load_quic_native(port: int, calls: int, stop_at: float) -> int:
    """Calls on ngtcp2 client connections (quicvoice._ngtcp2.client): a cheap load. Echoes are
    fed to ngtcp2 just before the next frame is written, so the ACK rides in that frame's
    packet: one packet per frame each way, as the project's client does."""
    from quicvoice import _ngtcp2 as native
    from quicvoice.session.messages import Hello, encode_message
    from quicvoice.session.wire import MediaFrame, StreamKind, encode_frame, encode_stream_header

    loop = asyncio.get_running_loop()
    server = ("127.0.0.1", port)
    turn_octets = 0

    def new_cid(length: int) -> tuple[bytes, bytes]:
        return os.urandom(length), os.urandom(16)

    class Call(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.conn: Any = None
            self.transport: Any = None
            self.timer: asyncio.TimerHandle | None = None
            self.inbox: list[bytes] = []
            self.control = -1
            self.welcomed = asyncio.Event()

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            local = transport.get_extra_info("sockname")[:2]
            self.conn = native.client(
                b"quicvoice/1",
                "localhost",
                local,
                server,
                time.monotonic_ns(),
                new_cid,
                lambda cid: None,
                30_000,
            )
            self.flush()

        def datagram_received(self, data: bytes, addr: Any) -> None:
            if self.welcomed.is_set():
                self.inbox.append(data)
                return
            self.take(data)
            self.flush()

        def take(self, data: bytes) -> None:
            nonlocal turn_octets
            _, events = self.conn.receive(data, server, time.monotonic_ns())
            for stream_id, payload, _fin in events:
                if stream_id == self.control:
                    self.welcomed.set()
                elif stream_id % 4 == 3:
                    turn_octets += len(payload)
            if self.control < 0 and self.conn.handshake_completed:
                self.control = self.conn.open_bidi_stream()
                self.conn.send_stream(self.control, encode_message(Hello()))

        def flush(self) -> None:
            _, out = self.conn.flush(time.monotonic_ns())
            for data, _ in out:
                self.transport.sendto(data)
            expiry = self.conn.expiry
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if expiry is not None:
                delay = max(0.0, (expiry - time.monotonic_ns()) / 1e9)
                self.timer = loop.call_later(delay, self.on_timer)

        def on_timer(self) -> None:
            self.timer = None
            self.conn.handle_expiry(time.monotonic_ns())
            self.flush()

        def send(self, stream_id: int, data: bytes) -> None:
            for datagram in self.inbox:
                self.take(datagram)
            self.inbox.clear()
            self.conn.send_stream(stream_id, data)
            self.flush()

    async def one(index: int) -> None:
        _, call = await loop.create_datagram_endpoint(Call, remote_addr=server)
        await asyncio.wait_for(call.welcomed.wait(), 10)
        uplink = call.conn.open_uni_stream()
        call.conn.send_stream(uplink, encode_stream_header(StreamKind.UPLINK))
        period = 1.0 / RATE
        t = loop.time() + (index % 50) * period / 50
        seq = 0
        while time.monotonic() < stop_at:
            await asyncio.sleep(max(0.0, t - loop.time()))
            call.send(uplink, encode_frame(MediaFrame(seq, seq * 320, FRAME_PAYLOAD)))
            seq += 1
            t += period
        await asyncio.sleep(0.3)
        call.send(uplink, b"")
        if call.timer is not None:
            call.timer.cancel()
        call.transport.close()

    await asyncio.gather(*(one(i) for i in range(calls)))
    return turn_octets // (2 + 8 + len(FRAME_PAYLOAD))


async def load_websocket(port: int, calls: int, stop_at: float) -> int:
    from websockets.asyncio.client import connect

    received = 0
    loop = asyncio.get_running_loop()

    async def one(index: int) -> None:
        nonlocal received
        async with connect(f"ws://127.0.0.1:{port}", compression=None, max_queue=64) as ws:

            async def reader() -> None:
                nonlocal received
                async for _ in ws:
                    received += 1

            reading = asyncio.create_task(reader())
            period = 1.0 / RATE
            t = loop.time() + (index % 50) * period / 50
            while time.monotonic() < stop_at:
                await asyncio.sleep(max(0.0, t - loop.time()))
                await ws.send(FRAME_PAYLOAD)
                t += period
            await asyncio.sleep(0.3)
            reading.cancel()

    await asyncio.gather(*(one(i) for i in range(calls)))
    return received


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
    loads: list[subprocess.Popen[str]] = []
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise SystemExit(f"{backend} server did not start")
        stop_at = time.monotonic() + seconds + 3.0
        shares = [calls // processes + (i < calls % processes) for i in range(processes)]
        for share in shares:
            loads.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--load",
                        backend,
                        "--port",
                        str(port),
                        "--calls",
                        str(share),
                        "--stop-at",
                        str(stop_at),
                        "--quic-load",
                        quic_load,
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        stats: list[tuple[float, int, float, float]] = []
        while time.monotonic() < stop_at + 1.5:
            line = server.stdout.readline()
            if not line:
                break
            _, t, n, user, system = line.split()
            stats.append((float(t), int(n), float(user), float(system)))
        received = 0
        for load in loads:
            out, _ = load.communicate(timeout=30)
            received += int(out.strip().splitlines()[-1])
    finally:
        server.kill()
        server.wait()
        for load in loads:
            if load.poll() is None:
                load.kill()
                load.wait()
    window = [s for s in stats if s[1] > 0 and s[0] < stop_at - 0.5][2:]
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
    parser.add_argument("--load", choices=BACKENDS)
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"which of {', '.join(BACKENDS)} to run, in this order (default: all)",
    )
    parser.add_argument(
        "--quic-load",
        choices=["ngtcp2", "aioquic"],
        default="ngtcp2",
        help="QUIC load clients: ngtcp2 (cheap, default) or aioquic (VoiceQuicConnection)",
    )
    parser.add_argument("--calls", type=int, default=0)
    parser.add_argument("--stop-at", type=float, default=0.0)
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
    if args.load is not None:
        if args.load == "websocket":
            load = load_websocket
        else:
            load = load_quic_native if args.quic_load == "ngtcp2" else load_quic
        print(asyncio.run(load(args.port, args.calls, args.stop_at)), flush=True)
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
