"""The ``played`` report: the message, the playout buffer's accounting, and both sides of it."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicvoice.errors import ProtocolError
from quicvoice.session.codes import ErrorCode
from quicvoice.session.connection import SessionLimits
from quicvoice.session.events import TurnCancelled, TurnEnded, TurnPlayed
from quicvoice.session.messages import (
    U62,
    MessageReader,
    Played,
    UplinkMode,
    Welcome,
    decode_message,
    encode_message,
)
from quicvoice.session.playout import MAX_TRACKED_TURNS, PlayedTurn, PlayoutBuffer

from .pair import Pair, make_pair

FRAME = bytes(640)


# -- the message -----------------------------------------------------------------------


@given(
    turn_id=st.integers(0, U62 - 1), played_ms=st.integers(0, U62 - 1), complete=st.booleans()
)
def test_played_round_trips(turn_id: int, played_ms: int, complete: bool) -> None:
    message = Played(turn_id=turn_id, played_ms=played_ms, complete=complete)
    assert MessageReader().feed(encode_message(message)) == [message]


values = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=4)
values |= st.floats(allow_nan=False) | st.binary(max_size=4)


@settings(max_examples=300)
@given(body=st.dictionaries(st.sampled_from(["turn_id", "played_ms", "complete", "x"]), values))
def test_a_garbled_played_is_a_message_error_and_nothing_else(body: dict[str, object]) -> None:
    wire = msgpack.packb({"type": "played", **body}, use_bin_type=True)
    try:
        message = decode_message(wire)
    except ProtocolError as error:
        assert error.error_code == ErrorCode.MESSAGE_ERROR
    else:
        assert isinstance(message, Played)
        assert isinstance(message.complete, bool) and 0 <= message.turn_id < U62


def test_played_refuses_bad_values_locally() -> None:
    with pytest.raises(ValueError):
        Played(turn_id=-1, played_ms=0, complete=True)
    with pytest.raises(ValueError):
        Played(turn_id=0, played_ms=True, complete=True)


@given(flag=st.sampled_from([None, True, False, 1, "yes"]))
def test_welcome_played_reports_is_an_optional_boolean(flag: object) -> None:
    welcome = Welcome(
        session_id="s", codec="L16/16000", frame_ms=20, uplink=UplinkMode.RELIABLE, server_id="01"
    ).to_wire()
    if flag is not None:
        welcome["played_reports"] = flag
    wire = msgpack.packb(welcome, use_bin_type=True)
    if flag is None or isinstance(flag, bool):
        decoded = decode_message(wire)
        assert isinstance(decoded, Welcome) and decoded.played_reports is bool(flag)
    else:
        with pytest.raises(ProtocolError):
            decode_message(wire)


# -- the playout buffer's accounting ---------------------------------------------------


def _buffer() -> tuple[PlayoutBuffer, list[PlayedTurn]]:
    reports: list[PlayedTurn] = []
    return PlayoutBuffer(320, rate=16000, on_turn_played=reports.append), reports


def test_a_cancelled_turn_reports_what_was_pulled() -> None:
    playout, reports = _buffer()
    playout.start_turn(0)
    for _ in range(10):
        playout.push(0, FRAME)
    for _ in range(3):
        assert playout.pull() == (0, FRAME)
    assert playout.played_ms(0) == 60
    assert playout.cancel(0) == 7
    assert reports == [PlayedTurn(turn_id=0, played_ms=60, complete=False)]
    assert playout.played_ms(0) is None


def test_an_ended_turn_reports_complete_when_its_last_frame_is_pulled() -> None:
    playout, reports = _buffer()
    playout.start_turn(4)
    playout.push(4, FRAME)
    playout.push(4, FRAME)
    playout.end_turn(4)
    playout.pull()
    assert reports == []
    playout.pull()
    assert reports == [PlayedTurn(turn_id=4, played_ms=40, complete=True)]
    assert playout.pull() is None and playout.stats().underruns == 0
    assert playout.cancel(4) == 0 and len(reports) == 1  # reported once


def test_underruns_do_not_count_as_played() -> None:
    playout, reports = _buffer()
    playout.start_turn(1)
    playout.push(1, FRAME)
    playout.pull()
    assert playout.pull() is None  # underrun: silence, not the turn's audio
    playout.push(1, FRAME)
    playout.end_turn(1)
    playout.pull()
    assert reports == [PlayedTurn(turn_id=1, played_ms=40, complete=True)]


def test_frames_dropped_for_lack_of_room_make_the_turn_incomplete() -> None:
    reports: list[PlayedTurn] = []
    playout = PlayoutBuffer(320, max_frames=2, rate=16000, on_turn_played=reports.append)
    playout.start_turn(0)
    for _ in range(3):
        playout.push(0, FRAME)
    playout.end_turn(0)
    playout.pull()
    playout.pull()
    assert reports == [PlayedTurn(turn_id=0, played_ms=40, complete=False)]


def test_the_records_are_bounded() -> None:
    playout, _ = _buffer()
    for turn in range(MAX_TRACKED_TURNS * 3):
        playout.start_turn(turn)
    assert playout.played_ms(0) is None
    assert playout.played_ms(MAX_TRACKED_TURNS * 3 - 1) == 0


# -- both sides ------------------------------------------------------------------------


@pytest.mark.parametrize("webtransport", [False, True], ids=["raw", "webtransport"])
def test_the_client_reports_a_cancelled_turn_and_the_server_surfaces_it(
    webtransport: bool,
) -> None:
    pair = make_pair(webtransport=webtransport, played_reports=True)
    server = pair.server
    assert server is not None
    turn = server.start_turn()
    for index in range(5):
        assert server.send_turn_audio(turn, FRAME, index * 320)
    pair.pump()
    pair.take("server")
    acked, written = server.turn_send_offsets(turn) or (0, 0)
    assert acked == written > 5 * 640  # header and 5 framed payloads, all acknowledged
    assert server.turn_send_offsets(turn + 1) is None
    for _ in pair.client.cancel_turn(turn):
        pass
    assert pair.client.send_played(turn, 40, complete=False)
    pair.pump()
    events = pair.take("server")
    assert TurnCancelled(turn_id=turn, by_peer=True) in events
    assert TurnPlayed(turn_id=turn, played_ms=40, complete=False) in events
    assert events.index(TurnPlayed(turn_id=turn, played_ms=40, complete=False)) > events.index(
        TurnCancelled(turn_id=turn, by_peer=True)
    )


def test_a_report_for_a_turn_the_server_never_opened_is_dropped() -> None:
    pair = make_pair(played_reports=True)
    assert pair.client.send_played(7, 100, complete=True)
    pair.pump()
    assert not [e for e in pair.take("server") if isinstance(e, TurnPlayed)]
    assert pair.server is not None and pair.server.state.name == "ACTIVE"


def test_no_report_goes_to_a_server_that_did_not_ask() -> None:
    pair = make_pair(played_reports=False)
    assert not pair.client.send_played(0, 100, complete=True)
    assert pair.server is not None and not pair.server.send_played(0, 1, complete=True)


# -- cancelling a turn that has fully arrived and is still playing out -------------------


def _ended_turn(pair_webtransport: bool) -> tuple[Pair, int]:
    pair = make_pair(webtransport=pair_webtransport, played_reports=True)
    server = pair.server
    assert server is not None
    turn = server.start_turn()
    for index in range(5):
        assert server.send_turn_audio(turn, FRAME, index * 320)
    server.end_turn(turn)
    pair.pump()
    assert TurnEnded(turn_id=turn) in pair.take("client")
    pair.take("server")
    return pair, turn


@pytest.mark.parametrize("webtransport", [False, True], ids=["raw", "webtransport"])
def test_the_server_cancels_a_turn_after_its_fin_and_the_client_hears_of_it(
    webtransport: bool,
) -> None:
    pair, turn = _ended_turn(webtransport)
    assert pair.server is not None
    assert pair.server.cancel_turn(turn) == [TurnCancelled(turn_id=turn, by_peer=False)]
    assert pair.server.cancel_turn(turn) == []  # once
    pair.pump()
    assert pair.take("client") == [TurnCancelled(turn_id=turn, by_peer=True)]
    assert pair.client.send_played(turn, 40, complete=False)
    pair.pump()
    assert pair.take("server") == [TurnPlayed(turn_id=turn, played_ms=40, complete=False)]
    assert pair.server.state.name == "ACTIVE" and pair.client.state.name == "ACTIVE"


def test_the_client_cancels_a_turn_after_its_fin_and_the_server_hears_it_first() -> None:
    pair, turn = _ended_turn(False)
    assert pair.client.cancel_turn(turn) == [TurnCancelled(turn_id=turn, by_peer=False)]
    assert pair.client.send_played(turn, 20, complete=False)
    pair.pump()
    assert pair.take("server") == [
        TurnCancelled(turn_id=turn, by_peer=True),
        TurnPlayed(turn_id=turn, played_ms=20, complete=False),
    ]


def test_a_turn_reported_played_can_no_longer_be_cancelled() -> None:
    pair, turn = _ended_turn(False)
    assert pair.server is not None
    assert pair.client.send_played(turn, 100, complete=True)
    pair.pump()
    assert pair.take("server") == [TurnPlayed(turn_id=turn, played_ms=100, complete=True)]
    assert pair.server.cancel_turn(turn) == []
    assert pair.client.cancel_turn(turn) == []


def test_the_ended_turns_a_side_remembers_are_bounded() -> None:
    pair = make_pair(played_reports=True, server_limits=SessionLimits(max_playing_turns=3))
    server = pair.server
    assert server is not None
    turns = [server.start_turn() for _ in range(5)]
    for turn in turns:
        server.end_turn(turn)
    assert server.cancel_turn(turns[0]) == []  # forgotten: the oldest beyond the bound
    assert server.cancel_turn(turns[4]) == [TurnCancelled(turn_id=turns[4], by_peer=False)]
