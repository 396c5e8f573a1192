"""What the ngtcp2 engine tells the backend's telemetry, in the aioquic backend's terms.

``/metrics`` (``quicvoice.observability``) shows the same series whichever engine serves, so
dashboards need not know it: ``EndpointCounters`` presents ``EndpointStats`` and the socket's
counts under the keys of the aioquic backend's ``VoiceServer.counters`` (same meaning, same
name), and ``close_terms`` turns how a connection ended into the (code, frame type, reason)
that ``SessionTelemetry.closed`` labels as it labels aioquic's ``ConnectionTerminated``.
specs/observability.md lists where the engines' counts differ.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from aioquic.quic.packet import QuicErrorCode, QuicFrameType

from ..observability.metrics import IDLE_TIMEOUT_REASON
from .endpoint import ConnectionEnd, EndpointStats


class SocketCounters(Protocol):
    """What the engine's I/O layer counts (``Ngtcp2Server`` is one)."""

    @property
    def datagrams_received(self) -> int:
        """Datagrams read from the socket."""

    @property
    def send_failures(self) -> int:
        """Datagrams the kernel refused to send."""


def endpoint_counters(stats: EndpointStats, socket: SocketCounters) -> dict[str, int]:
    """The endpoint's counters now, keyed as ``VoiceServer.counters`` where the meaning is
    the same, plus this engine's own (rendered as ``endpoint_events_total{event}``).

    ``dropped_unknown_cid`` counts, as on aioquic, every datagram for no connection here,
    whether a stateless reset answered it or not (health probes answered excepted): the
    endpoint's drops other than bad encapsulation, plus the strangers' resets it sent. The
    endpoint does not tell apart the few datagrams too short to hold a header, so
    ``unparsable`` is absent (0); it sends no Version Negotiation (absent too).
    """
    strangers_reset = stats.resets_sent - stats.probes_answered
    return {
        "datagrams": socket.datagrams_received,
        "bad_encapsulation": stats.bad_encapsulation,
        "new_connections": stats.accepted,
        "stateless_resets": stats.resets_sent,
        "dropped_unknown_cid": stats.dropped - stats.bad_encapsulation + strangers_reset,
        "probes_answered": stats.probes_answered,
        "resets_limited": stats.resets_limited,
        "connections_failed": stats.failed,
        "fast_path_datagrams": stats.dispatched,
        "send_failures": socket.send_failures,
    }


class EndpointCounters(Mapping[str, int]):
    """A live view of ``endpoint_counters``: read anew at every scrape, never stored."""

    def __init__(self, stats: EndpointStats, socket: SocketCounters) -> None:
        self._stats = stats
        self._socket = socket

    def __getitem__(self, key: str) -> int:
        return endpoint_counters(self._stats, self._socket)[key]

    def __iter__(self) -> Iterator[str]:
        return iter(endpoint_counters(self._stats, self._socket))

    def __len__(self) -> int:
        return len(endpoint_counters(self._stats, self._socket))


def close_terms(error_code: int, reason: str, end: ConnectionEnd) -> tuple[int, int | None, str]:
    """The (error code, frame type, reason) aioquic would report for this end, for
    ``SessionTelemetry.closed``: ``None`` marks an application close; ngtcp2 does not say
    which frame a transport close names, so PADDING (0) stands in, as in aioquic's own
    idle timeout. A local failure keeps ngtcp2's negative error as its code: labelled
    ``TRANSPORT_OTHER``, and the span's ``quicvoice.close.code`` names the ngtcp2 error."""
    if end is ConnectionEnd.APPLICATION:
        return error_code, None, reason
    if end is ConnectionEnd.IDLE_TIMEOUT:
        return QuicErrorCode.INTERNAL_ERROR, QuicFrameType.PADDING, IDLE_TIMEOUT_REASON
    return error_code, QuicFrameType.PADDING, reason
