"""A voice flow across the lab's L4S bottleneck, three ways side by side (root).

    sudo python benchmarks/bench_l4s.py [--voice calls|simulated|both] [--ecn l4s,classic,off]
        [--no-idle] [--rate-kbps 2000] [--cross-size 250] [--delay-ms 10]
        [--scenarios l4s,classic,off,idle] [--warmup 3] [--l16-seconds 8] [--json]

Topology: ``quicvoice.netlab``'s client/router/server namespaces; the cellular uplink goes
through the delay line with a bottleneck of ``--rate-kbps`` and a DualQ Coupled AQM (RFC 9332:
L4S step threshold 1 ms, classic PI2 target 15 ms, k = 2), plus ``--delay-ms`` each way. A
loss-based AIMD sender (``quicvoice.netlab.crosstraffic``, not-ECT, 250-octet packets) fills the
link for the whole run, so the classic queue stands near its target.

The voice flow (``--voice calls``, the default): real quicvoice calls. ``quicvoice serve``
(the demo agent, recording the realtime uplink as its jitter buffer played it) in the server
namespace, ``benchmarks/l4s_caller.py`` from the client's cellular address, both marking per
the scenario (``--ecn``: ``l4s`` ECT(1), ``classic`` ECT(0), ``off`` not-ECT; plus ``idle``,
``l4s`` without cross traffic, unless ``--no-idle``). The caller says ~10 s of speech through
``send_pcm`` in real time (realtime uplink, Opus 20 ms), each frame encoded at the bitrate of
the uplink's ``CongestionResponse``, fed by the ACK_ECN counts of the backend and by QUIC's
losses. Queueing delay is from timestamps: the agent's arrival time of each frame
(``session.arrivals``) minus the caller's send time (same host clock), minus the run's
minimum; it includes both ends' Python processing, so the AQM's own sojourn p50/p99 of the
queue the voice used (cross traffic included for ``classic``/``off``) is shown beside it.
Concealment is the agent's playout report, PESQ is of its recording; the ECN validation is
the caller's.

The simulated flow (``--voice simulated``; ``both`` runs the calls, then this): speech
(espeak-ng, 16 kHz) encoded live as Opus 48 kHz with in-band FEC, one
20 ms frame per UDP datagram from the client's cellular address to the server namespace. Its
sender sets the ECN codepoint on its own socket (IP_TOS) and its Opus bitrate follows a
``quicvoice.session.congestion.CongestionResponse`` fed by the receiver's per-packet feedback
(sequence number and the ECN codepoint it arrived with, sent back over the delayed downlink):

* ``l4s``: ECT(1), the scalable response (rate *= 1 - alpha/2 per marked round);
* ``classic``: ECT(0), the classic response (halve per RTT with CE, as for a loss);
* ``off``: not-ECT, responds only to losses (the AQM drops it in the classic queue);
* ``idle``: ``l4s`` with no cross traffic (the reference for the concealment ratio).

What is simulated in this flow: it is not a quicvoice QUIC call; the
marking is set on the benchmark's own socket and the CE feedback is the receiver's per-packet
report, standing in for QUIC's ACK_ECN counts. What is real: the kernel's namespaces and
routing, the delay line and its AQM (a userspace process rewriting the IP ECN bits), the AIMD
cross traffic, libopus at the bitrate the response chose, the project's jitter buffer (replayed
on the real arrival times) and PESQ.

Then (``--l16-seconds``, 8 by default; 0 skips it) a real quicvoice call across the same
bottleneck and cross traffic: ``quicvoice serve`` in the server namespace, ``quicvoice call``
(reliable L16/16000, 256 kbit/s on one QUIC stream) from the client's cellular address; its
packets are ECT(1) (the library's default marking) and its sender does not answer CE (no
bitrate to lower; aioquic's NewReno does not see CE), so this shows whether the reliable
stream holds up in the L4S queue: frames delivered of those sent, the call's length, the RTT.

Reported per scenario: the voice packets' one-way queueing delay (kernel receive timestamp
minus send time, minus the run's minimum: base delay and serialisation) p50/p99, the RFC 3550
interarrival jitter, frames lost, the concealment ratio and PESQ (wideband P.862.2) of what the
jitter buffer played, the Opus bitrate (mean and lowest), CE marks, the sojourn the AQM itself
measured in the voice flow's queue (for classic/off the classic queue, cross traffic included)
and the delay line's p99 lateness (its wake-up latency on a busy machine, which the receiver's
queueing delay includes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quicvoice.audio.codecs import OpusCodec, make_codec
from quicvoice.audio.frames import AudioFrame, Pcm
from quicvoice.audio.jitter import JitterBuffer, JitterBufferConfig
from quicvoice.audio.opus import OpusConfig
from quicvoice.audio.quality import PlayoutRecorder, align, codec_round_trip, resample_signal
from quicvoice.netlab import (
    Lab,
    LineConfig,
    NetlabError,
    VoiceTopology,
    VoiceTopologyConfig,
    build_voice_topology,
    cleanup_stale,
    require_root,
)
from quicvoice.session.congestion import CongestionConfig, CongestionResponse, EcnMode

SCENARIOS: dict[str, tuple[EcnMode, int, bool]] = {
    # name: (response mode, ECN codepoint on the socket, cross traffic)
    "l4s": ("l4s", 0b01, True),
    "classic": ("classic", 0b10, True),
    "off": ("off", 0b00, True),
    "idle": ("l4s", 0b01, False),
}
SENTENCE = (
    "Hello, I would like to book a table for four people tomorrow at seven thirty in the "
    "evening, somewhere quiet near the river, and please note that one of us is vegetarian."
)
SPEECH_RATE, OPUS_RATE, FRAME_MS = 16000, 48000, 20
FRAME = OPUS_RATE * FRAME_MS // 1000
VOICE_PORT, SINK_PORT, L16_PORT = 7400, 7401, 4433
#: Voice datagram: sequence number, send time (CLOCK_REALTIME, ns), then the Opus payload.
VOICE_HEADER = struct.Struct("!IQ")
#: Feedback datagram: sequence number and the ECN codepoint it arrived with.
FEEDBACK = struct.Struct("!IB")
#: ``SO_TIMESTAMPNS`` / ``SCM_TIMESTAMPNS`` (Linux), a ``struct timespec`` per datagram.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
TIMESPEC = struct.Struct("@qq")
#: Frames acknowledged after a missing one before the sender declares it lost.
REORDER_THRESHOLD = 3
MAX_RUN_SECONDS = 60.0


@dataclass
class Arrival:
    sequence: int
    sent_ns: int
    received_ns: int
    ecn: int
    payload: bytes


@dataclass
class SenderLog:
    frames: int = 0
    bitrates: list[int] = field(default_factory=list)
    feedback: int = 0
    ce: int = 0
    declared_lost: int = 0


def speech(directory: Path) -> Pcm:
    """The sentence as 16 kHz speech (espeak-ng)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("bench_l4s needs espeak-ng for its speech")
    wav = directory / "sentence.wav"
    subprocess.run([espeak, "-s", "160", "-w", str(wav), SENTENCE], check=True, timeout=60)
    with wave.open(str(wav)) as reader:
        rate = reader.getframerate()
        samples = np.frombuffer(reader.readframes(reader.getnframes()), "<i2").astype(np.int16)
    return resample_signal(samples, rate, SPEECH_RATE)


