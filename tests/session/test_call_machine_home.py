"""Resume attempts sent home (``welcome``'s ``home_cid``) and the quick retry when the path
comes back, driven with a fake clock (``specs/protocol.md``, "Resuming on the backend that
holds the session")."""

from __future__ import annotations

import errno

import pytest

from quicvoice.session.call import HOME_ONLY_PERIOD, LinkRole, OpenLink
from quicvoice.session.codes import ErrorCode
from quicvoice.session.events import SessionClosed

from .callshell import CallShell

HOME = bytes.fromhex("01a2b3c4d5e6f708")
NEXT_HOME = bytes.fromhex("01ffeeddccbbaa99")


def attempts(shell: CallShell) -> list[OpenLink]:
    return [a for a in shell.actions if isinstance(a, OpenLink) and a.link != 0]


def declare_dead(shell: CallShell) -> float:
    shell.send(1)
    for _ in range(100):
        shell.advance(shell.now + 0.05)
        if shell.machine.reconnecting:
            return shell.now
    raise AssertionError("never judged dead")


def test_attempts_go_home_first_then_every_other_one_to_any_backend() -> None:
    """A blackout and a home backend dead behind a forwarder that does not know look the
    same: home alone for ``HOME_ONLY_PERIOD``, then home only every ``HOME_EVERY``-th attempt."""
    shell = CallShell()
    shell.start(home_cid=HOME)
    declared = declare_dead(shell)
    shell.advance(declared + 8.0)  # nothing answers
    sent = attempts(shell)
    early = [a for a in sent if shell.opened_at[a.link] < declared + HOME_ONLY_PERIOD]
    late = [a for a in sent if shell.opened_at[a.link] >= declared + HOME_ONLY_PERIOD]
    assert len(early) >= 3 and all(a.dcid == HOME for a in early)
    assert len(late) >= 3
    assert {a.dcid for a in late} == {HOME, None}
    assert not any(a.dcid == b.dcid == HOME for a, b in zip(late, late[1:], strict=False))


def first_attempt_elsewhere(shell: CallShell) -> OpenLink:
    declared = declare_dead(shell)
    for _ in range(2000):
        shell.advance(shell.now + 0.01)
        if attempts(shell)[-1].dcid is None:
            return attempts(shell)[-1]
        assert shell.now < declared + 10.0
    raise AssertionError("no attempt to any backend")


def test_a_refusal_elsewhere_sends_the_next_attempt_home_at_once() -> None:
    """With ``memory://`` another backend has no state: the session is only at home, which
    gets the next attempt at once (the path works), and the call resumes there."""
    shell = CallShell()
    shell.start(home_cid=HOME)
    elsewhere = first_attempt_elsewhere(shell)
    shell.event(
        elsewhere.link, SessionClosed(error_code=ErrorCode.RESUME_REFUSED, reason="no state")
    )
    assert not shell.machine.ended
    home = attempts(shell)[-1]
    assert home.dcid == HOME and shell.opened_at[home.link] == shell.now
    shell.welcome(home.link, resumed=True)
    assert shell.carrying() == home.link


def test_home_silent_on_a_working_path_is_left() -> None:
    """The home backend is dead: after a refusal elsewhere proved the path, its silence
    sends every later attempt to any backend."""
    shell = CallShell()
    shell.start(home_cid=HOME)
    elsewhere = first_attempt_elsewhere(shell)
    shell.event(
        elsewhere.link, SessionClosed(error_code=ErrorCode.RESUME_REFUSED, reason="no state")
    )
    home = attempts(shell)[-1]
    shell.advance(shell.now + 5.0)
    later = [a for a in attempts(shell) if shell.opened_at[a.link] > shell.opened_at[home.link]]
    assert later and all(a.dcid is None for a in later)


def test_without_a_home_cid_attempts_use_a_random_dcid() -> None:
    shell = CallShell()
    shell.start()
    declared = declare_dead(shell)
    shell.advance(declared + 1.0)
    assert attempts(shell) and all(a.dcid is None for a in attempts(shell))


def test_a_resumed_connection_brings_the_next_home_cid() -> None:
    shell = CallShell()
    shell.start(home_cid=HOME)
    declare_dead(shell)
    shell.welcome(1, server_id="0a000001", resumed=True, home_cid=NEXT_HOME)
    assert shell.carrying() == 1
    declare_dead(shell)
    assert attempts(shell)[-1].dcid == NEXT_HOME


def test_a_reset_attempt_sends_the_next_ones_to_any_backend() -> None:
    shell = CallShell()
    shell.start(home_cid=HOME)
    declare_dead(shell)
    [first] = attempts(shell)
    assert first.dcid == HOME
    shell.machine.handle_stateless_reset(first.link, shell.now)
    shell.run()
    shell.advance(shell.now + 2.0)
    later = attempts(shell)[1:]
    assert later and all(a.dcid is None for a in later)


def test_a_reset_of_the_carrying_connection_resumes_on_any_backend() -> None:
    shell = CallShell()
    shell.start(home_cid=HOME)
    shell.machine.handle_stateless_reset(0, shell.now)
    shell.run()
    assert shell.machine.reconnecting
    assert [a.dcid for a in attempts(shell)] == [None]


