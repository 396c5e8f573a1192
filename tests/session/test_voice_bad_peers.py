"""A misbehaving peer closes its own session with a clear code, and never raises."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicvoice.session.codes import ErrorCode
from quicvoice.session.connection import SessionLimits, State
from quicvoice.session.events import SessionClosed
from quicvoice.session.messages import Bye, Hello, encode_message
from quicvoice.session.wire import StreamKind, encode_stream_header

from .pair import make_pair

CLOSE_ROUNDS = 100


def server_close_code(pair: object) -> int | None:
    pair.pump(rounds=CLOSE_ROUNDS, advance=0.05)  # type: ignore[attr-defined]
    closed = [e for e in pair.take("client") if isinstance(e, SessionClosed)]  # type: ignore[attr-defined]
    return closed[0].error_code if closed else None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=300), st.sampled_from(["control", "uni", "datagram"]))
def test_garbage_from_the_client_never_raises(data: bytes, where: str) -> None:
    pair = make_pair()
    quic = pair.client_quic
    if where == "control":
        stream_id = 0  # the control stream the client already opened
        quic.send_stream_data(stream_id, data)
    elif where == "uni":
        quic.send_stream_data(quic.get_next_available_stream_id(is_unidirectional=True), data)
    else:
        quic.send_datagram_frame(data)
    pair.pump(rounds=CLOSE_ROUNDS, advance=0.05)  # must not raise
    assert pair.server is not None
    if pair.server.state is State.CLOSED:
        codes = [e.error_code for e in pair.take("client") if isinstance(e, SessionClosed)]
        assert codes and codes[0] >= ErrorCode.PROTOCOL_ERROR


def test_message_before_hello_is_hello_required() -> None:
    pair = make_pair()
    pair.client_quic.send_stream_data(4, encode_message(Bye()))  # a second control stream
    pair.pump()
    # A second bidirectional stream is refused, the session itself goes on.
    assert pair.server is not None and pair.server.state is State.ACTIVE


def test_hello_twice() -> None:
    pair = make_pair()
    pair.client_quic.send_stream_data(0, encode_message(Hello()))
    assert server_close_code(pair) == ErrorCode.PROTOCOL_ERROR


def test_too_many_unexpected_streams() -> None:
    pair = make_pair(server_limits=SessionLimits(max_unexpected_streams=3))
    for _ in range(5):
        stream_id = pair.client_quic.get_next_available_stream_id()
        pair.client_quic.send_stream_data(stream_id, b"x")
    assert server_close_code(pair) == ErrorCode.LIMIT_EXCEEDED


def test_too_many_open_uni_streams() -> None:
    pair = make_pair(server_limits=SessionLimits(max_open_peer_streams=2))
    for _ in range(3):
        stream_id = pair.client_quic.get_next_available_stream_id(is_unidirectional=True)
        # The first octet of a two-octet varint: the header never completes, the stream stays.
        pair.client_quic.send_stream_data(stream_id, b"\x40")
    assert server_close_code(pair) == ErrorCode.LIMIT_EXCEEDED


def test_second_uplink_stream() -> None:
    pair = make_pair()
    stream_id = pair.client_quic.get_next_available_stream_id(is_unidirectional=True)
    pair.client_quic.send_stream_data(stream_id, encode_stream_header(StreamKind.UPLINK))
    assert server_close_code(pair) == ErrorCode.STREAM_ERROR


def test_turn_stream_from_the_client() -> None:
    pair = make_pair()
    stream_id = pair.client_quic.get_next_available_stream_id(is_unidirectional=True)
    pair.client_quic.send_stream_data(stream_id, encode_stream_header(StreamKind.TURN, 0))
    assert server_close_code(pair) == ErrorCode.STREAM_ERROR


def test_peer_that_never_reads_is_cut_off() -> None:
    """The client stops acknowledging: the server's backlog bound closes the session."""
    pair = make_pair(server_limits=SessionLimits(max_unacked_bytes=64 * 1024))
    assert pair.server is not None
    turn = pair.server.start_turn()
    pair.pump()
    # Nothing reaches the client any more, so nothing is acknowledged.
    sent = 0
    while pair.server.send_turn_audio(turn, bytes(640), sent * 320):
        sent += 1
        for _ in pair.server_quic.datagrams_to_send(pair.now):
            pass
        assert sent < 1000
    assert pair.server.state is State.CLOSED
    assert 64 * 1024 // 650 <= sent
