"""Random input sequences against ``CallMachine``: whatever the network, the server and the app
do, the machine keeps its invariants (checked by ``CallShell`` on every step) and loses no
uplink frame before it is acknowledged."""

from __future__ import annotations

import errno

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from quicvoice.errors import CallEndedError, CallReconnectingError, UplinkEndedError
from quicvoice.session.call import LinkRole
from quicvoice.session.codes import ErrorCode
from quicvoice.session.events import EventReceived, SessionClosed, TurnStarted

from .callshell import CallShell

LINK_ROLES = [LinkRole.CARRYING, LinkRole.QUIET, LinkRole.ATTEMPT]

steps = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(1, 5)),
        st.tuples(st.just("silence"), st.floats(0.5, 1.5)),  # a send nobody answers
        st.tuples(st.just("advance"), st.floats(0.001, 2.0)),
        st.tuples(st.just("hear"), st.sampled_from(LINK_ROLES), st.floats(0.0, 1.0)),
        st.tuples(st.just("welcome"), st.booleans()),
        st.tuples(st.just("welcome"), st.booleans()),  # twice: resumes happen often enough
        st.tuples(
            st.just("close"),
            st.sampled_from(
                [
                    ErrorCode.RESUME_REFUSED,
                    ErrorCode.UNSUPPORTED,
                    ErrorCode.TOKEN_EXPIRED,
                    ErrorCode.REFUSED,
                    0x1001,
                    ErrorCode.NO_ERROR,
                    0x0A,
                ]
            ),
            st.sampled_from(["Idle timeout", "refused", ""]),
        ),
        st.tuples(st.just("reset"), st.sampled_from(LINK_ROLES)),
        st.tuples(st.just("send_error"), st.sampled_from([errno.ENETUNREACH, errno.EPERM])),
        st.tuples(st.just("vanished"), st.booleans()),
        st.tuples(st.just("early"), st.booleans()),
        st.tuples(
            st.just("app"),
            st.sampled_from(["event", "end", "bye", "turn", "cancel", "played"]),
        ),
        st.tuples(st.just("migrate"), st.sampled_from(["10.0.0.3", "10.0.0.9", "10.0.0.66"])),
        st.tuples(st.just("hangup")),
    ),
    max_size=60,
)


def link_with(shell: CallShell, role: LinkRole) -> int | None:
    for link_id, link_role in shell.machine.open_links().items():
        if link_role is role:
            return link_id
    return None


def acknowledged(shell: CallShell, acked: dict[int, int]) -> set[int]:
    """Sequence numbers some link acknowledged (its frames ending at or before its ACKs)."""
    seqs: set[int] = set()
    for link_id, link in shell.links.items():
        limit = acked.get(link_id, 0)
        seqs.update(seq for seq, end in link.frames if end <= limit)
    return seqs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_random_calls_keep_the_invariants_and_every_unacknowledged_frame(
    script: list[tuple[object, ...]],
) -> None:
    shell = CallShell(liveness_timeout=0.5, reconnect_timeout=3.0)
    shell.start()
    machine = shell.machine
    sent: list[int] = []
    acked: dict[int, int] = {}
    turn = 0
    for step in script:
        kind = step[0]
        try:
            if kind == "send":
                sent.extend(shell.send(int(step[1])))  # type: ignore[call-overload]
            elif kind == "silence":
                sent.extend(shell.send(1))
                shell.advance(shell.now + float(step[1]))  # type: ignore[arg-type]
            elif kind == "advance":
                shell.advance(shell.now + float(step[1]))  # type: ignore[arg-type]
            elif kind == "hear":
                link_id = link_with(shell, step[1])  # type: ignore[arg-type]
                if link_id is not None:
                    written = shell.links[link_id].written
                    ack = int(written * float(step[2]))  # type: ignore[arg-type]
                    acked[link_id] = max(acked.get(link_id, 0), ack)
                    shell.hear(link_id, acked=acked[link_id])
            elif kind == "welcome":
                link_id = link_with(shell, LinkRole.ATTEMPT)
                if link_id is not None:
                    shell.welcome(link_id, server_id="0a000002", resumed=bool(step[1]))
            elif kind == "close":
                link_id = link_with(shell, LinkRole.ATTEMPT) or link_with(
                    shell, LinkRole.CARRYING
                )
                if link_id is not None:
                    shell.event(
                        link_id,
                        SessionClosed(error_code=int(step[1]), reason=str(step[2])),  # type: ignore[call-overload]
                    )
            elif kind == "reset":
                link_id = link_with(shell, step[1])  # type: ignore[arg-type]
                if link_id is not None:
                    machine.handle_stateless_reset(link_id, shell.now)
                    shell.run()
            elif kind == "send_error":
                link_id = link_with(shell, LinkRole.CARRYING)
                if link_id is not None:
                    path = shell.links[link_id].active
                    assert path is not None
                    machine.handle_send_error(link_id, path, int(step[1]), shell.now)  # type: ignore[call-overload]
                    shell.run()
            elif kind == "vanished":
                shell.address_vanished = bool(step[1])
            elif kind == "early":
                shell.early_uplink = bool(step[1])
            elif kind == "app":
                action = step[1]
                if action == "event":
                    machine.send_event("order.add", {"item": "tea"})
                elif action == "end":
                    machine.end_audio()
                elif action == "bye":
                    machine.bye()
                elif action == "turn":
                    link_id = link_with(shell, LinkRole.CARRYING)
                    if link_id is not None:
                        machine.handle_voice_event(link_id, TurnStarted(turn_id=turn), shell.now)
                        turn += 1
                elif action == "played":
                    machine.report_played(turn - 1, 120, complete=False)
                else:
                    machine.cancel_turn(turn - 1)
                shell.run()
            elif kind == "migrate":
                shell.unbindable = {"10.0.0.66"}
                shell.migrate(str(step[1]))
            elif kind == "hangup":
                machine.close(shell.now)
                shell.run()
        except (CallEndedError, UplinkEndedError, CallReconnectingError):
            assert machine.ended or machine.reconnecting or kind in ("send", "silence")
        if not machine.ended:
            kept = {frame.seq for frame in machine.kept_frames}
            done = acknowledged(shell, acked)
            lost = [seq for seq in sent if seq not in kept and seq not in done]
            assert not lost, (lost, kept, shell.actions[-5:])
    event(f"resumed: {bool(machine.resumptions)}")
    event(f"ended: {machine.ended}")
    event(f"attempts opened: {min(len(shell.links) - 1, 3)}")
    # Left alone, the call settles within its deadlines: carried on with nothing pending, or
    # ended, never stuck reconnecting.
    shell.advance(shell.now + 30)
    assert not machine.reconnecting and not machine.recovering
    assert machine.ended or machine.get_timer() is None
    if machine.ended:
        roles = set(machine.open_links().values())
        assert not roles & {LinkRole.QUIET, LinkRole.ATTEMPT}, roles
    delivered_closes = [e for e in shell.delivered if isinstance(e, SessionClosed)]
    assert len(delivered_closes) <= 1
    assert all(not isinstance(e, EventReceived) or e.name for e in shell.delivered)
