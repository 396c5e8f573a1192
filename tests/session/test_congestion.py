"""The congestion response: ECN feedback and losses in, a bounded Opus bitrate out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicvoice.session.congestion import CongestionConfig, CongestionResponse

RTT = 0.1


def feed(
    response: CongestionResponse, *, start: float, seconds: float, ce_fraction: float
) -> float:
    """Feedback every 20 ms for ``seconds`` (1 packet acked each time, the CE ones spread
    evenly at ``ce_fraction``); returns the time after the last."""
    now = start
    marked = 0.0
    for _ in range(round(seconds / 0.02)):
        marked += ce_fraction
        ce = int(marked >= 1.0)
        marked -= ce
        response.on_ecn_feedback(now=now, acked=1, ce=ce, rtt=RTT)
        now += 0.02
    return now


def test_without_marks_the_bitrate_rises_by_one_kbit_per_round_up_to_the_cap() -> None:
    response = CongestionResponse(CongestionConfig(start_bitrate=20_000))
    feed(response, start=0.0, seconds=1.0, ce_fraction=0.0)
    assert 28_000 <= response.target_bitrate <= 30_000  # ~9-10 rounds of 100 ms
    feed(response, start=1.0, seconds=60.0, ce_fraction=0.0)
    assert response.target_bitrate == 64_000


def test_l4s_reduction_is_in_proportion_to_the_marked_fraction() -> None:
    light = CongestionResponse()
    heavy = CongestionResponse()
    feed(light, start=0.0, seconds=3.0, ce_fraction=0.1)
    feed(heavy, start=0.0, seconds=3.0, ce_fraction=0.6)
    assert light.target_bitrate > heavy.target_bitrate
    assert heavy.target_bitrate == 6_000  # floor
    assert 0.04 < light.alpha < 0.12  # the EWMA tracks the 10 %
    assert 0.3 < heavy.alpha < 0.7
    # One marked round from the start halves at most (alpha/2 with the fraction 1).
    single = CongestionResponse()
    single.on_ecn_feedback(now=0.0, acked=5, ce=5, rtt=RTT)
    single.on_ecn_feedback(now=0.1, acked=5, ce=0, rtt=RTT)
    assert single.target_bitrate == 16_000
    stats = single.statistics()
    assert stats.ce_reductions == 1 and stats.loss_reductions == 0 and stats.ce == 5


def test_l4s_comes_down_promptly_and_goes_back_up_slowly() -> None:
    response = CongestionResponse()
    now = feed(response, start=0.0, seconds=1.0, ce_fraction=0.5)
    low = response.target_bitrate
    assert low <= 12_000  # within a second of heavy marking
    feed(response, start=now, seconds=1.0, ce_fraction=0.0)
    assert response.target_bitrate - low <= 11_000  # + ~1 kbit/s per 100 ms round


def test_classic_ecn_halves_at_most_once_per_rtt() -> None:
    response = CongestionResponse(CongestionConfig(mode="classic"))
    for index in range(5):  # five CE reports within one RTT: one reduction
        response.on_ecn_feedback(now=index * 0.01, acked=1, ce=1, rtt=RTT)
    assert response.target_bitrate == 16_000
    response.on_ecn_feedback(now=0.11, acked=1, ce=1, rtt=RTT)
    assert response.target_bitrate == 8_000
    assert response.statistics().ce_reductions == 2


def test_loss_halves_in_every_mode_and_off_ignores_ce() -> None:
    for mode in ("l4s", "classic", "off"):
        response = CongestionResponse(CongestionConfig(mode=mode))
        response.on_loss(now=0.0, lost=2, rtt=RTT)
        response.on_loss(now=0.05, lost=1, rtt=RTT)  # same RTT: no second cut
        assert response.target_bitrate == 16_000
        assert response.statistics().loss_reductions == 1
    off = CongestionResponse(CongestionConfig(mode="off"))
    unmarked = CongestionResponse(CongestionConfig(mode="off"))
    feed(off, start=0.0, seconds=1.0, ce_fraction=1.0)
    feed(unmarked, start=0.0, seconds=1.0, ce_fraction=0.0)
    assert off.target_bitrate == unmarked.target_bitrate > 32_000


@pytest.mark.parametrize(
    ("acked", "ce", "rtt"), [(-1, 0, None), (1, 2, None), (1, -1, None), (1, 0, 0.0), (1, 0, 99.0)]
)
def test_impossible_feedback_is_refused(acked: int, ce: int, rtt: float | None) -> None:
    response = CongestionResponse()
    with pytest.raises(ValueError):
        response.on_ecn_feedback(now=0.0, acked=acked, ce=ce, rtt=rtt)
    assert response.target_bitrate == 32_000


@pytest.mark.parametrize(
    "settings_",
    [
        {"mode": "ecn"},
        {"min_bitrate": 5000},
        {"start_bitrate": 70_000},
        {"gain": 0.0},
        {"increase_bps": -1},
    ],
)
def test_bad_config_is_refused(settings_: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        CongestionConfig(**settings_)  # type: ignore[arg-type]


events = st.one_of(
    st.tuples(
        st.just("ecn"),
        st.floats(-1.0, 1.0),
        st.integers(0, 1000),
        st.integers(0, 1000),
        st.one_of(st.none(), st.floats(1e-6, 59.0)),
    ),
    st.tuples(
        st.just("loss"),
        st.floats(-1.0, 1.0),
        st.integers(0, 1000),
        st.integers(0, 0),
        st.one_of(st.none(), st.floats(1e-6, 59.0)),
    ),
)


@given(st.sampled_from(["l4s", "classic", "off"]), st.lists(events, max_size=200))
@settings(max_examples=200, deadline=None)
def test_any_feedback_keeps_the_bitrate_within_the_opus_range(
    mode: str, sequence: list[tuple[str, float, int, int, float | None]]
) -> None:
    """Time going backwards, bursts, idle spells: never outside 6-64 kbit/s, never a crash
    other than the documented ValueError for ce > acked."""
    response = CongestionResponse(CongestionConfig(mode=mode))  # type: ignore[arg-type]
    now = 0.0
    for kind, step, a, b, rtt in sequence:
        now += step
        if kind == "loss":
            response.on_loss(now=now, lost=a, rtt=rtt)
        elif b > a:
            with pytest.raises(ValueError):
                response.on_ecn_feedback(now=now, acked=a, ce=b, rtt=rtt)
        else:
            response.on_ecn_feedback(now=now, acked=a, ce=b, rtt=rtt)
        assert 6_000 <= response.target_bitrate <= 64_000
        assert 0.0 <= response.alpha <= 1.0
