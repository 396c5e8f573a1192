"""What the voice server calls when something worth counting or tracing happens.

``BackendTelemetry`` belongs to one ``VoiceServer``: it owns the metrics, the OpenTelemetry
spans (when ``opentelemetry-api`` is installed), the ``/metrics`` endpoint and the sampler
that feeds the RTT and jitter histograms. Each welcomed session gets a ``SessionTelemetry``
from ``session_started``; a connection without a session holds ``NO_SESSION``, whose methods
do nothing, so the server's hooks are one unconditional call each. No hook runs per media
frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from ..errors import ConfigurationError
from ..session.events import SessionStarted
from ..session.stats import Migration, SessionStats
from ..settings import Address
from .endpoint import MetricsEndpoint
from .exposition import render
from .metrics import BackendMetrics, SessionCounters, close_code_name

if TYPE_CHECKING:
    from .tracing import SessionSpans, Tracing

logger = logging.getLogger("quicvoice.metrics")


#: Seconds between two samples of every open session's RTT and jitter.
DEFAULT_SAMPLE_INTERVAL = 10.0
#: Uplink frames a session needs before its jitter means anything.
MIN_FRAMES_FOR_JITTER = 2


class PlayoutStatistics(Protocol):
    """What telemetry reads from a jitter buffer's statistics."""

    @property
    def concealed_samples(self) -> int:
        """Samples played out concealed."""

    @property
    def packets_late(self) -> int:
        """Packets that came after their playout time."""


class PlayoutConfig(Protocol):
    """What telemetry reads from a jitter buffer's configuration."""

    @property
    def frame_samples(self) -> int:
        """Samples per frame."""


class Playout(Protocol):
    """A realtime session's jitter buffer, as telemetry sees it."""

    @property
    def config(self) -> PlayoutConfig:
        """Its configuration."""

    def stats(self) -> PlayoutStatistics:
        """A snapshot of its counters."""


class ObservedSession(Protocol):
    """A server session, as telemetry sees it (``ServerSession`` is one)."""

    @property
    def started(self) -> SessionStarted:
        """The session as welcomed."""

    @property
    def jitter_buffer(self) -> Playout | None:
        """Realtime mode: the uplink's jitter buffer."""

    def stats(self) -> SessionStats:
        """A snapshot of the session's statistics."""


class SessionTelemetry:
    """A session's hooks; this base class does nothing (``NO_SESSION``)."""

    __slots__ = ()

    def migrated(self, migration: Migration) -> None:
        """The client's address changed."""

    def turn_started(self, turn_id: int) -> None:
        """The server opened response turn ``turn_id``."""

    def turn_ended(self, turn_id: int, *, cancelled_by: str | None = None) -> None:
        """Turn ``turn_id`` finished, or was cancelled by ``"server"`` or ``"client"``."""

    def handler_failed(self, error: BaseException) -> None:
        """The server application raised ``error``."""

    def closed(self, error_code: int, frame_type: int | None, reason: str) -> None:
        """The session's connection closed (``frame_type`` ``None``: an application close)."""


#: The hooks of a connection that has no session (yet, or ever).
NO_SESSION = SessionTelemetry()


