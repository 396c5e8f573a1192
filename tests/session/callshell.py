"""A deterministic stand-in for the I/O shell around ``CallMachine``: a fake clock, links that
exist only as records, and the invariants every action sequence must keep.

It executes actions the way ``VoiceClient`` does (answering ``OpenLink``, ``OpenPath``,
``SendAudio`` and ``CheckLocalAddress`` with the machine's inputs), and asserts on every step
that actions name only links that are open, that at most one link carries the call and at
most one attempt runs, and that the timer never lies in the past of a ``handle_timer``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quicvoice.session.call import (
    CallAction,
    CallConfig,
    CallMachine,
    CancelTurn,
    CheckLocalAddress,
    CloseLink,
    ClosePath,
    DeliverEvent,
    EndAudio,
    LinkRole,
    MigrationFinished,
    OpenLink,
    OpenPath,
    SendAudio,
    SendBye,
    SendEvent,
    SendPing,
    SendPlayed,
)
from quicvoice.session.events import ClientEvent, SessionStarted, TurnCancelled
from quicvoice.session.messages import Hello, UplinkMode
from quicvoice.session.stats import Migration

#: Octets a frame takes on the uplink stream here (the offsets only need to grow).
FRAME_OVERHEAD = 9
TOKEN = b"resume-token"


@dataclass
class FakeLink:
    """What the shell knows of one link."""

    id: int
    host: str
    hello: Hello
    paths: dict[int, str] = field(default_factory=dict)
    active: int | None = None
    closed: bool = False
    goodbye: bool | None = None
    close_code: int = 0
    written: int = 0
    #: (seq, stream_end) of every frame sent on it, in order.
    frames: list[tuple[int, int]] = field(default_factory=list)
    #: Control items sent on it, in order: ("event", name) | ("end",) | ("bye", n) | ...
    control: list[tuple[object, ...]] = field(default_factory=list)
    pings: int = 0
    ping_times: list[float] = field(default_factory=list)


class CallShell:
    """Drives a ``CallMachine`` with a fake clock."""

    def __init__(
        self,
        *,
        reconnect: bool = True,
        liveness_timeout: float = 1.0,
        reconnect_timeout: float = 10.0,
        uplink: UplinkMode = UplinkMode.RELIABLE,
    ) -> None:
        self.config = CallConfig(
            reconnect=reconnect,
            liveness_timeout=liveness_timeout,
            reconnect_timeout=reconnect_timeout,
        )
        self.machine = CallMachine(self.config, Hello(uplink=uplink))
        self.uplink = uplink
        self.now = 100.0
        self.links: dict[int, FakeLink] = {}
        self.delivered: list[ClientEvent] = []
        self.finished: dict[int, Migration | str] = {}
        #: When each link was (last) opened.
        self.opened_at: dict[int, float] = {}
        self.actions: list[CallAction] = []
        #: Answers the shell gives: whether a checked address vanished, whether a 0-RTT
        #: uplink opens, which hosts cannot be bound.
        self.address_vanished = False
        self.early_uplink = False
        self.unbindable: set[str] = set()
        self.routes_to = "10.0.0.9"
        self._last_timer_handled: float | None = None

    # -- running -------------------------------------------------------------------------

    def run(self) -> list[CallAction]:
        """Execute every queued action; return them."""
        done: list[CallAction] = []
        action = self.machine.next_action()
        while action is not None:
            self._check_link(action)
            self._execute(action)
            done.append(action)
            action = self.machine.next_action()
        self.actions.extend(done)
        self.check_invariants()
        return done

    def advance(self, until: float) -> list[CallAction]:
        """Move the clock to ``until``, firing the machine's timers on the way."""
        done: list[CallAction] = []
        for _ in range(100_000):
            at = self.machine.get_timer()
            if at is None or at > until:
                break
            self.now = max(self.now, at)
            self.machine.handle_timer(self.now)
            self._last_timer_handled = self.now
            done.extend(self.run())
            after = self.machine.get_timer()
            assert after is None or after > self.now, (after, self.now)
        else:
            raise AssertionError("the timer never settles")
        self.now = max(self.now, until)
        return done

    def check_invariants(self) -> None:
        roles = self.machine.open_links()
        assert list(roles.values()).count(LinkRole.CARRYING) <= 1, roles
        assert list(roles.values()).count(LinkRole.ATTEMPT) <= 1, roles
        assert list(roles.values()).count(LinkRole.QUIET) <= 1, roles
        assert len(roles) <= 2, roles
        for link_id in roles:
            assert not self.links[link_id].closed, (link_id, roles)

    def _check_link(self, action: CallAction) -> None:
        link_id = getattr(action, "link", None)
        if link_id is None:
            return
        if isinstance(action, OpenLink):
            assert link_id not in self.links or not self.links[link_id].frames, action
            return
        assert link_id in self.links, action
        assert not self.links[link_id].closed, action

    def _execute(self, action: CallAction) -> None:
        machine, now = self.machine, self.now
        if isinstance(action, OpenLink):
            link = self.links.get(action.link)
            if link is None:
                link = self.links[action.link] = FakeLink(action.link, action.host, action.hello)
            link.host = action.host
            if action.host in self.unbindable:
                machine.handle_link_open_failed(action.link, now, "cannot assign address")
                return
            link.paths[action.path] = action.host
            link.active = action.path
            self.opened_at[action.link] = now
            machine.handle_link_opened(
                action.link, (action.host, 40000 + action.path), now,
                early_uplink=self.early_uplink and self.uplink is UplinkMode.RELIABLE,
            )
            machine.handle_datagrams_sent(action.link, now)
        elif isinstance(action, OpenPath):
            link = self.links[action.link]
            host = action.host if action.host is not None else self.routes_to
            if host in self.unbindable:
                machine.handle_path_failed(action.link, action.path, now, "cannot bind")
                return
            link.paths[action.path] = host
            link.active = action.path
            link.pings += 1
            machine.handle_path_opened(action.link, action.path, (host, 50000 + action.path), now)
            machine.handle_datagrams_sent(action.link, now)
        elif isinstance(action, ClosePath):
            link = self.links[action.link]
            assert action.path != link.active, "the active socket is never closed"
            del link.paths[action.path]
        elif isinstance(action, CheckLocalAddress):
            machine.handle_local_address_checked(action.link, self.address_vanished, now)
        elif isinstance(action, SendPing):
            self.links[action.link].pings += 1
            self.links[action.link].ping_times.append(now)
            machine.handle_datagrams_sent(action.link, now)
        elif isinstance(action, SendAudio):
            link = self.links[action.link]
            if self.uplink is UplinkMode.RELIABLE:
                link.written += FRAME_OVERHEAD + len(action.frame.payload)
                link.frames.append((action.frame.seq, link.written))
                machine.handle_audio_written(action.link, action.frame.seq, link.written)
            else:
                link.frames.append((action.frame.seq, 0))
            machine.handle_datagrams_sent(action.link, now)
        elif isinstance(action, SendEvent):
            self.links[action.link].control.append(("event", action.name))
        elif isinstance(action, EndAudio):
            self.links[action.link].control.append(("end",))
        elif isinstance(action, SendBye):
            self.links[action.link].control.append(("bye", action.uplink_frames))
        elif isinstance(action, SendPlayed):
            # Only the call's own connection hears what its caller heard.
            assert action.link == machine.carrying_link, (action, machine.carrying_link)
            self.links[action.link].control.append(
                ("played", action.wire_turn_id, action.played_ms, action.complete)
            )
        elif isinstance(action, CancelTurn):
            self.links[action.link].control.append(("cancel", action.wire_turn_id))
            machine.handle_voice_event(
                action.link, TurnCancelled(turn_id=action.wire_turn_id, by_peer=False), now
            )
        elif isinstance(action, CloseLink):
            link = self.links[action.link]
            link.closed = True
            link.goodbye = action.goodbye
            link.close_code = action.error_code
        elif isinstance(action, DeliverEvent):
            self.delivered.append(action.event)
        elif isinstance(action, MigrationFinished):
            assert action.request not in self.finished
            self.finished[action.request] = action.migration or action.error or "?"
        else:
            raise AssertionError(f"unexpected action {action!r}")

    # -- the peer ------------------------------------------------------------------------

    def welcome(
        self,
        link: int,
        *,
        server_id: str = "0a000001",
        resumed: bool = False,
        home_cid: bytes | None = None,
    ) -> None:
        """``welcome`` arrives on ``link`` (with a datagram)."""
        self.hear(link)
        self.machine.handle_handshake_completed(link, self.now, early_data_accepted=False)
        self.machine.handle_voice_event(
            link,
            SessionStarted(
                session_id="s1",
                codec="L16/16000",
                frame_ms=20,
                uplink=self.uplink,
                server_id=server_id,
                resumed=resumed,
                resume_token=TOKEN,
                home_cid=home_cid,
            ),
            self.now,
        )
        self.run()

    def hear(self, link: int, *, path: int | None = None, acked: int | None = None) -> None:
        """A datagram from the server arrives on ``link`` (acknowledging ``acked`` octets)."""
        fake = self.links[link]
        chosen = path if path is not None else fake.active
        assert chosen is not None
        self.machine.handle_datagram_received(
            link, chosen, self.now, uplink_acked=acked, rtt=0.02
        )
        self.run()

    def event(self, link: int, event: object) -> None:
        """The voice layer of ``link`` reports ``event``."""
        self.machine.handle_voice_event(link, event, self.now)  # type: ignore[arg-type]
        self.run()

    # -- the app -------------------------------------------------------------------------

    def start(self, *, home_cid: bytes | None = None) -> int:
        """Open the call and have it welcomed; return the carrying link."""
        self.machine.open(("10.0.0.2", 0), self.now)
        self.run()
        self.welcome(0, home_cid=home_cid)
        return 0

    def send(self, count: int = 1) -> list[int]:
        """The app sends ``count`` frames."""
        seqs = [self.machine.send_audio(b"\x01" * 8, None, 320) for _ in range(count)]
        self.run()
        return seqs

    def migrate(self, host: str, timeout: float = 3.0) -> int:
        request = self.machine.migrate(
            (host, 0), new_connection_id=True, timeout=timeout, now=self.now
        )
        self.run()
        return request

    def opened(self, kind: type[CallAction]) -> list[CallAction]:
        return [a for a in self.actions if isinstance(a, kind)]

    def carrying(self) -> int | None:
        return self.machine.carrying_link
