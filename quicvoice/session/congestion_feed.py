"""What the connection learns of congestion, fed to the sender's ``CongestionResponse`` (sans-I/O).

The I/O shells hand a ``CongestionFeed`` every ``EcnFeedback`` of the connection's
``EcnTracker`` (one per application-space ACK) and every batch of application packets QUIC's
loss detection declared lost, with the time and the smoothed RTT. The feed keeps the response's
mode on what the path really does (specs/l4s.md): ``l4s`` while the path carries our ECT(1),
``classic`` while it carries our ECT(0), ``off`` when nothing is marked or validation failed,
so a migration onto a path that bleaches turns the CE response off for that path.
"""

from __future__ import annotations

from ..ecn import EcnFeedback, EcnMode, Validation
from .congestion import CongestionResponse
from .congestion import EcnMode as ResponseMode

#: The RTT a response accepts lies in (0, 60) s; the glue's smoothed RTT on loopback can be
#: microseconds, and a clock that did not move could make it 0.
_MIN_RTT = 1e-6
_MAX_RTT = 59.0

_MARKING_MODES: dict[EcnMode, ResponseMode] = {
    EcnMode.L4S: "l4s",
    EcnMode.CLASSIC: "classic",
    EcnMode.OFF: "off",
}


def response_mode(marking: EcnMode, validation: Validation) -> ResponseMode:
    """How to answer CE on a path marked per ``marking`` whose validation is ``validation``.

    A path being tested or found capable carries our marks, so its CE marks are ours to
    answer (scalably for ECT(1), as a loss for ECT(0)); a failed or disabled path sends
    not-ECT, and only losses count.
    """
    if validation.failed or validation is Validation.DISABLED:
        return "off"
    return _MARKING_MODES[marking]


class CongestionFeed:
    """Feeds one sending direction's ``CongestionResponse`` from ECN feedback and losses."""

    def __init__(self, response: CongestionResponse, marking: EcnMode) -> None:
        #: The response fed (its ``target_bitrate`` drives the Opus encoder).
        self.response = response
        #: What this endpoint marks its packets with (the ``ecn`` setting).
        self.marking = marking
        #: The path of the last feedback, as the tracker names it (``None`` before any).
        self.path: str | None = None
        #: The validation of that path as of the last feedback.
        self.validation: Validation | None = None
        response.set_mode(_MARKING_MODES[marking])

    def on_feedback(self, feedback: EcnFeedback, *, now: float, rtt: float | None) -> int:
        """One ACK's ECN feedback; returns the target bitrate."""
        self.path = feedback.path
        self.validation = feedback.validation
        response = self.response
        response.set_mode(response_mode(self.marking, feedback.validation))
        # The tracker bounds newly_ce by the marks it accepted, not by this ACK's packets: an
        # ACK of few packets can report CE for packets an earlier, reordered ACK covered.
        acked = feedback.acked_packets
        return response.on_ecn_feedback(
            now=now, acked=acked, ce=min(feedback.newly_ce, acked), rtt=_bounded(rtt)
        )

    def on_loss(self, lost: int, *, now: float, rtt: float | None) -> int:
        """``lost`` application packets declared lost; returns the target bitrate."""
        return self.response.on_loss(now=now, lost=lost, rtt=_bounded(rtt))


def _bounded(rtt: float | None) -> float | None:
    if rtt is None:
        return None
    return min(_MAX_RTT, max(_MIN_RTT, rtt))
