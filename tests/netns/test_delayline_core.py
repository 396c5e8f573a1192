"""The delay line's sans-I/O core: delays, order, loss draws, queue bounds (fake clock)."""

from __future__ import annotations

import random

import pytest

from quicvoice.netlab.delayline import DelayLine, Fate, LineConfig


def line(**settings: float | int | bool) -> DelayLine:
    return DelayLine.seeded(LineConfig(**settings), seed=7, label="test")  # type: ignore[arg-type]


def test_settings_parse_and_print_back() -> None:
    config = LineConfig.parse("delay=50,jitter=5,loss=1.5,limit=10,bytes=70000,reorder=1")
    assert config == LineConfig(
        delay_ms=50, jitter_ms=5, loss_percent=1.5, queue_packets=10, queue_bytes=70000,
        reorder=True,
    )  # fmt: skip
    assert LineConfig.parse(config.spec()) == config
    assert LineConfig.parse("") == LineConfig()


@pytest.mark.parametrize(
    "text", ["delay=-1", "loss=101", "jitter=10,delay=5", "limit=0", "speed=3", "delay"]
)
def test_bad_settings_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        LineConfig.parse(text)


def test_every_packet_leaves_after_exactly_the_delay() -> None:
    delay = line(delay_ms=50)
    for index in range(5):
        assert delay.push(bytes([index]), now=10.0 + index * 0.02) is Fate.QUEUED
    assert delay.next_release() == pytest.approx(10.05)
    assert delay.pop_due(10.0499) == []
    assert delay.pop_due(10.05) == [b"\x00"]
    assert delay.pop_due(10.20) == [b"\x01", b"\x02", b"\x03", b"\x04"]
    stats = delay.statistics()
    assert (stats.received, stats.delivered, stats.queued) == (5, 5, 0)
    assert stats.delay_mean_ms == pytest.approx(50.0)
    assert stats.late_max_ms == pytest.approx(1000 * (10.20 - 10.07))  # packet 1


def test_jitter_keeps_order_unless_reordering_is_asked_for() -> None:
    for reorder in (False, True):
        delay = line(delay_ms=20, jitter_ms=20, reorder=reorder)
        for index in range(200):
            delay.push(index.to_bytes(2, "big"), now=index * 0.001)
        out = [int.from_bytes(p, "big") for p in delay.pop_due(100.0)]
        assert sorted(out) == list(range(200))
        assert (out == sorted(out)) is (not reorder)


def test_the_loss_pattern_depends_on_the_seed_only_and_grows_with_the_rate() -> None:
    def lost(percent: float, delay_ms: float, seed: int = 7) -> set[int]:
        delay = DelayLine.seeded(LineConfig(delay_ms=delay_ms, loss_percent=percent), seed, "dl-up")
        return {i for i in range(5000) if delay.push(b"x", now=i * 0.02) is Fate.LOST}

    one, five = lost(1, 0), lost(5, 0)
    assert one == lost(1, 100)  # the delay does not move the draws
    assert one < five  # same seed: the 1 % losses are among the 5 % ones
    assert lost(5, 0, seed=8) != five
    # Binomial counts within 4 standard deviations of 50 and 250.
    assert abs(len(one) - 50) < 4 * 7.0 and abs(len(five) - 250) < 4 * 15.4


def test_a_full_queue_drops_and_counts_arrivals() -> None:
    delay = line(delay_ms=100, queue_packets=3)
    fates = [delay.push(b"p", now=0.0) for _ in range(5)]
    assert fates == [Fate.QUEUED] * 3 + [Fate.OVERFLOWED] * 2
    by_bytes = line(delay_ms=100, queue_bytes=70_000)
    assert by_bytes.push(bytes(60_000), now=0.0) is Fate.QUEUED
    assert by_bytes.push(bytes(20_000), now=0.0) is Fate.OVERFLOWED
    assert by_bytes.push(bytes(10_000), now=0.0) is Fate.QUEUED
    stats = delay.statistics()
    assert (stats.overflowed, stats.max_queued) == (2, 3)


def test_randomness_is_injected() -> None:
    class Always(random.Random):
        def random(self) -> float:
            return 0.0

    delay = DelayLine(LineConfig(loss_percent=0.001), loss_rng=Always())
    assert delay.push(b"p", now=0.0) is Fate.LOST