def test_a_reset_of_the_quiet_connection_leaves_home() -> None:
    shell = CallShell()
    shell.start(home_cid=HOME)
    declared = declare_dead(shell)
    shell.machine.handle_stateless_reset(0, shell.now)  # the forwarder: backend down
    shell.run()
    shell.advance(declared + 2.0)
    assert attempts(shell)[0].dcid == HOME
    assert all(a.dcid is None for a in attempts(shell)[1:]) and len(attempts(shell)) > 1


def test_port_unreachable_fails_a_home_attempt_at_once_and_leaves_home() -> None:
    shell = CallShell()
    shell.start(home_cid=HOME)
    declare_dead(shell)
    [first] = attempts(shell)
    path = shell.links[first.link].active
    assert path is not None
    shell.machine.handle_send_error(first.link, path, errno.ECONNREFUSED, shell.now)
    shell.run()
    assert shell.links[first.link].closed
    shell.advance(shell.now + 0.06)
    assert [a.dcid for a in attempts(shell)] == [HOME, None]


def test_port_unreachable_on_the_carrying_connection_changes_nothing() -> None:
    shell = CallShell()
    shell.start(home_cid=HOME)
    path = shell.links[0].active
    assert path is not None
    shell.machine.handle_send_error(0, path, errno.ECONNREFUSED, shell.now)
    shell.run()
    assert not shell.machine.reconnecting and shell.carrying() == 0


def test_the_quiet_connection_is_probed_until_it_answers() -> None:
    shell = CallShell(liveness_timeout=1.0)
    shell.start(home_cid=HOME)
    declared = declare_dead(shell)
    before = len(shell.links[0].ping_times)
    shell.advance(declared + 1.0)
    probes = [t for t in shell.links[0].ping_times[before:] if t > declared]
    assert len(probes) == pytest.approx(10, abs=1)
    gaps = [b - a for a, b in zip(probes, probes[1:], strict=False)]
    assert all(gap == pytest.approx(0.1) for gap in gaps), gaps
    shell.hear(0)
    count = len(shell.links[0].ping_times)
    shell.advance(shell.now + 1.0)
    assert len(shell.links[0].ping_times) == count


def test_when_the_path_comes_back_an_attempt_sent_into_the_blackout_is_replaced_at_once() -> None:
    shell = CallShell()
    shell.start(home_cid=HOME)
    declared = declare_dead(shell)
    shell.advance(declared + 4.0)  # attempts back off and lengthen during the blackout
    for _ in range(300):  # until an attempt has been out since before a quiet probe
        stale = shell.machine.current_link
        if (
            stale is not None
            and shell.machine.open_links().get(stale) is LinkRole.ATTEMPT
            and shell.opened_at[stale] <= shell.now - 0.15
        ):
            break
        shell.advance(shell.now + 0.01)
    assert stale is not None and shell.machine.open_links()[stale] is LinkRole.ATTEMPT
    shell.now += 0.01
    shell.hear(0)  # the quiet connection answers a probe: the path is back
    assert shell.links[stale].closed
    fresh = attempts(shell)[-1]
    assert fresh.link != stale and fresh.dcid == HOME
    assert shell.opened_at[fresh.link] == shell.now
    shell.welcome(fresh.link, resumed=True)
    assert shell.carrying() == fresh.link and shell.links[0].closed


def test_when_the_path_comes_back_during_a_back_off_the_next_attempt_starts_at_once() -> None:
    shell = CallShell()
    shell.start(home_cid=HOME)
    declared = declare_dead(shell)
    for _ in range(1000):
        shell.advance(shell.now + 0.01)
        if shell.machine.current_link is not None and shell.links[
            shell.machine.current_link
        ].closed:
            break
    assert shell.now < declared + 5.0
    waiting = len(attempts(shell))
    shell.hear(0)
    assert len(attempts(shell)) == waiting + 1
    assert shell.opened_at[attempts(shell)[-1].link] == shell.now


def test_an_answered_attempt_is_not_replaced_when_the_quiet_connection_answers() -> None:
    shell = CallShell()
    shell.start(home_cid=HOME)
    declared = declare_dead(shell)
    shell.advance(declared + 0.2)
    attempt = shell.machine.current_link
    assert attempt is not None
    shell.hear(attempt)
    shell.now += 0.01
    shell.hear(0)
    assert not shell.links[attempt].closed and len(attempts(shell)) == 1


def test_a_refusal_after_the_path_came_back_still_waits_for_the_quiet_one_only_if_safe() -> (
    None
):
    """A replaced attempt may have reached the backend: a refusal afterwards ends the call
    (as after any timed-out attempt), since the session may have been taken over."""
    shell = CallShell()
    shell.start(home_cid=HOME)
    declared = declare_dead(shell)
    shell.advance(declared + 2.0)
    shell.now += 0.01
    shell.hear(0)
    fresh = attempts(shell)[-1].link
    shell.event(fresh, SessionClosed(error_code=ErrorCode.RESUME_REFUSED, reason="no state"))
    assert shell.machine.ended
