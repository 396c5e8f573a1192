"""The client's call policy (``CallMachine``) driven with a fake clock: no sockets, no sleeps."""

from __future__ import annotations

import errno

import pytest

from quicvoice.errors import CallEndedError, CallReconnectingError, UplinkEndedError
from quicvoice.session.call import (
    ANSWERED_ATTEMPT_TIMEOUT,
    MAX_HELD_EVENTS,
    NEW_PATH_ATTEMPT_TIMEOUT,
    CallConfig,
    CancelTurn,
    CheckLocalAddress,
    ClosePath,
    LinkRole,
    OpenLink,
    OpenPath,
    Resumption,
    is_definite_refusal,
)
from quicvoice.session.codes import ErrorCode
from quicvoice.session.events import (
    AudioReceived,
    EventReceived,
    SessionClosed,
    SessionResumed,
    TurnCancelled,
    TurnStarted,
)
from quicvoice.session.messages import UplinkMode
from quicvoice.session.stats import Migration
from quicvoice.session.wire import MediaFrame

from .callshell import TOKEN, CallShell


def dead_by_silence(shell: CallShell) -> float:
    """Send one frame nobody answers and let liveness run out; return when it was judged
    (when the first resume attempt opened, or the move began)."""
    shell.send(1)
    for _ in range(100):
        shell.advance(shell.now + 0.05)
        if shell.machine.reconnecting:
            return shell.opened_at[max(shell.opened_at)]
        if shell.machine.recovering:
            return shell.now
    raise AssertionError("never judged dead")


def opened_links(shell: CallShell) -> list[OpenLink]:
    return [a for a in shell.actions if isinstance(a, OpenLink)]


# -- liveness ------------------------------------------------------------------------------


def test_an_unanswered_send_is_probed_then_judged_dead_and_resumed() -> None:
    shell = CallShell(liveness_timeout=1.0)
    shell.start()
    sent_at = shell.now
    shell.send(1)
    shell.advance(sent_at + 0.2)
    assert shell.links[0].ping_times == []  # nothing probed before a quarter of the timeout
    judged = dead_by_silence_no_send(shell)
    pings = shell.links[0].ping_times
    assert pings[0] == pytest.approx(sent_at + 0.25)
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert all(gap == pytest.approx(0.1) for gap in gaps), gaps
    assert judged == pytest.approx(sent_at + 1.05)
    [check] = [a for a in shell.actions if isinstance(a, CheckLocalAddress)]
    assert check.host == "10.0.0.2"
    attempt = opened_links(shell)[-1]
    assert attempt.link == 1 and attempt.hello.resume_token == TOKEN
    assert attempt.hello.codecs == ("L16/16000",)
    assert shell.machine.open_links() == {0: LinkRole.QUIET, 1: LinkRole.ATTEMPT}


def dead_by_silence_no_send(shell: CallShell) -> float:
    for _ in range(100):
        shell.advance(shell.now + 0.01)
        if shell.machine.reconnecting:
            return shell.now
    raise AssertionError("never judged dead")


def test_a_pause_in_sending_is_not_a_dead_connection() -> None:
    shell = CallShell(liveness_timeout=0.5)
    shell.start()
    shell.send(1)
    shell.hear(0)  # acknowledged
    shell.advance(shell.now + 5.0)  # the caller is silent: nothing unanswered, nothing probed
    assert shell.links[0].ping_times == []
    assert not shell.machine.reconnecting


def test_an_answered_probe_keeps_the_connection() -> None:
    shell = CallShell(liveness_timeout=1.0)
    shell.start()
    shell.send(1)
    shell.advance(shell.now + 0.8)
    assert len(shell.links[0].ping_times) >= 5
    shell.hear(0)
    shell.advance(shell.now + 3.0)
    assert not shell.machine.reconnecting and shell.machine.resumptions == ()


def test_without_reconnect_there_is_no_probing() -> None:
    shell = CallShell(reconnect=False)
    shell.start()
    shell.send(1)
    assert shell.machine.get_timer() is None
    shell.advance(shell.now + 10)
    assert shell.links[0].ping_times == [] and not shell.machine.reconnecting


# -- the network under the call went away ------------------------------------------------


