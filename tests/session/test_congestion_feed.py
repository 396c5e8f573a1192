"""The congestion feed: the response's mode follows the path's marking and validation, and a
migration or a failed validation changes it without losing the bitrate."""

from __future__ import annotations

import pytest

from quicvoice.ecn import EcnFeedback, EcnMode, Validation
from quicvoice.session.congestion import CongestionResponse
from quicvoice.session.congestion_feed import CongestionFeed, response_mode

RTT = 0.05


def feedback(path: str, validation: Validation, *, acked: int = 4, ce: int = 0) -> EcnFeedback:
    return EcnFeedback(
        path=path,
        newly_acked_ect0=0,
        newly_acked_ect1=acked,
        newly_ce=ce,
        acked_packets=acked,
        validation=validation,
    )


@pytest.mark.parametrize(
    ("marking", "validation", "mode"),
    [
        (EcnMode.L4S, Validation.TESTING, "l4s"),
        (EcnMode.L4S, Validation.CAPABLE, "l4s"),
        (EcnMode.CLASSIC, Validation.CAPABLE, "classic"),
        (EcnMode.L4S, Validation.BLEACHED, "off"),
        (EcnMode.L4S, Validation.MANGLED, "off"),
        (EcnMode.CLASSIC, Validation.LOST, "off"),
        (EcnMode.OFF, Validation.DISABLED, "off"),
    ],
)
def test_the_mode_is_what_the_path_carries(
    marking: EcnMode, validation: Validation, mode: str
) -> None:
    assert response_mode(marking, validation) == mode


def test_the_response_starts_in_the_marking_mode() -> None:
    assert CongestionFeed(CongestionResponse(), EcnMode.CLASSIC).response.mode == "classic"
    assert CongestionFeed(CongestionResponse(), EcnMode.OFF).response.mode == "off"


def test_a_migration_onto_a_bleaching_path_turns_ce_off_and_back_keeps_the_bitrate() -> None:
    response = CongestionResponse()
    feed = CongestionFeed(response, EcnMode.L4S)
    now = 0.0
    for _ in range(10):  # heavy marking on the first path
        feed.on_feedback(feedback("wifi", Validation.CAPABLE, ce=4), now=now, rtt=RTT)
        now += RTT
    low = response.target_bitrate
    assert low < 32_000 and response.mode == "l4s"

    # The new path is tested (marks still answered), then found bleaching: CE is ignored.
    feed.on_feedback(feedback("cell", Validation.TESTING), now=now, rtt=RTT)
    assert response.mode == "l4s" and feed.path == "cell"
    feed.on_feedback(feedback("cell", Validation.BLEACHED), now=now + 0.001, rtt=RTT)
    assert response.statistics().mode == "off"
    assert response.target_bitrate == low
    reductions = response.statistics().ce_reductions
    for _ in range(5):
        now += RTT
        feed.on_feedback(feedback("cell", Validation.BLEACHED, ce=4), now=now, rtt=RTT)
    assert response.statistics().ce_reductions == reductions
    assert response.target_bitrate > low

    # Back on the capable path, marks count again.
    now += RTT
    feed.on_feedback(feedback("wifi", Validation.CAPABLE), now=now, rtt=RTT)
    assert response.mode == "l4s"
    assert response.statistics().mode_changes == 2


def test_losses_halve_and_rtts_outside_the_responses_range_are_bounded() -> None:
    response = CongestionResponse()
    feed = CongestionFeed(response, EcnMode.L4S)
    assert feed.on_loss(2, now=1.0, rtt=0.0) == 16_000
    feed.on_feedback(feedback("p", Validation.CAPABLE), now=1.5, rtt=120.0)
    assert response.statistics().loss_reductions == 1


def test_ce_beyond_the_packets_of_the_ack_is_bounded_by_them() -> None:
    response = CongestionResponse()
    feed = CongestionFeed(response, EcnMode.L4S)
    feed.on_feedback(feedback("p", Validation.CAPABLE, acked=1, ce=3), now=0.0, rtt=RTT)
    assert response.statistics().ce == 1


def test_set_mode_refuses_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        CongestionResponse().set_mode("dualq")  # type: ignore[arg-type]
