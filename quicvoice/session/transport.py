"""One interface over the two ways a voice session rides QUIC: raw QUIC, or WebTransport on HTTP/3.

A transport turns aioquic's QUIC events into ``TransportEvent``s about streams and datagrams of
the voice session, and maps stream operations back. Both are sans-I/O wrappers around
``QuicConnection`` (and ``H3Connection``), which queue what they send until the I/O shell asks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aioquic.h3.connection import FrameUnexpected, H3Connection
from aioquic.h3.events import (
    DatagramReceived,
    DataReceived,
    HeadersReceived,
    WebTransportStreamDataReceived,
)
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    DatagramFrameReceived,
    HandshakeCompleted,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)

from .. import quic as glue
from ..errors import InvalidStateError
from .capsules import CapsuleReader, encode_close_capsule

#: ALPN of the raw-QUIC voice protocol.
ALPN_VOICE = "quicvoice/1"
#: ALPN of HTTP/3 (WebTransport sessions and the status page).
ALPN_H3 = "h3"
WEBTRANSPORT_PATH = "/voice"
#: Overhead of a QUIC DATAGRAM frame inside a short-header packet, with a 20-octet DCID:
#: header 1 + 20 + packet number 4, AEAD tag 16, frame type and length 1 + 2.
DATAGRAM_OVERHEAD = 44
#: WebTransport datagrams carry the quarter stream ID first (up to 4 octets here).
WEBTRANSPORT_DATAGRAM_OVERHEAD = 4
#: draft-ietf-webtrans-http3 §4.3: application stream error codes 0..255 travel as HTTP/3 codes
#: from this base, skipping the reserved (GREASE) code points every 0x1f.
WEBTRANSPORT_ERROR_BASE = 0x52E4A40FA8DB
WEBTRANSPORT_MAX_APP_ERROR = 0xFF


def webtransport_error_to_http3(code: int) -> int:
    """Map an application stream error code (0..255) to its HTTP/3 code point."""
    if not 0 <= code <= WEBTRANSPORT_MAX_APP_ERROR:
        return code
    return WEBTRANSPORT_ERROR_BASE + code + code // 0x1E


def webtransport_error_from_http3(code: int) -> int:
    """The application stream error code an HTTP/3 code point carries (unmapped: unchanged)."""
    shifted = code - WEBTRANSPORT_ERROR_BASE
    last = webtransport_error_to_http3(WEBTRANSPORT_MAX_APP_ERROR) - WEBTRANSPORT_ERROR_BASE
    if not 0 <= shifted <= last or (shifted + 1) % 0x1F == 0:
        return code
    return shifted - shifted // 0x1F


class TransportEvent:
    """Base class of transport events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Ready(TransportEvent):
    """The voice session can use streams (raw: handshake done; WebTransport: CONNECT accepted)."""


@dataclass(frozen=True, slots=True)
class StreamData(TransportEvent):
    """Data arrived on a stream of the session."""

    stream_id: int
    data: bytes
    end_stream: bool


@dataclass(frozen=True, slots=True)
class StreamAborted(TransportEvent):
    """The peer reset a stream (RESET_STREAM) or asked us to stop sending on it (STOP_SENDING)."""

    stream_id: int
    error_code: int
    #: True for RESET_STREAM (its receive side ended), False for STOP_SENDING.
    reset: bool


@dataclass(frozen=True, slots=True)
class Datagram(TransportEvent):
    """A datagram of the session arrived."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Closed(TransportEvent):
    """The connection is closed."""

    error_code: int
    reason: str


class VoiceTransport(Protocol):
    """Streams and datagrams of one voice session, on whichever QUIC engine carries it."""

    @property
    def is_client(self) -> bool:
        """Whether this is the client side."""
        ...

    @property
    def max_datagram_payload(self) -> int:
        """The largest voice datagram that fits one packet."""
        ...

    def handle_event(self, event: QuicEvent) -> list[TransportEvent]:
        """Translate one QUIC event."""
        ...

    def is_peer_bidi_stream(self, stream_id: int) -> bool:
        """Whether ``stream_id`` is a bidirectional stream the peer opened."""
        ...

    def open_stream(self, unidirectional: bool) -> int:
        """Open a stream of the session and return its ID."""
        ...

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue ``data`` on a stream."""
        ...

    def reset(self, stream_id: int, error_code: int) -> None:
        """Abort sending on a stream (RESET_STREAM)."""
        ...

    def stop(self, stream_id: int, error_code: int) -> None:
        """Ask the peer to stop sending on a stream (STOP_SENDING)."""
        ...

    def send_datagram(self, data: bytes) -> None:
        """Queue a datagram."""
        ...

    def close(self, error_code: int, reason: str, *, deliver: tuple[int, ...] = ()) -> None:
        """Close the connection; a server sends what was written on ``deliver`` first."""
        ...

    def unacked_bytes(self, stream_id: int) -> int:
        """Octets written to ``stream_id`` that the peer has not acknowledged yet."""
        ...

    def send_offsets(self, stream_id: int) -> tuple[int, int]:
        """(acknowledged, written) offsets of what this side sent on ``stream_id``."""
        ...

    def rtt(self) -> tuple[float, float, float] | None:
        """(latest, smoothed, minimum) RTT in seconds, or ``None`` before the first sample."""
        ...

    def pending_datagrams(self) -> int:
        """Datagrams queued and not sent yet."""
        ...

    def drop_oldest_datagrams(self, count: int) -> int:
        """Drop up to ``count`` of the oldest queued datagrams; return how many."""
        ...


