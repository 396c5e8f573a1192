"""The happy-eyeballs race (RFC 8305) on a fake clock: which address starts when, who wins."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicvoice.happy_eyeballs import (
    AbandonAttempt,
    ConnectionRace,
    RaceAction,
    RaceFailed,
    RaceTimedOut,
    RaceWon,
    StartAttempt,
    interleave_families,
)

V6A = ("2001:db8::1", 443)
V6B = ("2001:db8::2", 443)
V4A = ("192.0.2.1", 443)
V4B = ("192.0.2.2", 443)
V4C = ("192.0.2.3", 443)


def drain(race: ConnectionRace) -> list[RaceAction]:
    actions = []
    action = race.next_action()
    while action is not None:
        actions.append(action)
        action = race.next_action()
    return actions


def test_ipv6_first_then_families_alternate() -> None:
    # The resolver's order within a family is kept (RFC 6724 already sorted it).
    assert interleave_families([V4A, V4B, V4C, V6A, V6B]) == [V6A, V4A, V6B, V4B, V4C]
    assert interleave_families([V4A, V4A, V6A]) == [V6A, V4A]
    assert interleave_families([V4B, V4A]) == [V4B, V4A]


def test_the_next_attempt_starts_after_the_attempt_delay() -> None:
    race = ConnectionRace([V6A, V4A, V6B], deadline=10.0, attempt_delay=0.25)
    race.start(0.0)
    assert drain(race) == [StartAttempt(index=0, address=V6A)]
    assert race.get_timer() == 0.25
    race.handle_timer(0.1)  # early: nothing
    assert drain(race) == []
    race.handle_timer(0.25)
    assert drain(race) == [StartAttempt(index=1, address=V4A)]
    assert race.get_timer() == 0.5
    race.handle_timer(0.5)
    assert drain(race) == [StartAttempt(index=2, address=V6B)]
    assert race.get_timer() == 10.0  # only the deadline is left
    assert race.running == {0, 1, 2}


def test_a_failure_starts_the_next_attempt_at_once() -> None:
    race = ConnectionRace([V6A, V4A, V4B], deadline=10.0)
    race.start(0.0)
    drain(race)
    race.attempt_failed(0, 0.03)
    assert drain(race) == [StartAttempt(index=1, address=V4A)]
    assert race.get_timer() == pytest.approx(0.28)  # the delay counts from this start


def test_the_first_success_wins_and_the_others_are_abandoned() -> None:
    race = ConnectionRace([V6A, V4A, V6B], deadline=10.0)
    race.start(0.0)
    race.handle_timer(0.25)
    race.handle_timer(0.5)
    drain(race)
    race.attempt_succeeded(1, 0.6)
    assert drain(race) == [
        AbandonAttempt(index=0, address=V6A),
        AbandonAttempt(index=2, address=V6B),
        RaceWon(index=1, address=V4A),
    ]
    assert race.finished and race.get_timer() is None
    # A second success, from the same loop turn: it came second, so it is closed too.
    race.attempt_succeeded(0, 0.6)
    assert drain(race) == [AbandonAttempt(index=0, address=V6A)]


def test_a_success_before_the_delay_starts_nothing_else() -> None:
    race = ConnectionRace([V6A, V4A], deadline=10.0)
    race.start(0.0)
    drain(race)
    race.attempt_succeeded(0, 0.01)
    assert drain(race) == [RaceWon(index=0, address=V6A)]
    race.handle_timer(0.25)
    assert drain(race) == []


def test_a_final_failure_ends_the_race() -> None:
    race = ConnectionRace([V6A, V4A, V4B], deadline=10.0)
    race.start(0.0)
    race.handle_timer(0.25)
    drain(race)
    race.attempt_failed(1, 0.3, final=True)
    assert drain(race) == [AbandonAttempt(index=0, address=V6A), RaceFailed(final_index=1)]


def test_every_address_failing_fails_the_race() -> None:
    race = ConnectionRace([V6A, V4A], deadline=10.0)
    race.start(0.0)
    race.attempt_failed(0, 0.01)
    race.attempt_failed(1, 0.02)
    assert drain(race) == [
        StartAttempt(index=0, address=V6A),
        StartAttempt(index=1, address=V4A),
        RaceFailed(final_index=None),
    ]


def test_the_last_address_running_keeps_the_race_open() -> None:
    race = ConnectionRace([V6A, V4A], deadline=10.0)
    race.start(0.0)
    race.handle_timer(0.25)
    drain(race)
    race.attempt_failed(1, 0.3)  # nothing left to start, but attempt 0 may still win
    assert drain(race) == []
    race.attempt_succeeded(0, 0.4)
    assert drain(race) == [RaceWon(index=0, address=V6A)]


def test_the_deadline_abandons_what_runs() -> None:
    race = ConnectionRace([V6A, V4A, V4B], deadline=0.3)
    race.start(0.0)
    race.handle_timer(0.25)
    drain(race)
    assert race.get_timer() == 0.3  # the deadline comes before the third start
    race.handle_timer(0.3)
    assert drain(race) == [
        AbandonAttempt(index=0, address=V6A),
        AbandonAttempt(index=1, address=V4A),
        RaceTimedOut(),
    ]


def test_misuse_is_refused() -> None:
    with pytest.raises(ValueError):
        ConnectionRace([], deadline=1.0)
    with pytest.raises(ValueError):
        ConnectionRace([V4A], deadline=1.0, attempt_delay=0.0)
    race = ConnectionRace([V4A, V4B], deadline=1.0)
    race.start(0.0)
    with pytest.raises(ValueError):
        race.start(0.0)
    with pytest.raises(ValueError):
        race.attempt_succeeded(1, 0.0)  # never started


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["timer", "success", "failure", "final"]),
        st.integers(min_value=0, max_value=5),
        st.floats(min_value=0.0, max_value=0.5),
    ),
    max_size=40,
)


@given(st.integers(min_value=1, max_value=6), EVENTS)
def test_any_sequence_keeps_the_invariants(
    count: int, events: list[tuple[str, int, float]]
) -> None:
    addresses = [(f"192.0.2.{i}", 443) for i in range(count)]
    race = ConnectionRace(addresses, deadline=1.0)
    now = 0.0
    race.start(now)
    started: list[int] = []
    ended: set[int] = set()
    decisions = 0
    for kind, index, step in events:
        now += step
        if kind == "timer":
            race.handle_timer(now)
        elif index < len(started):
            if kind == "success":
                race.attempt_succeeded(index, now)
            else:
                race.attempt_failed(index, now, final=kind == "final")
        for action in drain(race):
            if isinstance(action, StartAttempt):
                assert action.index == len(started)  # in order, each address once
                started.append(action.index)
            elif isinstance(action, AbandonAttempt):
                ended.add(action.index)
            else:
                decisions += 1
        timer = race.get_timer()
        assert (timer is None) == race.finished
        assert race.running <= set(started) - ended
    assert decisions <= 1
    assert len(started) <= count


def test_local_address_keeps_only_its_family() -> None:
    from quicvoice.asyncio.dial import usable_addresses
    from quicvoice.errors import NameResolutionError

    addresses = [V4A, V6A, V4B]
    assert usable_addresses("h", addresses, None) == [V6A, V4A, V4B]
    assert usable_addresses("h", addresses, "192.0.2.9") == [V4A, V4B]
    assert usable_addresses("h", addresses, "::") == [V6A]
    with pytest.raises(NameResolutionError, match="no IPv6 address"):
        usable_addresses("h", [V4A], "::1")
