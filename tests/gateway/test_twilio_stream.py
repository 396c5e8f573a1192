"""The Twilio Media Streams parser and state table (sans-I/O): documented sessions give their
events; anything malformed, out of order or oversized is a ``CarrierProtocolError`` that
never quotes what was sent, and nothing else escapes (Hypothesis)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicvoice.errors import CarrierProtocolError
from quicvoice.gateway.events import (
    DtmfReceived,
    MarkPlayed,
    MediaReceived,
    StreamConnected,
    StreamStarted,
    StreamStopped,
)
from quicvoice.gateway.twilio import CarrierLimits, StreamState, TwilioMediaStream

from . import twilio_wire as wire

SID = "MZ" + "1" * 32
CHUNK = bytes(range(160))


def started(**options: Any) -> TwilioMediaStream:
    stream = TwilioMediaStream()
    stream.receive(wire.text(wire.connected()))
    stream.receive(wire.text(wire.start(1, SID, **options)))
    return stream


def test_a_documented_session_gives_its_events_in_order() -> None:
    stream = TwilioMediaStream()
    assert stream.receive(wire.text(wire.connected())) == StreamConnected(
        protocol="Call", version="1.0.0"
    )
    start = stream.receive(
        wire.text(wire.start(1, SID, custom_parameters={"room": "7", "token": "secret-jwt"}))
    )
    assert isinstance(start, StreamStarted)
    assert (start.stream_sid, start.tracks, start.sample_rate) == (SID, ("inbound",), 8000)
    assert start.custom_parameters == {"room": "7", "token": "secret-jwt"}
    assert "secret-jwt" not in repr(start)  # a credential never reaches a log through repr
    assert stream.state is StreamState.STREAMING
    assert stream.receive(wire.text(wire.media(2, SID, 1, 0, CHUNK))) == MediaReceived(
        track="inbound", chunk=1, timestamp_ms=0, payload=CHUNK
    )
    assert stream.receive(wire.text(wire.dtmf(3, SID, "#"))) == DtmfReceived(
        digit="#", track="inbound_track"
    )
    sent = json.loads(stream.mark("turn-0"))
    assert sent == {"event": "mark", "streamSid": SID, "mark": {"name": "turn-0"}}
    assert stream.receive(wire.text(wire.mark(4, SID, "turn-0"))) == MarkPlayed(
        name="turn-0", cleared=False
    )
    assert stream.receive(wire.text(wire.stop(5, SID))) == StreamStopped()
    assert stream.state is StreamState.STOPPED


def test_connected_is_optional_and_the_messages_to_twilio_have_the_documented_shape() -> None:
    stream = TwilioMediaStream()
    assert isinstance(stream.receive(wire.text(wire.start(1, SID))), StreamStarted)
    assert json.loads(stream.media(b"\xff\x7f")) == {
        "event": "media",
        "streamSid": SID,
        "media": {"payload": base64.b64encode(b"\xff\x7f").decode()},
    }
    assert json.loads(stream.clear()) == {"event": "clear", "streamSid": SID}


def test_a_clear_returns_pending_marks_as_cleared_and_later_ones_as_played() -> None:
    stream = started()
    stream.mark("a")
    stream.mark("b")
    stream.clear()
    stream.mark("c")
    assert stream.pending_marks == 3
    events = [stream.receive(wire.text(wire.mark(i, SID, n))) for i, n in [(2, "a"), (3, "b")]]
    assert events == [MarkPlayed(name="a", cleared=True), MarkPlayed(name="b", cleared=True)]
    assert stream.receive(wire.text(wire.mark(4, SID, "c"))) == MarkPlayed(name="c", cleared=False)


def test_marks_are_bounded_and_unique() -> None:
    stream = TwilioMediaStream(CarrierLimits(max_pending_marks=2))
    with pytest.raises(ValueError, match="streaming"):
        stream.mark("early")
    stream.receive(wire.text(wire.start(1, SID)))
    stream.mark("a")
    with pytest.raises(ValueError, match="pending"):
        stream.mark("a")
    stream.mark("b")
    assert not stream.can_mark()
    with pytest.raises(ValueError, match="2 marks"):
        stream.mark("c")


# -- the state table: every (state, event) pair ------------------------------------------

PREFIXES: dict[StreamState, list[dict[str, Any]]] = {
    StreamState.NEW: [],
    StreamState.CONNECTED: [wire.connected()],
    StreamState.STREAMING: [wire.connected(), wire.start(1, SID)],
    StreamState.STOPPED: [wire.start(1, SID), wire.stop(2, SID)],
}
INPUTS: dict[str, Callable[[int], dict[str, Any]]] = {
    "connected": lambda seq: wire.connected(),
    "start": lambda seq: wire.start(seq, SID),
    "media": lambda seq: wire.media(seq, SID, 1, 0, CHUNK),
    "dtmf": lambda seq: wire.dtmf(seq, SID, "5"),
    "mark": lambda seq: wire.mark(seq, SID, "m"),
    "stop": lambda seq: wire.stop(seq, SID),
}
ALLOWED = {
    StreamState.NEW: {"connected", "start"},
    StreamState.CONNECTED: {"start"},
    StreamState.STREAMING: {"media", "dtmf", "mark", "stop"},
    StreamState.STOPPED: set(),
}


@pytest.mark.parametrize("state", list(PREFIXES))
@pytest.mark.parametrize("event", list(INPUTS))
def test_every_state_takes_exactly_the_events_of_its_table_row(
    state: StreamState, event: str
) -> None:
    stream = TwilioMediaStream()
    for message in PREFIXES[state]:
        stream.receive(wire.text(message))
    assert stream.state is state
    if state is StreamState.STREAMING:
        stream.mark("m")
    message = wire.text(INPUTS[event](10))
    if event in ALLOWED[state]:
        stream.receive(message)
        assert stream.state is not StreamState.FAILED
        return
    with pytest.raises(CarrierProtocolError) as raised:
        stream.receive(message)
    reason = str(raised.value)
    assert event in reason and ("before" in reason or "second" in reason or "after" in reason)
    assert stream.state is StreamState.FAILED
    with pytest.raises(CarrierProtocolError, match="already failed"):  # and it stays failed
        stream.receive(wire.text(wire.media(11, SID, 1, 0, CHUNK)))


# -- bad input, one fault at a time ------------------------------------------------------


def media_with(**fields: Any) -> dict[str, Any]:
    message = wire.media(2, SID, 1, 0, CHUNK)
    message["media"].update(fields)
    return message


BAD_AFTER_START: list[tuple[str, str]] = [
    ("not JSON", '{"event": "media", '),
    ("not JSON", "[" * 3000),  # nested deeper than the recursion limit
    ("not JSON", '{"event": "media", "x": NaN}'),
    ("an object", "[1, 2]"),
    ("unknown event", wire.text({"event": "hangup", "streamSid": SID})),
    ("unknown event", wire.text({"event": "clear", "streamSid": SID})),  # ours, not theirs
    ("unknown event", wire.text({"streamSid": SID})),
    ("streamSid", wire.text({**wire.media(2, SID, 1, 0, CHUNK), "streamSid": "MZother"})),
    ("streamSid", wire.text({k: v for k, v in wire.dtmf(2, SID, "1").items() if k != "streamSid"})),
    ("did not grow", wire.text(wire.media(1, SID, 1, 0, CHUNK))),
    ("sequenceNumber", wire.text({**wire.media(2, SID, 1, 0, CHUNK), "sequenceNumber": "-3"})),
    ("not base64", wire.text(media_with(payload="%%%%"))),
    ("not base64", wire.text(media_with(payload="AAA"))),  # bad padding
    ("not base64", wire.text(media_with(payload="AA==AA=="))),  # data after the padding
    ("not base64", wire.text(media_with(payload="ÿÿÿÿ"))),
    ("1..1600 octets, not 0", wire.text(media_with(payload=""))),
    ("more than 1600", wire.text(media_with(payload=base64.b64encode(bytes(1700)).decode()))),
    ("must be a string", wire.text(media_with(payload=None))),
    ("track", wire.text(media_with(track="outbound"))),  # not announced in start
    ("chunk", wire.text(media_with(chunk="one"))),
    ("timestamp", wire.text(media_with(timestamp=True))),
    ("timestamp", wire.text(media_with(timestamp="1" * 30))),
    ("media.media", wire.text({**wire.media(2, SID, 1, 0, CHUNK), "media": "AAAA"})),
    ("digit", wire.text(wire.dtmf(2, SID, "55"))),
    ("digit", wire.text(wire.dtmf(2, SID, "x"))),
    ("did not send", wire.text(wire.mark(2, SID, "never-sent"))),
    ("over 8192 octets", wire.text(media_with(padding="x" * 9000))),
    ("binary", ""),  # replaced by bytes below
]


@pytest.mark.parametrize(("fault", "message"), BAD_AFTER_START)
def test_a_bad_message_after_start_is_a_protocol_error_naming_the_fault(
    fault: str, message: str
) -> None:
    stream = started()
    data: str | bytes = message.encode() if fault == "binary" else message
    with pytest.raises(CarrierProtocolError, match=fault):
        stream.receive(data)
    assert stream.state is StreamState.FAILED


def start_with(**fields: Any) -> dict[str, Any]:
    message = wire.start(1, SID)
    message["start"].update(fields)
    return message


BAD_STARTS: list[tuple[str, dict[str, Any]]] = [
    ("encoding .a string of 11 characters. is not 'audio/x-mulaw'",
     start_with(mediaFormat={"encoding": "audio/x-l16", "sampleRate": 8000, "channels": 1})),
    ("sampleRate 16000", start_with(mediaFormat={"encoding": "audio/x-mulaw",
                                                 "sampleRate": 16000, "channels": 1})),
    ("channels true", start_with(mediaFormat={"encoding": "audio/x-mulaw",
                                                "sampleRate": 8000, "channels": True})),
    ("mediaFormat", start_with(mediaFormat=None)),
    ("tracks", start_with(tracks=[])),
    ("tracks", start_with(tracks=["inbound", "inbound"])),
    ("tracks", start_with(tracks=["sideways"])),
    ("callSid", start_with(callSid="CA with spaces")),
    ("accountSid", start_with(accountSid=None)),
    ("streamSid", start_with(streamSid="")),
    ("differs", {**wire.start(1, SID), "streamSid": "MZ" + "2" * 32}),
    ("customParameters value", start_with(customParameters={"room": 7})),
    ("customParameters name", start_with(customParameters={"": "x"})),
    ("customParameters value", start_with(customParameters={"k": "v" * 1025})),
    ("more than 28 entries", start_with(customParameters={f"k{i}": "v" for i in range(29)})),
    ("customParameters must be an object", start_with(customParameters=["token"])),
]  # fmt: skip


@pytest.mark.parametrize(("fault", "message"), BAD_STARTS)
def test_a_bad_start_is_a_protocol_error_naming_the_field(
    fault: str, message: dict[str, Any]
) -> None:
    with pytest.raises(CarrierProtocolError, match=fault):
        TwilioMediaStream().receive(wire.text(message))


def test_the_limits_are_configurable_and_checked() -> None:
    stream = TwilioMediaStream(CarrierLimits(max_media_bytes=160))
    stream.receive(wire.text(wire.start(1, SID)))
    stream.receive(wire.text(wire.media(2, SID, 1, 0, bytes(160))))
    with pytest.raises(CarrierProtocolError, match="160"):
        stream.receive(wire.text(wire.media(3, SID, 2, 20, bytes(161))))
    with pytest.raises(ValueError):
        CarrierLimits(max_message_bytes=100)
    with pytest.raises(ValueError):
        CarrierLimits(max_media_bytes=0)


# -- Hypothesis: only CarrierProtocolError, never a quote of what was sent ----------------

SECRET = "Zq9SECRETxK"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
event_names = st.sampled_from(["connected", "start", "media", "dtmf", "mark", "stop", "clear"])


def mutated(message: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """``message`` with a few fields (top level or one level down) replaced or dropped."""
    copy = json.loads(json.dumps(message))
    for _ in range(data.draw(st.integers(1, 3))):
        target = copy
        inner = [k for k, v in copy.items() if isinstance(v, dict)]
        if inner and data.draw(st.booleans()):
            target = copy[data.draw(st.sampled_from(inner))]
        key = data.draw(st.sampled_from([*target.keys(), "extra"]))
        if data.draw(st.booleans()):
            target.pop(key, None)
        else:
            target[key] = data.draw(json_values)
    return copy


def check_only_protocol_errors(stream: TwilioMediaStream, message: str | bytes) -> None:
    try:
        stream.receive(message)
    except CarrierProtocolError as error:
        assert SECRET not in str(error)
        assert stream.state is StreamState.FAILED


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=64))
def test_arbitrary_text_gives_an_event_or_a_protocol_error(message: str | bytes) -> None:
    check_only_protocol_errors(TwilioMediaStream(), message)
    check_only_protocol_errors(started(), message)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_documented_messages_give_an_event_or_a_protocol_error(
    data: st.DataObject,
) -> None:
    fresh = data.draw(st.booleans())
    stream = TwilioMediaStream() if fresh else started()
    if not fresh:
        stream.mark("turn-1")
    templates = [
        wire.connected(),
        wire.start(2, SID, custom_parameters={"token": SECRET}),
        wire.media(2, SID, 1, 0, CHUNK),
        wire.dtmf(2, SID, "7"),
        wire.mark(2, SID, "turn-1"),
        wire.stop(2, SID),
    ]
    message = mutated(data.draw(st.sampled_from(templates)), data)
    check_only_protocol_errors(stream, json.dumps(message))


@settings(max_examples=300, deadline=None)
@given(
    event=event_names,
    secret_field=st.sampled_from(["payload", "digit", "name", "event", "streamSid", "track"]),
    filler=st.text(min_size=0, max_size=40),
)
def test_what_the_carrier_sent_is_never_quoted(event: str, secret_field: str, filler: str) -> None:
    stream = started()
    message = {
        "event": event,
        "streamSid": SID,
        "sequenceNumber": "5",
        "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": "AAAA"},
        "dtmf": {"digit": "1"},
        "mark": {"name": "x"},
    }
    secret = filler + SECRET + "!" + filler  # never a plain word
    if secret_field in ("event", "streamSid"):
        message[secret_field] = secret
    else:
        section = {"payload": "media", "track": "media", "digit": "dtmf", "name": "mark"}
        message[section[secret_field]][secret_field] = secret
    check_only_protocol_errors(stream, json.dumps(message))
