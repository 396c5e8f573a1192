"""The voice layer's per-frame Python on the ngtcp2 engine, in memory, stage by stage.

    python benchmarks/bench_voice_layer.py [--frames 500] [--repeats 7]

One real ``quicvoice._ngtcp2`` client connection completes the handshake and the
hello/welcome exchange with an ``Ngtcp2VoiceServer``'s endpoint in memory (no socket), and the
server runs ``bench_calls.py``'s echo handler. Then the server side alone is timed, on
pre-built input: what ``Connection.receive()`` returns for one datagram carrying one 640-octet
uplink frame, ``[(2, frame, False)]``, is handed to ``Ngtcp2Call.receive_events`` once per
frame, with no QUIC underneath (that part is ngtcp2's, in C). Each repeat starts a fresh call, so
nothing sent is ever acknowledged and ``--frames`` stays far below the 8 MiB backlog limit.

Stages, in µs per frame (the minimum over ``--repeats``; each later stage includes the earlier
ones, the difference is printed as its own cost):
- ``parse``: ``FrameReader.feed`` of one frame;
- ``dispatch``: ``receive_events`` with an ``on_audio`` that does nothing: transport events, the
  voice layer's stream handling and statistics, the shell's migration check and callbacks;
- ``encode+send``: ``VoiceConnection.send_turn_audio`` alone (backlog check, ``encode_frame``,
  ``Ngtcp2Transport.send`` into the extension);
- ``echo``: ``receive_events`` with the echo handler (``ServerSession.send_turn_audio``): the
  whole receive → on_audio → send path; ``app callback`` is echo − dispatch − encode+send.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_calls import echo  # noqa: E402

FRAME_PAYLOAD = bytes(640)
CLIENT: tuple[str, int] = ("127.0.0.1", 50000)
SERVER: tuple[str, int] = ("127.0.0.1", 4433)
#: Bounds the in-memory handshake: a few rounds are enough.
MAX_ROUNDS = 50
NS = 1_000_000_000


def _engine_config() -> Any:

    from quicvoice.certificates import generate_certificate
    from quicvoice.engine_ngtcp2.endpoint import EngineConfig
    from quicvoice.quiclb import LoadBalancerConfig

    certificate = generate_certificate()
    return EngineConfig(
        local=SERVER,
        server_id=bytes.fromhex("0a0b0c0d"),
        lb_config=LoadBalancerConfig(0, 4, 12, os.urandom(16)),
        reset_key=os.urandom(32),
        certificate=certificate.certificate_pem(),
        private_key=certificate.private_key_pem(),
    )


async def _started_call(config: Any) -> Any:
    """A server call past welcome, running the echo handler: its ``Ngtcp2Call``."""
    from quicvoice import _ngtcp2 as native
    from quicvoice.engine_ngtcp2.voice_server import Ngtcp2VoiceServer
    from quicvoice.session.messages import Hello, encode_message

    server = Ngtcp2VoiceServer(config, echo)
    now = time.monotonic_ns()
    client = native.client(
        b"quicvoice/1",
        "localhost",
        CLIENT,
        SERVER,
        now,
        lambda length: (os.urandom(length), os.urandom(16)),
        lambda cid: None,
        30_000,
    )
    control = -1
    welcomed = False
    for _ in range(MAX_ROUNDS):
        now += 500_000
        _, out = client.flush(now)
        replies = []
        for datagram, _ in out:
            replies += server.endpoint.datagram_received(datagram, CLIENT, now)
        await asyncio.sleep(0)  # the accept task and the handler run
        replies += server.endpoint.transmit(next(iter(server._calls)), now) if server._calls else []
        for datagram, _ in replies:
            _, events = client.receive(datagram, SERVER, now)
            welcomed = welcomed or any(stream_id == control for stream_id, _, _ in events)
        if control < 0 and client.handshake_completed:
            control = client.open_bidi_stream()
            client.send_stream(control, encode_message(Hello()))
        calls = list(server._calls)
        if welcomed and calls and calls[0].session is not None and calls[0].session.on_audio:
            return calls[0]
    raise SystemExit("the in-memory handshake did not complete")


def _frames(count: int) -> list[list[tuple[int, bytes, bool]]]:
    """What ``receive()`` returns for ``count`` datagrams, one uplink frame each."""
    from quicvoice.session.wire import MediaFrame, encode_frame

    return [
        [(2, encode_frame(MediaFrame(seq, seq * 320, FRAME_PAYLOAD)), False)]
        for seq in range(count)
    ]


async def _time_receive(
    config: Any, frames: int, on_audio: Callable[[Any, Any], Callable[[Any], None]] | None
) -> float:
    """µs per frame of ``receive_events`` on a fresh call (``on_audio``: replaces the
    handler's callback, given the session and the turn)."""
    from quicvoice.session.wire import StreamKind, encode_stream_header

    call = await _started_call(config)
    session = call.session
    if on_audio is not None:
        session.on_audio = on_audio(session, 0)
    batches = _frames(frames)
    now = time.monotonic_ns()
    call.receive_events([(2, encode_stream_header(StreamKind.UPLINK), False)], CLIENT, now)
    receive = call.receive_events
    start = time.perf_counter()
    for batch in batches:
        now += 20_000_000
        receive(batch, CLIENT, now)
    elapsed = time.perf_counter() - start
    sent = call.voice.stats().downlink_frames_sent
    if on_audio is None and sent < frames:
        raise SystemExit(f"the echo sent {sent} of {frames} frames")
    call.server.close()
    return elapsed / frames * 1e6


async def _time_send(config: Any, frames: int) -> float:
    """µs per frame of ``VoiceConnection.send_turn_audio`` on a fresh call."""
    call = await _started_call(config)
    voice = call.voice
    send = voice.send_turn_audio
    payload = FRAME_PAYLOAD
    start = time.perf_counter()
    for seq in range(frames):
        if not send(0, payload, seq * 320):
            raise SystemExit("send_turn_audio refused a frame")
    elapsed = time.perf_counter() - start
    call.server.close()
    return elapsed / frames * 1e6


def _time_parse(frames: int) -> float:
    from quicvoice.session.wire import FrameReader

    batches = _frames(frames)
    reader = FrameReader()
    feed = reader.feed
    start = time.perf_counter()
    for batch in batches:
        feed(batch[0][1])
    return (time.perf_counter() - start) / frames * 1e6


async def _measure(frames: int, repeats: int) -> dict[str, float]:
    config = _engine_config()

    def nothing(session: Any, turn: int) -> Callable[[Any], None]:
        return lambda frame: None

    best: dict[str, float] = {}
    for _ in range(repeats):
        runs = {
            "parse": _time_parse(frames),
            "dispatch": await _time_receive(config, frames, nothing),
            "encode+send": await _time_send(config, frames),
            "echo": await _time_receive(config, frames, None),
        }
        for name, value in runs.items():
            best[name] = min(best.get(name, value), value)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=500, help="frames per timed run")
    parser.add_argument("--repeats", type=int, default=7, help="runs; the minimum is shown")
    args = parser.parse_args()
    if not 1 <= args.frames <= 5000 or not 1 <= args.repeats <= 100:
        parser.error("--frames must be 1..5000 and --repeats 1..100")
    from quicvoice import engine_ngtcp2

    engine_ngtcp2.require()
    best = asyncio.run(_measure(args.frames, args.repeats))
    app = best["echo"] - best["dispatch"] - best["encode+send"]
    print(f"µs per 640-octet frame, min of {args.repeats} runs of {args.frames} frames")
    print(f"  parse (FrameReader.feed)            {best['parse']:6.2f}")
    print(f"  dispatch (receive_events, no app)   {best['dispatch']:6.2f}")
    print(f"  encode+send (send_turn_audio)       {best['encode+send']:6.2f}")
    print(f"  app callback (echo - the two above) {app:6.2f}")
    print(f"  echo (receive → on_audio → send)    {best['echo']:6.2f}")


if __name__ == "__main__":
    main()