class BackendTelemetry:
    """Metrics, spans and the ``/metrics`` endpoint of one backend."""

    def __init__(
        self,
        *,
        server_id: str,
        version: str,
        endpoint_counters: Mapping[str, int],
        engine: str = "aioquic",
        sample_interval: float = DEFAULT_SAMPLE_INTERVAL,
    ) -> None:
        """``endpoint_counters``: the UDP endpoint's datagram counters, read at each scrape
        (``VoiceServer.counters``' keys); ``engine``: the QUIC engine (the ``info`` label)."""
        if not sample_interval > 0:
            raise ValueError("sample_interval must be positive")
        #: The counters and histograms.
        self.metrics = BackendMetrics(server_id=server_id, version=version, engine=engine)
        self._endpoint_counters = endpoint_counters
        self._sample_interval = sample_interval
        self._tracing = _load_tracing(version)
        self._sessions: dict[_LiveSession, None] = {}
        self._endpoint: MetricsEndpoint | None = None
        self._sampler: asyncio.Task[None] | None = None

    @property
    def tracing(self) -> bool:
        """Whether sessions get OpenTelemetry spans (``opentelemetry-api`` is installed)."""
        return self._tracing is not None

    @property
    def metrics_address(self) -> Address | None:
        """Where ``/metrics`` is served; ``None`` when it is not."""
        return self._endpoint.address if self._endpoint is not None else None

    async def start(self, metrics: Address | None) -> None:
        """Serve ``/metrics`` at ``metrics`` (``None``: not at all) and start sampling.

        Raises ``ConfigurationError`` naming ``metrics`` when the address cannot be bound.
        """
        if metrics is None or self._endpoint is not None:
            return
        endpoint = MetricsEndpoint(self.render)
        try:
            await endpoint.start(metrics)
        except OSError as error:
            raise ConfigurationError(
                f"metrics: cannot listen on {metrics[0]}:{metrics[1]}: {error.strerror or error}"
            ) from None
        self._endpoint = endpoint
        self._sampler = asyncio.get_running_loop().create_task(self._sample_forever())

    def close(self) -> None:
        """Stop serving ``/metrics`` and sampling."""
        if self._sampler is not None:
            self._sampler.cancel()
        if self._endpoint is not None:
            self._endpoint.close()

    async def wait_closed(self) -> None:
        """After ``close()``: wait until the endpoint and the sampler are gone."""
        if self._sampler is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        if self._endpoint is not None:
            await self._endpoint.wait_closed()

    def render(self) -> str:
        """Every metric in the Prometheus text format (what ``/metrics`` answers)."""
        live = SessionCounters.total(session.counters() for session in self._sessions)
        families = self.metrics.families(
            open_sessions=len(self._sessions), live=live, endpoint=self._endpoint_counters
        )
        return render(families)

    def sample(self) -> None:
        """Sample every open session's RTT and jitter into the histograms."""
        for session in self._sessions:
            session.sample()

    def session_started(self, session: ObservedSession) -> SessionTelemetry:
        """A session was welcomed: count it, open its span; return its hooks."""
        started = session.started
        self.metrics.session_accepted(resumed=started.resumed)
        spans = None
        if self._tracing is not None:
            spans = self._tracing.session_started(
                {
                    "conversation.id": started.session_id,
                    "quicvoice.server_id": started.server_id,
                    "quicvoice.codec": started.codec,
                    "quicvoice.frame_ms": started.frame_ms,
                    "quicvoice.uplink": started.uplink.value,
                    "quicvoice.resumed": started.resumed,
                }
            )
        live = _LiveSession(self, session, spans)
        self._sessions[live] = None
        return live

    def refused(self, code: int) -> None:
        """A ``hello`` was refused with ``code`` (before any session existed)."""
        self.metrics.session_refused(code)

    def resume_refused(self, reason: str) -> None:
        """A resume attempt failed for ``reason`` (a ``RefusalReason`` member's name)."""
        self.metrics.resume_refused(reason)

    def store_failed(self, operation: str) -> None:
        """The session store failed during ``operation`` (``checkpoint``, ``resume``)."""
        self.metrics.store_failed(operation)

    def session_ended(self, session: SessionTelemetry, code: str, final: SessionCounters) -> None:
        """A session's connection closed (``code`` from ``close_code_name``); called by the
        session's own hooks."""
        self.metrics.session_closed(code, final)
        if isinstance(session, _LiveSession):
            self._sessions.pop(session, None)

    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sample_interval)
            try:
                self.sample()
            except Exception:  # a bug here must not stop the sampling for good
                logger.exception("metrics: sampling failed")


