"""The voice state machine over a real aioquic connection pair in memory."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicvoice.session.codes import ErrorCode
from quicvoice.session.events import (
    AudioReceived,
    ByeReceived,
    EventReceived,
    HelloReceived,
    SessionClosed,
    SessionStarted,
    TurnCancelled,
    TurnEnded,
    TurnStarted,
    UplinkEnded,
)
from quicvoice.session.messages import Hello, UplinkMode
from quicvoice.session.transport import (
    WebTransportTransport,
    webtransport_error_from_http3,
    webtransport_error_to_http3,
)

from .pair import CERTIFICATE, LB_CONFIG, SERVER_ID, make_pair

PAYLOAD = bytes(640)


@pytest.mark.parametrize("webtransport", [False, True], ids=["raw", "webtransport"])
def test_handshake_and_reliable_uplink(webtransport: bool) -> None:
    pair = make_pair(webtransport=webtransport)
    started = [e for e in pair.take("client") if isinstance(e, SessionStarted)]
    assert len(started) == 1 and started[0].server_id == SERVER_ID.hex()
    server_events = pair.take("server")
    assert any(isinstance(e, HelloReceived) for e in server_events)
    for seq in range(50):
        pair.client.send_audio(PAYLOAD, seq * 320, pair.now)
    pair.client.end_audio()
    pair.pump()
    frames = [e.frame for e in pair.take("server") if isinstance(e, AudioReceived)]
    assert [f.seq for f in frames] == list(range(50))
    assert all(f.payload == PAYLOAD for f in frames)
    assert pair.server is not None
    assert pair.server.stats().uplink_frames_received == 50


@pytest.mark.parametrize("webtransport", [False, True], ids=["raw", "webtransport"])
def test_uplink_end_and_bye(webtransport: bool) -> None:
    pair = make_pair(webtransport=webtransport)
    pair.client.send_audio(PAYLOAD, 0, pair.now)
    pair.client.end_audio()
    pair.client.send_bye()
    pair.pump()
    events = pair.take("server")
    assert any(isinstance(e, UplinkEnded) for e in events)
    assert [e.uplink_frames for e in events if isinstance(e, ByeReceived)] == [1]


@pytest.mark.parametrize("webtransport", [False, True], ids=["raw", "webtransport"])
def test_realtime_uplink_datagrams(webtransport: bool) -> None:
    pair = make_pair(webtransport=webtransport, hello=Hello(uplink=UplinkMode.REALTIME))
    for seq in range(20):
        pair.client.send_audio(PAYLOAD, seq * 320, pair.now)
        pair.pump(rounds=2)
    pair.pump()
    frames = [e.frame for e in pair.take("server") if isinstance(e, AudioReceived)]
    assert [f.seq for f in frames] == list(range(20))


def test_realtime_queue_drops_stale_frames() -> None:
    pair = make_pair(hello=Hello(uplink=UplinkMode.REALTIME))
    # Nothing is transmitted between these calls: the queue holds at most 8 frames.
    for seq in range(30):
        pair.client.send_audio(PAYLOAD, seq * 320, pair.now + seq * 0.02)
    assert pair.client.stats().uplink_frames_dropped == 30 - 8 + 0 or (
        pair.client.stats().uplink_frames_dropped >= 22
    )
    pair.pump()
    frames = [e.frame for e in pair.take("server") if isinstance(e, AudioReceived)]
    assert len(frames) <= 8 and frames[-1].seq == 29


@pytest.mark.parametrize("webtransport", [False, True], ids=["raw", "webtransport"])
def test_turn_downlink(webtransport: bool) -> None:
    pair = make_pair(webtransport=webtransport)
    pair.take("client")
    assert pair.server is not None
    turn = pair.server.start_turn()
    for seq in range(100):
        assert pair.server.send_turn_audio(turn, PAYLOAD, seq * 320)
    pair.server.end_turn(turn)
    pair.pump()
    events = pair.take("client")
    assert isinstance(events[0], TurnStarted) and events[0].turn_id == turn
    frames = [e for e in events if isinstance(e, AudioReceived)]
    assert len(frames) == 100 and all(e.turn_id == turn for e in frames)
    assert isinstance(events[-1], TurnEnded)


@pytest.mark.parametrize("webtransport", [False, True], ids=["raw", "webtransport"])
def test_barge_in_from_client(webtransport: bool) -> None:
    pair = make_pair(webtransport=webtransport)
    pair.take("client")
    assert pair.server is not None
    turn = pair.server.start_turn()
    for seq in range(10):
        pair.server.send_turn_audio(turn, PAYLOAD, seq * 320)
    pair.pump()
    assert pair.client.cancel_turn(turn) == [TurnCancelled(turn_id=turn, by_peer=False)]
    pair.pump()
    server_events = pair.take("server")
    assert TurnCancelled(turn_id=turn, by_peer=True) in server_events
    assert not pair.server.send_turn_audio(turn, PAYLOAD, 0)
    late = [e for e in pair.take("client") if isinstance(e, AudioReceived) and e.turn_id == turn]
    pair.pump()
    assert not [e for e in pair.take("client") if isinstance(e, AudioReceived)]
    del late


@pytest.mark.parametrize("webtransport", [False, True], ids=["raw", "webtransport"])
def test_barge_in_from_server(webtransport: bool) -> None:
    pair = make_pair(webtransport=webtransport)
    pair.take("client")
    assert pair.server is not None
    turn = pair.server.start_turn()
    pair.server.send_turn_audio(turn, PAYLOAD, 0)
    pair.pump()
    pair.take("client")
    pair.server.cancel_turn(turn)
    pair.pump()
    assert TurnCancelled(turn_id=turn, by_peer=True) in pair.take("client")


@pytest.mark.parametrize("webtransport", [False, True], ids=["raw", "webtransport"])
def test_events_both_ways(webtransport: bool) -> None:
    pair = make_pair(webtransport=webtransport)
    pair.client.send_event("order.add", {"item": "taro milk tea", "size": "large"})
    pair.pump()
    assert EventReceived(name="order.add", data={"item": "taro milk tea", "size": "large"}) in (
        pair.take("server")
    )
    assert pair.server is not None
    pair.server.send_event("order.cart", [{"item": "taro milk tea"}])
    pair.pump()
    assert EventReceived(name="order.cart", data=[{"item": "taro milk tea"}]) in pair.take("client")


def test_every_server_cid_on_the_wire_decodes_to_the_server_id() -> None:
    pair = make_pair()
    pair.pump()
    cids = pair.server_quic.host_cids()
    assert len(cids) >= 2
    assert all(LB_CONFIG.decode(cid) == SERVER_ID for cid in cids)


def test_unexpected_stream_kind_closes_only_that_session() -> None:
    pair = make_pair()
    stream_id = pair.client_quic.get_next_available_stream_id(is_unidirectional=True)
    pair.client_quic.send_stream_data(stream_id, b"\x3f")
    pair.pump(rounds=100, advance=0.05)
    closed = [e for e in pair.take("client") if isinstance(e, SessionClosed)]
    assert closed and closed[0].error_code == ErrorCode.STREAM_ERROR


def test_webtransport_session_end_closes_the_connection() -> None:
    pair = make_pair(webtransport=True)
    transport = pair.client._transport
    assert isinstance(transport, WebTransportTransport) and transport.session_id is not None
    transport.h3.send_data(transport.session_id, b"", end_stream=True)
    pair.pump(rounds=100, advance=0.05)
    assert any(isinstance(e, SessionClosed) for e in pair.take("client"))


@given(st.integers(0, 255))
def test_webtransport_error_codes_round_trip(code: int) -> None:
    mapped = webtransport_error_to_http3(code)
    assert mapped >= 0x52E4A40FA8DB and (mapped - 0x21) % 0x1F != 0
    assert webtransport_error_from_http3(mapped) == code


def test_finished_turns_are_forgotten_once_delivered() -> None:
    """A long call's many turns must not make each frame sent cost more."""
    pair = make_pair()
    assert pair.server is not None
    for _ in range(20):
        turn = pair.server.start_turn()
        pair.server.send_turn_audio(turn, PAYLOAD, 0)
        pair.server.end_turn(turn)
        pair.pump()
    last = pair.server.start_turn()
    assert pair.server.send_turn_audio(last, PAYLOAD, 0)
    assert list(pair.server._turn_streams) == [last]


