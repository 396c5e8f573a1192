"""``benchmarks/bench_interface_loss.py``: Wi-Fi deleted without warning under several calls;
the client library moves every live connection to the cellular link by itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("root"), pytest.mark.timeout(120)]
BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_interface_loss.py"
CALLS = 6


def test_calls_survive_their_interface_vanishing_without_a_resume() -> None:
    argv = [sys.executable, str(BENCH), "--calls", str(CALLS), "--seconds", "5",
            "--drop-at", "2", "--notice-ms", "1500", "--json"]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    calls = report["calls"]
    print("\n" + json.dumps(calls))
    assert len(calls) == CALLS
    for call in calls:
        assert call["ok"], call
        assert call["frames_sent"] == call["frames_delivered"] == 250
        assert call["resumptions"] == 0
        assert call["server_after"] == call["server_before"]
        assert call["peer_after"].startswith("198.18.2.2:")
        # One move, made by the client itself from the vanished Wi-Fi address to cell0,
        # about one cellular RTT (100 ms) after the next send failed; the app's later
        # migrate(cell) found it done.
        [move] = call["migrations"]
        assert move["from"].startswith("198.18.1.2:") and move["to"].startswith("198.18.2.2:")
        assert 95 < move["gap_ms"] < 1000