def receive(sock: socket.socket, stop: threading.Event, arrivals: list[Arrival]) -> None:
    """Record every voice datagram with its kernel timestamp and ECN; feed each back."""
    space = socket.CMSG_SPACE(1) + socket.CMSG_SPACE(TIMESPEC.size) + 64
    while not stop.is_set():
        try:
            data, ancillary, _, peer = sock.recvmsg(2048, space)
        except TimeoutError:
            continue
        if len(data) < VOICE_HEADER.size:
            continue
        ecn, received_ns = -1, time.time_ns()
        for level, kind, value in ancillary:
            if level == socket.IPPROTO_IP and kind == socket.IP_TOS and value:
                ecn = value[0] & 0b11
            elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanoseconds = TIMESPEC.unpack_from(value)
                received_ns = seconds * 1_000_000_000 + nanoseconds
        sequence, sent_ns = VOICE_HEADER.unpack_from(data)
        arrivals.append(Arrival(sequence, sent_ns, received_ns, ecn, data[VOICE_HEADER.size :]))
        try:
            sock.sendto(FEEDBACK.pack(sequence, max(0, ecn)), peer)
        except OSError:
            pass


def send(sock: socket.socket, samples48: Pcm, response: CongestionResponse, log: SenderLog) -> None:
    """Encode and send one frame every 20 ms; read the feedback in between."""
    codec = make_codec("opus/48000", opus=OpusConfig(bitrate=response.target_bitrate))
    assert isinstance(codec, OpusCodec)
    sock.setblocking(False)
    sent_at: dict[int, float] = {}
    acked: set[int] = set()
    declared: set[int] = set()
    frames = len(samples48) // FRAME
    start = time.monotonic()
    for index in range(frames):
        codec.set_bitrate(response.target_bitrate)
        payload = codec.encode(
            AudioFrame(samples=samples48[index * FRAME : (index + 1) * FRAME], rate=OPUS_RATE)
        )
        sent_at[index] = time.monotonic()
        sock.send(VOICE_HEADER.pack(index, time.time_ns()) + payload)
        log.frames += 1
        log.bitrates.append(codec.bitrate)
        deadline = start + (index + 1) * FRAME_MS / 1000
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            try:
                data = sock.recv(64)
            except (TimeoutError, BlockingIOError):
                break
            if len(data) < FEEDBACK.size:
                continue
            sequence, ecn = FEEDBACK.unpack_from(data)
            now = time.monotonic()
            if sequence in acked or sequence not in sent_at:
                continue
            acked.add(sequence)
            rtt = max(1e-4, now - sent_at[sequence])
            log.feedback += 1
            log.ce += ecn == 0b11
            response.on_ecn_feedback(now=now, acked=1, ce=int(ecn == 0b11), rtt=rtt)
            missing = [
                s
                for s in range(max(0, sequence - 50), sequence - REORDER_THRESHOLD)
                if s not in acked and s not in declared
            ]
            if missing:
                declared.update(missing)
                log.declared_lost += len(missing)
                response.on_loss(now=now, lost=len(missing), rtt=rtt)


