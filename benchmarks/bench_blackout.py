"""Blackouts longer than the liveness timeout, ``memory://``, three backends behind the forwarder.

    python benchmarks/bench_blackout.py [--blackouts 2,5,10] [--calls 6] [--liveness 1]

Per blackout length: a fresh deployment on loopback (a ``quicvoice-lb`` forwarder process,
probing every 0.2 s; three backends, ``VoiceServer``s in this process, each with its own
``memory://`` store), ``--calls`` calls through a ``BlackoutRelay`` (a UDP relay in front of
the forwarder that drops everything both ways while dark), each sending a 20 ms L16 frame
every 20 ms. After ``--warm`` seconds the relay goes dark for the blackout; every call is
then given ``--after`` seconds.

Reported per blackout: calls lost (a call that ended: its next ``send_audio`` raised), calls
resumed and on which backend (the one holding the session, or another), calls taken back on
the quiet connection, and the time to audio after the blackout: from the end of the blackout
to the first uplink frame arriving at the application of the backend serving the call
(p50 / max over the calls that survived). Exit status 1 if a call was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.load.deploy import Deployment  # noqa: E402
from quicvoice.asyncio.client import VoiceClient, connect  # noqa: E402
from quicvoice.asyncio.config import BackendConfig  # noqa: E402
from quicvoice.asyncio.server import ServerSession, VoiceServer  # noqa: E402
from quicvoice.errors import QuicVoiceError  # noqa: E402
from quicvoice.netlab.blackout import BlackoutRelay  # noqa: E402
from quicvoice.session.events import AudioReceived, SessionClosed  # noqa: E402

FRAME = bytes(640)  # 20 ms of L16 at 16 kHz


@dataclass
class Outcome:
    blackout_s: float
    calls: int
    lost: int = 0
    resumed_home: int = 0
    resumed_elsewhere: int = 0
    restored: int = 0
    to_audio_ms: list[float] = field(default_factory=list)
    lost_reasons: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        times = sorted(self.to_audio_ms)
        body = asdict(self)
        body["to_audio_ms"] = [round(t) for t in times]
        body["to_audio_p50_ms"] = round(statistics.median(times)) if times else None
        body["to_audio_max_ms"] = round(max(times)) if times else None
        return body


async def _speak(call: VoiceClient, until: float, lost: list[str]) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(100_000):
        if loop.time() >= until:
            return
        try:
            call.send_audio(FRAME)
        except QuicVoiceError as error:
            lost.append(str(error))
            return
        await asyncio.sleep(0.02)


async def run_one(
    blackout: float, calls: int, liveness: float, warm: float, after: float
) -> Outcome:
    outcome = Outcome(blackout_s=blackout, calls=calls)
    arrivals: dict[str, list[float]] = defaultdict(list)

    async def agent(session: ServerSession) -> None:
        loop = asyncio.get_running_loop()
        async for event in session:
            if isinstance(event, AudioReceived):
                arrivals[session.session_id].append(loop.time())
            elif isinstance(event, SessionClosed):
                return

    with tempfile.TemporaryDirectory() as directory:
        deployment = Deployment(Path(directory), session_store="memory://")
        deployment.start_forwarder()
        servers: list[VoiceServer] = []
        relay = BlackoutRelay(deployment.vip)
        try:
            for sid in deployment.backends:
                config = BackendConfig.load(deployment.path, server_id=bytes.fromhex(sid))
                server = VoiceServer(config, agent)
                await server.start()
                servers.append(server)
            entry = await relay.start()
            loop = asyncio.get_running_loop()
            async with AsyncExitStack() as stack:
                clients = [
                    await stack.enter_async_context(
                        connect(*entry, verify=False, liveness_timeout=liveness)
                    )
                    for _ in range(calls)
                ]
                homes = {c.session.session_id: c.session.server_id for c in clients if c.session}
                end_at = loop.time() + warm + blackout + after
                lost: list[list[str]] = [[] for _ in clients]
                speaking = [
                    loop.create_task(_speak(c, end_at, lost[i])) for i, c in enumerate(clients)
                ]
                await asyncio.sleep(warm)
                ends = relay.black_out(blackout)
                await asyncio.gather(*speaking)
                for client, reasons in zip(clients, lost, strict=True):
                    if reasons:
                        outcome.lost += 1
                        outcome.lost_reasons.append(reasons[0])
                        continue
                    assert client.session is not None
                    session_id = client.session.session_id
                    resumptions = [r for r in client.resumptions if r.declared_dead_at < end_at]
                    if resumptions:
                        if resumptions[-1].to_server == homes[session_id]:
                            outcome.resumed_home += 1
                        else:
                            outcome.resumed_elsewhere += 1
                    else:
                        outcome.restored += 1
                    later = [t for t in arrivals[session_id] if t > ends]
                    if later:
                        outcome.to_audio_ms.append((min(later) - ends) * 1000)
        finally:
            relay.close()
            for server in servers:
                await server.aclose()
            deployment.stop()
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blackouts", default="2,5,10", help="seconds, comma-separated")
    parser.add_argument("--calls", type=int, default=6)
    parser.add_argument("--liveness", type=float, default=1.0)
    parser.add_argument("--warm", type=float, default=1.0)
    parser.add_argument("--after", type=float, default=6.0)
    args = parser.parse_args()
    if not 1 <= args.calls <= 100:
        parser.error("--calls is 1..100")
    lengths = [float(x) for x in args.blackouts.split(",") if x]
    if not lengths or any(not 0 < x <= 60 for x in lengths):
        parser.error("--blackouts are 0..60 s")
    failed = False
    for length in lengths:
        outcome = asyncio.run(run_one(length, args.calls, args.liveness, args.warm, args.after))
        print(json.dumps(outcome.summary()), flush=True)
        failed = failed or outcome.lost > 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
