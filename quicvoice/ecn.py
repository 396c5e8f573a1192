"""ECN per path: what to mark, what arrived, and whether the path carries the marks (sans-I/O).

specs/ecn.md has the design. The glue (``quicvoice.quic``) tells an ``EcnTracker`` about every
packet it sends (which path, which codepoint, which packet number space), every packet it
receives (the codepoint the socket reported) and every ACK (which of our packets it newly
acknowledges and, for ACK_ECN frames, the peer's cumulative counts). The tracker validates each
path as RFC 9000 §13.4.2 describes and reports ``EcnFeedback`` for every ACK that acknowledges
application data, so a congestion response can follow the CE marks.

Nothing here touches a socket or a clock; a hostile peer's counts only ever turn marking off on
the path they concern.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

#: The ECN field is the low two bits of the IPv4 TOS octet / IPv6 traffic class (RFC 3168 §5).
ECN_MASK = 0x03
#: Paths remembered per connection at most (a peer hopping addresses cannot grow the table).
MAX_PATHS = 16
#: Marked packets of a path declared lost (or given up by a probe timeout) before any was
#: acknowledged, after which the path is taken for one that drops ECT packets.
MAX_LOST_UNVALIDATED = 3


class Codepoint(enum.IntEnum):
    """The four values of the ECN field (RFC 3168 §5, RFC 9331 for ECT(1) as the L4S mark)."""

    NOT_ECT = 0b00
    ECT1 = 0b01
    ECT0 = 0b10
    CE = 0b11


#: The codepoints by value (an index is cheaper than the enum's call, per packet).
_CODEPOINTS = tuple(sorted(Codepoint))


class EcnMode(enum.Enum):
    """What this endpoint marks: ``l4s`` ECT(1) (the default), ``classic`` ECT(0), ``off``."""

    L4S = "l4s"
    CLASSIC = "classic"
    OFF = "off"

    @property
    def codepoint(self) -> Codepoint:
        """The codepoint every datagram carries while the path is not known to fail."""
        return _MODE_CODEPOINTS[self]

    @classmethod
    def parse(cls, value: object) -> EcnMode:
        """The mode named by ``value`` (``"l4s"``, ``"classic"``, ``"off"``); ``ValueError``."""
        if isinstance(value, EcnMode):
            return value
        if isinstance(value, str):
            for mode in cls:
                if mode.value == value.strip().lower():
                    return mode
        raise ValueError(f"ecn must be one of 'l4s', 'classic', 'off', not {value!r}")


_MODE_CODEPOINTS = {
    EcnMode.L4S: Codepoint.ECT1,
    EcnMode.CLASSIC: Codepoint.ECT0,
    EcnMode.OFF: Codepoint.NOT_ECT,
}


class Validation(enum.Enum):
    """Where a path stands in RFC 9000 §13.4.2 validation (and why marking stopped)."""

    #: Marked packets sent, no ACK has covered one yet.
    TESTING = "testing"
    #: An ACK with counts that add up acknowledged marked packets: the path carries the marks.
    CAPABLE = "capable"
    #: Marked packets were acknowledged without any ECN count rising (the path or the peer
    #: cleared the marks, or the peer does not report ECN): marking is off on this path.
    BLEACHED = "bleached"
    #: The counts disagree with what was sent (another ECT codepoint counted, fewer marks than
    #: packets, counts going backwards or exceeding what was ever sent): marking is off.
    MANGLED = "mangled"
    #: Every marked packet sent on the path was lost, none acknowledged (a network that drops
    #: ECT packets, RFC 9000 §13.4.2): marking is off, so the connection can get through.
    LOST = "lost"
    #: ``ecn = "off"``: nothing is marked, nothing validated.
    DISABLED = "disabled"

    @property
    def failed(self) -> bool:
        """Whether marking is off on the path because validation failed."""
        return self in (Validation.BLEACHED, Validation.MANGLED, Validation.LOST)


class EcnCounts(NamedTuple):
    """Cumulative ECN counts of one packet number space (an ACK_ECN frame's three fields).

    A named tuple, not a dataclass: one is made for every ACK frame written or read.
    """

    ect0: int = 0
    ect1: int = 0
    ce: int = 0

    @property
    def total(self) -> int:
        """All ECN-marked packets counted."""
        return self.ect0 + self.ect1 + self.ce


@dataclass(frozen=True, slots=True, kw_only=True)
class EcnFeedback:
    """What one ACK frame of the application space said about ECN, for a congestion response.

    ``newly_ce`` is the rise of the peer's CE count: packets the network marked since the last
    ACK. ``acked_packets`` is how many of our packets this ACK newly acknowledged; the CE
    fraction of the window is ``newly_ce / acked_packets`` (bounded by 1 here).
    """

    #: The path the acknowledged packets were (mostly) sent on, as the I/O shell names it.
    path: str
    newly_acked_ect0: int
    newly_acked_ect1: int
    newly_ce: int
    acked_packets: int
    #: The path's validation state after this ACK.
    validation: Validation


@dataclass(frozen=True, slots=True, kw_only=True)
class PathEcnStats:
    """A snapshot of one path's ECN counters."""

    path: str
    #: Datagrams received on the path, by ECN codepoint.
    received_not_ect: int = 0
    received_ect0: int = 0
    received_ect1: int = 0
    received_ce: int = 0
    #: Datagrams whose TOS/traffic class could not be read (missing or malformed ancillary
    #: data, out-of-range values): counted, never trusted.
    received_unknown: int = 0
    #: Our packets sent on the path, marked and not.
    sent_marked: int = 0
    sent_unmarked: int = 0
    #: The rise of the peer's CE count attributed to this path.
    peer_ce: int = 0
    validation: Validation = Validation.TESTING
    #: Why validation failed, in words (empty otherwise).
    failure: str = ""
    #: CE arrived (or was reported by the peer) while this side marked ECT(1): an L4S-aware
    #: bottleneck (or a classic one marking ECT(1) traffic) sits on the path.
    l4s_bottleneck_seen: bool = False

    @property
    def received_marked(self) -> int:
        """Datagrams received with any ECN codepoint other than not-ECT."""
        return self.received_ect0 + self.received_ect1 + self.received_ce

    @property
    def ce_ratio(self) -> float:
        """Received CE over received datagrams with a readable codepoint (0 when none)."""
        known = self.received_marked + self.received_not_ect
        return self.received_ce / known if known else 0.0


def path_report(stats: PathEcnStats) -> dict[str, object]:
    """One path's counters as a JSON-ready mapping (the ``call --json`` report's entries)."""
    return {
        "path": stats.path,
        "validation": stats.validation.value,
        "failure": stats.failure,
        "received": {
            "not_ect": stats.received_not_ect,
            "ect0": stats.received_ect0,
            "ect1": stats.received_ect1,
            "ce": stats.received_ce,
            "unknown": stats.received_unknown,
        },
        "ce_ratio": round(stats.ce_ratio, 6),
        "sent_marked": stats.sent_marked,
        "sent_unmarked": stats.sent_unmarked,
        "peer_ce": stats.peer_ce,
        "l4s_bottleneck_seen": stats.l4s_bottleneck_seen,
    }


def session_report(mode: str, paths: tuple[PathEcnStats, ...]) -> dict[str, object]:
    """A session's ECN in one JSON-ready mapping: the mode, the current (last) path's
    validation, totals over every path, and each path's counters."""
    received = {"not_ect": 0, "ect0": 0, "ect1": 0, "ce": 0, "unknown": 0}
    for path in paths:
        received["not_ect"] += path.received_not_ect
        received["ect0"] += path.received_ect0
        received["ect1"] += path.received_ect1
        received["ce"] += path.received_ce
        received["unknown"] += path.received_unknown
    known = received["not_ect"] + received["ect0"] + received["ect1"] + received["ce"]
    return {
        "mode": mode,
        "validation": paths[-1].validation.value if paths else None,
        "received": received,
        "ce_ratio": round(received["ce"] / known, 6) if known else 0.0,
        "l4s_bottleneck_seen": any(path.l4s_bottleneck_seen for path in paths),
        "paths": [path_report(path) for path in paths],
    }


@dataclass(slots=True)
class _Path:
    name: str
    validation: Validation
    received: list[int]
    received_unknown: int = 0
    sent_marked: int = 0
    sent_unmarked: int = 0
    peer_ce: int = 0
    failure: str = ""
    ce_while_l4s: bool = False
    #: Marking is off on this path (validation failed): kept as a flag, read per packet.
    stopped: bool = False
    #: Marked packets of this path acknowledged, and lost (while none was acknowledged).
    acked_marked: int = 0
    lost_marked: int = 0

    def snapshot(self) -> PathEcnStats:
        return PathEcnStats(
            path=self.name,
            received_not_ect=self.received[Codepoint.NOT_ECT],
            received_ect0=self.received[Codepoint.ECT0],
            received_ect1=self.received[Codepoint.ECT1],
            received_ce=self.received[Codepoint.CE],
            received_unknown=self.received_unknown,
            sent_marked=self.sent_marked,
            sent_unmarked=self.sent_unmarked,
            peer_ce=self.peer_ce,
            validation=self.validation,
            failure=self.failure,
            l4s_bottleneck_seen=self.ce_while_l4s,
        )


@dataclass(slots=True)
class _Space:
    """Our side of one packet number space: packets sent (marked or not) and the peer's counts."""

    #: packet number -> (path, codepoint) of every packet sent and not yet acknowledged.
    in_flight: dict[int, tuple[str, Codepoint]]
    #: Packets ever sent with each ECT codepoint, and in all.
    sent_ect0: int = 0
    sent_ect1: int = 0
    sent_total: int = 0
    peer: EcnCounts = EcnCounts()
    #: What we received in this space, by codepoint: the counts our ACK_ECN frames report.
    received_ect0: int = 0
    received_ect1: int = 0
    received_ce: int = 0
    largest_acked: int = -1


FeedbackListener = Callable[[EcnFeedback], None]

#: Packets whose path and codepoint are remembered per space at most; the oldest are forgotten
#: first (aioquic declares them lost long before).
MAX_REMEMBERED = 4096


class EcnTracker:
    """ECN state of one QUIC connection: per packet number space, and per path.

    Spaces are small integers chosen by the caller (aioquic's epochs). Paths are names chosen
    by the I/O shell (the peer's address on a server, the local socket on a client), so that a
    migration starts a new validation while the old path keeps its outcome.
    """

    def __init__(self, mode: EcnMode = EcnMode.L4S) -> None:
        self.mode = mode
        self._mark = mode.codepoint
        self._paths: dict[str, _Path] = {}
        self._spaces: dict[int, _Space] = {}
        #: Called with every ``EcnFeedback`` (application space ACKs only).
        self.listener: FeedbackListener | None = None
        self._last: tuple[str, int, int, int, int, _Path] | None = None
        self._sending_path = ""

    # -- paths ------------------------------------------------------------------------------

    def _path(self, name: str) -> _Path:
        path = self._paths.get(name)
        if path is None:
            if len(self._paths) >= MAX_PATHS:
                # A peer hopping addresses cannot grow this without bound: forget the oldest.
                del self._paths[next(iter(self._paths))]
            initial = Validation.DISABLED if self.mode is EcnMode.OFF else Validation.TESTING
            path = self._paths[name] = _Path(name, initial, [0, 0, 0, 0])
        return path

    def send_codepoint(self, path: str) -> Codepoint:
        """The codepoint to mark datagrams sent on ``path`` with, now."""
        known = self._paths.get(path)
        if known is not None and known.stopped:
            return Codepoint.NOT_ECT
        return self._mark

    def validation(self, path: str) -> Validation:
        """Where validation of ``path`` stands (``TESTING`` for a path never used)."""
        known = self._paths.get(path)
        if known is not None:
            return known.validation
        return Validation.DISABLED if self.mode is EcnMode.OFF else Validation.TESTING

    def path_stats(self) -> tuple[PathEcnStats, ...]:
        """Counters of every path seen, the one sent on most recently last."""
        return tuple(path.snapshot() for path in self._paths.values())

    # -- receiving --------------------------------------------------------------------------

    def on_datagram_received(self, path: str, tos: int | None) -> Codepoint | None:
        """Count a datagram received on ``path`` with IP TOS / traffic class ``tos``.

        ``None`` or a value outside one octet (no or malformed ancillary data) is counted as
        unknown and returns ``None``; otherwise the ECN codepoint is returned.
        """
        record = self._path(path)
        if tos is None or not isinstance(tos, int) or not 0 <= tos <= 0xFF:
            record.received_unknown += 1
            return None
        codepoint = _CODEPOINTS[tos & ECN_MASK]
        record.received[codepoint] += 1
        if codepoint is Codepoint.CE and self.send_codepoint(path) is Codepoint.ECT1:
            record.ce_while_l4s = True
        return codepoint

    def on_packet_received(self, space: int, codepoint: Codepoint | None) -> None:
        """Count a packet (not a datagram: coalesced packets count each) processed for the
        first time in ``space`` that arrived with ``codepoint`` (``None``: unknown)."""
        record = self._space(space)
        if codepoint is Codepoint.ECT0:
            record.received_ect0 += 1
        elif codepoint is Codepoint.ECT1:
            record.received_ect1 += 1
        elif codepoint is Codepoint.CE:
            record.received_ce += 1

    def counts_to_report(self, space: int) -> EcnCounts | None:
        """The ACK_ECN counts for ``space``, or ``None`` while nothing marked arrived (a plain
        ACK then says the same in fewer octets)."""
        record = self._spaces.get(space)
        if record is None or not (
            record.received_ect0 or record.received_ect1 or record.received_ce
        ):
            return None
        return EcnCounts(
            ect0=record.received_ect0, ect1=record.received_ect1, ce=record.received_ce
        )

    # -- sending ----------------------------------------------------------------------------

    def _space(self, space: int) -> _Space:
        found = self._spaces.get(space)
        if found is None:
            found = self._spaces[space] = _Space({})
        return found

    def on_packet_sent(self, space: int, packet_number: int, path: str, codepoint: int) -> None:
        """Record a packet sent in ``space`` on ``path`` marked with ``codepoint``."""
        record = self._space(space)
        mark = _CODEPOINTS[codepoint & ECN_MASK]
        record.sent_total += 1
        if mark is Codepoint.ECT0:
            record.sent_ect0 += 1
        elif mark is Codepoint.ECT1:
            record.sent_ect1 += 1
        path_record = self._path(path)
        if path != self._sending_path:
            # The path sent on last is the current one: last in ``path_stats``.
            self._paths[path] = self._paths.pop(path)
            self._sending_path = path
        if mark is Codepoint.NOT_ECT:
            path_record.sent_unmarked += 1
        else:
            path_record.sent_marked += 1
        flight = record.in_flight
        flight[packet_number] = (path, mark)
        if len(flight) > MAX_REMEMBERED:
            del flight[next(iter(flight))]

    def on_packets_lost(self, space: int, packet_numbers: list[int]) -> None:
        """Packets of ``space`` given up as lost. A path being tested whose marked packets
        are all lost (``MAX_LOST_UNVALIDATED`` of them, none acknowledged) fails as ``LOST``:
        a network dropping ECT packets must not keep the connection from getting through."""
        flight = self._space(space).in_flight
        for number in packet_numbers:
            sent = flight.pop(number, None)
            if sent is None or sent[1] is Codepoint.NOT_ECT:
                continue
            path = self._paths.get(sent[0])
            if path is None or path.validation is not Validation.TESTING or path.acked_marked:
                continue
            path.lost_marked += 1
            if path.lost_marked >= MAX_LOST_UNVALIDATED:
                self._fail(path, Validation.LOST, "every marked packet was lost")

    def forget_before(self, space: int, packet_number: int) -> None:
        """Forget packets of ``space`` numbered below ``packet_number`` (acknowledged or
        declared lost: an ACK that comes later does not count them)."""
        flight = self._space(space).in_flight
        while flight:
            oldest = next(iter(flight))
            if oldest >= packet_number:
                return
            del flight[oldest]

    # -- acknowledgements -------------------------------------------------------------------

    def on_ack_received(
        self,
        space: int,
        acked: list[int],
        largest_acked: int,
        counts: EcnCounts | None,
        *,
        application: bool,
    ) -> EcnFeedback | None:
        """Validate an ACK frame of ``space`` (RFC 9000 §13.4.2.1).

        ``acked``: packet numbers the ACK newly acknowledges; ``largest_acked``: its Largest
        Acknowledged; ``counts``: the ACK_ECN counts, ``None`` for a plain ACK. Returns the
        feedback (also given to ``listener``) when ``application`` is true and the ACK
        acknowledged something and a ``listener`` is set (``last_feedback`` has it either
        way); never raises on the peer's numbers.
        """
        record = self._space(space)
        flight = record.in_flight
        paths = self._paths
        ect0 = Codepoint.ECT0
        ect1 = Codepoint.ECT1
        # Per path: [packets, ECT(0), ECT(1)] newly acknowledged (one path but around a
        # migration).
        newly: dict[str, list[int]] = {}
        for number in acked:
            sent = flight.pop(number, None)
            if sent is None:
                continue
            name, mark = sent
            tally = newly.get(name)
            if tally is None:
                tally = newly[name] = [0, 0, 0]
            tally[0] += 1
            if mark is ect1:
                tally[2] += 1
            elif mark is ect0:
                tally[1] += 1
        for name, (_, marked0, marked1) in newly.items():
            if marked0 or marked1:
                known = paths.get(name)
                if known is not None:
                    known.acked_marked += marked0 + marked1
        if largest_acked <= record.largest_acked:
            # RFC 9000 §13.4.2.1: an ACK that does not raise the largest acknowledged may be a
            # reordered older one; its counts can be lower and prove nothing.
            return None
        record.largest_acked = largest_acked
        if not newly:
            return None
        path_name = next(iter(newly)) if len(newly) == 1 else self._accountable_path(newly)
        acked_packets = sum(tally[0] for tally in newly.values())
        acked_ect0 = sum(tally[1] for tally in newly.values())
        acked_ect1 = sum(tally[2] for tally in newly.values())
        path = self._path(path_name)
        newly_ce = self._validate(record, path, acked_ect0, acked_ect1, counts)
        if newly_ce:
            path.peer_ce += newly_ce
            if self.mode is EcnMode.L4S and not path.validation.failed:
                path.ce_while_l4s = True
        if not application:
            return None
        self._last = (path_name, acked_ect0, acked_ect1, newly_ce, acked_packets, path)
        if self.listener is None:
            return None
        feedback = self.last_feedback
        if feedback is not None:
            self.listener(feedback)
        return feedback

    @property
    def last_feedback(self) -> EcnFeedback | None:
        """The feedback of the most recent ACK of the application space (for callers that
        poll; built on demand, with the path's validation as it is now)."""
        last = self._last
        if last is None:
            return None
        path_name, acked_ect0, acked_ect1, newly_ce, acked_packets, path = last
        return EcnFeedback(
            path=path_name,
            newly_acked_ect0=acked_ect0,
            newly_acked_ect1=acked_ect1,
            newly_ce=newly_ce,
            acked_packets=acked_packets,
            validation=path.validation,
        )

    def _validate(
        self,
        record: _Space,
        path: _Path,
        acked_ect0: int,
        acked_ect1: int,
        counts: EcnCounts | None,
    ) -> int:
        """Check the counts against what was sent; return the rise of CE (0 when unusable)."""
        previous = record.peer
        if counts is None:
            if acked_ect0 + acked_ect1 and path.validation is Validation.TESTING:
                self._fail(
                    path, Validation.BLEACHED, "marked packets acknowledged without ECN counts"
                )
            return 0
        problem = "" if counts == previous else _impossible(previous, counts, record)
        if problem:
            # Counts are not kept: the next ACK is compared with the last sane ones.
            self._fail(path, Validation.MANGLED, problem)
            return 0
        record.peer = counts
        rise_ect0 = counts.ect0 - previous.ect0
        rise_ect1 = counts.ect1 - previous.ect1
        rise_ce = counts.ce - previous.ce
        if path.validation.failed or path.validation is Validation.DISABLED:
            return rise_ce
        if acked_ect0 + acked_ect1 == 0:
            return rise_ce
        if rise_ect0 + rise_ect1 + rise_ce == 0:
            self._fail(path, Validation.BLEACHED, "ECN counts did not rise for marked packets")
        elif rise_ect0 + rise_ect1 + rise_ce < acked_ect0 + acked_ect1:
            self._fail(path, Validation.BLEACHED, "fewer ECN marks counted than marked packets")
        elif rise_ect0 + rise_ce < acked_ect0 or rise_ect1 + rise_ce < acked_ect1:
            self._fail(path, Validation.MANGLED, "the ECT codepoint was changed on the path")
        elif path.validation is Validation.TESTING:
            path.validation = Validation.CAPABLE
        return rise_ce

    def _accountable_path(self, newly: dict[str, list[int]]) -> str:
        """The path one ACK's counts are judged against. Counts are per packet number space,
        not per path, so an ACK that spans a migration cannot say which path lost the marks:
        a path still being validated answers for it (a new path is the suspect, one already
        capable is not), else the path most of the acknowledged packets were sent on."""
        testing = [name for name in newly if self.validation(name) is Validation.TESTING]
        candidates = testing or list(newly)
        return max(candidates, key=lambda name: newly[name][0])

    @staticmethod
    def _fail(path: _Path, outcome: Validation, reason: str) -> None:
        if path.validation.failed:
            return
        path.validation = outcome
        path.failure = reason
        path.stopped = True


def _impossible(previous: EcnCounts, counts: EcnCounts, record: _Space) -> str:
    """Why ``counts`` cannot be true after ``previous`` (empty when they can)."""
    if counts.ect0 < previous.ect0 or counts.ect1 < previous.ect1 or counts.ce < previous.ce:
        return "the peer's ECN counts went backwards"
    if counts.total > record.sent_ect0 + record.sent_ect1:
        return "the peer counted more ECN marks than marked packets were sent"
    if counts.ect0 > record.sent_ect0 or counts.ect1 > record.sent_ect1:
        return "the peer counted more packets of an ECT codepoint than were sent with it"
    return ""