class _LiveSession(SessionTelemetry):
    """The hooks of one welcomed session, until its connection closes."""

    __slots__ = ("_backend", "_session", "_spans", "_closed")

    def __init__(
        self, backend: BackendTelemetry, session: ObservedSession, spans: SessionSpans | None
    ) -> None:
        self._backend = backend
        self._session = session
        self._spans = spans if spans is not None and spans.recording else None
        self._closed = False

    def counters(self, stats: SessionStats | None = None) -> SessionCounters:
        """The session's counters now (from ``stats`` when the caller has them)."""
        stats = stats or self._session.stats()
        concealed = too_late = 0
        playout = self._session.jitter_buffer
        if playout is not None:
            playout_stats = playout.stats()
            concealed = playout_stats.concealed_samples // playout.config.frame_samples
            too_late = playout_stats.packets_late
        return SessionCounters(
            uplink_frames_received=stats.uplink_frames_received,
            downlink_frames_sent=stats.downlink_frames_sent,
            uplink_frames_late=stats.frames_late,
            uplink_frames_concealed=concealed,
            uplink_frames_too_late=too_late,
            turns_started=stats.turns,
            turns_cancelled=stats.turns_cancelled,
            migrations=len(stats.migrations),
            ecn_not_ect=sum(path.received_not_ect for path in stats.ecn),
            ecn_ect0=sum(path.received_ect0 for path in stats.ecn),
            ecn_ect1=sum(path.received_ect1 for path in stats.ecn),
            ecn_ce=sum(path.received_ce for path in stats.ecn),
            ecn_unknown=sum(path.received_unknown for path in stats.ecn),
        )

    def sample(self, stats: SessionStats | None = None) -> None:
        """Observe the session's smoothed RTT and uplink jitter once."""
        stats = stats or self._session.stats()
        jitter = stats.jitter_ms if stats.uplink_frames_received >= MIN_FRAMES_FOR_JITTER else None
        self._backend.metrics.observe(rtt_ms=stats.rtt_smoothed_ms, jitter_ms=jitter)

    def migrated(self, migration: Migration) -> None:
        if self._spans is not None:
            self._spans.migrated(migration.from_address, migration.to_address, migration.gap_ms)

    def turn_started(self, turn_id: int) -> None:
        if self._spans is not None:
            self._spans.turn_started(turn_id, self._session.stats().downlink_frames_sent)

    def turn_ended(self, turn_id: int, *, cancelled_by: str | None = None) -> None:
        if self._spans is not None:
            frames = self._session.stats().downlink_frames_sent
            self._spans.turn_ended(turn_id, frames, cancelled_by)

    def handler_failed(self, error: BaseException) -> None:
        self._backend.metrics.handler_failed()
        if self._spans is not None:
            self._spans.handler_failed(error)

    def closed(self, error_code: int, frame_type: int | None, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        code_name = close_code_name(error_code, frame_type, reason)
        stats = self._session.stats()
        self.sample(stats)
        counters = self.counters(stats)
        self._backend.session_ended(self, code_name, counters)
        validation = stats.ecn[-1].validation.value if stats.ecn else "none"
        bottleneck = any(path.l4s_bottleneck_seen for path in stats.ecn)
        self._backend.metrics.ecn_closed(validation, l4s_bottleneck_seen=bottleneck)
        if self._spans is not None:
            received = counters.ecn_not_ect + counters.ecn_ect0 + counters.ecn_ect1
            received += counters.ecn_ce
            self._spans.closed(
                error_code,
                code_name,
                stats.downlink_frames_sent,
                {
                    "quicvoice.uplink_frames_received": stats.uplink_frames_received,
                    "quicvoice.downlink_frames_sent": stats.downlink_frames_sent,
                    "quicvoice.migrations": len(stats.migrations),
                    "quicvoice.turns": stats.turns,
                    "quicvoice.turns_cancelled": stats.turns_cancelled,
                    # Session tags to compare L4S and classic paths (specs/ecn.md).
                    "quicvoice.ecn.mode": stats.ecn_mode or "none",
                    "quicvoice.ecn.validation": validation,
                    "quicvoice.ecn.ce_ratio": counters.ecn_ce / received if received else 0.0,
                    "quicvoice.ecn.l4s_bottleneck_seen": bottleneck,
                },
            )


def _load_tracing(version: str) -> Tracing | None:
    try:
        from .tracing import Tracing
    except ImportError:  # opentelemetry-api is not installed: no spans, no cost
        return None
    return Tracing(version)
