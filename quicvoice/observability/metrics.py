"""The backend's Prometheus metrics: what they count, their labels, and their families.

Nothing here is called per media frame. Events that happen once per session or less (accepted,
refused, closed, a store or handler failure) bump a counter when they happen; the per-frame
counts already kept by every session (``SessionStats``, the jitter buffer) are read at scrape
time for the open sessions and folded into running totals when a session closes, so a counter
never goes down. RTT and jitter are sampled into histograms by the caller (periodically and at
each close). specs/observability.md lists every metric.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from operator import attrgetter

from aioquic.quic.packet import QuicErrorCode

from ..session.codes import APPLICATION_REFUSAL_CODES, ErrorCode
from .exposition import Histogram, Labels, MetricFamily, MetricKind

PREFIX = "quicvoice_backend_"
#: Bucket upper bounds of the RTT histogram, milliseconds (loopback to a bad mobile link).
RTT_BUCKETS_MS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
#: Bucket upper bounds of the jitter histogram, milliseconds (RFC 3550 interarrival jitter).
JITTER_BUCKETS_MS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0)
#: aioquic's own close on an idle timeout (no frame type on the wire: PADDING stands in).
IDLE_TIMEOUT_REASON = "Idle timeout"
#: ``VoiceServer.counters`` keys that count dropped datagrams, and the reason label of each.
_DROPPED_DATAGRAMS = {
    "unparsable": "unparsable",
    "bad_encapsulation": "bad_encapsulation",
    "dropped_unknown_cid": "unknown_cid",
}
#: The other endpoint counters with a metric of their own: key -> (name, help).
_ENDPOINT_COUNTERS = {
    "datagrams": ("received_datagrams_total", "UDP datagrams received by the endpoint."),
    "new_connections": ("connections_total", "QUIC connections created from Initials."),
    "version_negotiation": (
        "version_negotiations_total",
        "Version Negotiation packets sent for unsupported QUIC versions.",
    ),
    "stateless_resets": (
        "stateless_resets_total",
        "Stateless resets sent for CIDs of this deployment that no connection here owns.",
    ),
}


def error_code_name(code: int) -> str:
    """A voice error code's name (``UNSUPPORTED``), or its hex for codes without one."""
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"0x{code:X}"


def close_code_name(error_code: int, frame_type: int | None, reason: str) -> str:
    """The ``code`` label of a closed session; a peer cannot make the set of labels grow.

    ``frame_type`` is ``None`` for an application close (CONNECTION_CLOSE 0x1d, or ours):
    the voice code's name, the hex of a code in the applications' refusal range, else
    ``OTHER``. A transport close is ``TRANSPORT_`` and the QUIC error's name (RFC 9000 §20.1);
    aioquic's idle timeout is ``IDLE_TIMEOUT``.
    """
    if frame_type is None:
        if error_code in APPLICATION_REFUSAL_CODES:
            return error_code_name(error_code)
        try:
            return ErrorCode(error_code).name
        except ValueError:
            return "OTHER"
    if reason == IDLE_TIMEOUT_REASON and error_code == QuicErrorCode.INTERNAL_ERROR:
        return "IDLE_TIMEOUT"
    if 0x100 <= error_code <= 0x1FF:
        return "TRANSPORT_CRYPTO_ERROR"  # RFC 9000 §20.1: a TLS alert
    try:
        return f"TRANSPORT_{QuicErrorCode(error_code).name}"
    except ValueError:
        return "TRANSPORT_OTHER"


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionCounters:
    """One session's counters that only ever grow (or their sum over sessions)."""

    #: Uplink frames received (stream frames or datagrams).
    uplink_frames_received: int = 0
    #: Downlink (turn) frames sent.
    downlink_frames_sent: int = 0
    #: Uplink frames whose transit exceeded the fastest one's by more than a frame duration.
    uplink_frames_late: int = 0
    #: Realtime mode: frames the jitter buffer played out concealed (FEC, PLC, expansion).
    uplink_frames_concealed: int = 0
    #: Realtime mode: packets that reached the jitter buffer after their frame was played.
    uplink_frames_too_late: int = 0
    #: Response turns started, and those cancelled (barge-in, either side).
    turns_started: int = 0
    turns_cancelled: int = 0
    #: Changes of the client's address (migrations, NAT rebindings).
    migrations: int = 0
    #: Datagrams received, by ECN codepoint (specs/ecn.md); unknown: no readable TOS.
    ecn_not_ect: int = 0
    ecn_ect0: int = 0
    ecn_ect1: int = 0
    ecn_ce: int = 0
    ecn_unknown: int = 0

    def __add__(self, other: SessionCounters) -> SessionCounters:
        return SessionCounters.total((self, other))

    @staticmethod
    def total(counters: Iterable[SessionCounters]) -> SessionCounters:
        """The sum of ``counters`` (run per open session on every scrape: kept cheap)."""
        sums = [0] * len(_FIELDS)
        for item in counters:
            for index, number in enumerate(_values(item)):
                sums[index] += number
        return SessionCounters(**dict(zip(_FIELDS, sums, strict=True)))


