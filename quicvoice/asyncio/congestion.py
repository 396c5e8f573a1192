"""Connects a QUIC connection's ECN feedback and losses to a sender's congestion feed."""

from __future__ import annotations

from collections.abc import Callable

from ..ecn import EcnFeedback
from ..quic import VoiceQuicConnection, rtt_seconds
from ..session.congestion_feed import CongestionFeed


def feed_congestion(
    quic: VoiceQuicConnection, feed: CongestionFeed, clock: Callable[[], float]
) -> None:
    """Give ``feed`` every ECN feedback and every loss of ``quic``, timed by ``clock`` (the
    loop's, which the connection is driven with) and with the connection's smoothed RTT."""

    def smoothed_rtt() -> float | None:
        rtt = rtt_seconds(quic)
        return rtt[1] if rtt is not None else None

    def on_feedback(feedback: EcnFeedback) -> None:
        feed.on_feedback(feedback, now=clock(), rtt=smoothed_rtt())

    def on_loss(lost: int) -> None:
        feed.on_loss(lost, now=clock(), rtt=smoothed_rtt())

    quic.ecn.listener = on_feedback
    quic.loss_listener = on_loss