def test_a_vanished_network_moves_the_live_connection_and_migrate_reports_it() -> None:
    shell = CallShell()
    shell.start()
    shell.machine.handle_send_error(0, 1, errno.ENETUNREACH, shell.now)
    shell.run()
    [move] = [a for a in shell.actions if isinstance(a, OpenPath)]
    assert move.host is None and move.new_connection_id  # where the kernel routes now
    assert shell.machine.recovering
    shell.now += 0.03
    shell.hear(0, path=move.path)
    assert not shell.machine.recovering
    assert ClosePath(link=0, path=1) in shell.actions  # the old socket at once
    [migration] = shell.machine.migrations
    assert migration.from_address == "10.0.0.2:40001"
    assert migration.to_address == f"10.0.0.9:{50000 + move.path}"
    assert migration.gap_ms == pytest.approx(30)
    request = shell.migrate("10.0.0.9")
    assert shell.finished[request] is migration  # the app's migrate() finds the move made
    assert shell.machine.resumptions == () and not shell.machine.reconnecting


def test_other_send_errors_do_not_move_the_call() -> None:
    shell = CallShell()
    shell.start()
    shell.machine.handle_send_error(0, 1, errno.EPERM, shell.now)
    shell.run()
    assert not shell.machine.recovering


def test_no_answer_after_moving_falls_back_to_a_resume() -> None:
    shell = CallShell()
    shell.start()
    shell.machine.handle_send_error(0, 1, errno.EADDRNOTAVAIL, shell.now)
    shell.run()
    shell.advance(shell.now + NEW_PATH_ATTEMPT_TIMEOUT - 0.01)
    assert shell.machine.recovering
    shell.advance(shell.now + 0.02)
    assert shell.machine.reconnecting and not shell.machine.recovering


def test_silence_on_a_vanished_address_moves_the_connection_instead_of_resuming() -> None:
    shell = CallShell()
    shell.start()
    shell.address_vanished = True
    dead_by_silence(shell)
    assert shell.machine.recovering and not shell.machine.reconnecting
    assert [a for a in shell.actions if isinstance(a, OpenPath)]


def test_a_migration_during_a_recovery_waits_for_it() -> None:
    shell = CallShell()
    shell.start()
    shell.machine.handle_send_error(0, 1, errno.ENETDOWN, shell.now)
    shell.run()
    request = shell.migrate("10.0.0.7")
    assert request not in shell.finished
    move = [a for a in shell.actions if isinstance(a, OpenPath)][-1]
    shell.hear(0, path=move.path)
    [_, app_move] = [a for a in shell.actions if isinstance(a, OpenPath)]
    assert app_move.host == "10.0.0.7"
    shell.now += 0.01
    shell.hear(0, path=app_move.path)
    finished = shell.finished[request]
    assert isinstance(finished, Migration) and finished.to_address.startswith("10.0.0.7:")


def test_migrate_keeps_the_old_socket_about_one_rtt() -> None:
    shell = CallShell()
    shell.start()
    request = shell.migrate("10.0.0.3")
    [move] = [a for a in shell.actions if isinstance(a, OpenPath)]
    assert move.host == "10.0.0.3" and move.new_connection_id
    shell.now += 0.04
    shell.hear(0, path=move.path)
    migration = shell.finished[request]
    assert isinstance(migration, Migration) and migration.gap_ms == pytest.approx(40)
    assert not [a for a in shell.actions if isinstance(a, ClosePath)]
    shell.advance(shell.now + 0.049)
    assert not [a for a in shell.actions if isinstance(a, ClosePath)]
    shell.advance(shell.now + 0.002)  # max(1.5 RTT, 50 ms)
    assert ClosePath(link=0, path=1) in shell.actions


def test_migrate_with_no_answer_fails_and_a_bad_address_fails_at_once() -> None:
    shell = CallShell()
    shell.start()
    request = shell.migrate("10.0.0.3", timeout=0.5)
    shell.advance(shell.now + 0.5)
    assert shell.finished[request] == "no answer on the new path within 0.5 s"
    shell.hear(0)
    shell.unbindable.add("10.0.0.66")
    request = shell.migrate("10.0.0.66")
    assert str(shell.finished[request]).startswith("cannot bind 10.0.0.66")


# -- resume attempts -----------------------------------------------------------------------


