"""The text exposition format, checked against Prometheus' own parser."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from quicvoice.observability.exposition import (
    Histogram,
    MetricFamily,
    MetricKind,
    render,
)
from quicvoice.observability.metrics import (
    BackendMetrics,
    SessionCounters,
    close_code_name,
    error_code_name,
)
from quicvoice.session.codes import ErrorCode

label_values = st.text(max_size=40)  # any Unicode: quotes, backslashes, newlines included
numbers = st.integers(min_value=0, max_value=2**53) | st.floats(
    min_value=0, allow_nan=False, allow_infinity=False
)


@given(
    st.dictionaries(label_values, numbers, max_size=8),
    st.text(max_size=80).filter(lambda text: text == text.strip()),  # the parser trims help
)
def test_any_label_value_and_help_text_survive_the_parser(
    series: dict[str, float], help_text: str
) -> None:
    family = MetricFamily(
        name="quicvoice_test_things_total",
        kind=MetricKind.COUNTER,
        help=help_text,
        values={(("what", label),): value for label, value in series.items()},
    )
    (parsed,) = text_string_to_metric_families(render([family]))
    assert parsed.name == "quicvoice_test_things"
    assert parsed.type == "counter"
    assert parsed.documentation == help_text
    got = {sample.labels["what"]: sample.value for sample in parsed.samples}
    assert got == pytest.approx({label: float(value) for label, value in series.items()})


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), max_size=50))
def test_a_histogram_renders_cumulative_buckets(values: list[float]) -> None:
    histogram = Histogram((1.0, 10.0, 100.0))
    for value in values:
        histogram.observe(value)
    family = MetricFamily(
        name="quicvoice_test_delay_milliseconds",
        kind=MetricKind.HISTOGRAM,
        help="A delay.",
        histograms={(): histogram},
    )
    (parsed,) = text_string_to_metric_families(render([family]))
    assert parsed.type == "histogram"
    samples = {(s.name, s.labels.get("le")): s.value for s in parsed.samples}
    for bound in ("1.0", "10.0", "100.0"):
        expected = sum(1 for v in values if v <= float(bound))
        assert samples[("quicvoice_test_delay_milliseconds_bucket", bound)] == expected
    assert samples[("quicvoice_test_delay_milliseconds_bucket", "+Inf")] == len(values)
    assert samples[("quicvoice_test_delay_milliseconds_count", None)] == len(values)
    assert samples[("quicvoice_test_delay_milliseconds_sum", None)] == pytest.approx(sum(values))


def test_a_histogram_ignores_nan() -> None:
    histogram = Histogram((1.0,))
    histogram.observe(math.nan)
    assert histogram.count == 0 and histogram.cumulative() == [(1.0, 0), (math.inf, 0)]


@pytest.mark.parametrize("bounds", [(), (2.0, 1.0), (1.0, 1.0), (1.0, math.inf)])
def test_histogram_bounds_are_checked(bounds: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="bounds"):
        Histogram(bounds)


@pytest.mark.parametrize(
    ("name", "kind", "labels", "message"),
    [
        ("quicvoice things", MetricKind.GAUGE, (), "metric name"),
        ("quicvoice_things", MetricKind.COUNTER, (), "_total"),
        ("quicvoice_things", MetricKind.GAUGE, (("le", "1"),), "label name"),
        ("quicvoice_things", MetricKind.GAUGE, (("__name", "1"),), "label name"),
        ("quicvoice_things", MetricKind.GAUGE, (("a-b", "1"),), "label name"),
    ],
)
def test_bad_names_are_refused(
    name: str, kind: MetricKind, labels: tuple[tuple[str, str], ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        MetricFamily(name=name, kind=kind, help="x", values={labels: 1})


def test_error_codes_are_named_and_unknown_ones_are_hex() -> None:
    assert error_code_name(ErrorCode.UNSUPPORTED) == "UNSUPPORTED"
    assert error_code_name(0x10B) == "TOKEN_MALFORMED"
    assert error_code_name(0x1234) == "0x1234"


@pytest.mark.parametrize(
    ("code", "frame_type", "reason", "name"),
    [
        (0x0, None, "", "NO_ERROR"),
        (0x108, None, "the server application failed", "INTERNAL_ERROR"),
        (0x1001, None, "", "0x1001"),  # an application's own refusal code
        (0xDEAD, None, "", "OTHER"),  # a peer's arbitrary code cannot add a label
        (0x1, 0x0, "Idle timeout", "IDLE_TIMEOUT"),
        (0x10, 0x0, "No validated network path", "TRANSPORT_NO_VIABLE_PATH"),
        (0xA, 0x8, "bad frame", "TRANSPORT_PROTOCOL_VIOLATION"),
        (0x12A, 0x6, "", "TRANSPORT_CRYPTO_ERROR"),
        (0x3FFF, 0x0, "", "TRANSPORT_OTHER"),
    ],
)
def test_close_codes(code: int, frame_type: int | None, reason: str, name: str) -> None:
    assert close_code_name(code, frame_type, reason) == name


@given(st.integers(min_value=0, max_value=2**62 - 1), st.none() | st.integers(0, 2**62 - 1))
def test_close_labels_stay_bounded(code: int, frame_type: int | None) -> None:
    name = close_code_name(code, frame_type, "")
    known = {c.name for c in ErrorCode} | {"OTHER", "IDLE_TIMEOUT"}
    assert name in known or name.startswith("TRANSPORT_") or 0x1000 <= int(name, 16) < 0x2000


def test_counters_fold_in_at_close_and_never_go_down() -> None:
    metrics = BackendMetrics(server_id="0a000001", version="test")
    live = SessionCounters(uplink_frames_received=10, downlink_frames_sent=4)

    def uplink(open_sessions: int, live: SessionCounters) -> float:
        families = metrics.families(open_sessions=open_sessions, live=live, endpoint={})
        (family,) = [f for f in families if f.name.endswith("uplink_frames_received_total")]
        return family.values[()]

    assert uplink(1, live) == 10
    metrics.session_closed("NO_ERROR", SessionCounters(uplink_frames_received=12))
    assert uplink(0, SessionCounters()) == 12
    text = render(metrics.families(open_sessions=0, live=SessionCounters(), endpoint={"x": 3}))
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    closed = parsed["quicvoice_backend_sessions_closed"].samples
    assert [(s.labels, s.value) for s in closed] == [({"code": "NO_ERROR"}, 1.0)]
    (other,) = parsed["quicvoice_backend_endpoint_events"].samples
    assert other.labels == {"event": "x"} and other.value == 3
