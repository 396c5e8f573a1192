"""Real headless Chromium, through the real forwarder, to two backends (issue 7's browser test).

``quicvoice-lb`` runs as a process; two ``VoiceServer`` backends with the demo agent run in a
thread of this process, configured from the same file and sharing one pinnable development
certificate; the demo page comes from ``start_web`` on one of them and names the forwarder's
VIP. Chromium's fake microphone plays espeak-ng speech into the capture worklet; the page
streams it over WebTransport, ends the utterance, plays the echoed turn, barges in on a
second one, orders an item and hangs up.
"""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from quicvoice.agent import demo_agent
from quicvoice.asyncio.config import BackendConfig
from quicvoice.asyncio.server import ServerSession, VoiceServer
from quicvoice.asyncio.web import WebServer, start_web
from quicvoice.certificates import generate_certificate
from quicvoice.session.events import AudioReceived, TurnCancelled, VoiceEvent
from quicvoice.session.wire import MediaFrame

from .harness import (
    LoopThread,
    chromium,
    free_port,
    make_speech_wav,
    require_browser,
    stop_process,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

KEY = "8f95f09245765f80256934e50c66207f"
SERVER_IDS = ("0a000001", "0a000002")
SPEECH = "One espresso and a croissant, please. Thank you very much."
TALK_SECONDS = 2.0
#: -40 dBFS: speech is far above, the fake microphone's silence and a broken pipeline below.
MIN_SPEECH_RMS = 0.01


class _Tap:
    """A ``ServerSession`` seen through a tap that keeps the uplink frames and cancels."""

    def __init__(self, session: ServerSession, record: dict[str, Any]) -> None:
        self._session = session
        self._record = record

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def __aiter__(self) -> _Tap:
        return self

    async def __anext__(self) -> VoiceEvent:
        event = await self._session.__anext__()
        if isinstance(event, AudioReceived):
            self._record["frames"].append(event.frame)
        elif isinstance(event, TurnCancelled):
            self._record["cancelled"].append(event)
        return event


class Deployment:
    """The shared configuration, the forwarder process, the backends and the web server."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.vip = ("127.0.0.1", free_port())
        self.metrics_port = free_port(socket.SOCK_STREAM)
        certificate = generate_certificate(names=("127.0.0.1", "localhost"))
        (directory / "cert.pem").write_bytes(certificate.certificate_pem())
        (directory / "key.pem").write_bytes(certificate.private_key_pem())
        self.certificate_sha256 = certificate.sha256
        lines = [
            f'listen = "127.0.0.1:{self.vip[1]}"',
            f'backend_listen = "127.0.0.1:{free_port()}"',
            f'metrics = "127.0.0.1:{self.metrics_port}"',
            f'reset_key = "{bytes(range(32)).hex()}"',
            # No health probes: the test counts every datagram each backend receives.
            "health_interval = 0",
            'certificate = "cert.pem"',
            'private_key = "key.pem"',
            'log_level = "warning"',
            "[[configs]]",
            "id = 0",
            "server_id_len = 4",
            "nonce_len = 12",
            f'key = "{KEY}"',
        ]
        for sid in SERVER_IDS:
            address = f'address = "127.0.0.1:{free_port()}"'
            lines += ["[[backends]]", f'server_id = "{sid}"', address]
        self.path = directory / "deployment.toml"
        self.path.write_text("\n".join(lines) + "\n")
        self.forwarder: subprocess.Popen[bytes] | None = None
        self.loop = LoopThread()
        self.servers: dict[str, VoiceServer] = {}
        self.web: WebServer | None = None
        #: Per session ID: {"frames": [MediaFrame], "cancelled": [TurnCancelled]}.
        self.records: dict[str, dict[str, Any]] = {}

    def start(self) -> None:
        lb = Path(sys.executable).with_name("quicvoice-lb")
        command = [str(lb)] if lb.exists() else [sys.executable, "-m", "lb"]
        with open(self.directory / "lb.log", "wb") as log:
            self.forwarder = subprocess.Popen(
                [*command, "--config", str(self.path)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(self._metrics_up, 10)
        self.web = self.loop.run(self._start_backends())

    def _metrics_up(self) -> bool:
        assert self.forwarder is not None and self.forwarder.poll() is None, "forwarder died"
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    async def _handler(self, session: ServerSession) -> None:
        record = self.records.setdefault(session.session_id, {"frames": [], "cancelled": []})
        await demo_agent(cast(ServerSession, _Tap(session, record)))

    async def _start_backends(self) -> WebServer:
        for sid in SERVER_IDS:
            config = BackendConfig.load(self.path, server_id=bytes.fromhex(sid))
            server = VoiceServer(config, self._handler)
            await server.start()
            self.servers[sid] = server
        return await start_web(
            self.servers[SERVER_IDS[0]], ("127.0.0.1", 0), public_address=self.vip
        )

    def stop(self) -> None:
        async def close() -> None:
            if self.web is not None:
                self.web.close()
            for server in self.servers.values():
                server.close()

        try:
            self.loop.run(close())
        finally:
            self.loop.close()
            if self.forwarder is not None:
                stop_process(self.forwarder)


@pytest.fixture()
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    require_browser()
    deployment = Deployment(tmp_path)
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.stop()


def rms(frames: list[MediaFrame]) -> float:
    """RMS (full scale 1.0) of L16 (big-endian) frames."""
    pcm = np.frombuffer(b"".join(f.payload for f in frames), dtype=">i2").astype(np.float64)
    return float(np.sqrt(np.mean((pcm / 32768) ** 2))) if len(pcm) else 0.0


def page_state(driver: Any, *keys: str) -> dict[str, Any]:
    fields = ", ".join(f"{k}: s.{k}" for k in keys)
    script = f"const s = window.demo.state; return {{{fields}}};"
    return cast(dict[str, Any], driver.execute_script(script))


def wait_for_page(driver: Any, until: str, keys: tuple[str, ...], timeout: float) -> dict[str, Any]:
    """Poll the page's state until ``state[until]`` (or ``state.errors``) is non-empty."""

    def probe() -> dict[str, Any] | None:
        state = page_state(driver, until, "errors", *keys)
        return state if state[until] or state["errors"] else None

    state: dict[str, Any] = wait_for(probe, timeout)
    assert not state["errors"], state
    return state


def test_browser_talks_to_the_agent_through_the_forwarder(
    deployment: Deployment, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    wav = make_speech_wav(tmp_path / "speech.wav", SPEECH)
    started = time.monotonic()
    with chromium(
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
    ) as driver:
        assert deployment.web is not None
        host, port = deployment.web.address
        driver.get(f"http://{host}:{port}/")
        driver.find_element(By.ID, "connect").click()  # a real click: audio may start
        state = wait_for_page(driver, "welcome", ("config",), 15)
        assert state["config"]["url"] == f"https://127.0.0.1:{deployment.vip[1]}/voice"
        assert state["config"]["certificate_sha256"] == deployment.certificate_sha256.hex()
        home = state["welcome"]["serverId"]
        wait_for(lambda: page_state(driver, "status")["status"].startswith("connected"), 10)

        # Chromium's first flight (two Initial datagrams, one DCID) reached one backend only.
        counters = {sid: dict(s.counters) for sid, s in deployment.servers.items()}
        assert sum(c["new_connections"] for c in counters.values()) == 1, counters
        assert counters[home]["new_connections"] == 1, counters
        other = next(sid for sid in SERVER_IDS if sid != home)
        assert counters[other]["datagrams"] == 0, counters

        # Talk for two seconds, then end the utterance: the agent echoes it as turn 0.
        driver.execute_script("window.demo.startTalking()")
        time.sleep(TALK_SECONDS)
        driver.execute_script("window.demo.stopTalking()")
        wait_for_page(driver, "turnsFinished", (), 15)
        playback = wait_for(
            lambda: (
                (p := driver.execute_script("return window.demo.player.stats"))
                and p["turnsFinished"]
                and p
            ),
            2,
        )
        state = page_state(
            driver,
            "capture",
            "firstTurnFrameMs",
            "firstAudioMs",
            "turnsStarted",
            "turnsEnded",
            "audio",
        )
        sent = driver.execute_script("return window.demo.session.stats.uplinkFramesSent")
        records = deployment.records
        assert len(records) == 1
        (record,) = records.values()
        heard = wait_for(lambda: len(record["frames"]) >= sent and record["frames"], 5)
        speech_rms = rms(heard)
        print(
            f"\nuplink: {sent} frames sent, {len(heard)} received, speech RMS {speech_rms:.3f}"
            f"\nplayback: {playback}\ncapture: {state['capture']}\naudio: {state['audio']}"
            f"\nfirst turn frame {state['firstTurnFrameMs']:.1f} ms, first audio "
            f"{state['firstAudioMs']:.1f} ms after utterance.end"
        )
        assert abs(sent - TALK_SECONDS * 50) <= 10
        assert len(heard) == sent
        assert [f.seq for f in heard] == list(range(sent))
        assert all(len(f.payload) == 640 for f in heard)
        assert speech_rms > MIN_SPEECH_RMS
        assert state["turnsStarted"] == [0] and state["turnsEnded"] == [0]
        assert playback["turnsFinished"] == 1 and playback["framesPlayed"] >= sent - 5
        assert playback["rms"] > MIN_SPEECH_RMS
        assert math.isclose(playback["rms"], speech_rms, rel_tol=0.25)

        # Barge-in on the next turn the moment it starts.
        driver.execute_script(
            "const d = window.demo; d.session.addEventListener('turnstart',"
            " (e) => d.session.cancelTurn(e.detail.turnId), { once: true }); d.startTalking();"
        )
        time.sleep(1.0)
        driver.execute_script("window.demo.stopTalking()")
        state = wait_for_page(driver, "turnsCancelled", (), 10)
        assert state["turnsCancelled"][0] == {"turnId": 1, "byPeer": False}
        wait_for(lambda: record["cancelled"], 5)
        assert record["cancelled"][0].turn_id == 1
        wait_for(lambda: driver.execute_script("return window.demo.player.stats.turnsCancelled"), 2)

        # An order round trip shows in the cart, on the page.
        driver.execute_script("window.demo.addOrder('espresso')")
        wait_for(lambda: page_state(driver, "cart")["cart"], 5)
        items = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#cart li")]
        assert items == ["espresso"]

        # Hang up: the server counted every frame the page sent.
        driver.execute_async_script(
            "const done = arguments[0]; window.demo.hangUp().then(() => done(true));"
        )
        log = page_state(driver, "log", "errors")
        assert not log["errors"], log
        final = deployment.servers[home].sessions()
        assert not final or final[0].stats().turns_cancelled == 1
        bye = [line for line in log["log"] if "bye:" in line]
        sent_total = driver.execute_script("return window.demo.session.stats.uplinkFramesSent")
        assert bye and bye[0].endswith(f"received {sent_total} frames"), (bye, sent_total)
    print(f"whole test: {time.monotonic() - started:.1f} s")
