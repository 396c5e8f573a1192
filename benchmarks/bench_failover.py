"""Backend kill to audio flowing again, with the session state intact; beside a WebSocket design.

    python benchmarks/bench_failover.py [--runs 10] [--quick] [--modes icmp,probes,...]

quicvoice: a forwarder and two backends (``quicvoice serve`` processes) share a Redis session
store. A call on backend A takes an order and streams 20 ms frames; A is killed (SIGKILL).
Three ways of noticing are measured:
- ``orchestrator``: whatever watches the backends marks A down at once (config + SIGHUP); the
  forwarder then answers A's packets with stateless resets and the client reconnects;
- ``icmp``: the forwarder's default: A's kernel answers the next datagram to A's closed port
  with ICMP port unreachable, the forwarder reads it from its backend socket's error queue
  (lb/errqueue.py), probes A at once and, when A's kernel refuses that probe too (or A answers
  nothing within 0.5 s), answers A's packets with stateless resets (the client's own check is
  set to 5 s);
- ``probes``: health probes alone (``health_icmp = false``: what a host death looks like) find A
  silent after 1 s and answer its packets with stateless resets (the client's check 5 s);
- ``client``: nobody tells the forwarder and probes are off; the client notices the silence itself
  (``liveness_timeout`` 0.5 s) and retries until a first flight lands on B.
Reported per run: detection (kill to the client giving up the connection), handshake (new
QUIC + TLS handshake), resume (token check and state load from Redis until ``welcome``), and
the total from the kill to ``welcome``, after which the kept frames go out at once. Every run
checks that the cart came back.

WebSocket: the same call over TLS WebSocket (``websockets``) through a TCP balancer that hashes
the 4-tuple, two backend processes, the cart in the same Redis under a session ID the client
presents when it reconnects. Killing the backend closes the TCP connection at once on
loopback; the client reconnects until it lands on the live backend. Same phases, same clock.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

A, B = "0a000001", "0a000002"
QUIC_KEY = "8f95f09245765f80256934e50c66207f"
FRAME = bytes(640)
ITEM = {"item": "taro milk tea", "size": "large", "milk": "oat"}
#: The rows, in table order (``tcp-close`` is the WebSocket design).
MODES = ("orchestrator", "icmp", "probes", "client", "tcp-close")


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Redis:
    """A redis-server child process for the benchmark."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is needed (scripts/test installs it)")
        self.port = free_port(socket.SOCK_STREAM)
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def url(self, prefix: str) -> str:
        return f"redis://127.0.0.1:{self.port}/0?prefix={prefix}"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@dataclass(frozen=True)
class Run:
    design: str
    mode: str
    detection_ms: float
    handshake_ms: float
    resume_ms: float
    total_ms: float
    attempts: int
    cart_intact: bool


# -- quicvoice ------------------------------------------------------------------------------


