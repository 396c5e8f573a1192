"""The caller of ``bench_l4s.py``'s real calls: a quicvoice client in the lab's client namespace.

    python benchmarks/l4s_caller.py HOST:PORT --certificate-hash HEX --local-address IP
        --wav SPEECH16K.wav --ecn l4s|classic|off

It places a realtime Opus call (20 ms frames) to the demo agent of ``quicvoice serve``, says
the WAV (16 kHz mono) through ``send_pcm`` in real time, so each frame is encoded at the
bitrate the uplink's congestion response asks for at that moment (fed by the path's ECN
feedback and QUIC's losses), then asks the agent for its playout report and its arrival
times, and prints one JSON object: per frame the send time (CLOCK_REALTIME, ns) and the
Opus bitrate, the agent's arrivals and playout report, the call's ECN report and the
response's counters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import wave
from dataclasses import asdict
from typing import Any

import numpy as np

from quicvoice.asyncio.client import connect
from quicvoice.ecn import session_report
from quicvoice.session.messages import Hello, UplinkMode

RATE = 16000
FRAME_SECONDS = 0.02
FRAME_SAMPLES = int(RATE * FRAME_SECONDS)
#: How long the agent's replies (playout report, arrivals) are waited for, in seconds.
REPLY_TIMEOUT = 15.0


def read_speech(path: str) -> np.ndarray:
    with wave.open(path, "rb") as reader:
        if reader.getframerate() != RATE or reader.getnchannels() != 1:
            raise SystemExit(f"{path}: need mono 16-bit PCM at {RATE} Hz")
        samples = np.frombuffer(reader.readframes(reader.getnframes()), "<i2")
    return np.concatenate([samples, np.zeros(-len(samples) % FRAME_SAMPLES, np.int16)])


async def place_call(args: argparse.Namespace) -> dict[str, Any]:
    host, _, port = args.target.rpartition(":")
    speech = read_speech(args.wav)
    hello = Hello(codecs=("opus/48000",), uplink=UplinkMode.REALTIME, frame_ms=20)
    async with connect(
        host,
        int(port),
        local_address=args.local_address,
        hello=hello,
        certificate_hashes=[args.certificate_hash],
        sample_rate=RATE,
        ecn=args.ecn,
        timeout=10.0,
    ) as call:
        loop = asyncio.get_running_loop()
        sent_ns: list[int] = []
        bitrates: list[int] = []
        start = loop.time()
        for index in range(len(speech) // FRAME_SAMPLES):
            # Real-time pacing: the caller speaks at the audio's own rate.
            await asyncio.sleep(max(0.0, start + index * FRAME_SECONDS - loop.time()))
            sent_ns.append(time.time_ns())
            call.send_pcm(speech[index * FRAME_SAMPLES : (index + 1) * FRAME_SAMPLES])
            bitrates.append(call.uplink_bitrate or 0)
        frames = len(sent_ns)
        call.send_event("utterance.end", {"frames": frames})
        call.send_event("session.playout")
        playout = await call.wait_event("session.playout", timeout=REPLY_TIMEOUT)
        call.send_event("session.arrivals")
        arrivals = await call.wait_event("session.arrivals", timeout=REPLY_TIMEOUT)
        stats = call.stats()
        report = {
            "frames": frames,
            "sent_ns": sent_ns,
            "bitrates": bitrates,
            "arrivals": arrivals.data,
            "playout": playout.data,
            "ecn": session_report(stats.ecn_mode, stats.ecn),
            "congestion": asdict(call.congestion.statistics()),
            "rtt_ms": stats.rtt_smoothed_ms,
            "rtt_min_ms": stats.rtt_min_ms,
        }
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="HOST:PORT of quicvoice serve")
    parser.add_argument("--certificate-hash", required=True)
    parser.add_argument("--local-address", required=True)
    parser.add_argument("--wav", required=True)
    parser.add_argument("--ecn", choices=["l4s", "classic", "off"], default="l4s")
    args = parser.parse_args()
    try:
        report = asyncio.run(asyncio.wait_for(place_call(args), 60.0))
    except (OSError, TimeoutError, ConnectionError) as error:
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