def test_a_server_close_before_the_handshake_completes_waits_for_it() -> None:
    """Refusing a 0-RTT hello: the close waits for the handshake so that it can carry its
    code and reason (before it, RFC 9000 §10.2.3 leaves only a bare APPLICATION_ERROR)."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
    from aioquic.quic.events import HandshakeCompleted

    from quicvoice.session.transport import RawQuicTransport

    closes: list[tuple[int, str]] = []

    class RecordingConnection(QuicConnection):
        def close(self, error_code: int = 0, frame_type: int | None = None,
                  reason_phrase: str = "") -> None:  # fmt: skip
            closes.append((error_code, reason_phrase))

    configuration = QuicConfiguration(is_client=False)
    configuration.certificate = CERTIFICATE.certificate
    configuration.private_key = CERTIFICATE.private_key
    quic = RecordingConnection(
        configuration=configuration, original_destination_connection_id=bytes(8)
    )
    transport = RawQuicTransport(quic)
    transport.close(int(ErrorCode.RESUME_REFUSED), "resume token refused")
    transport.close(int(ErrorCode.INTERNAL_ERROR), "a second close does not replace the first")
    assert closes == []
    transport.handle_event(HandshakeCompleted("quicvoice/1", early_data_accepted=True,
                                              session_resumed=True))  # fmt: skip
    assert closes == [(int(ErrorCode.RESUME_REFUSED), "resume token refused")]
    transport.close(0, "after the handshake: at once")
    assert closes[-1] == (0, "after the handshake: at once")


def test_the_peer_closing_ends_the_session_at_once_not_after_draining() -> None:
    """aioquic reports a peer's CONNECTION_CLOSE only when draining ends (3 PTO later, which
    is minutes under overload); the server's session ends as soon as the close arrives, and
    exactly one SessionClosed and one ConnectionTerminated are reported."""
    from aioquic.quic.events import ConnectionTerminated

    from .pair import CLIENT_ADDR

    pair = make_pair()
    pair.pump()
    pair.take("server")
    pair.client.close(ErrorCode.NO_ERROR, "bye")
    terminated = []
    for data, _addr in pair.client_quic.datagrams_to_send(pair.now):
        pair.server_quic.receive_datagram(data, CLIENT_ADDR, pair.now)
    event = pair.server_quic.next_event()
    while event is not None:
        terminated += [event] if isinstance(event, ConnectionTerminated) else []
        assert pair.server is not None
        pair.server_events.extend(pair.server.handle_event(event, pair.now))
        event = pair.server_quic.next_event()
    assert [(e.error_code, e.reason_phrase) for e in terminated] == [(0, "bye")]
    closed = [e for e in pair.take("server") if isinstance(e, SessionClosed)]
    assert [(c.error_code, c.reason) for c in closed] == [(0, "bye")]
    # Draining still ends on time, without a second report.
    timer = pair.server_quic.get_timer()
    assert timer is not None and timer > pair.now
    pair.server_quic.handle_timer(timer)
    assert pair.server_quic.next_event() is None
