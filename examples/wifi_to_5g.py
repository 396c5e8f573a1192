"""The Wi-Fi to 5G demo: a voice call that moves networks mid-sentence and loses nothing.

    python examples/wifi_to_5g.py [--plot latency.png] [--json] [--no-contrast]
    sudo python examples/wifi_to_5g.py --netns [--break-before-make] [--cell-delay-ms 50]
        [--cell-loss 1] [--seed 1] [--uplink realtime]

It starts a QUIC-LB forwarder and two backends as subprocesses on loopback, places a call from
127.0.0.2 ("Wi-Fi") that orders a drink while it streams speech, moves the call to 127.0.0.3
("5G") in the middle of the sentence, and prints a timeline: handshake, migration gap, frames
sent and delivered, the backend before and after, the cart. Then it plays the same scenario
over a plain WebSocket (TCP) behind a load balancer that hashes the 4-tuple, as voice agents
are commonly built, for contrast. Every process it starts is stopped on exit or Ctrl-C.
No root and no external service are needed.

With ``--netns`` (root) the same call runs over real interfaces: network namespaces for the
client, a router and the server (forwarder and backends share it); the client has ``wifi0``
(a plain veth) and ``cell0``, which reaches the server through a userspace delay-and-loss line
(50 ms each way and 1 % loss by default; ``quicvoice.netlab``, specs/netlab.md). The move to
5G binds the call's new socket to the cell0 address, so the kernel routes it out of another
interface; wifi0 is deleted after the move (make-before-break) or, with
``--break-before-make``, without warning before it. Everything is torn down on exit.

``--uplink realtime`` sends the speech as Opus (48 kHz, 32 kbit/s, in-band FEC) in QUIC
datagrams instead of L16 on a reliable stream. The backend's agent listens through the
session's jitter buffer, pulled once per frame period, and records what it played
(``quicvoice serve --record-uplink``); the demo then reports the concealment ratio, frames
rebuilt by FEC or concealed, and PESQ (ITU-T P.862.2 wideband at 16 kHz, and P.862.1
narrowband at 8 kHz; needs the ``pesq`` package of the ``dev`` extra) of the played-out
speech against the original, next to the PESQ of the codec alone (no network).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quicvoice.asyncio.call import encode_frames, read_wav
from quicvoice.asyncio.client import connect
from quicvoice.audio.codecs import make_codec
from quicvoice.audio.frames import Pcm
from quicvoice.audio.quality import (
    align,
    codec_round_trip,
    encode_stream,
    estimate_lag,
    resample_signal,
)
from quicvoice.session.events import TurnEnded
from quicvoice.session.messages import Hello, UplinkMode

WIFI, CELLULAR = "127.0.0.2", "127.0.0.3"
SERVER_IDS = ("0a000001", "0a000002")
SENTENCE = (
    "Hi! I would like a large taro milk tea with oat milk and seventy five percent sugar, "
    "and also a matcha latte, please."
)
ORDER = [
    {"item": "taro milk tea", "size": "large", "milk": "oat", "sugar": "75%"},
    {"item": "matcha latte", "size": "medium"},
]
CODEC = "L16/16000"
RATE = 16000
#: The realtime uplink's codec: Opus with in-band FEC (quicvoice.audio.opus.OpusConfig).
REALTIME_CODEC = "opus/48000"
UPLINKS = ("reliable", "realtime")
FRAME_SECONDS = 0.020
START_TIMEOUT = 10.0
#: How long an answer over the cellular link (after the move: session info, the cart, the
#: goodbye, the reports) may take. Over 100 ms each way with 5-10 % loss a control message can
#: need several backed-off retransmissions, and the reliable reply turn (L16, 256 kbit/s) is
#: congestion-limited: the library's 5 s default was exceeded in some runs there.
END_TIMEOUT = 30.0
QUIC_KEY = "8f95f09245765f80256934e50c66207f"


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A free loopback port (UDP by default)."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Timeline:
    """Prints what happens, with the time since the demo started."""

    def __init__(self, quiet: bool) -> None:
        self.start = time.monotonic()
        self.quiet = quiet

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"  {time.monotonic() - self.start:7.3f} s  {text}", flush=True)

    def heading(self, text: str) -> None:
        if not self.quiet:
            print(f"\n{text}\n{'-' * len(text)}", flush=True)


# -- the QUIC cluster: a forwarder and two backends, as subprocesses ---------------------------


@dataclass
class Cluster:
    """``quicvoice-lb`` and two ``quicvoice serve`` processes from one shared TOML file."""

    directory: Path
    vip: tuple[str, int] = ("127.0.0.1", 0)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    metrics_port: int = 0
    #: --netns: the network namespace every process runs in, and the forwarder's address there.
    namespace: str | None = None
    listen_host: str = "127.0.0.1"

    @property
    def record_dir(self) -> Path:
        """Where the backends write each realtime session's played-out uplink (a WAV)."""
        return self.directory / "uplink"

    def write_config(self) -> Path:
        self.vip = (self.listen_host, free_port())
        self.metrics_port = free_port(socket.SOCK_STREAM)
        lines = [
            f'listen = "{self.listen_host}:{self.vip[1]}"',
            f'backend_listen = "127.0.0.1:{free_port()}"',
            f'metrics = "127.0.0.1:{self.metrics_port}"',
            f'reset_key = "{os.urandom(32).hex()}"',
            'log_level = "warning"',
            "[[configs]]",
            "id = 0",
            "server_id_len = 4",
            "nonce_len = 12",
            f'key = "{QUIC_KEY}"',
        ]
        for server_id in SERVER_IDS:
            lines += [
                "[[backends]]",
                f'server_id = "{server_id}"',
                f'address = "127.0.0.1:{free_port()}"',
            ]
        path = self.directory / "cluster.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _argv(self, argv: list[str]) -> list[str]:
        # `ip netns exec` execs the command: the PID stays the one to signal.
        return argv if self.namespace is None else ["ip", "netns", "exec", self.namespace, *argv]

    def _metrics_ready(self) -> None:
        def probe() -> None:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1):
                pass

        if self.namespace is None:
            probe()
        else:
            from quicvoice.netlab import run_in_namespace

            run_in_namespace(self.namespace, probe)

    def start(self) -> None:
        path = self.write_config()
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        forwarder = self._argv([sys.executable, "-m", "lb", "--config", str(path)])
        self.processes.append(
            subprocess.Popen(forwarder, **quiet)  # type: ignore[call-overload]
        )
        for server_id in SERVER_IDS:
            self.processes.append(
                subprocess.Popen(
                    self._argv(
                        [
                            sys.executable,
                            "-m",
                            "quicvoice.cli",
                            "serve",
                            "--config",
                            str(path),
                            "--server-id",
                            server_id,
                            "--record-uplink",
                            str(self.record_dir),
                        ]
                    ),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
            )
        for process in self.processes[1:]:
            assert process.stdout is not None
            if not process.stdout.readline():
                raise RuntimeError("a backend did not start")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self._metrics_ready()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the forwarder did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(3)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


@contextlib.contextmanager
def running_cluster(
    namespace: str | None = None, listen_host: str = "127.0.0.1"
) -> Iterator[Cluster]:
    with tempfile.TemporaryDirectory(prefix="quicvoice-demo-") as directory:
        cluster = Cluster(Path(directory), namespace=namespace, listen_host=listen_host)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


# -- speech --------------------------------------------------------------------------------


def speech(directory: Path) -> tuple[Pcm, str]:
    """The sentence as 16 kHz speech: espeak-ng when installed, else a speech-like signal."""
    espeak = shutil.which("espeak-ng")
    if espeak is not None:
        wav = directory / "sentence.wav"
        subprocess.run([espeak, "-s", "165", "-w", str(wav), SENTENCE], check=True)
        return read_wav(str(wav), RATE), "espeak-ng speech"
    # Without espeak-ng: syllables of a voiced, formant-shaped buzz, 4 per second.
    t = np.arange(int(6.0 * RATE)) / RATE
    pitch = 120 + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 25))
    envelope = np.clip(np.sin(2 * np.pi * 2.0 * t), 0, None) ** 2
    signal_ = 6000 * voiced * envelope / np.max(np.abs(voiced))
    return signal_.astype(np.int16), "a synthetic speech-like signal (espeak-ng not installed)"