def playout(arrivals: list[Arrival], frames: int) -> tuple[dict[str, Any], Pcm, int | None]:
    """Replay the arrivals (their kernel timestamps) into the project's jitter buffer, pulled
    every 20 ms from the first arrival; what it played and how."""
    codec = make_codec("opus/48000")
    jitter = JitterBuffer(codec, JitterBufferConfig(frame_samples=FRAME, rate=OPUS_RATE))
    recorder = PlayoutRecorder(jitter)
    ordered = sorted(arrivals, key=lambda a: a.received_ns)
    if not ordered:
        return {"error": "nothing arrived"}, np.zeros(0, np.int16), None
    origin = ordered[0].received_ns
    tick = 0.0
    position = 0
    recorder.end(frames)
    for _ in range(frames + 500):
        while position < len(ordered) and (ordered[position].received_ns - origin) / 1e9 <= tick:
            arrival = ordered[position]
            jitter.put(
                sequence=arrival.sequence & 0xFFFF,
                timestamp=arrival.sequence * FRAME,
                payload=arrival.payload,
                now=(arrival.received_ns - origin) / 1e9,
            )
            position += 1
        recorder.tick(tick)
        if recorder.done:
            break
        tick += FRAME_MS / 1000
    report = recorder.report() if recorder.done else recorder.close()
    return (
        {
            "concealment_ratio": round(report.concealment_ratio, 4),
            "fec_frames": report.fec_frames,
            "plc_frames": report.plc_frames,
            "expand_frames": report.expand_frames,
            "mean_wait_ms": round(1000 * report.mean_wait, 2),
        },
        recorder.audio(),
        report.first_sequence,
    )


def pesq_wb(reference16: Pcm, played48: Pcm, first_sequence: int | None) -> float | str:
    try:
        from pesq import PesqError, pesq
    except ImportError:
        return "pesq not installed"
    if first_sequence is None or not len(played48):
        return "nothing played"
    played = resample_signal(played48, OPUS_RATE, SPEECH_RATE)
    start = first_sequence * SPEECH_RATE * FRAME_MS // 1000
    aligned = align(reference16, played, start=start, max_lag=960, window=2 * SPEECH_RATE)
    length = min(len(aligned.reference), len(aligned.degraded))
    try:
        return round(
            float(
                pesq(
                    SPEECH_RATE,
                    aligned.reference[:length].astype(float),
                    aligned.degraded[:length].astype(float),
                    "wb",
                )
            ),
            3,
        )
    except PesqError as error:
        return f"error: {type(error).__name__}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def interarrival_jitter_ms(arrivals: list[Arrival]) -> float:
    """RFC 3550 §6.4.1: J += (|D| - J) / 16 over consecutive packets in arrival order."""
    jitter = 0.0
    previous: Arrival | None = None
    for arrival in sorted(arrivals, key=lambda a: a.received_ns):
        if previous is not None:
            transit = (arrival.received_ns - arrival.sent_ns) - (
                previous.received_ns - previous.sent_ns
            )
            jitter += (abs(transit) / 1e6 - jitter) / 16
        previous = arrival
    return jitter


