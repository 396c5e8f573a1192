"""The README's first command: the Wi-Fi to 5G demo runs to completion and loses nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_migrates_without_loss_and_keeps_the_cart(tmp_path: Path) -> None:
    plot = tmp_path / "latency.png"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "wifi_to_5g.py"), "--json", "--plot", str(plot)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    quic = report["quic"]
    assert quic["frames_sent"] == quic["frames_delivered"] > 100
    assert quic["server_before"] == quic["server_after"]
    assert quic["peer_after"].startswith("127.0.0.3:")
    assert [item["item"] for item in quic["cart"]] == ["taro milk tea", "matcha latte"]
    websocket = report["websocket"]
    assert [item["item"] for item in websocket["cart"]] == ["matcha latte"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_the_demo_stops_every_process_it_started() -> None:
    """Ctrl-C in the middle: no forwarder or backend is left behind."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "wifi_to_5g.py"), "--no-contrast"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if "order taken" in line:
            break
    children = _children(process.pid)
    assert len(children) == 3  # the forwarder and two backends
    process.send_signal(subprocess.signal.SIGINT)  # type: ignore[attr-defined]
    process.wait(20)
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists() and _alive(pid)]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"
