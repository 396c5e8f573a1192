"""OpenTelemetry spans of voice sessions: ``quicvoice.session`` and its ``quicvoice.turn``s.

Imported only when ``opentelemetry-api`` is installed (``quicvoice[otel]``); the spans go
wherever the application's tracer provider sends them (none configured: the API's no-op
spans, and ``recording`` is false so the caller skips the work of filling them).
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

#: The instrumentation scope's name.
SCOPE = "quicvoice"
SESSION_SPAN = "quicvoice.session"
TURN_SPAN = "quicvoice.turn"
MIGRATION_EVENT = "quicvoice.migration"

#: Close codes that end a session span without an error status.
NORMAL_CLOSES = frozenset({"NO_ERROR", "TRANSPORT_NO_ERROR"})

AttributeValue = str | bool | int | float


class Tracing:
    """Makes session spans from the given tracer provider (default: the global one)."""

    def __init__(self, version: str, provider: TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer(SCOPE, version, tracer_provider=provider)

    def session_started(self, attributes: Mapping[str, AttributeValue]) -> SessionSpans:
        """Open the span of a session that was just welcomed."""
        span = self._tracer.start_span(
            SESSION_SPAN, kind=SpanKind.SERVER, attributes=dict(attributes)
        )
        return SessionSpans(self._tracer, span)


class SessionSpans:
    """The span of one session and the spans of its open turns."""

    def __init__(self, tracer: trace.Tracer, span: Span) -> None:
        self._tracer = tracer
        self._span = span
        self._context = trace.set_span_in_context(span)
        #: Open turns: their span and the session's downlink frame count when they started.
        self._turns: dict[int, tuple[Span, int]] = {}

    @property
    def recording(self) -> bool:
        """Whether the spans go anywhere (false: skip the work of filling them)."""
        return self._span.is_recording()

    def migrated(self, from_address: str, to_address: str, gap_ms: float) -> None:
        """The client's address changed: an event on the session span."""
        self._span.add_event(
            MIGRATION_EVENT,
            {
                "quicvoice.migration.from": from_address,
                "quicvoice.migration.to": to_address,
                "quicvoice.migration.gap_ms": gap_ms,
            },
        )

    def turn_started(self, turn_id: int, frames_sent: int) -> None:
        """Open turn ``turn_id``'s span; ``frames_sent`` is the session's downlink count now."""
        span = self._tracer.start_span(
            TURN_SPAN, context=self._context, attributes={"quicvoice.turn.id": turn_id}
        )
        self._turns[turn_id] = (span, frames_sent)

    def turn_ended(self, turn_id: int, frames_sent: int, cancelled_by: str | None) -> None:
        """End turn ``turn_id``'s span (``cancelled_by``: ``server``, ``client`` or ``None``)."""
        entry = self._turns.pop(turn_id, None)
        if entry is None:
            return
        span, frames_at_start = entry
        span.set_attribute("quicvoice.turn.frames", frames_sent - frames_at_start)
        span.set_attribute("quicvoice.turn.cancelled", cancelled_by is not None)
        if cancelled_by is not None:
            span.set_attribute("quicvoice.turn.cancelled_by", cancelled_by)
        span.end()

    def handler_failed(self, error: BaseException) -> None:
        """The server application raised: recorded on the session span."""
        self._span.record_exception(error)
        self._span.set_status(Status(StatusCode.ERROR, "the server application failed"))

    def closed(
        self,
        code: int,
        code_name: str,
        frames_sent: int,
        attributes: Mapping[str, AttributeValue],
    ) -> None:
        """End the session span (and any turn still open, marked unfinished)."""
        for turn_id in list(self._turns):
            self._turns[turn_id][0].set_attribute("quicvoice.turn.unfinished", True)
            self.turn_ended(turn_id, frames_sent, cancelled_by=None)
        self._span.set_attribute("quicvoice.close.code", code)
        self._span.set_attribute("quicvoice.close.name", code_name)
        for key, value in attributes.items():
            self._span.set_attribute(key, value)
        if code_name not in NORMAL_CLOSES:
            self._span.set_status(Status(StatusCode.ERROR, f"closed with {code_name}"))
        self._span.end()
