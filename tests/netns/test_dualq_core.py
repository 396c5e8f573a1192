"""The lab's bottleneck without a kernel: ECN bits in IP headers, the DualQ Coupled AQM's
marking, coupling, priority and drops, and the delay line carrying it (fake clock)."""

from __future__ import annotations

import random
import socket
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicvoice.netlab.delayline import DelayLine, Fate, LineConfig
from quicvoice.netlab.dualq import DualQ, DualQConfig
from quicvoice.netlab.ecnbits import Ecn, ipv4_checksum, read_ecn, tos_of, write_ecn


def ipv4(ecn: Ecn, size: int = 100, *, dscp: int = 0x2E, ident: int = 1) -> bytes:
    """A UDP-in-IPv4 packet of ``size`` octets with a correct header checksum."""
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s", 0x45, (dscp << 2) | ecn, size, ident, 0, 64, socket.IPPROTO_UDP, 0,
            socket.inet_aton("198.18.2.2"), socket.inet_aton("198.18.0.2"),
        )
    )  # fmt: skip
    header[10:12] = ipv4_checksum(header).to_bytes(2, "big")
    return bytes(header) + bytes(size - 20)


def ipv6(ecn: Ecn) -> bytes:
    traffic_class = (0x2E << 2) | ecn
    first = (6 << 28) | (traffic_class << 20) | 0x12345
    return struct.pack("!IHBB", first, 8, 17, 64) + bytes(32) + bytes(8)


# -- ECN bits --------------------------------------------------------------------------------


@pytest.mark.parametrize("ecn", list(Ecn))
def test_ecn_is_read_and_rewritten_with_a_valid_checksum(ecn: Ecn) -> None:
    packet = ipv4(Ecn.ECT1)
    rewritten = write_ecn(packet, ecn)
    assert read_ecn(rewritten) is ecn
    assert tos_of(rewritten) == (0x2E << 2) | ecn  # the DSCP is untouched
    assert ipv4_checksum(rewritten[:20]) == 0
    assert rewritten[20:] == packet[20:]


def test_ipv6_traffic_class_ecn_bits() -> None:
    packet = ipv6(Ecn.ECT1)
    assert read_ecn(packet) is Ecn.ECT1
    marked = write_ecn(packet, Ecn.CE)
    assert read_ecn(marked) is Ecn.CE
    assert tos_of(marked) == (0x2E << 2) | Ecn.CE
    assert marked[0] == packet[0] and marked[2:] == packet[2:]  # flow label untouched


@given(st.binary(max_size=80), st.sampled_from(list(Ecn)))
@settings(max_examples=300, deadline=None)
def test_garbage_is_never_trusted_nor_broken(data: bytes, ecn: Ecn) -> None:
    """Anything read from a TUN device: a codepoint or None, and a rewrite that changes at
    most the ECN bits (and the IPv4 checksum) of a well-formed header, nothing otherwise."""
    found = read_ecn(data)
    out = write_ecn(data, ecn)
    assert len(out) == len(data)
    if found is None:
        assert out == data
    else:
        assert read_ecn(out) is ecn
        changed = {i for i, (a, b) in enumerate(zip(data, out, strict=True)) if a != b}
        assert changed <= {0, 1, 10, 11}


# -- the AQM ---------------------------------------------------------------------------------

RATE_KBPS = 1000.0  # 1 Mbit/s: a 125-octet packet takes exactly 1 ms


def aqm(**settings: Any) -> DualQ:
    return DualQ(DualQConfig(rate_kbps=RATE_KBPS, **settings), rng=random.Random(1))


def push(queue: DualQ, packet: bytes, now: float, out: list[bytes] | None = None) -> None:
    """Enqueue; what left the link meanwhile goes to ``out`` (it must not be lost)."""
    sent = queue.enqueue(packet, now)
    assert sent is not None
    if out is not None:
        out += [p for p, _ in sent]
    else:
        assert sent == []