def test_a_silent_attempt_is_abandoned_and_an_answered_one_gets_three_seconds() -> None:
    shell = CallShell()
    shell.start()
    declared = dead_by_silence(shell)
    shell.advance(declared + 0.29)
    assert shell.machine.open_links()[1] is LinkRole.ATTEMPT
    shell.advance(declared + 0.31)  # 8 RTTs of 20 ms is below the 0.3 s minimum
    assert shell.links[1].closed and shell.links[1].goodbye  # CONNECTION_CLOSE
    shell.advance(declared + 0.36)  # after a 50 ms back-off
    assert shell.machine.open_links()[2] is LinkRole.ATTEMPT
    began = shell.now = declared + 0.36
    shell.hear(2)  # the backend answered the handshake
    shell.advance(began + ANSWERED_ATTEMPT_TIMEOUT - 0.1)
    assert not shell.links[2].closed
    shell.welcome(2, server_id="0a000002", resumed=True)
    [resumption] = shell.machine.resumptions
    assert isinstance(resumption, Resumption)
    assert resumption.attempts == 2 and resumption.to_server == "0a000002"
    assert shell.carrying() == 2 and shell.links[0].closed  # the quiet one dropped
    assert isinstance(shell.delivered[-1], SessionResumed)


def test_an_answered_attempt_is_abandoned_after_three_seconds() -> None:
    shell = CallShell()
    shell.start()
    declared = dead_by_silence(shell)
    shell.hear(1)
    shell.advance(declared + ANSWERED_ATTEMPT_TIMEOUT - 0.01)
    assert not shell.links[1].closed
    shell.advance(declared + ANSWERED_ATTEMPT_TIMEOUT + 0.01)
    assert shell.links[1].closed


def test_a_stateless_reset_fails_an_attempt_at_once() -> None:
    shell = CallShell()
    shell.start()
    dead_by_silence(shell)
    shell.machine.handle_stateless_reset(1, shell.now)
    shell.run()
    assert shell.links[1].closed and shell.links[1].goodbye is False
    shell.advance(shell.now + 0.05)
    assert shell.machine.open_links().get(2) is LinkRole.ATTEMPT


def test_a_reset_of_the_carrying_connection_resumes_at_once_without_a_quiet_one() -> None:
    shell = CallShell()
    shell.start()
    shell.machine.handle_stateless_reset(0, shell.now)
    shell.run()
    assert shell.machine.reconnecting
    assert shell.links[0].closed and shell.links[0].goodbye is False
    assert shell.machine.open_links() == {1: LinkRole.ATTEMPT}


def test_a_reset_without_reconnect_ends_the_call() -> None:
    shell = CallShell(reconnect=False)
    shell.start()
    shell.machine.handle_stateless_reset(0, shell.now)
    shell.run()
    assert shell.delivered[-1] == SessionClosed(error_code=0, reason="stateless reset")
    with pytest.raises(CallEndedError):
        shell.send(1)


def test_an_idle_timeout_resumes_but_a_deliberate_close_ends_the_call() -> None:
    shell = CallShell()
    shell.start()
    shell.event(0, SessionClosed(error_code=0, reason="Idle timeout"))
    assert shell.machine.reconnecting
    other = CallShell()
    other.start()
    other.event(0, SessionClosed(error_code=0, reason="goodbye"))
    assert other.delivered[-1] == SessionClosed(error_code=0, reason="goodbye")
    assert other.machine.ended and not other.machine.reconnecting


def test_attempts_back_off_lengthen_and_are_abandoned_at_the_deadline() -> None:
    shell = CallShell(reconnect_timeout=4.0)
    shell.start()
    declared = dead_by_silence(shell)
    shell.advance(declared + 10)
    attempts = opened_links(shell)[1:]
    assert 4 < len(attempts) < 12
    closed = shell.delivered[-1]
    assert isinstance(closed, SessionClosed) and closed.error_code == ErrorCode.INTERNAL_ERROR
    assert closed.reason.endswith("could not resume the session")
    assert shell.machine.open_links() == {}
    assert all(link.closed for link in shell.links.values())
    with pytest.raises(CallEndedError):
        shell.machine.send_event("late")


def test_a_refusal_after_a_timeout_gives_up_since_the_timed_out_attempt_may_have_won() -> None:
    shell = CallShell()
    shell.start()
    declared = dead_by_silence(shell)
    shell.advance(declared + 0.36)  # attempt 1 timed out, attempt 2 open
    shell.event(2, SessionClosed(error_code=ErrorCode.RESUME_REFUSED, reason="unknown session"))
    assert shell.machine.ended
    closed = shell.delivered[-1]
    assert isinstance(closed, SessionClosed) and closed.error_code == ErrorCode.INTERNAL_ERROR


