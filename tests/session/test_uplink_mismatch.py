"""A session refuses uplink frames that do not match its codec and frame duration (in memory).

Real aioquic connections joined in memory (``pair.py``), both uplink modes, both transports:
any payload is either delivered as it was sent or closes the session with
``FRAME_MISMATCH``; nothing else escapes.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicvoice.session.codes import ErrorCode
from quicvoice.session.connection import State
from quicvoice.session.events import AudioReceived, ErrorReceived, SessionClosed
from quicvoice.session.messages import Hello, UplinkMode, Welcome
from quicvoice.session.uplink_check import UplinkCheck

from .pair import SERVER_ID, Pair, make_pair

MODES = [
    (False, UplinkMode.RELIABLE),
    (True, UplinkMode.RELIABLE),
    (False, UplinkMode.REALTIME),
    (True, UplinkMode.REALTIME),
]
MODE_IDS = ["raw-reliable", "wt-reliable", "raw-realtime", "wt-realtime"]


def closed_with(pair: Pair) -> tuple[int | None, int | None]:
    """(code of the ``error`` the client got, code of the client's close), after a pump."""
    for _ in range(20):
        pair.pump()
        pair.now += 0.5
        for quic in (pair.client_quic, pair.server_quic):
            timer = quic.get_timer()
            if timer is not None and timer <= pair.now:
                quic.handle_timer(pair.now)
    events = pair.take("client")
    errors = [e.code for e in events if isinstance(e, ErrorReceived)]
    closes = [e.error_code for e in events if isinstance(e, SessionClosed)]
    return (errors[0] if errors else None), (closes[0] if closes else None)


@pytest.mark.parametrize(("webtransport", "mode"), MODES, ids=MODE_IDS)
@pytest.mark.parametrize(
    ("codec", "frame_ms", "wrong"),
    [
        ("L16/16000", 20, bytes(100)),
        ("L16/16000", 20, bytes(642)),
        ("L16/8000", 40, bytes(320)),  # 20 ms frames after agreeing on 40 ms
        ("PCMU/8000", 20, bytes(161)),
        ("opus/48000", 40, bytes([9 << 3]) + bytes(60)),  # a 20 ms Opus packet
        ("opus/48000", 20, bytes([(31 << 3) | 1]) + bytes(61)),  # malformed (R3)
    ],
    ids=["l16-100", "l16-642", "l16-20-in-40", "pcmu-161", "opus-20-in-40", "opus-malformed"],
)
def test_a_mismatched_frame_closes_the_session(
    webtransport: bool, mode: UplinkMode, codec: str, frame_ms: int, wrong: bytes
) -> None:
    hello = Hello(codecs=(codec,), frame_ms=frame_ms, uplink=mode)
    pair = make_pair(webtransport=webtransport, hello=hello)
    good = _good_payload(codec, frame_ms)
    pair.client.send_audio(good, 0, pair.now)
    pair.pump()
    delivered = [e.frame.payload for e in pair.take("server") if isinstance(e, AudioReceived)]
    assert delivered == [good]
    pair.client.send_audio(wrong, 320, pair.now)
    error, close = closed_with(pair)
    assert close == ErrorCode.FRAME_MISMATCH
    _assert_error_message(webtransport, error)
    assert pair.server is not None and pair.server.state is State.CLOSED
    assert not [e for e in pair.take("server") if isinstance(e, AudioReceived)]


def test_an_early_mismatched_frame_closes_the_session_at_accept() -> None:
    """An uplink sent before ``welcome`` (as with 0-RTT) is held until the codec is chosen,
    and checked then: 20 ms frames for a session the server makes 40 ms are refused."""

    def speak_early(pair: Pair) -> None:
        pair.client.start_early()
        for seq in range(3):
            pair.client.send_audio(bytes(640), seq * 320, pair.now, seq=seq)

    pair = make_pair(auto_accept=False, before_handshake=speak_early)
    server = pair.server
    assert server is not None and server.state is State.NEGOTIATING
    assert not [e for e in pair.take("server") if isinstance(e, AudioReceived)]
    welcome = Welcome(
        session_id="s2",
        codec="L16/16000",
        frame_ms=40,
        uplink=UplinkMode.RELIABLE,
        server_id=SERVER_ID.hex(),
    )
    server.accept(welcome)
    assert server.take_early_events() == []
    assert server.state is State.CLOSED
    error, close = closed_with(pair)
    assert error == close == ErrorCode.FRAME_MISMATCH


def _assert_error_message(webtransport: bool, error: int | None) -> None:
    """Raw QUIC: the ``error`` message arrives before CONNECTION_CLOSE. WebTransport: the
    close capsule carries the code and may overtake it (the CONNECT stream comes first)."""
    if webtransport:
        assert error in (None, ErrorCode.FRAME_MISMATCH)
    else:
        assert error == ErrorCode.FRAME_MISMATCH


def test_early_frames_that_match_are_delivered_after_accept() -> None:
    def speak_early(pair: Pair) -> None:
        pair.client.start_early()
        for seq in range(3):
            pair.client.send_audio(bytes(640), seq * 320, pair.now, seq=seq)

    pair = make_pair(auto_accept=False, before_handshake=speak_early)
    server = pair.server
    assert server is not None
    welcome = Welcome(
        session_id="s3",
        codec="L16/16000",
        frame_ms=20,
        uplink=UplinkMode.RELIABLE,
        server_id=SERVER_ID.hex(),
    )
    server.accept(welcome)
    early = [e.frame.seq for e in server.take_early_events() if isinstance(e, AudioReceived)]
    assert early == [0, 1, 2]
    assert server.state is State.ACTIVE


def _good_payload(codec: str, frame_ms: int) -> bytes:
    if codec.startswith("opus"):
        config = {10: 8, 20: 9, 40: 10, 60: 11}[frame_ms]  # SILK WB, one frame
        return bytes([config << 3]) + bytes(40)
    rate = int(codec.split("/")[1])
    octets = 2 if codec.startswith("L16") else 1
    return bytes(rate * frame_ms // 1000 * octets)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    mode=st.sampled_from(list(range(len(MODES)))),
    codec=st.sampled_from(["L16/16000", "PCMA/8000", "opus/48000"]),
    frame_ms=st.sampled_from([10, 20, 40]),
    payloads=st.lists(
        st.one_of(
            st.binary(max_size=1000),
            st.sampled_from([bytes(320), bytes(640), bytes(160), bytes(80)]),
            st.tuples(st.integers(0, 255), st.binary(max_size=200)).map(
                lambda parts: bytes([parts[0]]) + parts[1]
            ),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_random_payloads_are_delivered_or_refused_with_frame_mismatch(
    mode: int, codec: str, frame_ms: int, payloads: list[bytes]
) -> None:
    webtransport, uplink = MODES[mode]
    hello = Hello(codecs=(codec,), frame_ms=frame_ms, uplink=uplink)
    pair = make_pair(webtransport=webtransport, hello=hello)
    check = UplinkCheck(codec=codec, frame_ms=frame_ms)
    expected: list[bytes] = []
    mismatch = False
    for index, payload in enumerate(payloads):
        pair.client.send_audio(payload, index * 320, pair.now)
        pair.pump()
        if check.problem(payload) is not None:
            mismatch = True
            break
        expected.append(payload)
    error, close = closed_with(pair)
    delivered = [e.frame.payload for e in pair.take("server") if isinstance(e, AudioReceived)]
    assert delivered == expected
    if mismatch:
        assert close == ErrorCode.FRAME_MISMATCH
        _assert_error_message(webtransport, error)
    else:
        assert error is None and close is None
