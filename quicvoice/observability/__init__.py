"""What a backend tells its operators: Prometheus metrics and OpenTelemetry spans.

``exposition`` renders the Prometheus text format, ``metrics`` keeps the backend's counters
and histograms, ``tracing`` makes OpenTelemetry spans (only when ``opentelemetry-api`` is
installed), ``endpoint`` serves ``/metrics`` over HTTP and ``telemetry`` is what the voice
server calls. The metrics and spans are listed in specs/observability.md.
"""
