"""``quicvoice call``: stream audio to a backend in real time, optionally migrate, report JSON."""

from __future__ import annotations

import asyncio
import sys
import wave
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..audio.codecs import make_codec
from ..audio.frames import AudioFrame, Pcm
from ..audio.resample import Resampler
from ..ecn import session_report
from ..errors import CallEndedError, ConfigurationError, InvalidStateError, UplinkEndedError
from ..session.codes import ErrorCode
from ..session.events import SessionClosed, TurnCancelled, TurnEnded
from ..session.messages import Hello, UplinkMode
from .client import VoiceClient, connect

TONE_HZ = 440.0
TONE_AMPLITUDE = 8000


@dataclass(frozen=True, slots=True, kw_only=True)
class CallOptions:
    """What ``quicvoice call`` does."""

    #: A ``quic://`` or ``https://`` URL; or, with ``port``, a host (the ``HOST:PORT`` form).
    target: str
    port: int | None = None
    #: With ``port``: WebTransport instead of raw QUIC (a URL says it by its scheme).
    webtransport: bool | None = None
    seconds: float = 3.0
    wav: str | None = None
    local_address: str | None = None
    migrate_after: float | None = None
    migrate_to: str | None = None
    realtime: bool = False
    codec: str = "L16/16000"
    #: The caller's credential and metadata, sent in the hello.
    token: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: How the server's certificate is checked (``connect``'s keywords of the same names).
    ca_file: str | None = None
    certificate_hashes: tuple[str, ...] = ()
    server_name: str | None = None
    verify: bool = True
    timeout: float = 5.0
    reply_timeout: float = 10.0
    #: ECN marking: ``"l4s"`` (ECT(1)), ``"classic"`` (ECT(0)) or ``"off"`` (specs/ecn.md).
    ecn: str = "l4s"


def tone(rate: int, seconds: float) -> Pcm:
    """A 440 Hz tone, int16 samples at ``rate``."""
    t = np.arange(round(seconds * rate)) / rate
    return np.round(TONE_AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int16)


def read_wav(path: str, rate: int) -> Pcm:
    """A mono 16-bit WAV file as int16 samples, resampled to ``rate`` if it differs."""
    try:
        with wave.open(path, "rb") as reader:
            if reader.getnchannels() != 1 or reader.getsampwidth() != 2:
                raise ConfigurationError(f"--wav: {path} must be mono 16-bit PCM")
            file_rate = reader.getframerate()
            samples = np.frombuffer(reader.readframes(reader.getnframes()), "<i2")
    except (OSError, wave.Error, EOFError) as error:
        raise ConfigurationError(f"--wav: cannot read {path}: {error}") from None
    if file_rate == rate:
        return samples.astype(np.int16)
    try:
        resampler = Resampler(file_rate, rate)
    except ValueError as error:
        raise ConfigurationError(f"--wav: {path}: {error}") from None
    block = resampler.input_multiple
    padded = np.concatenate([samples, np.zeros(-len(samples) % block, np.int16)])
    return resampler.process(padded.astype(np.int16))


def encode_frames(codec_name: str, frame_ms: int, samples: Pcm) -> list[bytes]:
    """Split ``samples`` into frames and encode each with the session's codec."""
    codec = make_codec(codec_name, frame_ms=frame_ms)
    size = codec.frame_samples
    samples = np.concatenate([samples, np.zeros(-len(samples) % size, np.int16)])
    return [
        codec.encode(AudioFrame(samples=samples[i : i + size], rate=codec.rate, timestamp=i))
        for i in range(0, len(samples), size)
    ]


async def _stream(
    client: VoiceClient, frames: list[bytes], frame_seconds: float, sent: list[int]
) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index, payload in enumerate(frames):
        delay = start + index * frame_seconds - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        client.send_audio(payload)
        sent[0] += 1


#: What ends a call under ``quicvoice call``: the peer's close, a reset that no resume got
#: over, silence, a refused resume, a bye that never came back.
CALL_ENDED = (ConnectionError, InvalidStateError, UplinkEndedError, TimeoutError)
#: How long the report waits for the call's last events once it has ended, in seconds.
DRAIN_TIMEOUT = 2.0


