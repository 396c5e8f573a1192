"""The client's bounded event queue and its overflow policy."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicvoice.session.events import (
    AudioReceived,
    ClientEvent,
    EventReceived,
    SessionClosed,
    TurnEnded,
    TurnStarted,
)
from quicvoice.session.inbox import EventInbox
from quicvoice.session.wire import MediaFrame


def audio(seq: int) -> AudioReceived:
    return AudioReceived(frame=MediaFrame(seq, 0, b""), turn_id=0)


def named(name: str) -> EventReceived:
    return EventReceived(name=name, data=None)


def drain(inbox: EventInbox) -> list[ClientEvent]:
    out = []
    while (event := inbox.pop()) is not None:
        out.append(event)
    return out


def test_events_come_out_in_arrival_order_across_both_kinds() -> None:
    inbox = EventInbox()
    events: list[ClientEvent] = [TurnStarted(turn_id=0), audio(0), audio(1), TurnEnded(turn_id=0)]
    for event in events:
        assert inbox.push(event)
    assert drain(inbox) == events


def test_the_oldest_audio_is_dropped_and_counted_control_stays() -> None:
    inbox = EventInbox(max_audio=3)
    inbox.push(named("a"))
    for seq in range(5):
        inbox.push(audio(seq))
    assert drain(inbox) == [named("a"), audio(2), audio(3), audio(4)]
    assert inbox.stats().audio_dropped == 2


def test_audio_can_be_left_to_the_playout_buffer_alone() -> None:
    inbox = EventInbox(audio=False)
    assert inbox.push(audio(0)) and len(inbox) == 0


def test_a_full_control_queue_refuses_but_always_takes_the_close() -> None:
    inbox = EventInbox(max_control=2)
    assert inbox.push(named("a")) and inbox.push(named("b"))
    assert not inbox.push(named("c"))
    assert inbox.push(SessionClosed(error_code=0x105, reason="unread"))
    closed = SessionClosed(error_code=0x105, reason="unread")
    assert drain(inbox) == [named("a"), named("b"), closed]


def test_take_first_leaves_the_others_in_order() -> None:
    inbox = EventInbox()
    for event in (named("a"), audio(0), named("cart"), TurnEnded(turn_id=0), named("cart")):
        inbox.push(event)
    assert inbox.take_first(lambda e: e == named("cart")) == named("cart")
    assert inbox.take_first(lambda e: e == named("missing")) is None
    assert drain(inbox) == [named("a"), audio(0), TurnEnded(turn_id=0), named("cart")]


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        EventInbox(max_audio=0)


@given(st.lists(st.booleans(), max_size=200))
def test_whatever_arrives_the_bounds_hold_and_order_is_kept(kinds: list[bool]) -> None:
    inbox = EventInbox(max_audio=10, max_control=20)
    accepted: list[int] = []
    for index, is_audio in enumerate(kinds):  # each event names its arrival index
        if inbox.push(audio(index) if is_audio else named(str(index))):
            accepted.append(index)
        stats = inbox.stats()
        assert stats.audio_waiting <= 10 and stats.control_waiting <= 20
    out = [
        event.frame.seq if isinstance(event, AudioReceived) else int(event.name)  # type: ignore[union-attr]
        for event in drain(inbox)
    ]
    assert out == sorted(out)  # arrival order
    sounds = [index for index in accepted if kinds[index]]
    kept_sounds = sounds[max(0, len(sounds) - 10) :]  # the newest audio
    assert out == [index for index in accepted if not kinds[index] or index in kept_sounds]
    assert inbox.stats().audio_dropped == len(sounds) - len(kept_sounds)