class QuicCluster:
    def __init__(
        self, directory: Path, store_url: str, probes: bool = False, icmp: bool = False
    ) -> None:
        self.probes = probes or icmp
        self.icmp = icmp
        self.path = directory / "cluster.toml"
        self.vip = ("127.0.0.1", free_port())
        self.backend_listen = free_port()
        self.ports = {A: free_port(), B: free_port()}
        self.store_url = store_url
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def write(self, down: set[str]) -> None:
        lines = [
            f'listen = "127.0.0.1:{self.vip[1]}"',
            f'backend_listen = "127.0.0.1:{self.backend_listen}"',
            f'reset_key = "{bytes(range(32)).hex()}"',
            f'session_store = "{self.store_url}"',
            'log_level = "error"',
            # Probes only where they are the mode measured: the others isolate one mechanism.
            f"health_interval = {0.2 if self.probes else 0}",
            f"health_icmp = {'true' if self.icmp else 'false'}",
            "[[configs]]", "id = 0", "server_id_len = 4", "nonce_len = 12", f'key = "{QUIC_KEY}"',
        ]  # fmt: skip
        for sid, port in self.ports.items():
            lines += ["[[backends]]", f'server_id = "{sid}"', f'address = "127.0.0.1:{port}"']
            if sid in down:
                lines.append("down = true")
        self.path.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        self.write(down={B})
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        self.processes["lb"] = subprocess.Popen(
            [sys.executable, "-m", "lb", "--config", str(self.path)],
            **quiet,  # type: ignore[call-overload]
        )
        for sid in (A, B):
            process = subprocess.Popen(
                [sys.executable, "-m", "quicvoice.cli", "serve", "--config", str(self.path),
                 "--server-id", sid],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            assert process.stdout is not None
            process.stdout.readline()
            self.processes[sid] = process
        time.sleep(0.3)  # the forwarder binds its sockets

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait()


async def quic_run(redis: Redis, mode: str, index: int) -> Run:
    from quicvoice.asyncio.client import connect

    with tempfile.TemporaryDirectory() as directory:
        cluster = QuicCluster(
            Path(directory),
            redis.url(f"q{index}{mode[0]}:"),
            probes=mode == "probes",
            icmp=mode == "icmp",
        )
        cluster.start()
        try:
            # With probes, the client's own check is set long so that the forwarder's acts first.
            liveness = 5.0 if mode in ("probes", "icmp") else 0.5
            async with connect(*cluster.vip, verify=False, liveness_timeout=liveness) as call:
                assert call.session is not None and call.session.server_id == A
                call.send_event("order.add", ITEM)
                await call.wait_event("order.cart")
                loop = asyncio.get_running_loop()

                async def speak() -> None:
                    while True:
                        call.send_audio(FRAME)
                        await asyncio.sleep(0.02)

                speaking = loop.create_task(speak())
                if mode != "orchestrator":
                    # B comes up before the kill, so that the reload does not race the
                    # detection (the call stays on A: its CIDs carry A's server ID).
                    cluster.write(down=set())
                    cluster.processes["lb"].send_signal(signal.SIGHUP)
                await asyncio.sleep(0.5)
                killed_at = loop.time()
                cluster.processes[A].send_signal(signal.SIGKILL)
                if mode == "orchestrator":  # whoever watches marks A down and B up at once
                    cluster.write(down={A})
                    cluster.processes["lb"].send_signal(signal.SIGHUP)
                await call.wait_resumed(timeout=20)
                resumption = call.resumptions[0]
                call.send_event("order.list")
                cart = await call.wait_event("order.cart")
                speaking.cancel()
        finally:
            cluster.stop()
    return Run(
        design="quicvoice",
        mode=mode,
        detection_ms=(resumption.declared_dead_at - killed_at) * 1000,
        handshake_ms=resumption.handshake_ms,
        resume_ms=resumption.resume_ms,
        total_ms=(resumption.declared_dead_at - killed_at) * 1000 + resumption.gap_ms,
        attempts=resumption.attempts,
        cart_intact=cart.data == {"items": [ITEM]},
    )


# -- WebSocket ------------------------------------------------------------------------------


async def ws_serve(port: int, store_url: str, certificate: str, key: str) -> None:
    """A WebSocket voice backend keeping the cart in Redis under the client's session ID."""
    import websockets

    from quicvoice.store import open_store, pack_state, unpack_state
    from quicvoice.store.base import SessionRecord

    store = open_store(store_url)

    async def handler(websocket: Any) -> None:
        session_id = ""
        cart: list[Any] = []
        record: SessionRecord | None = None
        async for message in websocket:
            if isinstance(message, bytes):
                continue
            request = json.loads(message)
            if request["type"] == "hello":
                session_id = request["session_id"]
                record = await store.load(session_id)
                cart = unpack_state(record.state)["cart"] if record else []
                await websocket.send(json.dumps({"type": "welcome", "backend": port}))
            elif request["type"] in ("order.add", "order.list"):
                if request["type"] == "order.add":
                    cart.append(request["data"])
                    state = pack_state({"cart": cart})
                    new = (
                        record.successor(state=state)
                        if record
                        else SessionRecord.new(session_id, state, expires_at=time.time() + 600)
                    )
                    record = await store.save(new, record.version if record else 0)
                await websocket.send(json.dumps({"type": "order.cart", "items": cart}))

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    async with websockets.serve(handler, "127.0.0.1", port, ssl=context):
        print("ready", flush=True)
        await asyncio.Event().wait()


async def ws_run(redis: Redis, index: int, directory: Path, cert: tuple[str, str]) -> Run:
    import websockets

    del directory
    ports = [free_port(socket.SOCK_STREAM) for _ in range(2)]
    url = redis.url(f"w{index}:")
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, "--ws-serve", str(port), url, *cert],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for port in ports
    ]
    for process in processes:
        assert process.stdout is not None
        process.stdout.readline()

    async def balance(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("peername")
        key = f"{client[0]}:{client[1]}".encode()
        port = ports[hashlib.blake2b(key, digest_size=8).digest()[0] % 2]
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            sink.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except asyncio.CancelledError:
            pass  # the benchmark is shutting the balancer down

    balancer = await asyncio.start_server(balance, "127.0.0.1", 0)
    uri = f"wss://127.0.0.1:{balancer.sockets[0].getsockname()[1]}/"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    session_id = os.urandom(8).hex()
    loop = asyncio.get_running_loop()
    handshake_ms = resume_ms = 0.0

    async def open_call() -> tuple[Any, int]:
        nonlocal handshake_ms, resume_ms
        started = loop.time()
        websocket = await websockets.connect(uri, ssl=context)
        shaken = loop.time()
        await websocket.send(json.dumps({"type": "hello", "session_id": session_id}))
        welcome = json.loads(await websocket.recv())
        handshake_ms, resume_ms = (shaken - started) * 1000, (loop.time() - shaken) * 1000
        return websocket, int(welcome["backend"])

    try:
        websocket, home = await open_call()
        await websocket.send(json.dumps({"type": "order.add", "data": ITEM}))
        await websocket.recv()

        async def speak() -> None:
            while True:
                await websocket.send(FRAME)
                await asyncio.sleep(0.02)

        speaking = loop.create_task(speak())
        await asyncio.sleep(0.5)
        killed_at = loop.time()
        processes[ports.index(home)].send_signal(signal.SIGKILL)
        try:
            await websocket.recv()  # the call's connection closes when its backend dies
        except websockets.ConnectionClosed:
            pass
        detected_at = loop.time()
        speaking.cancel()
        attempts = 0
        while True:
            attempts += 1
            try:
                websocket, home = await open_call()
                break
            except (OSError, websockets.InvalidHandshake, websockets.ConnectionClosed):
                await asyncio.sleep(0.05)
        await websocket.send(json.dumps({"type": "order.list"}))
        cart = json.loads(await websocket.recv())["items"]
        welcome_at = loop.time()
        await websocket.close()
    finally:
        balancer.close()
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    return Run(
        design="websocket",
        mode="tcp-close",
        detection_ms=(detected_at - killed_at) * 1000,
        handshake_ms=handshake_ms,
        resume_ms=resume_ms,
        total_ms=(welcome_at - killed_at) * 1000,
        attempts=attempts,
        cart_intact=cart == [ITEM],
    )


# -- report ---------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per design and mode")
    parser.add_argument("--quick", action="store_true", help="2 runs each")
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"comma-separated rows to measure (default: all of {', '.join(MODES)})",
    )
    parser.add_argument("--ws-serve", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ws_serve:
        port, url, cert, key = args.ws_serve
        asyncio.run(ws_serve(int(port), url, cert, key))
        return 0
    runs = 2 if args.quick else args.runs
    modes = [mode for mode in args.modes.split(",") if mode]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"--modes: unknown {', '.join(sorted(unknown))} (known: {', '.join(MODES)})")
    from quicvoice.certificates import generate_certificate

    redis = Redis()
    results: list[Run] = []
    try:
        with tempfile.TemporaryDirectory() as directory:
            certificate = generate_certificate()
            cert_path, key_path = Path(directory) / "cert.pem", Path(directory) / "key.pem"
            cert_path.write_bytes(certificate.certificate_pem())
            key_path.write_bytes(certificate.private_key_pem())
            for index in range(runs):
                for mode in modes:
                    if mode == "tcp-close":
                        paths = (str(cert_path), str(key_path))
                        results.append(asyncio.run(ws_run(redis, index, Path(directory), paths)))
                    else:
                        results.append(asyncio.run(quic_run(redis, mode, index)))
    finally:
        redis.stop()
    print(f"Backend killed mid-call, {runs} runs each; loopback; times in ms, p50 / p95")
    print()
    print(
        "| design | who notices | detection | handshake | resume (state load) | kill to "
        "welcome | attempts (max) | cart intact |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for design, mode, who in (
        ("quicvoice", "orchestrator", "orchestrator marks it down; forwarder resets"),
        ("quicvoice", "icmp", "forwarder: ICMP port unreachable, confirmed by a probe; resets"),
        ("quicvoice", "probes", "forwarder health probes (0.2 s, 1 s timeout); forwarder resets"),
        ("quicvoice", "client", "client (0.5 s of silence)"),
        ("websocket", "tcp-close", "TCP connection closes"),
    ):
        rows = [r for r in results if r.design == design and r.mode == mode]
        if not rows:
            continue
        cells = []
        for name in ("detection_ms", "handshake_ms", "resume_ms", "total_ms"):
            values = [getattr(r, name) for r in rows]
            cells.append(f"{statistics.median(values):.0f} / {percentile(values, 0.95):.0f}")
        intact = sum(r.cart_intact for r in rows)
        attempts = max(r.attempts for r in rows)
        print(f"| {design} | {who} | {' | '.join(cells)} | {attempts} | {intact}/{len(rows)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
