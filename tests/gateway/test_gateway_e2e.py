"""Issue 13's phone line, end to end: a Twilio-protocol caller (``twilio_caller``, written from
Twilio's public message documentation) dials ``quicvoice gateway --twilio``, which bridges
the call through the real forwarder to ``quicvoice serve`` backends running
``tests.gateway.phone_app``, with session state in a real Redis.

Proved here: audio both ways (a tone comes back with its pitch); µ-law straight through
(PCMU on the wire); a per-call token from ``customParameters`` verified by the backend;
marks sent after a turn's last frame and returned once its audio has played; the downlink
paced at real time; ``clear`` on a barge-in, with the backend's ``played_ms`` matching what
the line played; the caller's hang-up reaching the backend with every frame; and a backend
SIGKILLed mid-call, after which the WebSocket is still open, the same session continues on
the other backend with its state, and what the caller said during the outage is heard.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from quicvoice.auth import SigningKey, issue_token

from ..conftest import RedisServer
from ..integration.deployment import Deployment
from ..pki import make_ca, make_leaf
from .audio import dominant_hz, tone
from .processes import Process, run_gateway, serve_backend
from .twilio_caller import TwilioCaller

pytestmark = pytest.mark.integration

A, B = "0a000001", "0a000002"
SECRET = "gateway-e2e-secret-of-more-than-32-octets"
AUDIENCE = "voice.test"
FRAME_MS = 20


def token(subject: str) -> str:
    key = SigningKey.hs256(SECRET.encode(), kid="k1")
    return issue_token(key, subject=subject, now=time.time(), ttl=300, audience=AUDIENCE)


def configure(deployment: Deployment, directory: Path) -> Path:
    """The deployment's file plus the backends' certificate and token check; the CA file."""
    ca = make_ca()
    ca_file, _ = ca.write(directory, "ca")
    certificate, private_key = make_leaf(ca).write(directory, "leaf")
    top = [f'certificate = "{certificate}"', f'private_key = "{private_key}"']
    auth = ["[auth]", f'audience = "{AUDIENCE}"', "[[auth.keys]]", 'kid = "k1"',
            'alg = "HS256"', 'secret = "env:QV_GATEWAY_SECRET"']  # fmt: skip
    text = deployment.path.read_text()
    deployment.path.write_text("\n".join(top) + "\n" + text + "\n".join(auth) + "\n")
    return ca_file


@asynccontextmanager
async def phone_system(
    directory: Path, redis: RedisServer, server_ids: list[str]
) -> AsyncIterator[tuple[Deployment, dict[str, Process], str]]:
    """Forwarder, backends (the first up, the others down), gateway; yields the ws:// URL."""
    deployment = Deployment(
        directory,
        server_ids=server_ids,
        session_store=redis.unique_url(),
        down=set(server_ids[1:]),
        health_interval=0,
    )
    ca_file = configure(deployment, directory)
    deployment.start_forwarder()
    processes: list[Process] = []
    try:
        env = {"QV_GATEWAY_SECRET": SECRET}
        backends = {}
        for sid in server_ids:
            backends[sid] = await serve_backend(deployment.path, sid, env)
            processes.append(backends[sid])
        gateway, url = await run_gateway(
            f"quic://127.0.0.1:{deployment.vip[1]}", "--ca-file", str(ca_file)
        )
        processes.append(gateway)
        yield deployment, backends, url
    finally:
        for process in reversed(processes):
            await process.stop()
        deployment.stop()


def turn_media(caller: TwilioCaller, since: float, count: int) -> list[float]:
    return [p.arrived for p in caller.log.played if p.arrived >= since][:count]