def test_an_idle_link_sends_at_once_and_serialises_at_its_rate() -> None:
    queue = aqm()
    assert queue.enqueue(ipv4(Ecn.NOT_ECT, 125), 10.0) == []
    assert queue.next_decision() == 10.0
    ((packet, departure),) = queue.advance(10.0)
    assert departure == pytest.approx(10.001)
    assert read_ecn(packet) is Ecn.NOT_ECT
    # A burst queues behind it, one serialisation time apart.
    for _ in range(3):
        queue.enqueue(ipv4(Ecn.NOT_ECT, 125), 10.0)
    sent = queue.advance(11.0)
    assert [round(d - 10.0, 6) for _, d in sent] == [0.002, 0.003, 0.004]


def test_sojourn_percentiles_per_queue() -> None:
    queue = aqm()
    out: list[bytes] = []
    for _ in range(5):  # 1 ms of serialisation each: sojourns 0, 1, ..., 4 ms
        push(queue, ipv4(Ecn.ECT0, 125), 10.0, out)
    out.extend(packet for packet, _ in queue.advance(11.0))
    assert len(out) == 5
    stats = queue.statistics()
    # The upper edge of each 0.1 ms bin: the 3rd of 5 (2 ms), the 5th (4 ms).
    assert stats.classic_sojourn_p50_ms == pytest.approx(2.05, abs=0.1)
    assert stats.classic_sojourn_p99_ms == pytest.approx(4.05, abs=0.1)
    assert stats.l4s_sojourn_p50_ms == stats.l4s_sojourn_p99_ms == 0.0


def test_l4s_packets_are_marked_beyond_the_shallow_threshold_and_not_before() -> None:
    """A burst of ECT(1) packets: the first two wait < 1 ms and pass; every later one has
    waited ≥ 1 ms at the start of its transmission and is marked CE (step)."""
    queue = aqm(l4s_threshold_ms=1.0)
    out: list[bytes] = []
    for _ in range(6):
        push(queue, ipv4(Ecn.ECT1, 125), 0.0, out)
    marks = [read_ecn(p) for p in out + [p for p, _ in queue.advance(1.0)]]
    assert marks == [Ecn.ECT1, Ecn.CE, Ecn.CE, Ecn.CE, Ecn.CE, Ecn.CE]
    stats = queue.statistics()
    assert stats.l4s_packets == 6 and stats.l4s_marked == 5 and stats.dropped == 0


def test_the_l4s_ramp_marks_in_proportion() -> None:
    queue = DualQ(
        DualQConfig(rate_kbps=RATE_KBPS, l4s_threshold_ms=1.0, l4s_ramp_ms=10.0),
        rng=random.Random(3),
    )
    out: list[bytes] = []
    for index in range(200):
        start = index * 1.0
        push(queue, ipv4(Ecn.ECT1, 125), start, out)
        push(queue, ipv4(Ecn.NOT_ECT, 750), start, out)
        out += [p for p, _ in queue.advance(start + 0.5)]
    assert len(out) == 400
    assert Ecn.CE not in [read_ecn(p) for p in out]  # an L4S packet alone never waits
    queue = DualQ(
        DualQConfig(rate_kbps=RATE_KBPS, l4s_threshold_ms=1.0, l4s_ramp_ms=10.0),
        rng=random.Random(3),
    )
    out = []
    for index in range(2000):
        start = index * 1.0
        push(queue, ipv4(Ecn.NOT_ECT, 750), start, out)  # on the wire first: 6 ms
        push(queue, ipv4(Ecn.ECT1, 125), start + 1e-6, out)  # waits ~6 ms behind it
        out += [p for p, _ in queue.advance(start + 0.5)]
    assert len(out) == 4000
    marked = [read_ecn(p) for p in out].count(Ecn.CE)
    assert 850 <= marked <= 1150  # (6 - 1) / 10 = 50 %


