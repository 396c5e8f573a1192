"""The lab on the real kernel: the delay line's delay and loss measured with a UDP echo between
namespaces, and teardown after an exception, SIGTERM, and (via cleanup_stale) SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from quicvoice.netlab import (
    DelayLine,
    Fate,
    Lab,
    LineConfig,
    ProbeResult,
    VoiceTopology,
    VoiceTopologyConfig,
    build_voice_topology,
    cleanup_stale,
    list_namespaces,
    probe,
)

from .conftest import process_alive

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("root"), pytest.mark.timeout(60)]
ROOT = Path(__file__).resolve().parents[2]
ECHO_PORT = 7000
#: Probes per path: voice-like packets (200 octets) every 5 ms.
COUNT, INTERVAL = 500, 0.005


def start_echo(lab: Lab, topology: VoiceTopology) -> None:
    echo = lab.spawn(
        topology.server,
        [
            sys.executable, "-m", "quicvoice.netlab.udpecho", "echo",
            "--bind", f"{topology.server_ip}:{ECHO_PORT}", "--max-seconds", "50",
        ],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert echo.stdout is not None
    assert echo.stdout.readline().startswith(b"echo ")


def probe_from(topology: VoiceTopology, source: str, count: int = COUNT) -> ProbeResult:
    sock = topology.client.open_socket()
    try:
        sock.bind((source, 0))
        return probe(sock, (topology.server_ip, ECHO_PORT), count=count, interval=INTERVAL)
    finally:
        sock.close()


@pytest.mark.parametrize("delay_ms", [20.0, 100.0])
def test_the_delay_line_adds_its_delay_within_a_millisecond(lab: Lab, delay_ms: float) -> None:
    line = LineConfig(delay_ms=delay_ms)
    topology = build_voice_topology(lab, VoiceTopologyConfig(cell_uplink=line, cell_downlink=line))
    start_echo(lab, topology)
    wifi = probe_from(topology, topology.wifi_ip)
    cell = probe_from(topology, topology.cell_ip)
    stats = topology.delay_line.stop()
    assert wifi.received == cell.received == COUNT
    added = [c - w for c, w in zip(cell.rtts_ms, wifi.rtts_ms, strict=True)]
    median_error = statistics.median(cell.rtts_ms) - statistics.median(wifi.rtts_ms) - 2 * delay_ms
    mean_error = statistics.fmean(added) - 2 * delay_ms
    print(
        f"\ndelay {delay_ms} ms each way: wifi RTT median {statistics.median(wifi.rtts_ms):.3f} "
        f"ms; cell RTT median {statistics.median(cell.rtts_ms):.3f}, p99 {cell.percentile(99):.3f}"
        f" ms; added RTT error median {median_error:+.3f} ms, mean {mean_error:+.3f} ms; "
        f"line lateness up {stats['dl-up'].late_mean_ms:.3f}/{stats['dl-up'].late_max_ms:.3f}, "
        f"down {stats['dl-down'].late_mean_ms:.3f}/{stats['dl-down'].late_max_ms:.3f} ms mean/max"
    )
    # Two passes through the line per round trip: within 1 ms each way at the median. The
    # mean also carries the tail of two processes waiting for a busy core (2 shared cores in
    # CI), so it only guards against gross errors.
    assert -0.5 < median_error < 2.0
    assert -0.5 < mean_error < 5.0
    for direction in ("dl-up", "dl-down"):
        assert stats[direction].delivered == COUNT
        assert stats[direction].delay_mean_ms == pytest.approx(delay_ms, abs=0.01)
        assert stats[direction].late_mean_ms < 1.0


def test_the_delay_line_drops_the_configured_fraction_deterministically(lab: Lab) -> None:
    seed = 11
    up, down = LineConfig(delay_ms=20, loss_percent=10), LineConfig(delay_ms=20, loss_percent=5)
    topology = build_voice_topology(
        lab, VoiceTopologyConfig(cell_uplink=up, cell_downlink=down, seed=seed)
    )
    start_echo(lab, topology)
    result = probe_from(topology, topology.cell_ip)
    stats = topology.delay_line.stop()

    # The same seeded draws, replayed in memory, name exactly the probes lost.
    predicted_up = DelayLine.seeded(up, seed, "dl-up")
    predicted_down = DelayLine.seeded(down, seed, "dl-down")
    predicted = set()
    for seq in range(COUNT):
        if predicted_up.push(b"", 0.0) is Fate.LOST or predicted_down.push(b"", 0.0) is Fate.LOST:
            predicted.add(seq)
    print(
        f"\nloss 10 % up, 5 % down: {len(result.lost)} of {COUNT} probes lost "
        f"(up {stats['dl-up'].lost}, down {stats['dl-down'].lost}); expected 14.5 %"
    )
    assert set(result.lost) == predicted
    assert stats["dl-up"].received == COUNT
    assert stats["dl-up"].lost + stats["dl-down"].lost == len(result.lost)
    # And the rate is what was asked: binomial, within 4 standard deviations.
    expected = 1 - 0.9 * 0.95
    sigma = (expected * (1 - expected) / COUNT) ** 0.5
    assert abs(result.loss_fraction - expected) < 4 * sigma


def test_the_lab_tears_everything_down_when_the_body_raises(root: None) -> None:
    with pytest.raises(RuntimeError, match="the test body failed"):
        with Lab() as lab:
            topology = build_voice_topology(lab)
            start_echo(lab, topology)
            names = [ns.name for ns in (topology.client, topology.router, topology.server)]
            pids = [process.pid for process in lab.processes]
            assert set(names) <= set(list_namespaces())
            raise RuntimeError("the test body failed")
    assert not set(names) & set(list_namespaces())
    assert not [pid for pid in pids if process_alive(pid)]


CHILD = textwrap.dedent(
    """
    import json, sys, time
    from quicvoice.netlab import Lab, build_voice_topology
    with Lab() as lab:
        topology = build_voice_topology(lab)
        names = [ns.name for ns in (topology.client, topology.router, topology.server)]
        print(json.dumps({"names": names, "line": topology.delay_line.process.pid}), flush=True)
        time.sleep(30)
    """
)


def start_child() -> tuple[subprocess.Popen[str], list[str], int]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert child.stdout is not None
    built = json.loads(child.stdout.readline())
    return child, built["names"], built["line"]


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_sigterm_tears_the_lab_down(root: None) -> None:
    child, names, line_pid = start_child()
    try:
        assert set(names) <= set(list_namespaces())
        child.send_signal(signal.SIGTERM)
        assert child.wait(10) == 128 + signal.SIGTERM
        assert not set(names) & set(list_namespaces())
        assert wait_gone(line_pid, 1.0)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_cleanup_stale_removes_what_a_killed_run_left(root: None) -> None:
    child, names, line_pid = start_child()
    try:
        child.send_signal(signal.SIGKILL)
        child.wait(5)
        assert set(names) <= set(list_namespaces())  # SIGKILL: no teardown ran
        # The delay line notices its parent is gone and exits by itself.
        assert wait_gone(line_pid, 3.0)
        removed = cleanup_stale()
        assert set(names) <= set(removed)
        assert not set(names) & set(list_namespaces())
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        cleanup_stale()


def test_namespaces_of_live_runs_are_left_alone(lab: Lab) -> None:
    namespace = lab.namespace("mine")
    assert namespace.name.startswith(f"qvnl-{os.getpid()}-")
    assert namespace.name not in cleanup_stale()
    assert namespace.name in list_namespaces()
