"""The line's pacing and the carrier's playout model, on a fake clock (sans-I/O)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicvoice.gateway.line import FrameClock, Line, mark_name

FRAME = 0.02


def test_ticks_are_drift_free_and_catch_up_a_little() -> None:
    clock = FrameClock(100.0, FRAME)
    assert clock.due(100.0) == 1
    assert clock.due(100.0) == 0
    assert clock.next_at == pytest.approx(100.02)
    assert clock.due(100.019) == 0
    # 1000 ticks later, each taken at its time: still on the original grid.
    taken = 1 + sum(clock.due(100.0 + k * FRAME) for k in range(1, 1001))
    assert taken == 1001
    assert clock.next_at == pytest.approx(100.0 + 1001 * FRAME)
    assert clock.due(clock.next_at + 0.025) == 2  # a late loop: one tick caught up
    assert clock.skipped == 0


def test_a_stall_is_not_bursted_onto_the_line() -> None:
    clock = FrameClock(0.0, FRAME, max_burst=2)
    clock.due(0.0)
    assert clock.due(1.0) == 2  # blocked for a second: 50 ticks due, 2 given
    assert clock.skipped == 48
    assert clock.next_at == pytest.approx(1.02)  # and the grid starts again from now
    assert clock.due(1.02) == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=0.5), min_size=1, max_size=200))
def test_ticks_never_outrun_real_time(gaps: list[float]) -> None:
    clock = FrameClock(0.0, FRAME, max_burst=3)
    now, taken = 0.0, 0
    for gap in gaps:
        now += gap
        due = clock.due(now)
        assert 0 <= due <= 3
        taken += due
        # Never more ticks than the time elapsed holds (plus the one due at the start).
        assert taken <= int(now / FRAME + 1e-9) + 1
        assert clock.next_at > now


def test_audio_plays_in_real_time_from_when_it_is_sent() -> None:
    line = Line()
    assert not line.audible(0.0)
    line.sent(0, FRAME, 10.0)
    line.sent(0, FRAME, 10.0)  # sent together: the second plays after the first
    assert line.playing_until() == pytest.approx(10.04)
    line.sent(0, FRAME, 10.5)  # after a silence the line starts again from now
    assert line.playing_until() == pytest.approx(10.52)
    assert line.audible(10.51) and not line.audible(10.52)
    assert line.stats().frames_sent == 3
    assert line.stats().audio_sent_ms == pytest.approx(60.0)


def test_a_turn_is_marked_after_its_last_frame_and_the_carrier_lag_is_measured() -> None:
    line = Line()
    finished: set[int] = set()
    line.turn_ended(2)  # arrived whole before any of it was sent: nothing to mark yet
    assert line.marks_due(current=None, finished=lambda t: True) == []
    for k in range(5):
        line.sent(3, FRAME, 1.0 + k * FRAME)
    assert line.marks_due(current=3, finished=lambda t: True) == [2] * 0  # 3 has not ended
    line.turn_ended(3)
    assert line.marks_due(current=3, finished=finished.__contains__) == []  # frames queued
    finished.add(3)
    assert line.marks_due(current=3, finished=finished.__contains__) == [3]
    line.mark_sent(3, mark_name(3), 1.08)
    assert line.marks_due(current=None, finished=finished.__contains__) == []  # once
    assert line.mark_returned("turn-3", cleared=False, now=1.13) == 3
    stats = line.stats()
    assert (stats.marks_sent, stats.marks_played) == (1, 1)
    assert stats.last_mark_lag_ms == pytest.approx(30.0)  # played out at 1.10
    assert line.mark_returned("turn-3", cleared=False, now=1.2) is None  # unknown now


def test_a_cancel_clears_the_carrier_only_while_the_turn_may_still_be_heard() -> None:
    line = Line()
    line.sent(1, FRAME, 5.0)
    line.sent(1, FRAME, 5.02)
    assert line.turn_cancelled(1, 5.03)  # its last frame is still playing
    assert not line.audible(5.03)
    assert line.stats().clears_sent == 1
    line.sent(2, FRAME, 6.0)
    assert not line.turn_cancelled(2, 6.5)  # long played out: nothing to clear
    assert not line.turn_cancelled(9, 6.5)  # never on the line (still buffered)
    line.sent(4, FRAME, 7.0)
    line.turn_ended(4)
    line.mark_sent(4, "turn-4", 7.0)
    assert line.turn_cancelled(4, 7.01)  # marked but not yet returned, still audible
    assert line.mark_returned("turn-4", cleared=True, now=7.02) == 4
    assert line.stats().marks_cleared == 1
    assert line.stats().last_mark_lag_ms is None


def test_after_a_resume_the_lost_turn_is_marked_once_the_line_moves_on() -> None:
    line = Line()
    line.sent(0, FRAME, 1.0)
    line.session_resumed()  # turn 0's connection is gone: it will never end
    assert line.marks_due(current=0, finished=lambda t: False) == []  # still playing
    assert line.marks_due(current=None, finished=lambda t: False) == [0]
    line.sent(5, FRAME, 1.1)  # the resumed session's turns are not orphans
    line.mark_sent(0, "turn-0", 1.1)
    assert line.marks_due(current=None, finished=lambda t: False) == []


def test_turns_and_marks_are_bounded() -> None:
    line = Line(max_turns=4)
    for turn in range(100):
        line.sent(turn, FRAME, float(turn))
        line.turn_ended(turn)
    assert line.marks_due(current=None, finished=lambda t: True) == [96, 97, 98, 99]
    for turn in range(96, 100):
        line.mark_sent(turn, mark_name(turn), 100.0)
    line.mark_sent(1000, None, 100.0)  # could not be marked: forgotten, not asked again
    assert line.marks_due(current=None, finished=lambda t: True) == []
    with pytest.raises(ValueError):
        Line(max_turns=0)
    with pytest.raises(ValueError):
        FrameClock(0.0, 0.0)