def test_the_l4s_queue_has_priority_over_a_standing_classic_queue() -> None:
    queue = aqm()
    for _ in range(20):  # 20 ms of classic backlog
        queue.enqueue(ipv4(Ecn.NOT_ECT, 125), 0.0)
    queue.advance(0.0)  # the first classic packet is on the wire until 1 ms
    queue.enqueue(ipv4(Ecn.ECT1, 125), 0.0005)
    sent = queue.advance(0.0021)
    # After the one on the wire comes the L4S packet, not the next classic one.
    assert read_ecn(sent[0][0]) is Ecn.ECT1
    assert sent[0][1] == pytest.approx(0.002)


def test_time_shifted_fifo_serves_classic_once_it_has_waited_tshift_longer() -> None:
    queue = aqm(tshift_ms=5.0)
    queue.enqueue(ipv4(Ecn.NOT_ECT, 125), 0.0)
    queue.advance(0.0)  # on the wire until 1 ms
    queue.enqueue(ipv4(Ecn.NOT_ECT, 125), 0.0)  # will have waited 1 ms at t=1 ms
    queue.enqueue(ipv4(Ecn.ECT1, 125), 0.0009)
    first = queue.advance(0.001)[0][0]
    assert read_ecn(first) is Ecn.ECT1  # 1 ms < 0.1 ms + 5 ms: L4S first
    queue = aqm(tshift_ms=5.0)
    queue.enqueue(ipv4(Ecn.NOT_ECT, 125 * 8), 0.0)  # on the wire for 8 ms
    queue.advance(0.0)
    queue.enqueue(ipv4(Ecn.NOT_ECT, 125), 0.0)  # waits 8 ms
    queue.enqueue(ipv4(Ecn.ECT1, 125), 0.0079)  # waits 0.1 ms
    first = queue.advance(0.008)[0][0]
    assert read_ecn(first) is Ecn.NOT_ECT  # 8 ms > 0.1 + 5 ms: classic first


def standing_classic_queue(queue: DualQ, seconds: float, delay_ms: float) -> list[bytes]:
    """Keep ``delay_ms`` of not-ECT backlog in the classic queue for ``seconds``; what left."""
    out: list[bytes] = []
    size = 125
    packets = int(delay_ms)  # 1 ms per packet at 1 Mbit/s
    now = 0.0
    while now < seconds:
        while len(queue) < packets:
            queue.enqueue(ipv4(Ecn.NOT_ECT, size), now)
        out += [p for p, _ in queue.advance(now)]
        now += 0.0005
    return out


def test_pi2_raises_p_while_classic_delay_is_over_target_and_drops_not_ect() -> None:
    queue = aqm(classic_target_ms=15.0)
    standing_classic_queue(queue, seconds=5.0, delay_ms=40.0)
    stats = queue.statistics()
    assert queue.base_probability > 0.3
    assert stats.dropped > 0 and stats.classic_marked == 0
    # Under target, p' decays back to zero.
    queue2 = aqm(classic_target_ms=15.0)
    standing_classic_queue(queue2, seconds=5.0, delay_ms=5.0)
    assert queue2.base_probability == 0.0
    assert queue2.statistics().dropped == 0


def test_ect0_packets_in_the_classic_queue_are_marked_not_dropped() -> None:
    queue = aqm()
    standing_classic_queue(queue, seconds=3.0, delay_ms=40.0)
    p = queue.base_probability
    assert p > 0.2
    sent: list[bytes] = []
    for index in range(400):
        push(queue, ipv4(Ecn.ECT0, 126), 3.0 + index * 1e-4, sent)
    sent += [pkt for pkt, _ in queue.advance(100.0)]
    out = [read_ecn(pkt) for pkt in sent if len(pkt) == 126]
    assert len(out) == 400  # not one dropped
    marked = out.count(Ecn.CE)
    assert marked > 20 and out.count(Ecn.ECT0) == 400 - marked
    assert queue.statistics().classic_marked == marked


