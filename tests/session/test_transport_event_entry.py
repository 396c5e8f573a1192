"""The voice layer's entries for shells that make transport events themselves (the ngtcp2
engine): ``handle_transport_event`` and ``handle_stream_data`` answer exactly as
``handle_event`` does to the QUIC event they stand for, garbage included; and the backlog bound
``send_turn_audio`` keeps instead of asking the transport per frame decides as the full sum."""

from __future__ import annotations

from aioquic.quic.events import StreamDataReceived
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicvoice.session.codes import ErrorCode
from quicvoice.session.connection import SessionLimits, State, VoiceConnection
from quicvoice.session.events import (
    AudioReceived,
    ErrorReceived,
    SessionClosed,
    UplinkEnded,
    VoiceEvent,
)
from quicvoice.session.messages import Bye, encode_message
from quicvoice.session.transport import StreamData
from quicvoice.session.wire import MediaFrame, StreamKind, encode_frame, encode_stream_header

from .pair import Pair, make_pair

CLOSE_ROUNDS = 100
#: The client's control stream, its first unidirectional stream (the uplink here), an unused
#: one of its own, a bidirectional one it never opened, and one only the server may open.
STREAM_IDS = (0, 2, 6, 4, 3)
#: 640 octets are 20 ms of the pair's codec (L16 at 16 kHz).
PAYLOAD = bytes(640)

ENTRIES = ("handle_event", "handle_transport_event", "handle_stream_data")


def _feed(
    voice: VoiceConnection, entry: str, stream_id: int, data: bytes, fin: bool, now: float
) -> list[VoiceEvent]:
    if entry == "handle_event":
        return voice.handle_event(StreamDataReceived(data, fin, stream_id), now)
    if entry == "handle_transport_event":
        return voice.handle_transport_event(StreamData(stream_id, data, fin), now)
    return voice.handle_stream_data(stream_id, data, fin, now)


def _client_hears(pair: Pair) -> list[VoiceEvent]:
    """What the client learns from the server (``error`` messages carry the close's code)."""
    pair.pump(rounds=CLOSE_ROUNDS, advance=0.05)
    return pair.take("client")


def _error_codes(events: list[VoiceEvent]) -> list[int]:
    return [e.code for e in events if isinstance(e, ErrorReceived)] + [
        e.error_code for e in events if isinstance(e, SessionClosed)
    ]


def _run(entry: str, chunks: list[tuple[int, bytes, bool]]) -> tuple[object, ...]:
    """Feed ``chunks`` to an active server session through ``entry``: what it answers."""
    pair = make_pair()
    server = pair.server
    assert server is not None and server.state is State.ACTIVE
    pair.take("server")
    events: list[VoiceEvent] = []
    for stream_id, data, fin in chunks:
        events += _feed(server, entry, stream_id, data, fin, pair.now)
    return events, server.state, server.stats(), _client_hears(pair)


_frame = st.builds(
    lambda seq, cut: encode_frame(MediaFrame(seq, seq * 320, PAYLOAD))[cut:],
    st.integers(0, 50),
    st.sampled_from([0, 0, 0, 1, 5]),
)
_chunk = st.tuples(
    st.sampled_from(STREAM_IDS),
    st.one_of(
        st.binary(max_size=80),
        _frame,
        st.just(encode_stream_header(StreamKind.UPLINK)),
        st.just(encode_stream_header(StreamKind.UPLINK) + encode_frame(MediaFrame(0, 0, PAYLOAD))),
        st.just(encode_message(Bye(uplink_frames=1))),
    ),
    st.booleans(),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_chunk, min_size=1, max_size=6))
def test_every_entry_answers_garbage_as_handle_event_does(
    chunks: list[tuple[int, bytes, bool]],
) -> None:
    """Same voice events, state, statistics and answer to the client (the protocol's error
    codes) on all three."""
    expected = _run("handle_event", chunks)
    for entry in ENTRIES[1:]:
        assert _run(entry, chunks) == expected, entry
    heard = expected[3]
    assert isinstance(heard, list)
    assert all(code >= ErrorCode.PROTOCOL_ERROR for code in _error_codes(heard))
    assert (expected[1] is State.CLOSED) == bool(_error_codes(heard))


