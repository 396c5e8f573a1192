"""The jitter buffer with a fake clock and fixed arrival patterns."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from audio_signals import loss_pattern, tone
from hypothesis import given, settings
from hypothesis import strategies as st

from quicvoice.audio import (
    AudioFrame,
    G711Codec,
    JitterBuffer,
    JitterBufferConfig,
    L16Codec,
    OpusCodec,
    PlayoutKind,
)

RATE = 8000
FRAME = 160
TICK = 0.02


def _g711() -> tuple[G711Codec, JitterBuffer]:
    codec = G711Codec("ulaw")
    return codec, JitterBuffer(codec, JitterBufferConfig(frame_samples=FRAME, rate=RATE))


def _payloads(codec: G711Codec | OpusCodec, seconds: float, rate: int = RATE) -> list[bytes]:
    frame = rate // 50
    x = tone(300.0, rate, int(rate * seconds))
    return [
        codec.encode(AudioFrame(samples=x[i : i + frame], rate=rate))
        for i in range(0, len(x), frame)
    ]


def _simulate(
    jb: JitterBuffer, payloads: list[bytes], arrivals: list[float | None], frame: int = FRAME
) -> list:
    """Deliver payload i at arrivals[i] (None = lost) and call get() every 20 ms."""
    events = sorted((t, i) for i, t in enumerate(arrivals) if t is not None)
    out, now, k = [], 0.0, 0
    end = max(t for t, _ in events) + 0.5
    while now < end:
        while k < len(events) and events[k][0] <= now:
            t, i = events[k]
            jb.put(sequence=i % 65536, timestamp=(i * frame) % 2**32, payload=payloads[i], now=t)
            k += 1
        out.append(jb.get(now))
        now = round(now + TICK, 9)
    return out


def test_in_order_stream_plays_every_packet_once() -> None:
    codec, jb = _g711()
    payloads = _payloads(codec, 1.0)
    frames = _simulate(jb, payloads, [i * TICK for i in range(len(payloads))])
    played = [f.sequence for f in frames if f.kind is PlayoutKind.NORMAL]
    assert played == list(range(len(payloads)))
    s = jb.stats()
    assert (s.packets_lost, s.packets_late, s.concealed_samples) == (0, 0, s.concealed_samples)
    assert all(len(f.samples) == FRAME for f in frames)
    assert s.jitter == pytest.approx(0.0, abs=1e-12) and s.target_delay == pytest.approx(0.02)


def test_reordering_within_the_target_is_invisible() -> None:
    codec, jb = _g711()
    payloads = _payloads(codec, 1.0)
    arrivals = [i * TICK for i in range(len(payloads))]
    for i in range(5, len(payloads) - 1, 7):  # swap neighbours
        arrivals[i], arrivals[i + 1] = arrivals[i + 1], arrivals[i]
    frames = _simulate(jb, payloads, arrivals)
    played = [f.sequence for f in frames if f.sequence is not None]
    assert played == list(range(len(payloads)))
    assert jb.stats().packets_lost == 0


def test_losses_are_concealed_and_counted_for_pcmu() -> None:
    codec, jb = _g711()
    payloads = _payloads(codec, 2.0)
    lost = loss_pattern(len(payloads), 0.10, seed=3)
    lost[0] = lost[-1] = False
    arrivals = [None if lost[i] else i * TICK for i in range(len(payloads))]
    frames = _simulate(jb, payloads, arrivals)
    s = jb.stats()
    assert s.packets_lost == lost.sum()
    assert sum(f.kind is PlayoutKind.PLC for f in frames) == lost.sum()
    assert s.fec_samples == 0  # G.711 has no FEC
    assert s.concealed_samples >= lost.sum() * FRAME
    concealed = [f for f in frames if f.kind is PlayoutKind.PLC]
    assert all(np.abs(f.samples.astype(int)).max() > 0 for f in concealed[:3])  # not silence


def test_opus_losses_use_fec_from_the_next_packet() -> None:
    codec = OpusCodec()
    jb = JitterBuffer(codec, JitterBufferConfig(frame_samples=960, rate=48000))
    payloads = _payloads(OpusCodec(), 2.0, rate=48000)
    lost = np.zeros(len(payloads), dtype=bool)
    lost[10:90:9] = True
    arrivals = [None if lost[i] else i * TICK for i in range(len(payloads))]
    frames = _simulate(jb, payloads, arrivals, frame=960)
    kinds = [f.kind for f in frames]
    assert kinds.count(PlayoutKind.FEC) == lost.sum()
    assert jb.stats().fec_samples == lost.sum() * 960


def test_jitter_follows_rfc3550_and_raises_the_target() -> None:
    codec, jb = _g711()
    payloads = _payloads(codec, 4.0)
    rng = np.random.default_rng(7)
    delays = rng.uniform(0.0, 0.06, len(payloads))
    arrivals = [i * TICK + d for i, d in enumerate(delays)]
    transit = delays[np.argsort(arrivals, kind="stable")]  # in order of arrival
    expected = 0.0
    for a, b in zip(transit, transit[1:], strict=False):  # RFC 3550 §6.4.1: D = transit diff
        expected += (abs(b - a) - expected) / 16
    frames = _simulate(jb, payloads, arrivals)
    s = jb.stats()
    assert s.jitter == pytest.approx(expected, rel=1e-6)
    assert s.target_delay > 0.05
    late_share = s.packets_late / len(payloads)
    assert late_share < 0.05, s
    assert s.packets_played + s.packets_late >= len(payloads) - 3
    assert all(len(f.samples) == FRAME for f in frames)


def test_delay_shrinks_by_merging_when_jitter_drops() -> None:
    codec, jb = _g711()
    payloads = _payloads(codec, 6.0)
    # 2 s of heavy jitter, then a steady network: the buffer must come back down.
    arrivals = [
        i * TICK + (0.15 * ((i * 7919) % 13) / 13 if i < 100 else 0.0) for i in range(len(payloads))
    ]
    arrivals = [max(a, arrivals[i - 1] if i and i >= 100 else a) for i, a in enumerate(arrivals)]
    frames = _simulate(jb, payloads, arrivals)
    s = jb.stats()
    assert s.removed_samples_for_acceleration > 0
    late_waits = [f.waited for f in frames[-40:] if f.kind is PlayoutKind.NORMAL]
    assert max(late_waits) <= s.target_delay + 2 * TICK, (late_waits, s.target_delay)


def test_duplicates_late_and_underrun() -> None:
    codec, jb = _g711()
    payloads = _payloads(codec, 0.2)
    kinds = []
    for i in range(3):
        jb.put(sequence=i, timestamp=i * FRAME, payload=payloads[i], now=i * TICK)
        kinds.append(jb.get(i * TICK).kind)
    assert not jb.put(sequence=2, timestamp=2 * FRAME, payload=payloads[2], now=0.05)
    kinds += [jb.get(k * TICK).kind for k in range(3, 6)]
    assert kinds[:3] == [PlayoutKind.BUFFERING, PlayoutKind.NORMAL, PlayoutKind.NORMAL]
    assert kinds[-1] is PlayoutKind.EXPAND  # ran dry: conceal without skipping ahead
    assert jb.put(sequence=3, timestamp=3 * FRAME, payload=payloads[3], now=0.11)
    assert jb.get(0.12).sequence == 3  # the late-but-not-lost packet still plays
    assert not jb.put(sequence=0, timestamp=0, payload=payloads[0], now=0.13)
    s = jb.stats()
    assert (s.packets_duplicate, s.packets_late) == (1, 1)


def test_sequence_numbers_wrap() -> None:
    codec, jb = _g711()
    payloads = _payloads(codec, 0.4)
    for k, p in enumerate(payloads):
        jb.put(
            sequence=(65530 + k) % 65536,
            timestamp=(2**32 - 800 + k * FRAME) % 2**32,
            payload=p,
            now=k * TICK,
        )
    played = [jb.get(0.02 + k * TICK).sequence for k in range(len(payloads))]
    assert [p for p in played if p is not None] == list(range(65530, 65530 + len(payloads) - 1))
    assert jb.stats().jitter == pytest.approx(0.0, abs=1e-12)


def test_corrupt_payload_is_concealed() -> None:
    codec = L16Codec(16000)
    jb = JitterBuffer(codec, JitterBufferConfig(frame_samples=320, rate=16000))
    jb.put(sequence=0, timestamp=0, payload=b"\x00" * 640, now=0.0)
    jb.put(sequence=1, timestamp=320, payload=b"\x00" * 641, now=0.02)  # odd length
    jb.put(sequence=2, timestamp=640, payload=b"\x00" * 10, now=0.04)  # wrong size
    kinds = [jb.get(0.02 * k).kind for k in range(1, 4)]
    assert kinds == [PlayoutKind.NORMAL, PlayoutKind.PLC, PlayoutKind.PLC]
    assert jb.stats().decode_errors == 2


def test_stats_are_a_frozen_snapshot() -> None:
    _, jb = _g711()
    s = jb.stats()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.packets_lost = 3  # type: ignore[misc]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["put", "get"]),
            st.integers(0, 65535),
            st.binary(max_size=200),
            st.floats(0.0, 0.05),
        ),
        max_size=300,
    )
)
def test_any_arrival_sequence_is_bounded_and_never_raises(ops: list) -> None:
    codec = G711Codec("ulaw")
    config = JitterBufferConfig(frame_samples=FRAME, rate=RATE, capacity=16)
    jb = JitterBuffer(codec, config)
    now = 0.0
    for op, seq, payload, dt in ops:
        now += dt
        if op == "put":
            jb.put(sequence=seq, timestamp=(seq * FRAME) % 2**32, payload=payload, now=now)
            assert len(jb._packets) <= config.capacity
        else:
            frame = jb.get(now)
            assert len(frame.samples) == FRAME and frame.samples.dtype == np.int16
    s = jb.stats()
    assert s.buffer_delay <= config.capacity * TICK + 1e-9


def test_argument_checks() -> None:
    codec, jb = _g711()
    with pytest.raises(ValueError):
        jb.put(sequence=70000, timestamp=0, payload=b"", now=0.0)
    with pytest.raises(ValueError):
        jb.get(float("nan"))
    with pytest.raises(TypeError):
        jb.put(sequence=1, timestamp=0, payload="x", now=0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        JitterBuffer(codec, JitterBufferConfig(frame_samples=320, rate=16000))
    with pytest.raises(ValueError):
        JitterBufferConfig(frame_samples=160, rate=8000, min_delay=0.5, max_delay=0.1)
