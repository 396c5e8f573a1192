"""The end-to-end test's caller process: dial a URL with a CA file and a token, speak a 440 Hz
tone in Opus, move from its first address to 127.0.0.3 mid-utterance, and print one JSON line
with what the app said it heard; then hold the call until stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import numpy as np

from quicvoice.asyncio.client import connect
from quicvoice.audio.pcm import PcmEncoder
from quicvoice.session.messages import Hello

RATE = 16000
TONE_HZ = 440.0
FRAMES = 100


async def call(url: str, ca_file: str, token: str, room: str) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    report: dict[str, object] = {"ok": False}
    try:
        async with connect(
            url,
            ca_file=ca_file,
            token=token,
            metadata={"room": room},
            hello=Hello(codecs=("opus/48000",)),
            timeout=5.0,
        ) as client:
            assert client.session is not None
            report["first_local"] = client.local_address[0]
            report["codec"] = client.session.codec
            report["server_id"] = client.session.server_id
            t = np.arange(RATE * FRAMES // 50) / RATE
            tone = np.rint(10000 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int16)
            frames = PcmEncoder(client.session.codec, RATE).write(tone)
            next_send = loop.time()
            for index, frame in enumerate(frames):
                if index == len(frames) // 2:
                    migration = await client.migrate("127.0.0.3")
                    report["migration"] = {"to": migration.to_address, "gap_ms": migration.gap_ms}
                client.send_audio(frame.payload, frame.timestamp)
                next_send += 0.02
                await asyncio.sleep(max(0.0, next_send - loop.time()))
            client.end_audio()
            heard = await client.wait_event("heard", timeout=10.0)
            report["heard"] = heard.data
            report["frames_sent"] = len(frames)
            report["last_local"] = client.local_address[0]
            report["ok"] = True
            print(json.dumps(report), flush=True)
            await loop.run_in_executor(None, sys.stdin.readline)
    except Exception as error:
        report.update(error=type(error).__name__, message=str(error))
        report["code"] = getattr(error, "error_code", None)
        print(json.dumps(report), flush=True)
    return report


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--ca-file", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--room", default="7")
    args = parser.parse_args()
    report = asyncio.run(call(args.url, args.ca_file, args.token, args.room))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