def test_every_resume_refused_then_the_quiet_connection_comes_back() -> None:
    """Restore: events the quiet connection delivered meanwhile, frames captured meanwhile,
    the end of the uplink and the app's events all go on over it."""
    shell = CallShell()
    shell.start()
    sent = shell.send(3)
    shell.hear(0, acked=shell.links[0].frames[0][1])  # the first frame acknowledged
    declared = dead_by_silence(shell)
    assert [f.seq for f in shell.machine.kept_frames] == [1, 2, 3]
    shell.event(0, EventReceived(name="order.cart", data=[]))  # heard, but still quiet
    captured = shell.send(2)
    shell.machine.send_event("order.list")
    shell.machine.end_audio()
    shell.run()
    assert shell.links[1].control == [] and shell.links[1].frames == []
    shell.event(1, SessionClosed(error_code=ErrorCode.RESUME_REFUSED, reason="unknown session"))
    assert shell.machine.reconnecting  # waits for the quiet connection until the deadline
    shell.now = declared + 1.0
    shell.hear(0)
    assert not shell.machine.reconnecting and shell.carrying() == 0
    assert EventReceived(name="order.cart", data=[]) in shell.delivered
    # Frame 3 went out before the silence was judged (the connection retransmits it itself);
    # the two captured meanwhile are sent now.
    assert [seq for seq, _ in shell.links[0].frames] == [*sent, 3, *captured]
    assert shell.links[0].control == [("end",), ("event", "order.list")]
    assert shell.machine.resumptions == ()


def test_a_quiet_connection_heard_before_a_refusal_is_taken_back_at_once() -> None:
    shell = CallShell()
    shell.start()
    dead_by_silence(shell)
    shell.now += 0.1
    shell.hear(0)
    assert shell.machine.reconnecting  # an attempt is in flight: it might take over
    shell.event(1, SessionClosed(error_code=ErrorCode.UNSUPPORTED, reason="no"))
    assert not shell.machine.reconnecting and shell.carrying() == 0


#: Closes of a resume attempt that refuse it for certain: asking again gets the same answer,
#: and the backend did not take the session over (credentials and the accept hook are checked
#: before the record is claimed, specs/auth.md).
DEFINITE = [
    ErrorCode.RESUME_REFUSED,
    ErrorCode.UNSUPPORTED,
    *(ErrorCode(code) for code in range(ErrorCode.UNAUTHENTICATED, ErrorCode.REFUSED + 1)),
    0x1000,  # an accept hook's own refusal codes
    0x1FFF,
]


@pytest.mark.parametrize("code", DEFINITE, ids=lambda code: f"{int(code):#x}")
def test_a_definite_refusal_is_not_retried_and_the_quiet_connection_may_come_back(
    code: int,
) -> None:
    assert is_definite_refusal(int(code))
    shell = CallShell()
    shell.start()
    declared = dead_by_silence(shell)
    shell.event(1, SessionClosed(error_code=int(code), reason="refused"))
    shell.advance(declared + 2.0)
    assert len(opened_links(shell)) == 2  # the call's connection and the one refused attempt
    assert shell.machine.reconnecting  # waiting for the quiet connection until the deadline
    shell.hear(0)
    assert not shell.machine.reconnecting and shell.carrying() == 0
    assert shell.machine.resumptions == ()


@pytest.mark.parametrize(
    "code", [ErrorCode.INTERNAL_ERROR, ErrorCode.LIMIT_EXCEEDED, 0x0FFF, 0x2000, 0x0A]
)
def test_any_other_close_of_an_attempt_is_retried(code: int) -> None:
    assert not is_definite_refusal(int(code))
    shell = CallShell()
    shell.start()
    declared = dead_by_silence(shell)
    shell.event(1, SessionClosed(error_code=int(code), reason="failed"))
    shell.advance(declared + 0.2)  # past the back-off
    assert len(opened_links(shell)) == 3
    shell.welcome(2, resumed=True)
    assert shell.carrying() == 2 and len(shell.machine.resumptions) == 1


def test_kept_frames_are_pruned_by_acks_and_resent_after_a_resume() -> None:
    shell = CallShell()
    shell.start()
    shell.send(5)
    ends = [end for _, end in shell.links[0].frames]
    shell.hear(0, acked=ends[1])
    assert [f.seq for f in shell.machine.kept_frames] == [2, 3, 4]
    dead_by_silence(shell)  # sends frame 5
    captured = shell.send(2)
    shell.welcome(1, resumed=True)
    assert [seq for seq, _ in shell.links[1].frames] == [2, 3, 4, 5, *captured]
    [resumption] = shell.machine.resumptions
    assert resumption.frames_resent == 6
    kept = shell.machine.kept_frames
    assert [f.stream_end for f in kept] == [end for _, end in shell.links[1].frames]


