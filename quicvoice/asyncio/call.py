"""``quicvoice call``: stream audio to a backend in real time, optionally migrate, report JSON."""

from __future__ import annotations

import asyncio
import math
import struct
import sys
import wave
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError
from ..session.events import TurnCancelled, TurnEnded
from ..session.messages import Hello, UplinkMode
from .client import VoiceClient, connect

TONE_HZ = 440.0
TONE_AMPLITUDE = 8000


@dataclass(frozen=True, slots=True, kw_only=True)
class CallOptions:
    """What ``quicvoice call`` does."""

    host: str
    port: int
    webtransport: bool = False
    seconds: float = 3.0
    wav: str | None = None
    local_address: str | None = None
    migrate_after: float | None = None
    migrate_to: str | None = None
    realtime: bool = False
    codec: str = "L16/16000"
    cafile: str | None = None
    reply_timeout: float = 10.0


def tone_frames(rate: int, samples_per_frame: int, seconds: float) -> list[bytes]:
    """A 440 Hz tone as little-endian 16-bit frames."""
    count = max(1, round(seconds * rate / samples_per_frame))
    frames = []
    for index in range(count):
        start = index * samples_per_frame
        samples = (
            round(TONE_AMPLITUDE * math.sin(2 * math.pi * TONE_HZ * (start + n) / rate))
            for n in range(samples_per_frame)
        )
        frames.append(struct.pack(f"<{samples_per_frame}h", *samples))
    return frames


def wav_frames(path: str, rate: int, samples_per_frame: int) -> list[bytes]:
    """Frames of a mono 16-bit WAV file recorded at ``rate``."""
    try:
        with wave.open(path, "rb") as reader:
            if reader.getnchannels() != 1 or reader.getsampwidth() != 2:
                raise ConfigurationError(f"--wav: {path} must be mono 16-bit PCM")
            if reader.getframerate() != rate:
                raise ConfigurationError(
                    f"--wav: {path} is {reader.getframerate()} Hz; the call codec is {rate} Hz"
                )
            data = reader.readframes(reader.getnframes())
    except (OSError, wave.Error, EOFError) as error:
        raise ConfigurationError(f"--wav: cannot read {path}: {error}") from None
    step = 2 * samples_per_frame
    data += bytes(-len(data) % step)
    return [data[i : i + step] for i in range(0, len(data), step)]


async def _stream(client: VoiceClient, frames: list[bytes], frame_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index, payload in enumerate(frames):
        delay = start + index * frame_seconds - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        client.send_audio(payload)


async def run_call(options: CallOptions) -> dict[str, Any]:
    """Place the call and return the report printed by ``--json``."""
    hello = Hello(
        codecs=(options.codec,),
        uplink=UplinkMode.REALTIME if options.realtime else UplinkMode.RELIABLE,
    )
    async with connect(
        options.host,
        options.port,
        webtransport=options.webtransport,
        local_address=options.local_address,
        hello=hello,
        cafile=options.cafile,
        verify=options.cafile is not None,
    ) as client:
        assert client.session is not None
        loop = asyncio.get_running_loop()
        connected_at = loop.time()
        rate = int(client.session.codec.partition("/")[2])
        frame_seconds = client.session.frame_ms / 1000
        if options.wav:
            frames = wav_frames(options.wav, rate, client.samples_per_frame)
        else:
            frames = tone_frames(rate, client.samples_per_frame, options.seconds)
        streaming = loop.create_task(_stream(client, frames, frame_seconds))
        if options.migrate_after is not None and options.migrate_to is not None:
            await asyncio.sleep(options.migrate_after)
            await client.migrate(options.migrate_to)
        await streaming
        if options.realtime:
            client.send_event("utterance.end")
        else:
            client.end_audio()
        reply_frames = await _wait_reply(client, options.reply_timeout)
        delivered = await client.bye()
        stats = client.stats()
        return {
            "server_id": client.session.server_id,
            "session_id": client.session.session_id,
            "codec": client.session.codec,
            "uplink_mode": client.session.uplink.value,
            "seconds": round(loop.time() - connected_at, 3),
            "uplink_frames_sent": stats.uplink_frames_sent,
            "uplink_frames_delivered": delivered,
            "downlink_frames_received": stats.downlink_frames_received,
            "reply_frames": reply_frames,
            "rtt_ms": round(stats.rtt_smoothed_ms, 3) if stats.rtt_smoothed_ms else None,
            "rtt_min_ms": round(stats.rtt_min_ms, 3) if stats.rtt_min_ms else None,
            "migrations": [
                {"from": m.from_address, "to": m.to_address, "gap_ms": round(m.gap_ms, 2)}
                for m in stats.migrations
            ],
            "bytes_sent": stats.bytes_sent,
            "bytes_received": stats.bytes_received,
        }


async def _wait_reply(client: VoiceClient, timeout: float) -> int:
    """Wait for the agent's reply turn to end; return how many frames it had."""
    async def wait() -> None:
        while True:
            event = await client.receive()
            if isinstance(event, TurnEnded | TurnCancelled):
                return

    try:
        await asyncio.wait_for(wait(), timeout)
    except TimeoutError:
        print("quicvoice call: no reply turn from the agent", file=sys.stderr)
    return client.stats().downlink_frames_received
