"""``examples/wifi_to_5g.py --netns``: the demo over namespaces, real interfaces and a delayed,
lossy cellular link, make-before-break and break-before-make."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from quicvoice.netlab import list_namespaces

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("root"), pytest.mark.timeout(70)]
ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "wifi_to_5g.py"
CELL_IP = "198.18.2.2"


def run_demo(*extra: str) -> dict[str, Any]:
    process = subprocess.Popen(
        [sys.executable, str(DEMO), "--netns", "--json", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr[-3000:]
    assert not [name for name in list_namespaces() if name.startswith(f"qvnl-{process.pid}-")]
    report: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    print("\n" + json.dumps({k: v for k, v in report["quic"].items() if k != "cart"}))
    print(json.dumps(report["netns"]))
    return report


def check_quic(report: dict[str, Any]) -> None:
    quic, netns = report["quic"], report["netns"]
    assert quic["frames_sent"] == quic["frames_delivered"] > 100
    assert quic["server_before"] == quic["server_after"]
    assert [item["item"] for item in quic["cart"]] == ["taro milk tea", "matcha latte"]
    # The migration is a change of interface: the kernel routed the new socket out of cell0,
    # the backend sees the cellular address, and wifi0 is gone.
    assert quic["peer_after"].startswith(f"{CELL_IP}:")
    assert (netns["interface_before"], netns["interface_after"]) == ("wifi0", "cell0")
    assert netns["wifi_present_after"] is False
    # Over the cellular link: 2 x 50 ms through the delay line.
    assert 95 < netns["rtt_after_ms"] < 200
    assert netns["delay_line"]["dl-up"]["received"] > 100


def test_the_netns_demo_migrates_make_before_break_without_loss() -> None:
    report = run_demo()
    check_quic(report)
    assert report["netns"]["break_before_make"] is False
    assert report["netns"]["resumptions"] == 0
    websocket = report["websocket"]
    assert [item["item"] for item in websocket["cart"]] == ["matcha latte"]
    assert websocket["frames_delivered"] < websocket["frames_sent"]


@pytest.mark.parametrize("notice_ms", [200, 3000])
def test_the_netns_demo_survives_wifi_vanishing_without_warning(notice_ms: int) -> None:
    report = run_demo("--break-before-make", "--no-contrast", "--notice-ms", str(notice_ms))
    check_quic(report)
    assert report["netns"]["break_before_make"] is True
    # The client's next send from the vanished address fails (ENETUNREACH): it moves the live
    # connection to cell0 by itself, long before the app hears of it, so the backend, the
    # connection and the cart stay; nothing had to be resumed.
    assert report["netns"]["resumptions"] == 0
    # Nothing is heard between the deletion and an answer on cell0: at least one cell RTT,
    # and well under the app's notice.
    assert 95 < report["quic"]["migration_gap_ms"] < min(notice_ms, 1000)


@pytest.mark.parametrize("loss", [0, 5])
def test_the_netns_demo_realtime_uplink_is_played_concealed_and_scored(loss: int) -> None:
    """Opus with FEC in datagrams over 20 ms each way: what the agent's jitter buffer played."""
    report = run_demo(
        "--uplink", "realtime", "--no-contrast", "--cell-delay-ms", "20", "--cell-loss", str(loss)
    )  # fmt: skip
    quic, netns = report["quic"], report["netns"]
    realtime = quic["realtime"]
    playout, quality = realtime["playout"], realtime["quality"]
    assert quic["uplink"] == "realtime" and realtime["codec"] == "opus/48000"
    assert quic["server_before"] == quic["server_after"]
    assert [item["item"] for item in quic["cart"]] == ["taro milk tea", "matcha latte"]
    assert (netns["interface_before"], netns["interface_after"]) == ("wifi0", "cell0")
    assert 38 < netns["rtt_after_ms"] < 80
    sent, arrived = quic["frames_sent"], quic["frames_delivered"]
    assert sent > 300
    # The jitter buffer played about the call's length, start to end of the utterance.
    assert playout["final"] is True and playout["ended_by"] in ("sequence", "underrun")
    assert abs(playout["frames"] - sent) <= 20
    assert playout["packets_received"] == arrived
    codec_wb = quality["codec_only"]["wb"]
    assert 3.2 < codec_wb < 4.5
    if loss == 0:
        assert arrived == sent
        # Only the move (one-way delay 0 -> 20 ms) leaves the buffer waiting a frame or two.
        assert playout["concealment_ratio"] < 0.02
        assert playout["fec_frames"] == playout["plc_frames"] == 0
        assert quality["played"]["wb"] > codec_wb - 0.35
    else:
        assert arrived < sent
        lost = sent - arrived
        assert playout["fec_frames"] > 0
        concealed = playout["fec_frames"] + playout["plc_frames"] + playout["expand_frames"]
        assert concealed >= lost - 1  # each lost frame is concealed (bar one before playout)
        assert 0 < playout["concealment_ratio"] < 0.15
        assert 2.3 < quality["played"]["wb"] < codec_wb


def test_without_root_netns_fails_fast_with_a_message() -> None:
    code = (
        "import os, runpy, sys; os.geteuid = lambda: 1000; "
        f"sys.argv = [{str(DEMO)!r}, '--netns']; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert result.returncode == 2
    assert "need root" in result.stderr
    assert os.geteuid() == 0  # the real check above ran as root, so the fake is what failed