_FIELDS = tuple(f.name for f in fields(SessionCounters))
_values = attrgetter(*_FIELDS)


#: Each session counter's metric name (after the prefix) and help text.
_SESSION_COUNTERS: dict[str, tuple[str, str]] = {
    "uplink_frames_received": (
        "uplink_frames_received_total",
        "Uplink media frames received from clients.",
    ),
    "downlink_frames_sent": (
        "downlink_frames_sent_total",
        "Downlink media frames (response turns) sent to clients.",
    ),
    "uplink_frames_late": (
        "uplink_frames_late_total",
        "Uplink frames whose transit exceeded the session's fastest by more than one frame.",
    ),
    "uplink_frames_concealed": (
        "uplink_frames_concealed_total",
        "Realtime uplink frames the jitter buffer concealed (FEC, PLC or expansion).",
    ),
    "uplink_frames_too_late": (
        "uplink_frames_too_late_total",
        "Realtime uplink frames that reached the jitter buffer after their playout time.",
    ),
    "turns_started": ("turns_started_total", "Response turns started."),
    "turns_cancelled": ("turns_cancelled_total", "Response turns cancelled (barge-in)."),
    "migrations": ("migrations_total", "Client address changes (migrations, NAT rebindings)."),
}
#: The ECN counters of ``SessionCounters``, rendered as one family by codepoint.
_ECN_CODEPOINTS = {
    "ecn_not_ect": "not_ect",
    "ecn_ect0": "ect0",
    "ecn_ect1": "ect1",
    "ecn_ce": "ce",
    "ecn_unknown": "unknown",
}
#: ECN validation outcomes a session can close with (a peer cannot add labels).
ECN_OUTCOMES = frozenset({"testing", "capable", "bleached", "mangled", "lost", "disabled", "none"})


