"""Inputs the fuzz campaigns (or the review of their targets) found, kept as plain tests."""

from __future__ import annotations

from quicvoice.session.connection import VoiceConnection
from quicvoice.session.messages import UplinkMode, Welcome, encode_message
from quicvoice.session.transport import RawQuicTransport

from .stateful import _Endpoints


def _client_after_welcome(codec: str) -> list[object]:
    """A client ``VoiceConnection`` that receives a ``welcome`` naming ``codec``."""
    pair = _Endpoints()
    voice = VoiceConnection(RawQuicTransport(pair.client))
    events: list[object] = []

    def drain() -> None:
        event = pair.client.next_event()
        while event is not None:
            events.extend(voice.handle_event(event, pair.now))
            event = pair.client.next_event()
        while pair.server.next_event() is not None:
            pass

    for _ in range(40):
        pair.step()
        drain()
    welcome = Welcome(
        session_id="s", codec=codec, frame_ms=20, uplink=UplinkMode.RELIABLE, server_id="0a"
    )
    pair.server.send_stream_data(0, encode_message(welcome))
    for _ in range(5):
        pair.step()
        drain()
    return events


def test_welcome_with_an_ascii_rate_starts_the_session() -> None:
    assert any(type(e).__name__ == "SessionStarted" for e in _client_after_welcome("L16/16000"))


def test_welcome_with_a_non_ascii_digit_rate_never_raises() -> None:
    _client_after_welcome("L16/\u00b2")