def test_coupling_marks_l4s_at_k_times_p_prime() -> None:
    """With p' held up by a classic queue over target, L4S packets that wait less than their
    own threshold are still marked, with probability p_CL = 2·p'."""
    queue = aqm(l4s_threshold_ms=50.0, classic_target_ms=15.0)  # native marking never fires
    standing_classic_queue(queue, seconds=3.0, delay_ms=30.0)
    marked = total = 0
    expected = 0.0
    now = 3.0
    for step in range(20_000):  # 10 s, an L4S packet every 5 ms
        sent: list[bytes] = []
        while len(queue) < 30:
            push(queue, ipv4(Ecn.NOT_ECT, 125), now, sent)
        if step % 10 == 0:
            expected += min(1.0, 2 * queue.base_probability)
            push(queue, ipv4(Ecn.ECT1, 60), now, sent)
        for packet in sent + [p for p, _ in queue.advance(now)]:
            if len(packet) == 60:
                total += 1
                marked += read_ecn(packet) is Ecn.CE
        now += 0.0005
    mean_p_cl = expected / 2000
    assert 0.2 < mean_p_cl < 1.0
    assert total >= 1990
    assert abs(marked / total - mean_p_cl) < 0.05
    # Classic meanwhile is dropped with p'^2 (< p'), so L4S sees more signals: the coupling.
    stats = queue.statistics()
    assert stats.l4s_marked == marked and stats.dropped > 0


def test_full_queues_refuse_arrivals() -> None:
    queue = DualQ(DualQConfig(rate_kbps=RATE_KBPS, limit_packets=3), rng=random.Random(1))
    results = [queue.enqueue(ipv4(Ecn.NOT_ECT, 125), 0.0) for _ in range(5)]
    assert [r is None for r in results] == [False, False, False, False, True]  # one is on the wire
    assert queue.statistics().overflowed == 1


@given(
    st.lists(
        st.tuples(st.binary(max_size=200), st.floats(0, 0.05), st.sampled_from(list(Ecn))),
        max_size=60,
    )
)
@settings(max_examples=150, deadline=None)
def test_garbage_through_the_aqm_keeps_its_books(
    arrivals: list[tuple[bytes, float, Ecn]],
) -> None:
    """Any bytes (IP or not), any pacing: every packet leaves, is dropped or is still held,
    departures are in order and spaced by the rate, and nothing non-IP is rewritten."""
    queue = DualQ(DualQConfig(rate_kbps=RATE_KBPS, limit_packets=20), rng=random.Random(5))
    now = 0.0
    out: list[tuple[bytes, float]] = []
    accepted = 0
    sent_in: list[bytes] = []
    for raw, gap, ecn in arrivals:
        now += gap
        packet = raw if len(raw) % 2 else ipv4(ecn, 20 + len(raw))
        result = queue.enqueue(packet, now)
        if result is not None:
            accepted += 1
            sent_in.append(packet)
            out += result
    out += queue.advance(now + 100.0)
    stats = queue.statistics()
    assert len(out) + stats.dropped == accepted
    assert stats.overflowed + accepted == len(arrivals)
    assert len(queue) == 0
    departures = [d for _, d in out]
    assert departures == sorted(departures)
    for packet, _ in out:
        if packet not in sent_in:  # rewritten: only ever to CE, only a well-formed header
            assert read_ecn(packet) is Ecn.CE
            assert write_ecn(packet, Ecn.ECT1) in sent_in or write_ecn(packet, Ecn.ECT0) in sent_in


# -- the delay line with a bottleneck ----------------------------------------------------------