def test_kept_frames_travel_in_0rtt_and_are_adopted_with_their_new_offsets() -> None:
    shell = CallShell()
    shell.start()
    shell.send(3)
    shell.early_uplink = True
    dead_by_silence(shell)
    assert [seq for seq, _ in shell.links[1].frames] == [0, 1, 2, 3]  # before welcome
    captured = shell.send(1)
    shell.welcome(1, resumed=True)
    assert [seq for seq, _ in shell.links[1].frames] == [0, 1, 2, 3, *captured]
    assert shell.machine.resumptions[0].frames_resent == 5
    assert [f.stream_end for f in shell.machine.kept_frames] == [
        end for _, end in shell.links[1].frames
    ]


def test_realtime_frames_while_reconnecting_are_dropped_and_counted() -> None:
    shell = CallShell(uplink=UplinkMode.REALTIME)
    shell.start()
    dead_by_silence(shell)
    shell.send(3)
    assert shell.machine.frames_dropped == 3 and shell.machine.kept_frames == ()


# -- the app during a reconnection -------------------------------------------------------


def test_end_audio_events_and_bye_while_reconnecting_go_on_the_connection_that_carries_on() -> None:
    shell = CallShell()
    shell.start()
    dead_by_silence(shell)
    shell.machine.send_event("order.add", {"item": "tea"})
    shell.machine.bye()
    shell.run()
    assert shell.links[1].control == []  # nothing on the attempt before it is welcomed
    shell.welcome(1, resumed=True)
    assert shell.links[1].control == [("end",), ("event", "order.add"), ("bye", 1)]
    assert shell.links[0].control == []


def test_too_many_held_events_are_refused_with_their_own_error() -> None:
    shell = CallShell()
    shell.start()
    dead_by_silence(shell)
    for index in range(MAX_HELD_EVENTS):
        shell.machine.send_event(f"e{index}")
    with pytest.raises(CallReconnectingError):
        shell.machine.send_event("one too many")


def test_migrate_while_reconnecting_moves_the_next_attempt() -> None:
    shell = CallShell()
    shell.start()
    declared = dead_by_silence(shell)
    request = shell.migrate("10.0.0.3")
    assert request not in shell.finished
    shell.advance(declared + 0.31)  # attempt 1 (from 10.0.0.2) times out
    shell.advance(declared + 0.36)
    attempt = opened_links(shell)[-1]
    assert attempt.host == "10.0.0.3"
    shell.advance(declared + 0.36 + 1.4)  # a new network: the attempt waits 1.5 s
    assert not shell.links[attempt.link].closed
    shell.welcome(attempt.link, resumed=True)
    migration = shell.finished[request]
    assert isinstance(migration, Migration)
    assert migration.from_address == "10.0.0.2:0"
    assert migration.to_address.startswith("10.0.0.3:")


def test_an_attempt_whose_address_is_gone_binds_the_wildcard() -> None:
    shell = CallShell()
    shell.start()
    shell.unbindable.add("10.0.0.2")
    dead_by_silence(shell)
    [_, first, retry] = opened_links(shell)
    assert first.host == "10.0.0.2" and retry.host == "0.0.0.0" and retry.link == first.link
    shell.advance(shell.opened_at[retry.link] + NEW_PATH_ATTEMPT_TIMEOUT - 0.01)
    assert not shell.links[retry.link].closed


# -- turns ---------------------------------------------------------------------------------


def test_turn_ids_stay_unique_across_a_resume_and_cancel_reaches_the_right_turn() -> None:
    shell = CallShell()
    shell.start()
    frame = MediaFrame(0, 0, b"x")
    shell.event(0, TurnStarted(turn_id=0))
    shell.event(0, AudioReceived(frame=frame, turn_id=0))
    dead_by_silence(shell)
    shell.welcome(1, resumed=True)
    shell.event(1, TurnStarted(turn_id=0))  # the new connection numbers from 0 again
    shell.event(1, AudioReceived(frame=frame, turn_id=0))
    turns = [e.turn_id for e in shell.delivered if isinstance(e, TurnStarted | AudioReceived)]
    assert turns == [0, 0, 1, 1]
    shell.machine.cancel_turn(1)
    shell.run()
    assert CancelTurn(link=1, wire_turn_id=0) in shell.actions
    assert TurnCancelled(turn_id=1, by_peer=False) in shell.delivered
    shell.machine.cancel_turn(0)  # a turn of the lost connection: flushed here only
    shell.run()
    assert TurnCancelled(turn_id=0, by_peer=False) in shell.delivered
    assert [a for a in shell.actions if isinstance(a, CancelTurn)] == [
        CancelTurn(link=1, wire_turn_id=0)
    ]