def start_cross_traffic(lab: Lab, topology: VoiceTopology, seconds: float, size: int) -> Any:
    sink = lab.spawn(
        topology.server,
        [
            sys.executable, "-m", "quicvoice.netlab.crosstraffic", "sink",
            "--bind", f"{topology.server_ip}:{SINK_PORT}", "--max-seconds", str(seconds + 5),
        ],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert sink.stdout is not None
    if json.loads(sink.stdout.readline()).get("event") != "ready":
        raise NetlabError("the cross-traffic sink did not start")
    return lab.spawn(
        topology.client,
        [
            sys.executable, "-m", "quicvoice.netlab.crosstraffic", "send",
            "--bind", topology.cell_ip, "--to", f"{topology.server_ip}:{SINK_PORT}",
            "--seconds", str(seconds), "--size", str(size),
        ],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def run_scenario(name: str, reference16: Pcm, args: argparse.Namespace) -> dict[str, Any]:
    mode, ecn, cross = SCENARIOS[name]
    samples48 = resample_signal(reference16, SPEECH_RATE, OPUS_RATE)
    samples48 = np.concatenate([samples48, np.zeros(-len(samples48) % FRAME, np.int16)])
    call_seconds = len(samples48) / OPUS_RATE
    if args.warmup + call_seconds + 2 > MAX_RUN_SECONDS:
        raise SystemExit(f"a run would last more than {MAX_RUN_SECONDS} s")
    uplink = LineConfig(
        delay_ms=args.delay_ms,
        rate_kbps=args.rate_kbps,
        l4s_threshold_ms=1.0,
        classic_target_ms=15.0,
    )
    config = VoiceTopologyConfig(
        cell_uplink=uplink,
        cell_downlink=LineConfig(delay_ms=args.delay_ms),
        seed=args.seed,
        realtime=args.realtime,
    )
    response = CongestionResponse(CongestionConfig(mode=mode))
    log = SenderLog()
    arrivals: list[Arrival] = []
    started = time.monotonic()
    with Lab() as lab:
        topology = build_voice_topology(lab, config)
        traffic = None
        if cross:
            traffic = start_cross_traffic(
                lab, topology, args.warmup + call_seconds + 1.0, args.cross_size
            )
            time.sleep(args.warmup)  # let the AIMD sender fill the link (wall time on purpose)
        rx = topology.server.open_socket()
        rx.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
        rx.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        rx.bind((topology.server_ip, VOICE_PORT))
        rx.settimeout(0.05)
        tx = topology.client.open_socket()
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, (46 << 2) | ecn)
        tx.bind((topology.cell_ip, 0))
        tx.connect((topology.server_ip, VOICE_PORT))
        stop = threading.Event()
        reader = threading.Thread(target=receive, args=(rx, stop, arrivals), daemon=True)
        reader.start()
        try:
            send(tx, samples48, response, log)
            time.sleep(0.5)  # the last frames' flight time across the line
        finally:
            stop.set()
            reader.join(timeout=2)
            tx.close()
            rx.close()
        aimd: dict[str, Any] = {}
        if traffic is not None:
            out, _ = traffic.communicate(timeout=30)
            aimd = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        line = topology.delay_line.stop()["dl-up"]
    one_way = [(a.received_ns - a.sent_ns) / 1e6 for a in arrivals]
    base = min(one_way) if one_way else float("nan")
    queueing = [value - base for value in one_way]
    played, audio, first = playout(arrivals, log.frames)
    marked = sum(a.ecn == 0b11 for a in arrivals)
    return {
        "scenario": name,
        "ecn_codepoint": {0: "not-ECT", 1: "ECT(1)", 2: "ECT(0)"}[ecn],
        "response": mode,
        "cross_traffic": cross,
        "frames_sent": log.frames,
        "frames_received": len({a.sequence for a in arrivals}),
        "frames_lost": log.frames - len({a.sequence for a in arrivals}),
        "ce_marked": marked,
        "base_one_way_ms": round(base, 3),
        "queue_p50_ms": round(percentile(queueing, 50), 3),
        "queue_p99_ms": round(percentile(queueing, 99), 3),
        "queue_max_ms": round(max(queueing, default=float("nan")), 3),
        "jitter_ms": round(interarrival_jitter_ms(arrivals), 3),
        "bitrate_mean_kbps": round(sum(log.bitrates) / max(1, len(log.bitrates)) / 1000, 2),
        "bitrate_min_kbps": round(min(log.bitrates, default=0) / 1000, 2),
        **played,
        "pesq_wb": pesq_wb(reference16, audio, first),
        "sender": {
            "feedback": log.feedback,
            "ce_seen": log.ce,
            "declared_lost": log.declared_lost,
            **_stats_dict(response),
        },
        "aqm": asdict(line.aqm),
        "line": {"received": line.received, "delivered": line.delivered,
                 "late_p99_ms": line.late_p99_ms},
        "line_late_p99_ms": line.late_p99_ms,
        "voice_queue_sojourn_ms": (
            f"{line.aqm.l4s_sojourn_mean_ms:.2f}/{line.aqm.l4s_sojourn_max_ms:.2f}"
            if ecn == 0b01
            else f"{line.aqm.classic_sojourn_mean_ms:.2f}/{line.aqm.classic_sojourn_max_ms:.2f}"
        ),
        "cross": aimd,
        "seconds": round(time.monotonic() - started, 1),
    }  # fmt: skip


def _stats_dict(response: CongestionResponse) -> dict[str, Any]:
    stats = asdict(response.statistics())
    stats.pop("mode", None)
    return stats


CALL_SCENARIOS: dict[str, tuple[str, bool]] = {
    # name: (``--ecn`` of both ends, cross traffic)
    "l4s": ("l4s", True),
    "classic": ("classic", True),
    "off": ("off", True),
    "idle": ("l4s", False),
}
CALL_PORT = 4434
CALLER = Path(__file__).with_name("l4s_caller.py")


def bottleneck_topology(args: argparse.Namespace) -> VoiceTopologyConfig:
    """The cellular uplink through the DualQ bottleneck, the downlink only delayed."""
    return VoiceTopologyConfig(
        cell_uplink=LineConfig(
            delay_ms=args.delay_ms,
            rate_kbps=args.rate_kbps,
            l4s_threshold_ms=1.0,
            classic_target_ms=15.0,
        ),
        cell_downlink=LineConfig(delay_ms=args.delay_ms),
        seed=args.seed,
        realtime=args.realtime,
    )


def run_call_scenario(
    name: str, reference16: Pcm, wav: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """A real quicvoice call as the voice flow: ``quicvoice serve`` (the demo agent, its
    realtime uplink played by its jitter buffer and recorded) in the server namespace and
    ``l4s_caller.py`` from the client's cellular address, both marking per ``--ecn``; the
    caller's Opus uplink follows its congestion response, fed by the ACK_ECN counts."""
    ecn, cross = CALL_SCENARIOS[name]
    speech_seconds = len(reference16) / SPEECH_RATE
    if args.warmup + speech_seconds + 20 > MAX_RUN_SECONDS:
        raise SystemExit(f"a call scenario would last more than {MAX_RUN_SECONDS} s")
    started = time.monotonic()
    with Lab() as lab, tempfile.TemporaryDirectory() as recordings:
        os.chmod(recordings, 0o755)
        topology = build_voice_topology(lab, bottleneck_topology(args))
        server = lab.spawn(
            topology.server,
            [sys.executable, "-m", "quicvoice.cli", "serve", "--listen",
             f"{topology.server_ip}:{CALL_PORT}", "--ecn", ecn, "--record-uplink", recordings],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert server.stdout is not None
        listening = json.loads(server.stdout.readline())
        traffic = None
        if cross:
            traffic = start_cross_traffic(
                lab, topology, args.warmup + speech_seconds + 25.0, args.cross_size
            )
            time.sleep(args.warmup)  # let the AIMD sender fill the link (wall time on purpose)
        caller = lab.spawn(
            topology.client,
            [sys.executable, str(CALLER), f"{topology.server_ip}:{CALL_PORT}",
             "--certificate-hash", listening["certificate_sha256"],
             "--local-address", topology.cell_ip, "--wav", str(wav), "--ecn", ecn],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        out, err = caller.communicate(timeout=MAX_RUN_SECONDS + 10)
        line = topology.delay_line.stop()["dl-up"]
        if traffic is not None:
            traffic.kill()
        try:
            report = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            report = {"error": (err or out).strip()[-300:]}
        if "error" in report:
            return {"scenario": name, "voice": "quicvoice call", "error": report["error"]}
        playout = report["playout"]
        audio = read_recording(playout.get("recording"))
    sent_ns: list[int] = report["sent_ns"]
    arrivals = [
        Arrival(sequence, sent_ns[sequence], round(at * 1e9), -1, b"")
        for sequence, at in zip(report["arrivals"]["seq"], report["arrivals"]["at"], strict=True)
        if 0 <= sequence < len(sent_ns)
    ]
    one_way = [(a.received_ns - a.sent_ns) / 1e6 for a in arrivals]
    base = min(one_way) if one_way else float("nan")
    queueing = [value - base for value in one_way]
    received = len({a.sequence for a in arrivals})
    bitrates: list[int] = report["bitrates"]
    congestion = report["congestion"]
    return {
        "scenario": name,
        "voice": "quicvoice call",
        "ecn_codepoint": {"l4s": "ECT(1)", "classic": "ECT(0)", "off": "not-ECT"}[ecn],
        "response": ecn,
        "cross_traffic": cross,
        "frames_sent": report["frames"],
        "frames_received": received,
        "frames_lost": report["frames"] - received,
        "ce_marked": congestion["ce"],
        "base_one_way_ms": round(base, 3),
        "queue_p50_ms": round(percentile(queueing, 50), 3),
        "queue_p99_ms": round(percentile(queueing, 99), 3),
        "queue_max_ms": round(max(queueing, default=float("nan")), 3),
        "jitter_ms": round(interarrival_jitter_ms(arrivals), 3),
        "bitrate_mean_kbps": round(sum(bitrates) / max(1, len(bitrates)) / 1000, 2),
        "bitrate_min_kbps": round(min(bitrates, default=0) / 1000, 2),
        "concealment_ratio": playout.get("concealment_ratio"),
        "plc_frames": playout.get("plc_frames"),
        "fec_frames": playout.get("fec_frames"),
        "expand_frames": playout.get("expand_frames"),
        "pesq_wb": pesq_wb(reference16, audio, playout.get("first_sequence")),
        "ecn_validation": report["ecn"]["validation"],
        "l4s_bottleneck_seen": report["ecn"]["l4s_bottleneck_seen"],
        "congestion": congestion,
        "rtt_ms": report.get("rtt_ms"),
        "aqm": asdict(line.aqm),
        "line_late_p99_ms": line.late_p99_ms,
        "voice_queue_sojourn_ms": (
            f"{line.aqm.l4s_sojourn_mean_ms:.2f}/{line.aqm.l4s_sojourn_max_ms:.2f}"
            if ecn == "l4s"
            else f"{line.aqm.classic_sojourn_mean_ms:.2f}/{line.aqm.classic_sojourn_max_ms:.2f}"
        ),
        "aqm_queue_p50_p99_ms": (
            f"{line.aqm.l4s_sojourn_p50_ms:.1f}/{line.aqm.l4s_sojourn_p99_ms:.1f}"
            if ecn == "l4s"
            else f"{line.aqm.classic_sojourn_p50_ms:.1f}/{line.aqm.classic_sojourn_p99_ms:.1f}"
        ),
        "seconds": round(time.monotonic() - started, 1),
    }


def read_recording(path: object) -> Pcm:
    """The agent's played-out uplink (48 kHz for Opus), or nothing."""
    if not isinstance(path, str):
        return np.zeros(0, np.int16)
    try:
        with wave.open(path, "rb") as reader:
            samples = np.frombuffer(reader.readframes(reader.getnframes()), "<i2")
            rate = reader.getframerate()
    except (OSError, wave.Error, EOFError):
        return np.zeros(0, np.int16)
    return samples if rate == OPUS_RATE else resample_signal(samples, rate, OPUS_RATE)


def run_l16_call(args: argparse.Namespace) -> dict[str, Any]:
    """A real quicvoice call (``quicvoice call``, reliable L16/16000 on one QUIC stream, 256
    kbit/s) from the client's cellular address to ``quicvoice serve`` across the bottleneck,
    with the cross traffic: does the reliable stream hold up? Its packets are ECT(1) (the
    default), so it sits in the L4S queue, and nothing answers its CE marks."""
    uplink = LineConfig(delay_ms=args.delay_ms, rate_kbps=args.rate_kbps)
    config = VoiceTopologyConfig(
        cell_uplink=uplink,
        cell_downlink=LineConfig(delay_ms=args.delay_ms),
        seed=args.seed,
        realtime=args.realtime,
    )
    seconds = args.l16_seconds
    started = time.monotonic()
    with Lab() as lab:
        topology = build_voice_topology(lab, config)
        server = lab.spawn(
            topology.server,
            [sys.executable, "-m", "quicvoice.cli", "serve", "--listen",
             f"{topology.server_ip}:{L16_PORT}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert server.stdout is not None
        listening = json.loads(server.stdout.readline())
        traffic = start_cross_traffic(lab, topology, args.warmup + seconds + 15.0, args.cross_size)
        time.sleep(args.warmup)  # let the AIMD sender fill the link (wall time on purpose)
        call = lab.spawn(
            topology.client,
            [sys.executable, "-m", "quicvoice.cli", "call", f"{topology.server_ip}:{L16_PORT}",
             "--certificate-hash", listening["certificate_sha256"],
             "--local-address", topology.cell_ip, "--seconds", str(seconds), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        out, err = call.communicate(timeout=seconds + 40)
        line = topology.delay_line.stop()["dl-up"]
        traffic.kill()
    try:
        report = json.loads(out[out.index("{") :])
    except ValueError:
        return {"scenario": "l16-quic", "error": (err or out).strip()[-300:]}
    return {
        "scenario": "l16-quic",
        "codec": report.get("codec"),
        "frames_sent": report.get("uplink_frames_sent"),
        "frames_delivered": report.get("uplink_frames_delivered"),
        "call_seconds": report.get("seconds"),
        "audio_seconds": seconds,
        "rtt_ms": report.get("rtt_ms"),
        "rtt_min_ms": report.get("rtt_min_ms"),
        "error": report.get("error"),
        "aqm": asdict(line.aqm),
        "seconds": round(time.monotonic() - started, 1),
    }


def codec_only_pesq(reference16: Pcm) -> float | str:
    """PESQ of the speech through Opus at 32 kbit/s with no network (the ceiling)."""
    try:
        from pesq import pesq
    except ImportError:
        return "pesq not installed"
    decoded = codec_round_trip(
        reference16, SPEECH_RATE, make_codec("opus/48000"), make_codec("opus/48000")
    )
    aligned = align(reference16, decoded, max_lag=960, window=2 * SPEECH_RATE)
    length = min(len(aligned.reference), len(aligned.degraded))
    return round(
        float(
            pesq(
                SPEECH_RATE,
                aligned.reference[:length].astype(float),
                aligned.degraded[:length].astype(float),
                "wb",
            )
        ),
        3,
    )


COLUMNS = (
    ("scenario", "scenario"),
    ("ECN", "ecn_codepoint"),
    ("queue p50 ms", "queue_p50_ms"),
    ("queue p99 ms", "queue_p99_ms"),
    ("jitter ms", "jitter_ms"),
    ("frames lost", "frames_lost"),
    ("CE marked", "ce_marked"),
    ("concealment", "concealment_ratio"),
    ("PESQ wb", "pesq_wb"),
    ("Opus kbit/s mean/min", "bitrate"),
    ("AQM sojourn of its queue mean/max ms", "voice_queue_sojourn_ms"),
    ("line late p99 ms", "line_late_p99_ms"),
)


CALL_COLUMNS = (
    ("scenario", "scenario"),
    ("ECN", "ecn_codepoint"),
    ("validation", "ecn_validation"),
    ("queue p50 ms", "queue_p50_ms"),
    ("queue p99 ms", "queue_p99_ms"),
    ("jitter ms", "jitter_ms"),
    ("frames lost", "frames_lost"),
    ("CE (peer's counts)", "ce_marked"),
    ("concealment", "concealment_ratio"),
    ("PESQ wb", "pesq_wb"),
    ("Opus kbit/s mean/min", "bitrate"),
    ("AQM sojourn of its queue mean/max ms", "voice_queue_sojourn_ms"),
    ("AQM sojourn of its queue p50/p99 ms", "aqm_queue_p50_p99_ms"),
    ("line late p99 ms", "line_late_p99_ms"),
)


def table(results: list[dict[str, Any]], columns: tuple[tuple[str, str], ...] = COLUMNS) -> str:
    lines = [
        "| " + " | ".join(title for title, _ in columns) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(columns))) + "|",
    ]
    for result in results:
        if "error" in result:
            lines.append(f"| {result['scenario']} | error: {result['error']} |")
            continue
        cells = []
        for _, key in columns:
            if key == "bitrate":
                cells.append(f"{result['bitrate_mean_kbps']}/{result['bitrate_min_kbps']}")
            elif key == "frames_lost":
                cells.append(f"{result['frames_lost']} / {result['frames_sent']}")
            else:
                cells.append(str(result.get(key, "")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate-kbps", type=float, default=2000.0)
    parser.add_argument("--cross-size", type=int, default=250, help="cross-traffic IP octets")
    parser.add_argument("--delay-ms", type=float, default=10.0, help="one-way, each direction")
    parser.add_argument("--warmup", type=float, default=3.0, help="cross traffic alone, s")
    parser.add_argument(
        "--voice",
        choices=["calls", "simulated", "both"],
        default="calls",
        help="the voice flow: real quicvoice calls (default), the plain-UDP simulation, both",
    )
    parser.add_argument(
        "--ecn",
        default="l4s,classic,off",
        help="marking of the real calls' scenarios (both ends): l4s, classic, off",
    )
    parser.add_argument(
        "--idle",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also a real l4s call with no cross traffic (the concealment reference)",
    )
    parser.add_argument(
        "--scenarios",
        default="l4s,classic,off,idle",
        help="scenarios of the simulated flow (--voice simulated/both)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--l16-seconds",
        type=float,
        default=8.0,
        help="then a real reliable L16 call (quicvoice serve/call) of this length; 0: none",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument(
        "--realtime",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the delay line under SCHED_FIFO (default: on; its wake-up latency is what "
        "the receiver sees beyond the AQM's own queueing)",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    calls = [n.strip() for n in args.ecn.split(",") if n.strip()]
    if not set(calls) <= {"l4s", "classic", "off"} or len(set(calls)) != len(calls):
        parser.error("--ecn: a comma-separated list of l4s, classic, off")
    if args.idle:
        calls.append("idle")
    if not calls and args.voice != "simulated":
        parser.error("no call scenario: give --ecn or --idle")
    if not 100 <= args.rate_kbps <= 100_000:
        parser.error("--rate-kbps must be within 100..100000")
    if not 0 <= args.l16_seconds <= 30:
        parser.error("--l16-seconds must be within 0..30")
    if not 0 <= args.warmup <= 20 or not 0 <= args.delay_ms <= 200:
        parser.error("--warmup must be within 0..20 s and --delay-ms within 0..200")
    try:
        require_root()
    except NetlabError as error:
        print(f"bench_l4s needs root (network namespaces): {error}", file=sys.stderr)
        return 2
    cleanup_stale()
    speech_directory = tempfile.TemporaryDirectory()
    os.chmod(speech_directory.name, 0o755)
    reference = speech(Path(speech_directory.name))
    wav = Path(speech_directory.name) / "sentence16k.wav"
    with wave.open(str(wav), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(SPEECH_RATE)
        writer.writeframes(reference.astype("<i2").tobytes())
    print(
        f"bottleneck {args.rate_kbps:g} kbit/s, DualQ (L4S step 1 ms, classic PI2 target 15 ms,"
        f" k=2), {args.delay_ms:g} ms each way; cross traffic: AIMD not-ECT "
        f"{args.cross_size}-octet packets; delay line realtime: {args.realtime}; "
        f"speech {len(reference) / SPEECH_RATE:.1f} s; "
        f"PESQ of the codec alone (32 kbit/s): {codec_only_pesq(reference)}",
        flush=True,
    )
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    results: list[dict[str, Any]] = []
    if args.voice in ("calls", "both"):
        call_results = []
        for name in calls:
            result = run_call_scenario(name, reference, wav, args)
            call_results.append(result)
            print(
                f"  call {name}: {result.get('seconds')} s; AQM {result.get('aqm')}; "
                f"congestion {result.get('congestion')}",
                flush=True,
            )
        print(
            "Voice flow: real quicvoice calls (realtime Opus 20 ms uplink, bitrate following "
            "the ACK_ECN feedback); queueing from timestamps (the agent's arrival time minus "
            "the caller's send time, minus the run's minimum)"
        )
        print(table(call_results, CALL_COLUMNS))
        results.extend(call_results)
    if args.voice in ("simulated", "both"):
        simulated = []
        for name in names:
            result = run_scenario(name, reference, args)
            simulated.append(result)
            print(
                f"  simulated {name}: {result['seconds']} s; AQM {result['aqm']}; "
                f"cross {result['cross']}",
                flush=True,
            )
        print(
            "Voice flow SIMULATED: plain UDP Opus, the receiver's per-packet report standing "
            "in for ACK_ECN"
        )
        print(table(simulated))
        results.extend({**result, "voice": "simulated"} for result in simulated)
    if args.l16_seconds > 0:
        l16 = run_l16_call(args)
        results.append(l16)
        print(
            f"reliable L16 over QUIC across the same bottleneck (ECT(1), CE unanswered): "
            f"{l16.get('frames_delivered')} of {l16.get('frames_sent')} frames delivered, call "
            f"{l16.get('call_seconds')} s for {l16.get('audio_seconds')} s of audio, RTT "
            f"{l16.get('rtt_ms')} ms (min {l16.get('rtt_min_ms')}); AQM {l16.get('aqm')}"
            + (f"; error: {l16['error']}" if l16.get("error") else "")
        )
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    speech_directory.cleanup()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