def _is_bidi(stream_id: int) -> bool:
    return not stream_id & 2


def _is_local(stream_id: int, is_client: bool) -> bool:
    return bool(stream_id & 1) != is_client


class _QuicStreams:
    """The stream and datagram operations both transports share."""

    quic: QuicConnection

    @property
    def is_client(self) -> bool:
        """Whether this is the client side."""
        return bool(self.quic.configuration.is_client)

    def is_peer_bidi_stream(self, stream_id: int) -> bool:
        """Whether ``stream_id`` is a bidirectional stream the peer opened."""
        return _is_bidi(stream_id) and not _is_local(stream_id, self.is_client)

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue ``data`` on a stream."""
        self.quic.send_stream_data(stream_id, data, end_stream)

    def unacked_bytes(self, stream_id: int) -> int:
        """Octets written to ``stream_id`` that the peer has not acknowledged yet."""
        return glue.unacked_stream_bytes(self.quic, stream_id)

    def send_offsets(self, stream_id: int) -> tuple[int, int]:
        """(acknowledged, written) offsets of what this side sent on ``stream_id``."""
        return glue.stream_send_offsets(self.quic, stream_id)

    def rtt(self) -> tuple[float, float, float] | None:
        """(latest, smoothed, minimum) RTT in seconds, or ``None`` before the first sample."""
        return glue.rtt_seconds(self.quic)

    def pending_datagrams(self) -> int:
        """DATAGRAM frames in aioquic's send queue."""
        return glue.pending_datagrams(self.quic)

    def drop_oldest_datagrams(self, count: int) -> int:
        """Drop up to ``count`` of the oldest queued DATAGRAM frames; return how many."""
        return glue.drop_oldest_datagrams(self.quic, count)

    def reset(self, stream_id: int, error_code: int) -> None:
        """Abort sending on a stream; a stream already finished or reset is left alone."""
        try:
            self.quic.reset_stream(stream_id, error_code)
        except ValueError:
            pass

    def stop(self, stream_id: int, error_code: int) -> None:
        """Ask the peer to stop sending; a stream whose receive side is done is left alone."""
        try:
            self.quic.stop_stream(stream_id, error_code)
        except ValueError:
            pass

    def close(self, error_code: int, reason: str, *, deliver: tuple[int, ...] = ()) -> None:
        """Close the connection with an application error code.

        A server's last words reach the client before the close: what was written on the
        ``deliver`` streams (the ``error`` message) goes out first, and CONNECTION_CLOSE
        follows once it is acknowledged (at most 1 s later, ``quic.CLOSE_LINGER_MAX``);
        aioquic alone would drop it. A client closes at once.

        A server closing before its handshake completes (refusing a hello that came in
        0-RTT) waits for the completion: until then the close could only go out in Initial or
        Handshake packets, as a bare APPLICATION_ERROR without code or reason (RFC 9000
        §10.2.3), and the client could not tell a refusal from any other failure. The
        ``error`` message queued before it reaches the client in 0.5-RTT data meanwhile.
        """
        if self.is_client:
            self.quic.close(error_code=error_code, reason_phrase=reason)
            return
        if not self._handshake_done:
            if self._deferred_close is None:
                self._deferred_close = (error_code, reason, deliver)
            return
        self._close_server(error_code, reason, deliver)

    _handshake_done = False
    _deferred_close: tuple[int, str, tuple[int, ...]] | None = None

    def _close_server(self, error_code: int, reason: str, deliver: tuple[int, ...]) -> None:
        deliver = self._say_goodbye(error_code, reason, deliver)
        glue.close_after_delivery(
            self.quic, error_code, reason, deliver, until_answered=self._awaits_answer
        )

    #: Whether the server's close waits for the peer's answer rather than an acknowledgement.
    _awaits_answer = False

    def _say_goodbye(
        self, error_code: int, reason: str, deliver: tuple[int, ...]
    ) -> tuple[int, ...]:
        """Write what the transport itself says last; return the streams to deliver."""
        return deliver

    def _handshake_completed(self) -> None:
        self._handshake_done = True
        if self._deferred_close is not None:
            self._close_server(*self._deferred_close)

    def _common(self, event: QuicEvent) -> TransportEvent | None:
        if isinstance(event, StreamReset):
            return StreamAborted(event.stream_id, event.error_code, reset=True)
        if isinstance(event, StopSendingReceived):
            return StreamAborted(event.stream_id, event.error_code, reset=False)
        if isinstance(event, ConnectionTerminated):
            return Closed(event.error_code, event.reason_phrase)
        return None