def test_a_line_with_a_rate_queues_then_delays() -> None:
    line = DelayLine.seeded(LineConfig(delay_ms=10, rate_kbps=RATE_KBPS), seed=1, label="t")
    for _ in range(3):
        assert line.push(ipv4(Ecn.NOT_ECT, 125), 0.0) is Fate.QUEUED
    # The first went on the wire at once (then into the delay); the next starts at 1 ms.
    assert line.next_release() == pytest.approx(0.001)
    out: list[float] = []
    now = 0.0
    for _ in range(20):
        release = line.next_release()
        if release is None:
            break
        now = release
        out += [now] * len(line.pop_due(now))
    assert out == pytest.approx([0.011, 0.012, 0.013])
    stats = line.statistics()
    assert stats.delivered == 3 and stats.arrived_not_ect == 3 and stats.aqm.classic_packets == 3


@pytest.mark.parametrize(
    ("mode", "arriving", "leaving"),
    [
        ("keep", Ecn.ECT1, Ecn.ECT1),
        ("bleach", Ecn.ECT1, Ecn.NOT_ECT),
        ("bleach", Ecn.CE, Ecn.NOT_ECT),
        ("bleach", Ecn.ECT0, Ecn.NOT_ECT),
        ("mangle", Ecn.ECT1, Ecn.ECT0),
        ("mangle", Ecn.ECT0, Ecn.ECT0),
        ("mangle", Ecn.CE, Ecn.CE),
    ],
)
def test_bleaching_and_mangling_lines(mode: str, arriving: Ecn, leaving: Ecn) -> None:
    line = DelayLine.seeded(LineConfig(delay_ms=1, ecn=mode), seed=1, label="t")
    line.push(ipv4(arriving), 0.0)
    (packet,) = line.pop_due(1.0)
    assert read_ecn(packet) is leaving
    assert ipv4_checksum(packet[:20]) == 0
    assert line.statistics().ecn_rewritten == int(arriving is not leaving)


def test_line_settings_with_a_bottleneck_parse_and_print_back() -> None:
    config = LineConfig.parse("delay=5,rate=2000,l4s=1.5,target=20,ecn=bleach")
    assert config.rate_kbps == 2000 and config.l4s_threshold_ms == 1.5
    assert config.classic_target_ms == 20 and config.ecn == "bleach"
    assert LineConfig.parse(config.spec()) == config
    for bad in ("ecn=paint", "rate=0.5", "target=-1"):
        with pytest.raises(ValueError):
            LineConfig.parse(bad)


@given(
    st.sampled_from(["keep", "bleach", "mangle"]),
    st.lists(st.tuples(st.binary(max_size=120), st.floats(0, 0.02), st.booleans()), max_size=80),
)
@settings(max_examples=100, deadline=None)
def test_garbage_through_a_line_with_a_bottleneck(
    mode: str, arrivals: list[tuple[bytes, float, bool]]
) -> None:
    """What a TUN device may hand the line (IP packets or not): every packet is delivered,
    lost to the AQM or overflowed, and the counters add up, whatever the ECN mode."""
    line = DelayLine.seeded(
        LineConfig(delay_ms=2, rate_kbps=500, queue_packets=30, ecn=mode), seed=3, label="g"
    )
    now = 0.0
    delivered = 0
    for raw, gap, as_ip in arrivals:
        now += gap
        packet = ipv4(Ecn(len(raw) % 4), 20 + len(raw)) if as_ip else raw
        line.push(packet, now)
        delivered += len(line.pop_due(now))
    for _ in range(10_000):
        release = line.next_release()
        if release is None:
            break
        delivered += len(line.pop_due(release))
    stats = line.statistics()
    assert stats.received == len(arrivals)
    assert stats.queued == 0 and stats.delivered == delivered
    assert delivered + stats.overflowed + stats.aqm.dropped == stats.received
    arrived = (stats.arrived_not_ect, stats.arrived_ect1, stats.arrived_ect0, stats.arrived_ce)
    assert sum(arrived) + stats.arrived_not_ip == stats.received