def uplink_frames(samples: Pcm, uplink: str) -> list[bytes]:
    """The speech as uplink payloads: L16/16000 (reliable) or Opus with FEC (realtime)."""
    if uplink == "realtime":
        return encode_stream(samples, RATE, make_codec(REALTIME_CODEC))
    return encode_frames(CODEC, 20, samples)


#: Cross-correlation window and search range of the alignment (s): the first seconds, before
#: the move, and well beyond the codec chain's delay (Opus look-ahead + two resamplers).
ALIGN_WINDOW_SECONDS = 2.0
ALIGN_MAX_LAG_SECONDS = 0.06


def speech_quality(playout: dict[str, Any], reference: Pcm) -> dict[str, Any]:
    """PESQ of the uplink as the backend's jitter buffer played it, and of the codec alone.

    The recording starts with the first frame the buffer played; it was captured at
    ``first_sequence`` x 20 ms into the speech, which fixes the start. The codec chain's
    constant delay (16 -> 48 kHz, Opus, 48 -> 16 kHz: about 10 ms) is then found by
    cross-correlation over the first 2 s; the jitter buffer's later delay changes (frames
    inserted on underrun, removed by merging) are left to PESQ, which re-aligns per
    utterance. Wideband: ITU-T P.862.2 at 16 kHz; narrowband: P.862.1 at 8 kHz.
    """
    result: dict[str, Any] = {
        "pesq_modes": {"wb": "P.862.2, 16 kHz", "nb": "P.862.1, 8 kHz"},
        "alignment": "start from the first played sequence number, then cross-correlation",
    }
    try:
        from pesq import PesqError, pesq
    except ImportError:
        result["error"] = "the pesq package is not installed (the dev extra has it)"
        return result
    max_lag = int(ALIGN_MAX_LAG_SECONDS * RATE)
    window = int(ALIGN_WINDOW_SECONDS * RATE)

    def scores(ref: Pcm, deg: Pcm) -> dict[str, float | str]:
        out: dict[str, float | str] = {}
        narrow_ref, narrow_deg = resample_signal(ref, RATE, 8000), resample_signal(deg, RATE, 8000)
        for mode, rate, a, b in (("wb", RATE, ref, deg), ("nb", 8000, narrow_ref, narrow_deg)):
            try:
                out[mode] = round(float(pesq(rate, a.astype(float), b.astype(float), mode)), 3)
            except PesqError as error:
                out[mode] = f"error: {type(error).__name__}"
        return out

    codec_only = codec_round_trip(
        reference, RATE, make_codec(REALTIME_CODEC), make_codec(REALTIME_CODEC)
    )
    codec_alignment = align(reference, codec_only, max_lag=max_lag, window=window)
    result["codec_only"] = scores(codec_alignment.reference, codec_alignment.degraded)
    result["codec_lag_ms"] = round(codec_alignment.lag / RATE * 1000, 3)
    path, first = playout.get("recording"), playout.get("first_sequence")
    if not path or first is None:
        result["error"] = "the backend recorded nothing (no recording or nothing played)"
        return result
    played = resample_signal(read_wav(path, int(playout["rate"])), int(playout["rate"]), RATE)
    frame = int(RATE * FRAME_SECONDS)
    alignment = align(reference, played, start=first * frame, max_lag=max_lag, window=window)
    result["played"] = scores(alignment.reference, alignment.degraded)
    result["start_ms"] = round(alignment.start / RATE * 1000, 3)
    result["lag_ms"] = round(alignment.lag / RATE * 1000, 3)
    # How far the playout had drifted by the end (frames inserted minus removed), for
    # reading the score: the last 2 s against the same stretch of the original.
    tail = alignment.reference[-3 * window // 2 : -window // 4 or None]
    offset = len(alignment.reference) - 3 * window // 2
    if offset > 0 and len(tail):
        drift = estimate_lag(tail, alignment.degraded[offset:], int(0.5 * RATE))
        result["drift_at_end_ms"] = round(drift / RATE * 1000, 1)
    result["played_seconds"] = round(len(played) / RATE, 3)
    return result


# -- the QUIC call -------------------------------------------------------------------------


@dataclass
class QuicResult:
    handshake_ms: float
    server_before: str
    server_after: str
    peer_after: str
    migration_gap_ms: float
    frames_sent: int
    frames_delivered: int
    cart: list[dict[str, Any]]
    reply_frames: int
    send_times: dict[int, float]
    arrivals: dict[int, float]
    migrated_at: float
    #: The smoothed RTT at the end of the call, ms, and how many times the call resumed.
    rtt_ms: float = 0.0
    resumptions: int = 0
    #: "reliable" or "realtime"; realtime: the backend's playout report, the speech quality
    #: and the frames the client library dropped (queued too long).
    uplink: str = "reliable"
    playout: dict[str, Any] | None = None
    quality: dict[str, Any] | None = None
    frames_dropped: int = 0

    @property
    def longest_pause_ms(self) -> float:
        """The longest pause between uplink frames arriving within a second of the move."""
        times = sorted(t for t in self.arrivals.values() if abs(t - self.migrated_at) < 1.0)
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        return max(gaps, default=0.0) * 1000


@dataclass
class Network:
    """The two local addresses of the call and, with --netns, how the Wi-Fi one goes away."""

    wifi: str = WIFI
    cellular: str = CELLULAR
    #: Deletes the Wi-Fi interface (--netns); on loopback both addresses stay.
    drop_wifi: Callable[[], Awaitable[None]] | None = None
    #: Delete Wi-Fi first, without warning, and migrate ``notice_seconds`` later (the time the
    #: OS takes to tell the app); otherwise migrate first and delete Wi-Fi after the move.
    break_before_make: bool = False
    notice_seconds: float = 0.2


async def quic_call(
    vip: tuple[str, int],
    frames: list[bytes],
    timeline: Timeline,
    network: Network | None = None,
    uplink: str = "reliable",
    reference: Pcm | None = None,
) -> QuicResult:
    """The call. ``uplink="realtime"``: ``frames`` are Opus payloads sent as datagrams, and
    ``reference`` (the speech at 16 kHz) is what the played-out uplink is scored against."""
    network = network or Network()
    realtime = uplink == "realtime"
    timeline.heading(
        "quicvoice: QUIC through a stateless QUIC-LB forwarder"
        + (f" (realtime uplink: {REALTIME_CODEC} in datagrams)" if realtime else "")
    )
    hello = Hello(codecs=(REALTIME_CODEC,), uplink=UplinkMode.REALTIME) if realtime else None
    started = time.monotonic()
    async with connect(*vip, local_address=network.wifi, verify=False, hello=hello) as call:
        handshake_ms = (time.monotonic() - started) * 1000
        assert call.session is not None
        server_before = call.session.server_id
        timeline.say(
            f"call up from Wi-Fi ({call.local_address[0]}) in {handshake_ms:.1f} ms: "
            f"backend {server_before}, session {call.session.session_id}"
        )
        loop = asyncio.get_running_loop()
        send_times: dict[int, float] = {}
        migrate_at = len(frames) // 2

        async def speak() -> None:
            begin = loop.time()
            for index, payload in enumerate(frames):
                await asyncio.sleep(max(0.0, begin + index * FRAME_SECONDS - loop.time()))
                send_times[call.send_audio(payload)] = time.time()

        speaking = loop.create_task(speak())
        await asyncio.sleep(len(frames) * FRAME_SECONDS * 0.25)
        call.send_event("order.add", ORDER[0])
        cart = await call.wait_event("order.cart")
        timeline.say(
            f"order taken: {ORDER[0]['size']} {ORDER[0]['item']} -> cart {_items(cart.data)}"
        )
        await asyncio.sleep(
            max(0.0, migrate_at * FRAME_SECONDS - len(frames) * FRAME_SECONDS * 0.25)
        )
        timeline.say(
            f"Wi-Fi lost mid-sentence (frame {len(send_times)} of {len(frames)}): "
            f"moving to 5G ({network.cellular})"
        )
        migrated_at = time.time()
        if network.drop_wifi is not None and network.break_before_make:
            await network.drop_wifi()
            timeline.say(
                f"wifi0 deleted without warning; the app hears of it "
                f"{network.notice_seconds * 1000:.0f} ms later"
            )
            await asyncio.sleep(network.notice_seconds)
        migration = await call.migrate(network.cellular)
        timeline.say(
            f"on 5G ({migration.to_address}); the backend answered on the new path after "
            f"{migration.gap_ms:.1f} ms, while the audio kept flowing"
        )
        if network.drop_wifi is not None and not network.break_before_make:
            # Make-before-break: the old socket lingers ~1.5 RTT, then Wi-Fi goes away.
            rtt = (call.stats().rtt_smoothed_ms or 0.0) / 1000
            await asyncio.sleep(max(0.2, 3 * rtt))
            await network.drop_wifi()
            timeline.say("wifi0 deleted: the old interface and its routes are gone")
        call.send_event("session.info")
        info = (await call.wait_event("session.info", END_TIMEOUT)).data
        timeline.say(f"backend {info['server_id']} now sees the caller at {info['peer']}")
        call.send_event("order.add", ORDER[1])
        cart = await call.wait_event("order.cart", END_TIMEOUT)
        timeline.say(f"order taken: {ORDER[1]['item']} -> cart {_items(cart.data)}")
        await speaking
        if realtime:
            # No stream to finish: say how many frames were sent, so the agent knows when
            # its jitter buffer has played (or concealed) the last one.
            call.send_event("utterance.end", {"frames": call.stats().uplink_frames_sent})
        else:
            call.end_audio()
        while not isinstance(await call.receive(), TurnEnded):
            pass
        reply = call.stats().downlink_frames_received
        rtt_ms = call.stats().rtt_smoothed_ms or 0.0
        timeline.say(f"the agent's reply turn played: {reply} frames")
        delivered = await call.bye(timeout=END_TIMEOUT)
        call.send_event("session.arrivals")
        arrivals_data = (await call.wait_event("session.arrivals", END_TIMEOUT)).data
        call.send_event("order.list")
        cart = await call.wait_event("order.cart", END_TIMEOUT)
        playout = None
        if realtime:
            call.send_event("session.playout")
            playout = (await call.wait_event("session.playout", END_TIMEOUT)).data
        frames_sent = call.stats().uplink_frames_sent
        frames_dropped = call.stats().uplink_frames_dropped
        timeline.say(f"hung up: {frames_sent} frames sent, {delivered} delivered")
    quality = None
    if playout is not None:
        timeline.say(
            f"the agent's jitter buffer played {playout['frames']} frames: "
            f"{playout['concealment_ratio']:.1%} concealed (FEC {playout['fec_frames']}, "
            f"PLC {playout['plc_frames']}, expanded {playout['expand_frames']} frames)"
        )
        if reference is not None:
            quality = speech_quality(playout, reference)
            if "played" in quality:
                timeline.say(
                    f"PESQ (wideband) of what it played: {quality['played']['wb']}; "
                    f"of the codec alone: {quality['codec_only']['wb']}"
                )
    result = QuicResult(
        handshake_ms=handshake_ms,
        server_before=server_before,
        server_after=info["server_id"],
        peer_after=info["peer"],
        migration_gap_ms=migration.gap_ms,
        frames_sent=frames_sent,
        frames_delivered=delivered,
        cart=cart.data["items"],
        reply_frames=reply,
        send_times=send_times,
        arrivals=dict(zip(arrivals_data["seq"], arrivals_data["at"], strict=False)),
        migrated_at=migrated_at,
        rtt_ms=rtt_ms,
        resumptions=len(call.resumptions),
        uplink=uplink,
        playout=playout,
        quality=quality,
        frames_dropped=frames_dropped,
    )
    timeline.say(
        f"longest pause between uplink frames arriving around the move: "
        f"{result.longest_pause_ms:.1f} ms (frames are 20 ms apart)"
    )
    return result


def _items(data: Any) -> str:
    items = data.get("items", []) if isinstance(data, dict) else []
    return "[" + ", ".join(str(item.get("item")) for item in items) + "]"


# -- the contrast: WebSocket over TCP behind a 4-tuple-hashing balancer ---------------------


@dataclass
class TcpResult:
    handshake_ms: float
    reconnect_ms: float
    frames_sent: int
    frames_delivered: int
    frames_lost: int
    backend_before: int
    backend_after: int
    cart: list[dict[str, Any]]


class WebSocketAgent:
    """A typical WebSocket voice backend: its state lives in the connection."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.frames = 0

    async def handler(self, websocket: Any) -> None:
        import websockets

        cart: list[dict[str, Any]] = []
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in websocket:
                if isinstance(message, bytes):
                    self.frames += 1
                    continue
                request = json.loads(message)
                if request["type"] == "order.add":
                    cart.append(request["data"])
                if request["type"] in ("order.add", "order.list"):
                    await websocket.send(json.dumps({"type": "order.cart", "items": cart}))
                elif request["type"] == "hello":
                    await websocket.send(json.dumps({"type": "welcome", "backend": self.index}))


@contextlib.asynccontextmanager
async def tcp_cluster(
    listen: socket.socket | None = None,
) -> AsyncIterator[tuple[tuple[str, int], list[WebSocketAgent]]]:
    """Two WebSocket backends behind a TCP balancer that hashes the 4-tuple.

    ``listen`` is the balancer's listening socket (--netns: one made in the server namespace).
    """
    import websockets

    agents = [WebSocketAgent(0), WebSocketAgent(1)]
    servers = [await websockets.serve(agent.handler, "127.0.0.1", 0) for agent in agents]
    addresses = [server.sockets[0].getsockname()[:2] for server in servers]
    # Client-side streams still open; with --netns a client whose interface vanished never
    # closes its side, so they are closed here at the end.
    open_streams: set[asyncio.StreamWriter] = set()

    async def balance(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        open_streams.add(writer)
        client = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        key = f"{client[0]}:{client[1]}>{local[0]}:{local[1]}".encode()
        backend = addresses[hashlib.blake2b(key, digest_size=8).digest()[0] % len(addresses)]
        up_reader, up_writer = await asyncio.open_connection(*backend)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        open_streams.discard(writer)

    if listen is None:
        balancer = await asyncio.start_server(balance, "127.0.0.1", 0)
    else:
        balancer = await asyncio.start_server(balance, sock=listen)
    try:
        yield balancer.sockets[0].getsockname()[:2], agents
    finally:
        balancer.close()
        for stream in list(open_streams):
            stream.close()
        if open_streams:
            await asyncio.sleep(0.05)
        for server in servers:
            server.close()


async def tcp_call(
    frames: list[bytes],
    timeline: Timeline,
    network: Network | None = None,
    listen: socket.socket | None = None,
) -> TcpResult:
    import websockets

    network = network or Network()
    timeline.heading("for contrast: WebSocket over TCP behind a 4-tuple-hashing balancer")
    async with tcp_cluster(listen) as (vip, agents):
        uri = f"ws://{vip[0]}:{vip[1]}/"

        async def open_call(local: str) -> tuple[Any, int]:
            websocket = await websockets.connect(uri, local_addr=(local, 0), max_size=2**20)
            await websocket.send(json.dumps({"type": "hello"}))
            welcome = json.loads(await websocket.recv())
            return websocket, int(welcome["backend"])

        started = time.monotonic()
        websocket, backend_before = await open_call(network.wifi)
        handshake_ms = (time.monotonic() - started) * 1000
        timeline.say(f"call up from Wi-Fi in {handshake_ms:.1f} ms: backend {backend_before}")
        loop = asyncio.get_running_loop()
        migrate_at = len(frames) // 2
        reconnect_ms = 0.0
        backend_after = backend_before
        connected: Any = websocket
        reconnecting: asyncio.Task[None] | None = None

        async def reconnect(switch: float) -> None:
            # What a typical client does when the OS reports the network change: open a new
            # connection at once. Audio captured meanwhile has nowhere to go and is dropped.
            nonlocal connected, backend_after, reconnect_ms
            fresh, backend_after = await open_call(network.cellular)
            reconnect_ms = (loop.time() - switch) * 1000
            timeline.say(
                f"reconnected over 5G in {reconnect_ms:.1f} ms to backend {backend_after}: "
                "a new connection, a new session"
            )
            await fresh.send(json.dumps({"type": "order.list"}))
            timeline.say(f"the cart after the switch: {_items(json.loads(await fresh.recv()))}")
            await fresh.send(json.dumps({"type": "order.add", "data": ORDER[1]}))
            reply = json.loads(await fresh.recv())
            timeline.say(f"order taken: {ORDER[1]['item']} -> cart {_items(reply)}")
            connected = fresh

        begin = loop.time()
        for index, payload in enumerate(frames):
            await asyncio.sleep(max(0.0, begin + index * FRAME_SECONDS - loop.time()))
            if index == len(frames) // 4:
                await connected.send(json.dumps({"type": "order.add", "data": ORDER[0]}))
                reply = json.loads(await connected.recv())
                timeline.say(
                    f"order taken: {ORDER[0]['size']} {ORDER[0]['item']} -> cart {_items(reply)}"
                )
            if index == migrate_at:
                timeline.say("Wi-Fi lost mid-sentence: the TCP connection dies with it")
                if network.drop_wifi is not None:
                    await network.drop_wifi()
                connected.transport.abort()
                connected = None
                reconnecting = loop.create_task(reconnect(loop.time()))
            if connected is not None:
                await connected.send(payload)
        if reconnecting is not None:
            await reconnecting
        await connected.send(json.dumps({"type": "order.list"}))
        cart = json.loads(await connected.recv())["items"]
        await connected.close()
        await asyncio.sleep(0.05)
        delivered = sum(agent.frames for agent in agents)
        timeline.say(f"hung up: {len(frames)} frames spoken, {delivered} delivered")
    return TcpResult(
        handshake_ms=handshake_ms,
        reconnect_ms=reconnect_ms,
        frames_sent=len(frames),
        frames_delivered=delivered,
        frames_lost=len(frames) - delivered,
        backend_before=backend_before,
        backend_after=backend_after,
        cart=cart,
    )


# -- report --------------------------------------------------------------------------------


def plot(result: QuicResult, path: str) -> None:
    """A PNG of per-frame one-way delay and arrival around the migration."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(
            "--plot needs matplotlib: .venv/bin/pip install 'quicvoice[plot]'"
        ) from None
    seqs = sorted(s for s in result.send_times if s in result.arrivals)
    sent = np.array([result.send_times[s] for s in seqs])
    arrived = np.array([result.arrivals[s] for s in seqs])
    origin = result.migrated_at
    figure, (delay_axis, arrival_axis) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    delay_axis.plot(sent - origin, (arrived - sent) * 1000, ".", markersize=3)
    delay_axis.set_ylabel("one-way delay (ms)")
    delay_axis.set_title("Uplink frames around the Wi-Fi -> 5G migration (t = 0)")
    arrival_axis.plot(sent - origin, np.array(seqs), ".", markersize=3, label="sent")
    arrival_axis.plot(arrived - origin, np.array(seqs), ".", markersize=3, label="arrived")
    arrival_axis.set_xlabel("time from migration (s)")
    arrival_axis.set_ylabel("frame sequence number")
    arrival_axis.legend()
    for axis in (delay_axis, arrival_axis):
        axis.axvline(0, color="grey", linestyle="--")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def summary(quic: QuicResult, tcp: TcpResult | None, netns: dict[str, Any] | None = None) -> str:
    lines = ["", "Summary", "-------"]
    rows = [
        ("", "quicvoice (QUIC)", "WebSocket (TCP)"),
        ("handshake", f"{quic.handshake_ms:.1f} ms", f"{tcp.handshake_ms:.1f} ms" if tcp else "-"),
        (
            "network switch",
            f"migration, longest pause {quic.longest_pause_ms:.1f} ms",
            f"reconnect, {tcp.reconnect_ms:.1f} ms" if tcp else "-",
        ),
        (
            "frames spoken / delivered",
            f"{quic.frames_sent} / {quic.frames_delivered}",
            f"{tcp.frames_sent} / {tcp.frames_delivered}" if tcp else "-",
        ),
        (
            "backend before / after",
            f"{quic.server_before} / {quic.server_after}",
            f"{tcp.backend_before} / {tcp.backend_after}" if tcp else "-",
        ),
        (
            "cart at the end",
            _items({"items": quic.cart}),
            _items({"items": tcp.cart}) if tcp else "-",
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        lines.append(
            "  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        )
    lost = quic.frames_sent - quic.frames_delivered
    lines.append("")
    if quic.uplink == "realtime":
        lines += realtime_summary(quic)
    else:
        lines.append(
            f"quicvoice lost {lost} frames across the migration and kept the call, the backend "
            "and the cart."
            if lost == 0
            else f"quicvoice LOST {lost} frames"
        )
    if tcp is not None and netns is None:
        lines.append(
            f"The WebSocket call lost {tcp.frames_lost} frames of speech and its cart. On loopback "
            "a reconnect is quick; over a cellular link each handshake round trip (TCP, TLS, "
            "WebSocket, session) costs tens to hundreds of milliseconds more."
        )
    if netns is not None:
        lines += netns_summary(quic, tcp, netns)
    return "\n".join(lines)


def realtime_summary(quic: QuicResult) -> list[str]:
    """What the agent heard of the realtime uplink, and how good it sounded."""
    lost = quic.frames_sent - quic.frames_delivered
    lines = [
        f"Realtime uplink ({REALTIME_CODEC} with in-band FEC, in datagrams): {lost} of "
        f"{quic.frames_sent} frames never arrived (the client dropped {quic.frames_dropped}); "
        "the call, the backend and the cart were kept."
    ]
    playout = quic.playout or {}
    if playout:
        lines.append(
            f"The agent's jitter buffer played {playout['frames']} frames; "
            f"{playout['concealment_ratio']:.1%} of the samples were concealed: "
            f"{playout['fec_frames']} frames rebuilt by FEC, {playout['plc_frames']} by PLC, "
            f"{playout['expand_frames']} expanded while waiting; packets waited "
            f"{playout['mean_wait_ms']:.0f} ms on average."
        )
    quality = quic.quality or {}
    if "played" in quality:
        lines.append(
            f"PESQ of what it played: {quality['played']['wb']} wideband (P.862.2), "
            f"{quality['played']['nb']} narrowband (P.862.1); the codec alone, no network: "
            f"{quality['codec_only']['wb']} / {quality['codec_only']['nb']}."
        )
    elif "error" in quality:
        lines.append(f"No PESQ: {quality['error']}.")
    return lines


async def run(args: argparse.Namespace) -> dict[str, Any]:
    timeline = Timeline(quiet=args.json)
    with tempfile.TemporaryDirectory(prefix="quicvoice-speech-") as directory:
        samples, source = speech(Path(directory))
    frames = uplink_frames(samples, args.uplink)
    timeline.say(f"speech: {len(frames) * FRAME_SECONDS:.1f} s of {source}")
    with running_cluster() as cluster:
        timeline.say(
            f"forwarder at {cluster.vip[0]}:{cluster.vip[1]}, backends {', '.join(SERVER_IDS)}"
        )
        quic = await quic_call(cluster.vip, frames, timeline, uplink=args.uplink, reference=samples)
    tcp = None if args.no_contrast else await tcp_call(frames, timeline)
    return finish(args, timeline, quic, tcp)


def finish(
    args: argparse.Namespace,
    timeline: Timeline,
    quic: QuicResult,
    tcp: TcpResult | None,
    netns: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Plot, print the summary and return the JSON report (both modes)."""
    if args.plot:
        plot(quic, args.plot)
        timeline.say(f"plot written to {args.plot}")
    if not args.json:
        print(summary(quic, tcp, netns))
    report: dict[str, Any] = {
        "quic": {
            "handshake_ms": round(quic.handshake_ms, 2),
            "migration_gap_ms": round(quic.migration_gap_ms, 2),
            "longest_uplink_pause_ms": round(quic.longest_pause_ms, 2),
            "frames_sent": quic.frames_sent,
            "frames_delivered": quic.frames_delivered,
            "server_before": quic.server_before,
            "server_after": quic.server_after,
            "peer_after": quic.peer_after,
            "cart": quic.cart,
            "reply_frames": quic.reply_frames,
            "uplink": quic.uplink,
        }
    }
    if quic.uplink == "realtime":
        report["quic"]["realtime"] = {
            "codec": REALTIME_CODEC,
            "frames_dropped_by_client": quic.frames_dropped,
            "playout": quic.playout,
            "quality": quic.quality,
        }
    if tcp is not None:
        report["websocket"] = {
            "handshake_ms": round(tcp.handshake_ms, 2),
            "reconnect_ms": round(tcp.reconnect_ms, 2),
            "frames_sent": tcp.frames_sent,
            "frames_delivered": tcp.frames_delivered,
            "backend_before": tcp.backend_before,
            "backend_after": tcp.backend_after,
            "cart": tcp.cart,
        }
    if netns is not None:
        report["netns"] = netns
    return report


# -- --netns: the same call over namespaces, interfaces and a delayed, lossy cellular link ------
#
# The parent (root, in the host's namespace) builds the topology with quicvoice.netlab, runs
# the forwarder and backends in the server namespace, and runs the call itself as a child of
# this same script in the client namespace (`ip netns exec <client> ... --netns-client quic`):
# every socket the client library opens, reconnections included, is then in the client
# namespace. The child prints the timeline lines itself (on the parent's clock origin) and its
# result as the last line, `RESULT {json}`. The WebSocket contrast runs the same way; its
# balancer listens on a socket opened in the server namespace, its two agents sit behind it on
# the child's loopback.

NETNS_CLIENT_TIMEOUT = 120.0
RESULT_PREFIX = "RESULT "


def _netns_argv(args: argparse.Namespace, mode: str, **values: Any) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--netns-client", mode]
    for key, value in values.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    if args.json:
        argv.append("--json")
    if args.break_before_make:
        argv.append("--break-before-make")
    if args.uplink != "reliable":
        argv += ["--uplink", args.uplink]
    return argv


def _run_child(lab: Any, namespace: Any, argv: list[str], quiet: bool) -> dict[str, Any]:
    """Run a --netns-client child, relay its timeline, return its RESULT line's JSON."""
    import select

    process = lab.spawn(namespace, argv, stdout=subprocess.PIPE, bufsize=0)
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + NETNS_CLIENT_TIMEOUT
    pending = b""
    result: dict[str, Any] | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise RuntimeError(f"the client did not finish within {NETNS_CLIENT_TIMEOUT:.0f} s")
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.decode()
            if line.startswith(RESULT_PREFIX):
                result = json.loads(line[len(RESULT_PREFIX) :])
            elif not quiet:
                print(line, flush=True)
    code = process.wait(10)
    if code != 0 or result is None:
        raise RuntimeError(f"the client in the namespace failed (exit status {code})")
    return result


def run_netns(args: argparse.Namespace) -> dict[str, Any]:
    from quicvoice.netlab import (
        Lab,
        LineConfig,
        VoiceTopologyConfig,
        build_voice_topology,
        cleanup_stale,
    )

    timeline = Timeline(quiet=args.json)
    with tempfile.TemporaryDirectory(prefix="quicvoice-speech-") as directory:
        samples, source = speech(Path(directory))
    frames = encode_frames(CODEC, 20, samples)
    timeline.say(f"speech: {len(frames) * FRAME_SECONDS:.1f} s of {source}")
    stale = cleanup_stale()
    if stale:
        timeline.say(f"removed {len(stale)} namespaces left by an earlier crashed run")
    line = LineConfig(
        delay_ms=args.cell_delay_ms, jitter_ms=args.cell_jitter_ms, loss_percent=args.cell_loss
    )
    config = VoiceTopologyConfig(cell_uplink=line, cell_downlink=line, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="quicvoice-netns-") as directory, Lab() as lab:
        samples_path = Path(directory) / "speech.npy"
        np.save(samples_path, samples)
        topology = build_voice_topology(lab, config)
        timeline.say(
            f"namespaces up in {topology.setup_seconds:.2f} s: client (wifi0 {topology.wifi_ip}, "
            f"cell0 {topology.cell_ip}), router, server ({topology.server_ip}); cell0 goes "
            f"through a delay line: {line.delay_ms:g} ms each way"
            + (f" ±{line.jitter_ms:g} ms" if line.jitter_ms else "")
            + f", {line.loss_percent:g} % loss"
        )
        common = {
            "wifi": topology.wifi_ip,
            "cell": topology.cell_ip,
            "client_ns": topology.client.name,
            "server_ns": topology.server.name,
            "server_ip": topology.server_ip,
            "samples": samples_path,
            "t0": timeline.start,
            "notice_ms": args.notice_ms,
        }
        with running_cluster(topology.server.name, topology.server_ip) as cluster:
            timeline.say(
                f"forwarder at {cluster.vip[0]}:{cluster.vip[1]} in the server namespace, "
                f"backends {', '.join(SERVER_IDS)}"
            )
            child = _run_child(
                lab,
                topology.client,
                _netns_argv(args, "quic", vip=f"{cluster.vip[0]}:{cluster.vip[1]}", **common),
                args.json,
            )
        quic = _quic_result(child["quic"])
        tcp = None
        if not args.no_contrast:
            topology.restore_wifi()
            tcp_child = _run_child(
                lab, topology.client, _netns_argv(args, "websocket", **common), args.json
            )
            tcp = TcpResult(**tcp_child["websocket"])
        lines = topology.delay_line.stop()
        netns = {
            "namespaces": [topology.client.name, topology.router.name, topology.server.name],
            "setup_s": round(topology.setup_seconds, 3),
            "cell": {
                "delay_ms": line.delay_ms,
                "jitter_ms": line.jitter_ms,
                "loss_percent": line.loss_percent,
                "seed": args.seed,
            },
            "break_before_make": args.break_before_make,
            "interface_before": child["interface_before"],
            "interface_after": child["interface_after"],
            "wifi_present_after": child["wifi_present_after"],
            "rtt_after_ms": round(quic.rtt_ms, 2),
            "resumptions": quic.resumptions,
            "delay_line": {name: stats.as_dict() for name, stats in lines.items()},
        }
    return finish(args, timeline, quic, tcp, netns)


def _quic_result(data: dict[str, Any]) -> QuicResult:
    data = dict(data)
    for key in ("send_times", "arrivals"):
        data[key] = {int(seq): at for seq, at in data[key].items()}
    return QuicResult(**data)


def netns_summary(quic: QuicResult, tcp: TcpResult | None, netns: dict[str, Any]) -> list[str]:
    cell = netns["cell"]
    up, down = netns["delay_line"]["dl-up"], netns["delay_line"]["dl-down"]
    how = (
        "wifi0 deleted first, without warning (break-before-make)"
        if netns["break_before_make"]
        else "wifi0 deleted after the move (make-before-break)"
    )
    lines = [
        f"Over network namespaces: {netns['interface_before']} -> {netns['interface_after']}, "
        f"{how}; the cellular link added {cell['delay_ms']:g} ms each way and "
        f"{cell['loss_percent']:g} % loss; RTT over cell0 at the end {quic.rtt_ms:.1f} ms; "
        f"the call resumed {quic.resumptions} times.",
        f"The delay line dropped {up['lost']} of {up['received']} packets up and "
        f"{down['lost']} of {down['received']} down; releases were late by "
        f"{max(up['late_mean_ms'], down['late_mean_ms']):.2f} ms on average.",
    ]
    if tcp is not None:
        lines.append(
            f"The WebSocket call lost {tcp.frames_lost} frames of speech and its cart; its "
            f"reconnect over cell0 took {tcp.reconnect_ms:.1f} ms (a TCP and a WebSocket "
            "handshake, then the session, each a round trip on the delayed link)."
        )
    return lines


async def netns_client(args: argparse.Namespace) -> dict[str, Any]:
    """The client half of --netns, running inside the client namespace."""
    from quicvoice.netlab import WIFI_DEVICE, Namespace

    timeline = Timeline(quiet=args.json)
    timeline.start = args.t0
    client_ns, server_ns = Namespace(args.client_ns), Namespace(args.server_ns)

    async def drop_wifi() -> None:
        await asyncio.to_thread(client_ns.delete_link, WIFI_DEVICE, missing_ok=True)

    network = Network(
        wifi=args.wifi,
        cellular=args.cell,
        drop_wifi=drop_wifi,
        break_before_make=args.break_before_make,
        notice_seconds=args.notice_ms / 1000,
    )
    samples = np.load(args.samples)
    frames = uplink_frames(samples, args.uplink)
    if args.netns_client == "websocket":

        def listener() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((args.server_ip, 0))
            sock.listen(16)
            sock.setblocking(False)
            return sock

        tcp = await tcp_call(frames, timeline, network, listen=server_ns.run(listener))
        return {"websocket": asdict(tcp)}
    host, _, port = args.vip.rpartition(":")
    before = client_ns.route_device(host, args.wifi)
    quic = await quic_call((host, int(port)), frames, timeline, network, args.uplink, samples)
    return {
        "quic": asdict(quic),
        "interface_before": before,
        "interface_after": client_ns.route_device(host, args.cell),
        "wifi_present_after": WIFI_DEVICE in client_ns.links(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", metavar="FILE.png", help="write a latency plot (matplotlib)")
    parser.add_argument("--json", action="store_true", help="print one JSON report instead")
    parser.add_argument("--no-contrast", action="store_true", help="skip the WebSocket run")
    parser.add_argument(
        "--uplink",
        choices=UPLINKS,
        default="reliable",
        help="reliable: L16 on a QUIC stream (default); realtime: Opus with FEC in datagrams, "
        "played by the backend's jitter buffer and scored (concealment, PESQ)",
    )
    netns = parser.add_argument_group("--netns (root): namespaces, real interfaces, a delay line")
    netns.add_argument("--netns", action="store_true", help="run over network namespaces")
    netns.add_argument(
        "--break-before-make",
        action="store_true",
        help="delete wifi0 without warning before migrating (default: after)",
    )
    netns.add_argument(
        "--notice-ms",
        type=float,
        default=200.0,
        help="with --break-before-make: how long the app takes to notice (default 200)",
    )
    netns.add_argument("--cell-delay-ms", type=float, default=50.0, help="one way (default 50)")
    netns.add_argument("--cell-jitter-ms", type=float, default=0.0, help="± (default 0)")
    netns.add_argument("--cell-loss", type=float, default=1.0, help="%% each way (default 1)")
    netns.add_argument("--seed", type=int, default=1, help="seed of the loss draws (default 1)")
    # The client half of --netns, run by the parent inside the client namespace.
    child = parser.add_argument_group("internal")
    child.add_argument("--netns-client", choices=("quic", "websocket"), help=argparse.SUPPRESS)
    for name in ("vip", "wifi", "cell", "client-ns", "server-ns", "server-ip", "samples"):
        child.add_argument(f"--{name}", help=argparse.SUPPRESS)
    child.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.netns_client is not None:
        try:
            print(RESULT_PREFIX + json.dumps(asyncio.run(netns_client(args))), flush=True)
        except KeyboardInterrupt:
            return 130
        return 0
    try:
        if args.netns:
            from quicvoice.netlab import NetlabError, require_root

            try:
                require_root()
            except NetlabError as error:
                print(f"--netns: {error}", file=sys.stderr)
                return 2
            try:
                report = run_netns(args)
            except (RuntimeError, NetlabError) as error:
                print(f"--netns: {error}; every namespace and process removed", file=sys.stderr)
                return 1
        else:
            report = asyncio.run(run(args))
    except KeyboardInterrupt:
        print("interrupted; every process stopped", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(report))
    quic = report["quic"]
    # Realtime mode may lose frames (that is what it is for): it must keep the backend and
    # get a final playout report from it.
    complete = (
        quic["frames_sent"] == quic["frames_delivered"]
        if quic["uplink"] == "reliable"
        else bool((quic["realtime"]["playout"] or {}).get("final"))
    )
    ok = complete and quic["server_before"] == quic["server_after"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