class RawQuicTransport(_QuicStreams):
    """The voice session is the whole QUIC connection (ALPN ``quicvoice/1``)."""

    def __init__(self, quic: QuicConnection) -> None:
        self.quic = quic

    @property
    def max_datagram_payload(self) -> int:
        """The largest voice datagram that fits one packet."""
        return int(self.quic.configuration.max_datagram_size) - DATAGRAM_OVERHEAD

    def handle_event(self, event: QuicEvent) -> list[TransportEvent]:
        """Translate one QUIC event."""
        if isinstance(event, StreamDataReceived):
            return [StreamData(event.stream_id, event.data, event.end_stream)]
        if isinstance(event, DatagramFrameReceived):
            return [Datagram(event.data)]
        if isinstance(event, HandshakeCompleted):
            self._handshake_completed()
            return [Ready()]
        common = self._common(event)
        return [common] if common is not None else []

    def open_stream(self, unidirectional: bool) -> int:
        """Open a QUIC stream."""
        return self.quic.get_next_available_stream_id(is_unidirectional=unidirectional)

    def send_datagram(self, data: bytes) -> None:
        """Queue a QUIC DATAGRAM frame."""
        self.quic.send_datagram_frame(data)


StatusProvider = Callable[[], dict[str, Any]]


class WebTransportTransport(_QuicStreams):
    """The voice session is a WebTransport session (draft-02, as Chromium speaks it) on HTTP/3.

    The server side also answers ``GET /`` with a JSON status, so any HTTP/3 client can probe
    a backend, and refuses other requests with 404.
    """

    def __init__(
        self,
        quic: QuicConnection,
        *,
        path: str = WEBTRANSPORT_PATH,
        authority: str = "localhost",
        status: StatusProvider | None = None,
    ) -> None:
        self.quic = quic
        self.h3: H3Connection = glue.VoiceH3Connection(quic, enable_webtransport=True)
        self._path = path
        self._authority = authority
        self._status = status
        #: The stream ID of the CONNECT request, which names the session.
        self.session_id: int | None = None
        self._session_streams: set[int] = set()
        self._connect_sent = False
        self._capsules = CapsuleReader()
        self._close_capsule_sent = False

    @property
    def max_datagram_payload(self) -> int:
        """The largest voice datagram that fits one packet."""
        return (
            int(self.quic.configuration.max_datagram_size)
            - DATAGRAM_OVERHEAD
            - WEBTRANSPORT_DATAGRAM_OVERHEAD
        )

    def handle_event(self, event: QuicEvent) -> list[TransportEvent]:
        """Translate one QUIC event, passing it through HTTP/3 first."""
        out: list[TransportEvent] = []
        if isinstance(event, HandshakeCompleted):
            self._handshake_completed()
        common = self._common(event)
        if isinstance(common, StreamAborted):
            if common.stream_id in self._session_streams:
                code = webtransport_error_from_http3(common.error_code)
                common = StreamAborted(common.stream_id, code, reset=common.reset)
            else:
                common = None
        if self.is_client and isinstance(event, HandshakeCompleted) and not self._connect_sent:
            self._send_connect()
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, WebTransportStreamDataReceived):
                if h3_event.session_id == self.session_id:
                    self._session_streams.add(h3_event.stream_id)
                    out.append(StreamData(h3_event.stream_id, h3_event.data, h3_event.stream_ended))
                else:
                    self.reset(h3_event.stream_id, 0x100)
            elif isinstance(h3_event, DatagramReceived):
                if h3_event.stream_id == self.session_id:
                    out.append(Datagram(h3_event.data))
            elif isinstance(h3_event, HeadersReceived):
                out.extend(self._on_headers(h3_event))
            elif isinstance(h3_event, DataReceived) and h3_event.stream_id == self.session_id:
                out.extend(self._on_connect_stream(h3_event.data, h3_event.stream_ended))
        if common is not None:
            out.append(common)
        return out

    def _on_connect_stream(self, data: bytes, ended: bool) -> list[TransportEvent]:
        """The CONNECT stream carries capsules; a close capsule, or the stream's end, ends
        the session, and the session is all this connection is for."""
        capsule = self._capsules.feed(data)
        if capsule is None and not ended:
            return []
        if self._close_capsule_sent:
            # The peer answered our own close (its FIN, or its close crossing ours). A
            # browser's network stack answers before its page has read the close: the
            # connection closes when the browser closes it, or CLOSE_LINGER_MAX after ours.
            return []
        if capsule is None:
            closed = Closed(0, "WebTransport session closed by the peer")
        else:
            closed = Closed(capsule.code, capsule.reason)
        self.quic.close(error_code=0, reason_phrase="WebTransport session closed by the peer")
        return [closed]

    def _say_goodbye(
        self, error_code: int, reason: str, deliver: tuple[int, ...]
    ) -> tuple[int, ...]:
        """Close the WebTransport session with CLOSE_WEBTRANSPORT_SESSION (code and reason)
        and FIN on the CONNECT stream, then the connection once that has arrived: a browser
        learns the code from ``WebTransport.closed``, where a bare CONNECTION_CLOSE gives it
        only "Connection lost"."""
        session_id = self.session_id
        if session_id is not None and not self._close_capsule_sent:
            self._close_capsule_sent = True
            capsule = encode_close_capsule(error_code & 0xFFFFFFFF, reason)
            try:
                self.h3.send_data(session_id, capsule, end_stream=True)
            except (FrameUnexpected, ValueError):  # the CONNECT stream is already finished
                pass
            else:
                deliver = (*deliver, session_id)
                # A browser acknowledges the capsule before its page has read it; its answer
                # (FIN on the CONNECT stream) says it has: close then, or after 1 s.
                self._awaits_answer = True
        return deliver

    def _send_connect(self) -> None:
        self._connect_sent = True
        stream_id = self.quic.get_next_available_stream_id()
        self.h3.send_headers(
            stream_id,
            [
                (b":method", b"CONNECT"),
                (b":scheme", b"https"),
                (b":authority", self._authority.encode()),
                (b":path", self._path.encode()),
                (b":protocol", b"webtransport"),
            ],
        )
        self.session_id = stream_id

    def _on_headers(self, event: HeadersReceived) -> list[TransportEvent]:
        headers = dict(event.headers)
        if self.is_client:
            if event.stream_id == self.session_id:
                if headers.get(b":status") == b"200":
                    return [Ready()]
                status = headers.get(b":status", b"?").decode(errors="replace")
                self.close(0x100, f"WebTransport CONNECT refused with status {status}")
            return []
        method = headers.get(b":method")
        path = headers.get(b":path")
        if (
            method == b"CONNECT"
            and headers.get(b":protocol") == b"webtransport"
            and path == self._path.encode()
            and self.session_id is None
        ):
            self.session_id = event.stream_id
            self.h3.send_headers(
                event.stream_id,
                [(b":status", b"200"), (b"sec-webtransport-http3-draft", b"draft02")],
            )
            return [Ready()]
        if method == b"GET" and path == b"/" and self._status is not None:
            body = json.dumps(self._status()).encode()
            self.h3.send_headers(
                event.stream_id,
                [
                    (b":status", b"200"),
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            )
            self.h3.send_data(event.stream_id, body, end_stream=True)
            return []
        refusal = b"409" if method == b"CONNECT" and self.session_id is not None else b"404"
        self.h3.send_headers(event.stream_id, [(b":status", refusal)], end_stream=True)
        return []

    def reset(self, stream_id: int, error_code: int) -> None:
        """Abort sending on a stream, with the code mapped into the HTTP/3 space."""
        super().reset(stream_id, webtransport_error_to_http3(error_code))

    def stop(self, stream_id: int, error_code: int) -> None:
        """Ask the peer to stop sending, with the code mapped into the HTTP/3 space."""
        super().stop(stream_id, webtransport_error_to_http3(error_code))

    def open_stream(self, unidirectional: bool) -> int:
        """Open a WebTransport stream of the session."""
        if self.session_id is None:
            raise InvalidStateError("the WebTransport session is not established")
        stream_id = self.h3.create_webtransport_stream(self.session_id, unidirectional)
        if not unidirectional:
            glue.mark_local_webtransport_stream(self.h3, stream_id, self.session_id)
        self._session_streams.add(stream_id)
        return stream_id

    def send_datagram(self, data: bytes) -> None:
        """Queue an HTTP/3 datagram of the session."""
        if self.session_id is None:
            raise InvalidStateError("the WebTransport session is not established")
        self.h3.send_datagram(self.session_id, data)
