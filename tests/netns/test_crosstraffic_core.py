"""The cross-traffic sender's AIMD window without a network (fake clock)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicvoice.netlab.crosstraffic import MIN_WINDOW, AimdWindow, main


def fill(window: AimdWindow, now: float) -> list[int]:
    sent = []
    while window.can_send():
        sent.append(window.on_send(now))
    return sent


def test_the_window_grows_by_one_packet_per_window_acknowledged() -> None:
    window = AimdWindow(initial=4.0)
    now = 0.0
    for _ in range(10):  # ten round trips without loss
        sent = fill(window, now)
        now += 0.05
        for sequence in sent:
            window.on_ack(sequence, now)
    assert 13.0 <= window.window <= 14.5  # ~+1 per round trip
    stats = window.statistics()
    assert stats.lost == 0 and stats.acked == stats.sent and stats.srtt_ms == pytest.approx(50)


def test_a_loss_halves_once_per_rtt_and_a_timeout_resets() -> None:
    window = AimdWindow(initial=20.0)
    sent = fill(window, 0.0)
    # Packets 0 and 1 never arrive; the rest are acknowledged 50 ms later.
    for sequence in sent[2:]:
        window.on_ack(sequence, 0.05)
    stats = window.statistics()
    assert stats.lost == 2 and stats.reductions == 1  # two losses, one RTT: one halving
    assert 10.0 <= window.window <= 12.0  # halved, then +1/window per later acknowledgement
    later = fill(window, 0.06)
    window.on_timer(1.0)  # nothing acknowledged for ~1 s: all declared lost
    assert window.window == MIN_WINDOW and window.in_flight == 0
    assert window.statistics().lost == 2 + len(later) and window.statistics().timeouts == 1


@given(st.lists(st.tuples(st.integers(-5, 10**12), st.floats(0, 10)), max_size=200))
@settings(max_examples=200, deadline=None)
def test_garbage_acknowledgements_never_break_the_window(acks: list[tuple[int, float]]) -> None:
    """Unknown, repeated, negative or huge sequence numbers from the wire: counted only when
    they match a packet in flight; the window stays within its bounds."""
    window = AimdWindow()
    fill(window, 0.0)
    for sequence, now in acks:
        window.on_ack(sequence, now)
        window.on_timer(now)
        fill(window, now)
        stats = window.statistics()
        assert MIN_WINDOW <= window.window <= 10_000
        assert stats.acked + stats.lost + window.in_flight == stats.sent


@pytest.mark.parametrize(
    "argv",
    [
        ["send", "--to", "nowhere"],
        ["send", "--to", "198.18.0.2:99999"],
        ["send", "--to", "198.18.0.2:7", "--size", "9000"],
        ["send", "--to", "198.18.0.2:7", "--seconds", "-1"],
        ["sink", "--bind", "198.18.0.2:x"],
    ],
)
def test_bad_command_lines_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
