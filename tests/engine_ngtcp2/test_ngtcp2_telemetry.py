"""The ngtcp2 engine's counters and connection ends in the metrics' terms
(``quicvoice.engine_ngtcp2.telemetry``): pure, so these run without the extension."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from quicvoice.engine_ngtcp2.endpoint import ConnectionEnd, EndpointStats
from quicvoice.engine_ngtcp2.telemetry import EndpointCounters, close_terms, endpoint_counters
from quicvoice.observability.metrics import close_code_name
from quicvoice.observability.telemetry import BackendTelemetry
from quicvoice.session.codes import ErrorCode


@dataclass
class Socket:
    datagrams_received: int = 0
    send_failures: int = 0


def test_counters_take_the_aioquic_backends_names_where_the_meaning_is_the_same() -> None:
    stats = EndpointStats(
        accepted=4,
        dropped=30,  # 2 bad encapsulations, 20 strangers over the allowance, 8 others
        resets_sent=107,  # 100 strangers, 7 probes
        failed=1,
        bad_encapsulation=2,
        probes_answered=7,
        resets_limited=20,
        dispatched=900,
    )
    counters = endpoint_counters(stats, Socket(datagrams_received=1200, send_failures=3))
    assert counters == {
        "datagrams": 1200,
        "bad_encapsulation": 2,
        "new_connections": 4,
        "stateless_resets": 107,
        # Every datagram for no connection here, reset or not, probes aside (as on aioquic).
        "dropped_unknown_cid": 28 + 100,
        "probes_answered": 7,
        "resets_limited": 20,
        "connections_failed": 1,
        "fast_path_datagrams": 900,
        "send_failures": 3,
    }


def test_the_live_view_is_read_at_every_scrape() -> None:
    stats = EndpointStats()
    socket = Socket()
    telemetry = BackendTelemetry(
        server_id="0a0b0c0d",
        version="test",
        endpoint_counters=EndpointCounters(stats, socket),
        engine="ngtcp2",
    )

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(telemetry.render())
            for sample in family.samples
        }

    before = scrape()
    assert before[("quicvoice_backend_received_datagrams_total", ())] == 0
    info = (("engine", "ngtcp2"), ("server_id", "0a0b0c0d"), ("version", "test"))
    assert before[("quicvoice_backend_info", info)] == 1
    socket.datagrams_received = 12
    stats.accepted = 2
    stats.dropped = 3
    stats.resets_limited = 3
    after = scrape()
    assert after[("quicvoice_backend_received_datagrams_total", ())] == 12
    assert after[("quicvoice_backend_connections_total", ())] == 2
    assert after[("quicvoice_backend_dropped_datagrams_total", (("reason", "unknown_cid"),))] == 3
    events = (("event", "resets_limited"),)
    assert after[("quicvoice_backend_endpoint_events_total", events)] == 3
    assert len(EndpointCounters(stats, socket)) == len(list(EndpointCounters(stats, socket)))


def test_each_end_is_labelled_as_aioquic_labels_it() -> None:
    def label(code: int, end: ConnectionEnd) -> str:
        return close_code_name(*close_terms(code, "why", end))

    assert label(0, ConnectionEnd.APPLICATION) == "NO_ERROR"
    assert label(ErrorCode.INTERNAL_ERROR, ConnectionEnd.APPLICATION) == "INTERNAL_ERROR"
    assert label(0x1234, ConnectionEnd.APPLICATION) == "0x1234"  # an application's refusal
    assert label(0x0A, ConnectionEnd.TRANSPORT) == "TRANSPORT_PROTOCOL_VIOLATION"
    assert label(0x0128, ConnectionEnd.TRANSPORT) == "TRANSPORT_CRYPTO_ERROR"
    assert label(0, ConnectionEnd.IDLE_TIMEOUT) == "IDLE_TIMEOUT"
    assert label(-205, ConnectionEnd.FAILED) == "TRANSPORT_OTHER"  # NGTCP2_ERR_PROTO
    assert close_terms(-205, "connection failed: ERR_PROTO", ConnectionEnd.FAILED)[0] == -205


@given(
    code=st.integers(min_value=-600, max_value=2**62 - 1),
    reason=st.text(max_size=40),
    end=st.sampled_from(ConnectionEnd),
)
def test_whatever_a_peer_or_ngtcp2_says_the_labels_stay_bounded(
    code: int, reason: str, end: ConnectionEnd
) -> None:
    name = close_code_name(*close_terms(code, reason, end))
    known = {c.name for c in ErrorCode} | {"OTHER", "IDLE_TIMEOUT"}
    assert name in known or name.startswith("TRANSPORT_") or 0x1000 <= int(name, 16) < 0x2000
    if end is not ConnectionEnd.APPLICATION:
        assert name.startswith("TRANSPORT_") or name == "IDLE_TIMEOUT"
