"""The voice layer's ``VoiceTransport`` over one ngtcp2 server connection (raw QUIC only).

``VoiceConnection`` (quicvoice/session/connection.py) runs unchanged on it. The shell
(``voice_server.Ngtcp2Call``) feeds it the voice layer's own transport events, made from what
the extension reports (stream data, DATAGRAM frames, the peer's RESET_STREAM and STOP_SENDING,
the handshake's completion, the connection's end), through
``VoiceConnection.handle_transport_event`` and ``handle_stream_data``: no aioquic event is
made on this engine. ``handle_event`` still translates aioquic's events, as every
``VoiceTransport`` does. Its stream operations map onto the extension's.

A server's close with last words (``close(..., deliver=...)``) is held until the ``deliver``
streams are acknowledged, or ``CLOSE_LINGER_MAX`` has passed, like the aioquic glue does; the
endpoint asks ``close_request(now)`` before each flush. Sending datagrams is not bound: the
server side of the voice protocol never sends one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aioquic.quic.events import (
    ConnectionTerminated,
    DatagramFrameReceived,
    HandshakeCompleted,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)

from ..errors import InvalidStateError
from ..session.transport import (
    DATAGRAM_OVERHEAD,
    Closed,
    Datagram,
    Ready,
    StreamAborted,
    StreamData,
    TransportEvent,
)

if TYPE_CHECKING:
    from .. import _ngtcp2

NS = 1_000_000_000
#: How long a close waits for its last words to be acknowledged (as ``quic.CLOSE_LINGER_MAX``).
CLOSE_LINGER_MAX = NS
#: The largest UDP payload the extension writes.
MAX_UDP_PAYLOAD = 1452


class Ngtcp2Transport:
    """One raw-QUIC voice session (ALPN ``quicvoice/1``) on an ngtcp2 server connection."""

    def __init__(self, native: _ngtcp2.Connection) -> None:
        self.native = native
        self._close: tuple[int, str, tuple[int, ...]] | None = None
        self._close_deadline: int | None = None

    @property
    def is_client(self) -> bool:
        """Always false: the extension binds the server side only."""
        return False

    @property
    def max_datagram_payload(self) -> int:
        """The largest voice datagram that fits one packet."""
        return MAX_UDP_PAYLOAD - DATAGRAM_OVERHEAD

    def handle_event(self, event: QuicEvent) -> list[TransportEvent]:
        """Translate one of aioquic's events (the ``VoiceTransport`` interface; this engine's
        shell makes transport events itself and never calls it)."""
        if isinstance(event, StreamDataReceived):
            return [StreamData(event.stream_id, event.data, event.end_stream)]
        if isinstance(event, DatagramFrameReceived):
            return [Datagram(event.data)]
        if isinstance(event, HandshakeCompleted):
            return [Ready()]
        if isinstance(event, StreamReset):
            return [StreamAborted(event.stream_id, event.error_code, reset=True)]
        if isinstance(event, StopSendingReceived):
            return [StreamAborted(event.stream_id, event.error_code, reset=False)]
        if isinstance(event, ConnectionTerminated):
            return [Closed(event.error_code, event.reason_phrase)]
        return []

    def is_peer_bidi_stream(self, stream_id: int) -> bool:
        """Whether ``stream_id`` is a bidirectional stream the client opened."""
        return stream_id & 0x3 == 0

    def open_stream(self, unidirectional: bool) -> int:
        """Open a stream; ``InvalidStateError`` when the peer's stream limit is reached."""
        native = self.native
        stream_id = native.open_uni_stream() if unidirectional else native.open_bidi_stream()
        if stream_id < 0:
            raise InvalidStateError("the peer allows no more streams now")
        return stream_id

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue ``data`` on a stream; ``InvalidStateError`` when it cannot take it (ended,
        or the extension's send-stream slots are all in use)."""
        if not self.native.send_stream(stream_id, data, end_stream):
            raise InvalidStateError(f"stream {stream_id} cannot be written")

    def reset(self, stream_id: int, error_code: int) -> None:
        """Abort sending on a stream (RESET_STREAM); a closed stream is left alone."""
        self.native.reset_stream(stream_id, error_code)

    def stop(self, stream_id: int, error_code: int) -> None:
        """Ask the peer to stop sending (STOP_SENDING); a closed stream is left alone."""
        self.native.stop_sending(stream_id, error_code)

    def send_datagram(self, data: bytes) -> None:
        """Not bound on this engine (the server side never sends datagrams)."""
        raise InvalidStateError("the ngtcp2 engine does not send DATAGRAM frames")

    def close(self, error_code: int, reason: str, *, deliver: tuple[int, ...] = ()) -> None:
        """Close once what was written on ``deliver`` is acknowledged (at most 1 s later)."""
        if self._close is None:
            self._close = (error_code, reason, deliver)

    def close_request(self, now: int) -> tuple[int, str] | None:
        """The close to send now (code, reason), or None: none asked, or its last words are
        still unacknowledged and the linger has not run out."""
        close = self._close
        if close is None:
            return None
        if self._close_deadline is None:
            self._close_deadline = now + CLOSE_LINGER_MAX
        delivered = all(self.unacked_bytes(stream_id) == 0 for stream_id in close[2])
        if delivered or now >= self._close_deadline:
            return close[0], close[1]
        return None

    def unacked_bytes(self, stream_id: int) -> int:
        """Octets written to ``stream_id`` that the peer has not acknowledged yet."""
        acked, written = self.native.send_offsets(stream_id)
        return written - acked

    def send_offsets(self, stream_id: int) -> tuple[int, int]:
        """(acknowledged, written) offsets of what this side sent on ``stream_id``."""
        return self.native.send_offsets(stream_id)

    def rtt(self) -> tuple[float, float, float] | None:
        """(latest, smoothed, minimum) RTT in seconds, or ``None`` before the first sample."""
        rtt = self.native.rtt
        if rtt is None:
            return None
        return rtt[0] / NS, rtt[1] / NS, rtt[2] / NS

    def pending_datagrams(self) -> int:
        """None are ever queued (see ``send_datagram``)."""
        return 0

    def drop_oldest_datagrams(self, count: int) -> int:
        """Nothing to drop (see ``send_datagram``)."""
        return 0