@pytest.mark.asyncio
async def test_a_phone_call_both_ways_with_marks_barge_in_and_hang_up(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with phone_system(tmp_path, redis_server, [A]) as (_, backends, url):
        backend = backends[A]
        parameters = {"room": "7", "token": token("caller-42")}
        async with TwilioCaller.dial(url, custom_parameters=parameters) as caller:
            start = await backend.wait_for(backend.find("start"), 10)
            assert start["codec"] == "PCMU/8000"  # µ-law straight through
            assert start["caller"] == "caller-42"  # the stream's own token, verified
            metadata = start["metadata"]
            assert "token" not in metadata  # the credential is not passed on as metadata
            assert metadata["room"] == "7" and metadata["carrier"] == "twilio"
            assert metadata["carrier.stream_sid"] == caller.stream_sid
            session = start["session"]

            # -- audio both ways, a mark after the turn ----------------------------------
            caller.say(tone(440.0, 8000, 0.6))
            caller.pause(0.2)
            caller.press("#")
            reply = await backend.wait_for(backend.find("reply"), 10)
            frames = reply["ms"] // FRAME_MS
            assert frames >= 28  # the 0.6 s tone, less the edges under the voice threshold
            name = f"turn-{reply['turn']}"
            await caller.wait_until(
                lambda: any(m.name == name and m.returned for m in caller.log.marks), 10
            )
            mark = next(m for m in caller.log.marks if m.name == name)
            played = caller.log.played[mark.after_media - frames : mark.after_media]
            assert len(played) == frames
            heard = TwilioCaller.samples(played)
            assert abs(dominant_hz(heard, 8000) - 440.0) < 5
            # Paced at real time, not in a burst (Twilio buffers, but clear must mean
            # something): the frames arrive over the turn's duration.
            span = played[-1].arrived - played[0].arrived
            assert span >= (frames - 1) * FRAME_MS / 1000 * 0.8, span
            # The mark came after the turn's last frame and went back only once all of it
            # had played, from the first frame's arrival.
            assert mark.arrived >= played[-1].arrived
            assert mark.returned is not None and not mark.by_clear
            assert mark.returned >= played[0].arrived + frames * FRAME_MS / 1000 - 0.005
            report = await backend.wait_for(backend.find("played", turn=reply["turn"]), 5)
            assert report["complete"] and report["played_ms"] == frames * FRAME_MS

            # -- barge-in: the backend cancels, the gateway clears the line -------------
            caller.press("9")
            announcement = await backend.wait_for(backend.find("announcement"), 10)
            begun = caller.log.played[-1].arrived if caller.log.played else 0.0
            await caller.wait_until(lambda: len(caller.heard_since(begun + 1e-6)) >= 30, 10)
            caller.say(tone(300.0, 8000, 0.3))  # the caller talks over it
            await caller.wait_until(lambda: bool(caller.log.clears), 5)
            cleared_at = caller.log.clears[0]
            await backend.wait_for(backend.find("barge-in", turn=announcement["turn"]), 5)
            report = await backend.wait_for(backend.find("played", turn=announcement["turn"]), 5)
            assert not report["complete"]
            on_line = [p for p in caller.log.played if begun < p.arrived <= cleared_at]
            assert 30 <= len(on_line) < 150  # cut well before the 3 s it would have lasted
            # What the backend hears as played is what the line played (one frame of slack
            # for the frame in flight at the cancel).
            assert abs(report["played_ms"] - len(on_line) * FRAME_MS) <= 2 * FRAME_MS, (
                report["played_ms"],
                len(on_line),
            )
            assert abs(dominant_hz(TwilioCaller.samples(on_line), 8000) - 660.0) < 5
            print(
                f"\nbarge-in: backend's played_ms {report['played_ms']}, line played "
                f"{len(on_line) * FRAME_MS} ms; mark returned "
                f"{(mark.returned - mark.arrived) * 1000:.1f} ms after it arrived"
            )
            assert not any(m.name == f"turn-{announcement['turn']}" for m in caller.log.marks)

            # -- the caller hangs up: every frame reached the backend -------------------
            await caller.hang_up()
            assert caller.log.closed is not None and caller.log.closed[0] == 1000
            bye = await backend.wait_for(backend.find("bye"), 5)
            assert bye["uplink_frames"] == caller.log.media_sent
            assert not any(p.arrived > cleared_at + 0.05 for p in on_line)
            end = await backend.wait_for(backend.find("end"), 5)
            assert end["session"] == session


@pytest.mark.asyncio
async def test_a_backend_killed_mid_call_is_only_a_gap_on_the_phone(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with phone_system(tmp_path, redis_server, [A, B]) as (deployment, backends, url):
        parameters = {"token": token("caller-7")}
        async with TwilioCaller.dial(url, custom_parameters=parameters) as caller:
            first = await backends[A].wait_for(backends[A].find("start"), 10)
            caller.say(tone(440.0, 8000, 0.5))
            caller.pause(0.2)
            caller.press("#")
            reply = await backends[A].wait_for(backends[A].find("reply"), 10)
            assert reply["utterance"] == 1
            await caller.wait_until(
                lambda: any(m.name == f"turn-{reply['turn']}" and m.returned
                            for m in caller.log.marks), 10,
            )  # fmt: skip
            await backends[A].wait_for(backends[A].find("played", turn=reply["turn"]), 5)

            # Backend A dies without a word; the orchestrator marks it down.
            killed_at = time.time()
            backends[A].kill()
            deployment.write(down={A})
            deployment.reload()
            loop = asyncio.get_running_loop()
            outage = loop.time()
            caller.say(tone(880.0, 8000, 0.6))  # spoken while the session has no backend
            caller.pause(0.2)
            caller.press("#")

            resumed = await backends[B].wait_for(backends[B].find("start"), 15)
            assert resumed["resumed"] and resumed["session"] == first["session"]
            assert resumed["utterances"] == 1  # the state came along
            assert resumed["caller"] == "caller-7"
            again = await backends[B].wait_for(backends[B].find("reply"), 10)
            assert again["utterance"] == 2
            assert again["ms"] >= 500  # the words said during the outage were kept
            # The call numbers turns across resumes (B's turn 0 is the call's turn 1): the
            # reply's mark is the first one after the outage.
            await caller.wait_until(
                lambda: any(m.arrived > outage and m.returned for m in caller.log.marks), 10
            )
            mark = next(m for m in caller.log.marks if m.arrived > outage)
            assert mark.name == "turn-1" and not mark.by_clear
            heard = [p for p in caller.log.played if p.arrived > outage]
            assert len(heard) == again["ms"] // FRAME_MS
            assert abs(dominant_hz(TwilioCaller.samples(heard), 8000) - 880.0) < 5
            assert caller.log.closed is None  # the phone line never dropped
            print(
                f"\nbackend killed -> session resumed on B: "
                f"{(resumed['at'] - killed_at) * 1000:.0f} ms"
            )
            await caller.hang_up()
            assert caller.log.closed is not None and caller.log.closed[0] == 1000
            bye = await backends[B].wait_for(backends[B].find("bye"), 5)
            assert bye["uplink_frames"] == caller.log.media_sent


def test_the_gateway_says_which_extra_it_needs(tmp_path: Path) -> None:
    """Without websockets installed, ``quicvoice gateway`` names the extra to install."""
    import subprocess
    import sys

    blocker = tmp_path / "websockets.py"
    blocker.write_text("raise ImportError('not installed')\n")
    result = subprocess.run(
        [sys.executable, "-m", "quicvoice.cli", "gateway", "--twilio", "--listen",
         "127.0.0.1:0", "--backend", "quic://127.0.0.1:4433"],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 2
    assert "pip install 'quicvoice[gateway]'" in result.stderr