class BackendMetrics:
    """Counters and histograms of one backend, rendered as metric families on demand."""

    def __init__(self, *, server_id: str, version: str, engine: str = "aioquic") -> None:
        self._info: Labels = (("server_id", server_id), ("version", version), ("engine", engine))
        self._accepted: Counter[bool] = Counter({False: 0, True: 0})
        self._refused: Counter[str] = Counter()
        self._closed: Counter[str] = Counter()
        self._resumptions: Counter[str] = Counter()
        self._store_errors: Counter[str] = Counter()
        self._handler_errors = 0
        self._ecn_outcomes: Counter[tuple[str, bool]] = Counter()
        self._closed_totals = SessionCounters()
        #: Smoothed RTT of the open sessions, sampled, milliseconds.
        self.rtt_ms = Histogram(RTT_BUCKETS_MS)
        #: Uplink interarrival jitter of the open sessions, sampled, milliseconds.
        self.jitter_ms = Histogram(JITTER_BUCKETS_MS)

    def session_accepted(self, *, resumed: bool) -> None:
        """A session was welcomed (``resumed``: it continues an earlier connection's)."""
        self._accepted[resumed] += 1
        if resumed:
            self._resumptions["resumed"] += 1

    def session_refused(self, code: int) -> None:
        """A ``hello`` was refused with ``code``."""
        self._refused[error_code_name(code)] += 1

    def resume_refused(self, reason: str) -> None:
        """A resume attempt failed; ``reason`` names why (a ``RefusalReason`` member's name)."""
        self._resumptions[reason.lower()] += 1

    def session_closed(self, code: str, final: SessionCounters) -> None:
        """A session's connection closed (``code`` from ``close_code_name``)."""
        self._closed[code] += 1
        self._closed_totals += final

    def handler_failed(self) -> None:
        """The server application raised."""
        self._handler_errors += 1

    def ecn_closed(self, validation: str, *, l4s_bottleneck_seen: bool) -> None:
        """A session closed with ECN ``validation`` on its last path (a ``Validation`` value,
        or ``"none"``), having seen CE while marking ECT(1) or not."""
        outcome = validation if validation in ECN_OUTCOMES else "none"
        self._ecn_outcomes[(outcome, l4s_bottleneck_seen)] += 1

    def store_failed(self, operation: str) -> None:
        """The session store failed during ``operation`` (``checkpoint``, ``resume``)."""
        self._store_errors[operation] += 1

    def observe(self, *, rtt_ms: float | None, jitter_ms: float | None) -> None:
        """Sample one session's smoothed RTT and uplink jitter (``None``: no sample yet)."""
        if rtt_ms is not None and math.isfinite(rtt_ms):
            self.rtt_ms.observe(rtt_ms)
        if jitter_ms is not None and math.isfinite(jitter_ms):
            self.jitter_ms.observe(jitter_ms)

    def families(
        self,
        *,
        open_sessions: int,
        live: SessionCounters,
        endpoint: Mapping[str, int],
    ) -> list[MetricFamily]:
        """Every metric: ``live`` sums the open sessions' counters, ``endpoint`` is the UDP
        endpoint's datagram counters (``VoiceServer.counters``)."""
        out = [
            _gauge(
                "info",
                "The backend's server ID, quicvoice version and QUIC engine.",
                {self._info: 1},
            ),
            _gauge("sessions_open", "Voice sessions open now.", {(): open_sessions}),
            _counter(
                "sessions_accepted_total",
                "Sessions welcomed, by whether they resumed an earlier connection's.",
                {(("resumed", str(k).lower()),): v for k, v in self._accepted.items()},
            ),
            _counter(
                "sessions_refused_total",
                "Hellos refused, by the error code sent (its name, or hex without one).",
                _by("reason", self._refused),
            ),
            _counter(
                "sessions_closed_total",
                "Sessions whose connection closed, by close code.",
                _by("code", self._closed),
            ),
            _counter(
                "resumptions_total",
                "Resume attempts, by result: resumed, or why the token or state was refused.",
                _by("result", self._resumptions),
            ),
            _counter(
                "handler_errors_total",
                "Sessions whose server application raised.",
                {(): self._handler_errors},
            ),
            _counter(
                "store_errors_total",
                "Session store failures, by operation (checkpoint, resume).",
                _by("operation", self._store_errors),
            ),
        ]
        totals = self._closed_totals + live
        for key, (name, text) in _SESSION_COUNTERS.items():
            out.append(_counter(name, text, {(): getattr(totals, key)}))
        out.append(
            _counter(
                "ecn_datagrams_received_total",
                "Datagrams received in sessions, by ECN codepoint (unknown: no readable TOS).",
                {
                    (("codepoint", label),): getattr(totals, key)
                    for key, label in _ECN_CODEPOINTS.items()
                },
            )
        )
        out.append(
            _counter(
                "sessions_ecn_total",
                "Closed sessions by the ECN validation of their last path, and whether CE "
                "arrived while they marked ECT(1) (an L4S bottleneck on the path).",
                {
                    (("validation", outcome), ("l4s_bottleneck", str(seen).lower())): count
                    for (outcome, seen), count in self._ecn_outcomes.items()
                },
            )
        )
        out.append(
            MetricFamily(
                name=f"{PREFIX}session_rtt_milliseconds",
                kind=MetricKind.HISTOGRAM,
                help="Smoothed RTT of open sessions, milliseconds, sampled periodically "
                "and at close.",
                histograms={(): self.rtt_ms},
            )
        )
        out.append(
            MetricFamily(
                name=f"{PREFIX}session_jitter_milliseconds",
                kind=MetricKind.HISTOGRAM,
                help="Uplink interarrival jitter (RFC 3550) of open sessions, milliseconds, "
                "sampled periodically and at close.",
                histograms={(): self.jitter_ms},
            )
        )
        out.extend(_endpoint_families(endpoint))
        return out


def _endpoint_families(counters: Mapping[str, int]) -> list[MetricFamily]:
    dropped: dict[Labels, float] = {
        (("reason", reason),): counters.get(key, 0) for key, reason in _DROPPED_DATAGRAMS.items()
    }
    out = [
        _counter(name, text, {(): counters.get(key, 0)})
        for key, (name, text) in _ENDPOINT_COUNTERS.items()
    ]
    out.append(_counter("dropped_datagrams_total", "UDP datagrams dropped, by reason.", dropped))
    other: dict[Labels, float] = {
        (("event", key),): value
        for key, value in counters.items()
        if key not in _DROPPED_DATAGRAMS and key not in _ENDPOINT_COUNTERS
    }
    if other:
        out.append(_counter("endpoint_events_total", "Other endpoint counters, by name.", other))
    return out


def _by(label: str, counts: Counter[str]) -> dict[Labels, float]:
    return {((label, key),): value for key, value in counts.items()}


def _counter(name: str, text: str, values: Mapping[Labels, float]) -> MetricFamily:
    return MetricFamily(name=PREFIX + name, kind=MetricKind.COUNTER, help=text, values=values)


def _gauge(name: str, text: str, values: Mapping[Labels, float]) -> MetricFamily:
    return MetricFamily(name=PREFIX + name, kind=MetricKind.GAUGE, help=text, values=values)