def test_played_reports_go_to_the_server_of_the_turn_with_its_own_turn_id() -> None:
    shell = CallShell()
    shell.start()
    shell.event(0, TurnStarted(turn_id=0))
    assert shell.machine.report_played(0, 40, complete=True)
    shell.run()
    shell.event(0, TurnStarted(turn_id=1))
    dead_by_silence(shell)
    # While reconnecting, the turn's connection is quiet: nobody to tell.
    assert not shell.machine.report_played(1, 20, complete=False)
    shell.welcome(1, resumed=True)
    shell.event(1, TurnStarted(turn_id=0))  # the client's turn 2
    assert not shell.machine.report_played(1, 20, complete=False)  # the lost connection's
    assert not shell.machine.report_played(7, 20, complete=True)  # never started
    assert shell.machine.report_played(2, 60, complete=False)
    shell.run()
    played = {
        link_id: [item for item in link.control if item[0] == "played"]
        for link_id, link in shell.links.items()
    }
    assert played == {0: [("played", 0, 40, True)], 1: [("played", 0, 60, False)]}
    with pytest.raises(ValueError):
        shell.machine.report_played(2, -1, complete=True)
    shell.machine.close(shell.now)
    assert not shell.machine.report_played(2, 80, complete=True)


# -- misuse --------------------------------------------------------------------------------


def test_local_misuse_raises_its_own_errors() -> None:
    shell = CallShell()
    shell.start()
    shell.machine.end_audio()
    with pytest.raises(UplinkEndedError):
        shell.machine.send_audio(b"x", None, 320)
    shell.machine.close(shell.now)
    shell.run()
    assert all(link.closed and link.goodbye for link in shell.links.values())
    for call in (
        lambda: shell.machine.send_event("x"),
        shell.machine.bye,
        lambda: shell.machine.migrate((("10.0.0.3"), 0), new_connection_id=True, timeout=1, now=0),
    ):
        with pytest.raises(CallEndedError) as raised:
            call()
        assert isinstance(raised.value, ConnectionError)
    with pytest.raises(ValueError):
        CallConfig(liveness_timeout=0)


@pytest.mark.parametrize("uplink", [UplinkMode.RELIABLE, UplinkMode.REALTIME])
def test_the_uplink_ends_with_end_audio_or_bye_only_when_reliable(uplink: UplinkMode) -> None:
    for finish in ("end_audio", "bye"):
        shell = CallShell(uplink=uplink)
        shell.start()
        assert not shell.machine.uplink_ended
        getattr(shell.machine, finish)()
        assert shell.machine.uplink_ended is (uplink is UplinkMode.RELIABLE)


def test_close_while_reconnecting_closes_every_link_and_fails_a_waiting_migrate() -> None:
    shell = CallShell()
    shell.start()
    dead_by_silence(shell)
    request = shell.migrate("10.0.0.3")
    shell.machine.close(shell.now)
    shell.run()
    assert shell.machine.open_links() == {}
    assert shell.finished[request] == "the call has ended"
    assert shell.machine.get_timer() is None


def test_abort_closes_every_link_with_its_code_and_says_why() -> None:
    """What the shell does when the app leaves too many events unread."""
    shell = CallShell()
    shell.start()
    dead_by_silence(shell)
    shell.machine.abort(int(ErrorCode.LIMIT_EXCEEDED), "the app left 10000 events unread")
    shell.run()
    assert all(
        link.closed and link.close_code == ErrorCode.LIMIT_EXCEEDED
        for link in shell.links.values()
    )
    assert shell.delivered[-1] == SessionClosed(
        error_code=ErrorCode.LIMIT_EXCEEDED, reason="the app left 10000 events unread"
    )
    assert shell.machine.ended and not shell.machine.reconnecting
    assert shell.machine.get_timer() is None