def test_uplink_frames_through_handle_stream_data() -> None:
    """Header, frames split across calls, FIN: the events and counters of the uplink."""
    pair = make_pair()
    server = pair.server
    assert server is not None
    pair.take("server")
    before = server.stats().bytes_received
    frames = [MediaFrame(seq, seq * 320, PAYLOAD) for seq in range(3)]
    wire = b"".join(map(encode_frame, frames))  # on the uplink the client opened (stream 2)
    events = server.handle_stream_data(2, wire[:700], False, 1.0)
    events += server.handle_stream_data(2, wire[700:], True, 1.02)
    assert events == [AudioReceived(frame=frame) for frame in frames] + [UplinkEnded()]
    stats = server.stats()
    assert stats.uplink_frames_received == 3
    assert stats.bytes_received == before + len(wire)


def test_a_bad_frame_length_is_frame_error() -> None:
    pair = make_pair()
    server = pair.server
    assert server is not None
    assert server.handle_stream_data(2, b"\x7f\xff", False, 1.0) == []
    assert server.state is State.CLOSED
    assert _error_codes(_client_hears(pair)) == [ErrorCode.FRAME_ERROR]


def test_a_closed_session_ignores_stream_data() -> None:
    pair = make_pair()
    server = pair.server
    assert server is not None
    server.reject(ErrorCode.INTERNAL_ERROR, "going away")
    before = server.stats()
    frame = encode_frame(MediaFrame(0, 0, PAYLOAD))
    assert server.handle_stream_data(2, frame, False, 1.0) == []
    assert server.stats() == before


def test_the_backlog_bound_cuts_off_at_the_same_frame_as_the_full_sum() -> None:
    """A client that acknowledges nothing after the turn opened: the frame refused is the
    first whose sending finds more than the limit unacknowledged (650 octets a frame)."""
    limit = 64 * 1024
    pair = make_pair(server_limits=SessionLimits(max_unacked_bytes=limit))
    server = pair.server
    assert server is not None
    turn = server.start_turn()
    pair.pump()
    assert server.turn_send_offsets(turn) == (2, 2)  # the turn's header is acknowledged
    sent = 0
    while server.send_turn_audio(turn, PAYLOAD, sent * 320):
        sent += 1
        for _ in pair.server_quic.datagrams_to_send(pair.now):
            pass  # lost: never acknowledged
        assert sent < 1000
    assert sent == limit // 650 + 1
    assert server.state is State.CLOSED


def test_a_delivered_turn_is_forgotten_at_the_next_frame() -> None:
    """Ended and acknowledged: the next frame sent on another turn forgets it, as before."""
    pair = make_pair()
    server = pair.server
    assert server is not None
    first = server.start_turn()
    assert server.send_turn_audio(first, PAYLOAD, 0)
    server.end_turn(first)
    second = server.start_turn()
    pair.pump()
    assert server.turn_send_offsets(first) is not None
    assert server.send_turn_audio(second, PAYLOAD, 320)
    assert server.turn_send_offsets(first) is None
    assert server.turn_send_offsets(second) is not None


def test_the_bound_is_measured_again_once_passed() -> None:
    """Past the bound the full sum is taken: acknowledged octets count no more, and sending
    goes on for as long as the client keeps acknowledging (far past the limit in total)."""
    limit = 16 * 1024
    pair = make_pair(server_limits=SessionLimits(max_unacked_bytes=limit))
    server = pair.server
    assert server is not None
    turn = server.start_turn()
    for seq in range(4 * limit // 650):
        assert server.send_turn_audio(turn, PAYLOAD, seq * 320), seq
        pair.pump()
    assert server.state is State.ACTIVE


def test_an_ended_uplink_is_forgotten() -> None:
    """After the uplink's FIN a new uplink stream is no 'second uplink' (its state went)."""
    pair = make_pair()
    server = pair.server
    assert server is not None
    pair.take("server")
    first = encode_frame(MediaFrame(0, 0, PAYLOAD))
    assert server.handle_stream_data(2, first, True, 1.0)[-1] == UplinkEnded()
    again = encode_stream_header(StreamKind.UPLINK) + encode_frame(MediaFrame(1, 320, PAYLOAD))
    events = server.handle_stream_data(6, again, False, 1.02)
    assert events == [AudioReceived(frame=MediaFrame(1, 320, PAYLOAD))]
    assert server.state is State.ACTIVE