async def run_call(options: CallOptions) -> dict[str, Any]:
    """Place the call and return the report printed by ``--json``.

    A call closed under it (the server ended it, a backend reset it and no resume took it
    over, a bye that never came back) still gives a report: ``closed`` says with which code
    and reason, ``error`` says it in one line, and ``uplink_frames_delivered`` is ``None``.
    """
    hello = Hello(
        codecs=(options.codec,),
        uplink=UplinkMode.REALTIME if options.realtime else UplinkMode.RELIABLE,
    )
    async with connect(
        options.target,
        options.port,
        webtransport=options.webtransport,
        local_address=options.local_address,
        hello=hello,
        token=options.token,
        metadata=options.metadata,
        ca_file=options.ca_file,
        certificate_hashes=options.certificate_hashes,
        server_name=options.server_name,
        verify=options.verify,
        timeout=options.timeout,
        ecn=options.ecn,
    ) as client:
        session = client.session
        assert session is not None
        loop = asyncio.get_running_loop()
        connected_at = loop.time()
        rate = client.clock_rate
        frame_seconds = session.frame_ms / 1000
        samples = read_wav(options.wav, rate) if options.wav else tone(rate, options.seconds)
        frames = encode_frames(session.codec, session.frame_ms, samples)
        sent = [0]
        closes: list[SessionClosed] = []
        streaming = loop.create_task(_stream(client, frames, frame_seconds, sent))
        reply_frames = 0
        delivered: int | None = None
        closed: dict[str, Any] | None = None
        error: str | None = None
        try:
            if options.migrate_after is not None and options.migrate_to is not None:
                await asyncio.sleep(options.migrate_after)
                await client.migrate(options.migrate_to)
            await streaming
            if options.realtime:
                client.send_event("utterance.end")
            else:
                client.end_audio()
            reply_frames = await _wait_reply(client, options.reply_timeout, closes)
            delivered = await client.bye()
        except CALL_ENDED as ended:
            streaming.cancel()
            closed = await _how_it_ended(client, closes)
            error = _ended_message(ended, closed)
        report = _report(client, sent[0], loop.time() - connected_at)
        report.update(
            uplink_frames_delivered=delivered,
            reply_frames=reply_frames,
            closed=closed,
        )
        if error is not None:
            report["error"] = error
        return report


async def _how_it_ended(client: VoiceClient, closes: list[SessionClosed]) -> dict[str, Any] | None:
    """The close that ended the call (its last ``SessionClosed``), once the call has ended."""
    last: SessionClosed | None = closes[-1] if closes else None

    async def drain() -> None:
        nonlocal last
        while True:
            try:
                event = await client.receive()
            except CallEndedError:
                return
            if isinstance(event, SessionClosed):
                last = event

    try:
        await asyncio.wait_for(drain(), DRAIN_TIMEOUT)
    except TimeoutError:
        pass
    if last is None:
        return None
    return {
        "code": last.error_code,
        "name": error_code_name(last.error_code),
        "reason": last.reason,
    }


def _ended_message(error: BaseException, closed: dict[str, Any] | None) -> str:
    """One line: why the call ended before its report was complete."""
    if closed is None:
        return f"the call ended early: {error or type(error).__name__}"
    reason = closed["reason"] or "no reason given"
    return f"the call was closed: {reason} ({closed['name']}, code {closed['code']:#x})"


def error_code_name(code: int) -> str:
    """A voice error code's name (``LIMIT_EXCEEDED``), or its hex for codes without one."""
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"{code:#x}"


def _report(client: VoiceClient, frames_sent: int, seconds: float) -> dict[str, Any]:
    """The report's counters, as far as the call still has them."""
    session = client.session
    assert session is not None
    report: dict[str, Any] = {
        "server_id": session.server_id,
        "session_id": session.session_id,
        "codec": session.codec,
        "uplink_mode": session.uplink.value,
        "seconds": round(seconds, 3),
        "uplink_frames_sent": frames_sent,
        "uplink_frames_delivered": None,
        "downlink_frames_received": None,
        "reply_frames": 0,
        "rtt_ms": None,
        "rtt_min_ms": None,
        "migrations": [],
        "packets_sent": None,
        "packets_received": None,
        "jitter_ms": None,
        "bytes_sent": None,
        "bytes_received": None,
        "ecn": None,
    }
    try:
        stats = client.stats()
    except CallEndedError:
        return report  # no connection left to count on
    report.update(
        uplink_frames_sent=stats.uplink_frames_sent,
        downlink_frames_received=stats.downlink_frames_received,
        rtt_ms=round(stats.rtt_smoothed_ms, 3) if stats.rtt_smoothed_ms else None,
        rtt_min_ms=round(stats.rtt_min_ms, 3) if stats.rtt_min_ms else None,
        migrations=[
            {"from": m.from_address, "to": m.to_address, "gap_ms": round(m.gap_ms, 2)}
            for m in stats.migrations
        ],
        packets_sent=stats.packets_sent,
        packets_received=stats.packets_received,
        jitter_ms=round(stats.jitter_ms, 3),
        bytes_sent=stats.bytes_sent,
        bytes_received=stats.bytes_received,
        ecn=session_report(stats.ecn_mode, stats.ecn),
    )
    return report


async def _wait_reply(client: VoiceClient, timeout: float, closes: list[SessionClosed]) -> int:
    """Wait for the agent's reply turn to end; return how many frames it had. A close seen
    meanwhile goes into ``closes`` (the report says how the call ended)."""

    async def wait() -> None:
        while True:
            event = await client.receive()
            if isinstance(event, SessionClosed):
                closes.append(event)
            if isinstance(event, TurnEnded | TurnCancelled):
                return

    try:
        await asyncio.wait_for(wait(), timeout)
    except TimeoutError:
        print("quicvoice call: no reply turn from the agent", file=sys.stderr)
    return client.stats().downlink_frames_received
