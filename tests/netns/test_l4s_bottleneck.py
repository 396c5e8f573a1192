"""The lab's L4S bottleneck on real sockets in namespaces: the delay line keeps the TOS octet of
what it relays, its DualQ marks ECT(1) at a shallow queue while classic cross traffic is
dropped (not-ECT) or marked (ECT(0)), and a bleaching line clears the ECN bits."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from quicvoice.netlab import Lab, LineConfig, VoiceTopology, VoiceTopologyConfig
from quicvoice.netlab import build_voice_topology as build
from quicvoice.netlab.ecnbits import Ecn

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("root"), pytest.mark.timeout(90)]

PROBE_PORT, SINK_PORT = 7200, 7300
DSCP_EF = 46 << 2
PROBE = struct.Struct("!IQ")


@dataclass
class Received:
    sequence: int
    tos: int
    one_way_ms: float


def receiver(topology: VoiceTopology, port: int) -> socket.socket:
    sock = topology.server.open_socket()
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
    sock.bind((topology.server_ip, port))
    sock.settimeout(0.05)
    return sock


def sender(topology: VoiceTopology, tos: int) -> socket.socket:
    sock = topology.client.open_socket()
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
    sock.bind((topology.cell_ip, 0))  # the cellular path: through the delay line
    return sock


def receive_all(sock: socket.socket, until: float) -> list[Received]:
    out: list[Received] = []
    while time.monotonic() < until:
        try:
            data, ancillary, _, _ = sock.recvmsg(2048, socket.CMSG_SPACE(1))
        except TimeoutError:
            continue
        now = time.monotonic_ns()
        tos = -1
        for level, kind, value in ancillary:
            if level == socket.IPPROTO_IP and kind == socket.IP_TOS and value:
                tos = value[0]
        sequence, sent_ns = PROBE.unpack_from(data)
        out.append(Received(sequence, tos, (now - sent_ns) / 1e6))
    return out


def send_probes(sock: socket.socket, port: int, server_ip: str, count: int, gap: float) -> None:
    start = time.monotonic()
    for index in range(count):
        delay = start + index * gap - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing a sender, not synchronising with anything
        sock.sendto(PROBE.pack(index, time.monotonic_ns()) + bytes(92), (server_ip, port))


@contextmanager
def topology_with(lab: Lab, uplink: LineConfig) -> Iterator[VoiceTopology]:
    downlink = LineConfig(delay_ms=5.0)
    topology = build(lab, VoiceTopologyConfig(cell_uplink=uplink, cell_downlink=downlink))
    yield topology


def probe_tos(topology: VoiceTopology, tos_values: list[int], count: int = 20) -> Counter[int]:
    """Send ``count`` probes with each TOS value over the cell path; the TOS values seen."""
    rx = receiver(topology, PROBE_PORT)
    seen: Counter[int] = Counter()
    try:
        for tos in tos_values:
            tx = sender(topology, tos)
            try:
                send_probes(tx, PROBE_PORT, topology.server_ip, count, 0.002)
            finally:
                tx.close()
            seen.update(r.tos for r in receive_all(rx, time.monotonic() + 0.3))
    finally:
        rx.close()
    return seen


def test_the_delay_line_keeps_the_tos_octet_of_what_it_relays(lab: Lab) -> None:
    with topology_with(lab, LineConfig(delay_ms=5.0)) as topology:
        values = [DSCP_EF | ecn for ecn in Ecn] + [0x00, 0x01, 0x02]
        seen = probe_tos(topology, values)
        stats = topology.delay_line.stop()["dl-up"]
    assert seen == Counter({value: 20 for value in values})
    assert stats.arrived_ect1 == 40 and stats.arrived_ect0 == 40 and stats.arrived_ce == 20
    assert stats.ecn_rewritten == 0


def test_a_bleaching_line_clears_the_ecn_bits_and_keeps_the_dscp(lab: Lab) -> None:
    with topology_with(lab, LineConfig(delay_ms=5.0, ecn="bleach")) as topology:
        seen = probe_tos(topology, [DSCP_EF | Ecn.ECT1, DSCP_EF | Ecn.ECT0, DSCP_EF | Ecn.CE])
        stats = topology.delay_line.stop()["dl-up"]
    assert seen == Counter({DSCP_EF: 60})
    assert stats.ecn_rewritten == 60


def test_a_mangling_line_turns_ect1_into_ect0(lab: Lab) -> None:
    with topology_with(lab, LineConfig(delay_ms=5.0, ecn="mangle")) as topology:
        seen = probe_tos(topology, [DSCP_EF | Ecn.ECT1])
    assert seen == Counter({DSCP_EF | Ecn.ECT0: 20})


def start_cross_traffic(lab: Lab, topology: VoiceTopology, seconds: float) -> subprocess.Popen[str]:
    sink = lab.spawn(
        topology.server,
        [
            sys.executable, "-m", "quicvoice.netlab.crosstraffic", "sink",
            "--bind", f"{topology.server_ip}:{SINK_PORT}", "--max-seconds", str(seconds + 5),
        ],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert sink.stdout is not None
    assert json.loads(sink.stdout.readline())["event"] == "ready"
    return lab.spawn(
        topology.client,
        [
            sys.executable, "-m", "quicvoice.netlab.crosstraffic", "send",
            "--bind", topology.cell_ip, "--to", f"{topology.server_ip}:{SINK_PORT}",
            "--seconds", str(seconds), "--size", "250",
        ],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_the_dualq_marks_l4s_shallow_and_keeps_classic_near_its_target(lab: Lab) -> None:
    """2 Mbit/s filled by a loss-based AIMD sender (not-ECT): the classic queue stands near
    15 ms and its packets are dropped; ECT(1) probes through the same link are never dropped,
    wait ~1 ms, and some are marked CE; ECT(0) probes wait in the classic queue and are
    marked CE instead of being dropped."""
    uplink = LineConfig(delay_ms=5.0, rate_kbps=2000.0, l4s_threshold_ms=1.0)
    with topology_with(lab, uplink) as topology:
        cross = start_cross_traffic(lab, topology, seconds=9.0)
        time.sleep(2.0)  # the AIMD sender's ramp-up: wall time, not an event to await
        rx = receiver(topology, PROBE_PORT)
        results: dict[int, list[Received]] = {}
        try:
            for ecn in (Ecn.ECT1, Ecn.ECT0):
                tx = sender(topology, DSCP_EF | ecn)
                # Received as they arrive (one-way delay = arrival - send on one clock).
                reading = threading.Thread(
                    target=lambda e=ecn: results.__setitem__(
                        e, receive_all(rx, time.monotonic() + 2.4)
                    )
                )
                reading.start()
                try:
                    send_probes(tx, PROBE_PORT, topology.server_ip, 100, 0.02)  # 2 s of voice
                finally:
                    reading.join()
                    tx.close()
        finally:
            rx.close()
        stdout, _ = cross.communicate(timeout=30)
        line = topology.delay_line.stop()["dl-up"]
    aimd = json.loads(stdout.strip().splitlines()[-1])
    l4s, classic = results[Ecn.ECT1], results[Ecn.ECT0]
    base = 5.0  # the line's delay; probes add ~0.5 ms of serialisation
    l4s_queue = sorted(r.one_way_ms - base for r in l4s)
    classic_queue = sorted(r.one_way_ms - base for r in classic)
    print(
        f"\nAIMD {aimd}\nAQM {line.aqm}\nL4S probes {len(l4s)}, queue p50 "
        f"{l4s_queue[len(l4s_queue) // 2]:.2f} ms p90 {l4s_queue[int(len(l4s_queue) * 0.9)]:.2f}"
        f" ms; ECT(0) probes {len(classic)}, queue p50 "
        f"{classic_queue[len(classic_queue) // 2]:.2f} ms"
    )
    assert aimd["sent"] > 3000 and line.aqm.dropped > 0  # the cross traffic filled the link
    assert line.aqm.classic_sojourn_mean_ms > 5.0
    assert len(l4s) == 100 and len(classic) == 100  # no probe lost: marked, never dropped
    assert {r.tos & 0xFC for r in l4s + classic} == {DSCP_EF}
    l4s_p50 = l4s_queue[len(l4s_queue) // 2]
    classic_p50 = classic_queue[len(classic_queue) // 2]
    assert l4s_p50 < 4.0
    assert classic_p50 > l4s_p50 + 5.0
    assert {r.tos & 3 for r in classic} <= {Ecn.ECT0, Ecn.CE}  # marked at p_C = p'^2, or not
    assert line.aqm.classic_marked == Counter(r.tos & 3 for r in classic)[Ecn.CE]
    assert line.aqm.l4s_marked == Counter(r.tos & 3 for r in l4s)[Ecn.CE]
