"""The voice session state machine, sans-I/O, for both the client and the server side.

``VoiceConnection`` wraps a ``VoiceTransport`` the way aioquic's ``H3Connection`` wraps a
``QuicConnection``: feed it every QUIC event with ``handle_event(event, now)``, get back voice
events; call its methods to send, then let the I/O shell transmit what aioquic queued. An
engine whose shell makes the transport's events itself (ngtcp2) feeds those to
``handle_transport_event(event, now)`` instead, skipping the aioquic event in between.

Control messages allowed in each state (anything else is a ``ProtocolError``):

    side    state              peer may send
    server  AWAITING_HELLO     hello
    server  NEGOTIATING        (nothing: the application is deciding)
    server  ACTIVE             event, error, cancel, bye, played
    client  AWAITING_WELCOME   welcome, error
    client  ACTIVE             event, error, cancel, bye
    both    CLOSED             (everything ignored)

A ``ProtocolError`` raised while handling peer input closes this connection only, with the
error's code; it never propagates to the caller.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any

from aioquic.quic.events import QuicEvent

from ..errors import InvalidStateError, ProtocolError
from .codes import ErrorCode
from .events import (
    AudioReceived,
    ByeReceived,
    ErrorReceived,
    EventReceived,
    HelloReceived,
    SessionClosed,
    SessionStarted,
    TurnCancelled,
    TurnEnded,
    TurnPlayed,
    TurnStarted,
    UplinkEnded,
    VoiceEvent,
)
from .messages import (
    Bye,
    Cancel,
    Error,
    Event,
    Hello,
    Message,
    MessageReader,
    Played,
    UplinkMode,
    Welcome,
    codec_clock_rate,
    encode_message,
)
from .stats import ArrivalStats, SessionStats
from .transport import (
    Closed,
    Datagram,
    Ready,
    StreamAborted,
    StreamData,
    TransportEvent,
    VoiceTransport,
)
from .uplink_check import UplinkCheck
from .wire import (
    FrameReader,
    MediaFrame,
    StreamHeaderReader,
    StreamKind,
    decode_datagram,
    encode_datagram,
    encode_frame,
    encode_frame_fields,
    encode_stream_header,
)

U32 = 1 << 32
#: What opening a stream may add to its unacknowledged octets besides what this layer writes
#: (a WebTransport stream's preamble: two varints), for the backlog bound of ``send_turn_audio``.
STREAM_OPEN_SLACK = 64


class State(Enum):
    """Where a voice session is in its life."""

    AWAITING_HELLO = auto()
    NEGOTIATING = auto()
    AWAITING_WELCOME = auto()
    ACTIVE = auto()
    CLOSED = auto()


ALLOWED_MESSAGES: dict[tuple[bool, State], frozenset[type[Message]]] = {
    (False, State.AWAITING_HELLO): frozenset({Hello}),
    (False, State.NEGOTIATING): frozenset(),
    (False, State.ACTIVE): frozenset({Event, Error, Cancel, Bye, Played}),
    (True, State.AWAITING_WELCOME): frozenset({Welcome, Error}),
    (True, State.ACTIVE): frozenset({Event, Error, Cancel, Bye}),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionLimits:
    """Resource limits one peer may not exceed; each breach closes that session only."""

    #: Streams the peer may open that the protocol has no use for (each is refused).
    max_unexpected_streams: int = 8
    #: Unidirectional streams the peer may have open at once.
    max_open_peer_streams: int = 16
    #: Octets written to the peer and not yet acknowledged, over all streams (a peer that
    #: never reads would otherwise make aioquic buffer without bound).
    max_unacked_bytes: int = 8 * 1024 * 1024
    #: Realtime mode: DATAGRAM frames waiting to be sent before the oldest are dropped.
    max_datagram_queue: int = 8
    #: Realtime mode: seconds a frame may wait to be sent before it is useless and dropped.
    datagram_deadline: float = 0.1
    #: Media events held until the session starts: a client's 0-RTT uplink reaching the server
    #: before ``accept()``, or a turn reaching the client before ``welcome`` (the streams are
    #: not ordered with the control stream). 500 frames is 10 s of audio.
    max_early_events: int = 500
    #: Ended turns remembered as possibly still playing out at the client (cancellable);
    #: a ``played`` report forgets one, and beyond this the oldest is forgotten.
    max_playing_turns: int = 64


@dataclass(slots=True)
class _InboundStream:
    header: StreamHeaderReader
    frames: FrameReader
    kind: StreamKind | None = None
    turn_id: int | None = None
    cancelled: bool = False


class VoiceConnection:
    """One voice session over one QUIC connection; client or server by the transport's side."""

    def __init__(
        self,
        transport: VoiceTransport,
        *,
        hello: Hello | None = None,
        limits: SessionLimits | None = None,
    ) -> None:
        self._transport = transport
        self.is_client = transport.is_client
        if self.is_client and hello is None:
            hello = Hello()
        self._hello = hello
        self.limits = limits or SessionLimits()
        self.state = State.AWAITING_WELCOME if self.is_client else State.AWAITING_HELLO
        self.welcome: Welcome | None = None
        self._control_stream_id: int | None = None
        self._control_reader = MessageReader()
        self._uplink_stream_id: int | None = None
        self._inbound: dict[int, _InboundStream] = {}
        self._unexpected_streams = 0
        self._closed_reported = False
        self._early_events: list[VoiceEvent] = []
        self._uplink_opened = False
        self._turn_streams: dict[int, int] = {}
        self._turns_ended: set[int] = set()
        # Turns whose FIN went out (server) or came in (client) and that may still be playing
        # out at the client: either side may still cancel them (barge-in); oldest first.
        self._turns_playing: dict[int, None] = {}
        self._next_turn_id = 0
        self._next_seq = 0
        # An upper bound of the octets the turn streams hold unacknowledged: the sum measured
        # at the last full check, plus what was written to turns since (see _backlog_exceeded).
        self._backlog_bound = 0
        self._datagram_times: deque[float] = deque()
        self._arrivals: ArrivalStats | None = None
        #: Server: what every uplink payload must look like, once the session has started.
        self._uplink_check: UplinkCheck | None = None
        self._stats: dict[str, int] = dict.fromkeys(
            (
                "uplink_frames_sent",
                "uplink_frames_received",
                "uplink_frames_dropped",
                "downlink_frames_sent",
                "downlink_frames_received",
                "turns",
                "turns_cancelled",
                "bytes_sent",
                "bytes_received",
            ),
            0,
        )

    # -- reading -------------------------------------------------------------------------

    def handle_event(self, event: QuicEvent, now: float) -> list[VoiceEvent]:
        """Handle one QUIC event received at ``now`` (seconds); return the voice events."""
        out: list[VoiceEvent] = []
        for transport_event in self._transport.handle_event(event):
            self._handle(transport_event, now, out)
        return out

    def handle_transport_event(self, event: TransportEvent, now: float) -> list[VoiceEvent]:
        """Handle one transport event received at ``now`` (seconds); return the voice events.

        For a shell that makes this connection's ``TransportEvent``s itself (the ngtcp2
        engine): the same as ``handle_event`` of the QUIC event it stands for, without making
        that. A ``ProtocolError`` in the peer's input closes the session with its code, as there.
        """
        out: list[VoiceEvent] = []
        self._handle(event, now, out)
        return out

    def handle_stream_data(
        self, stream_id: int, data: bytes, end_stream: bool, now: float
    ) -> list[VoiceEvent]:
        """``handle_transport_event(StreamData(stream_id, data, end_stream), now)`` without
        making the event: the per-frame entry of a shell that has the three values at hand."""
        out: list[VoiceEvent] = []
        if self.state is State.CLOSED:
            return out
        try:
            self._on_stream_data(stream_id, data, end_stream, now, out)
        except ProtocolError as error:
            self._abort(error)
        return out

    def _handle(self, event: TransportEvent, now: float, out: list[VoiceEvent]) -> None:
        if self.state is State.CLOSED and not isinstance(event, Closed):
            return
        try:
            self._dispatch(event, now, out)
        except ProtocolError as error:
            self._abort(error)

    def _dispatch(self, event: TransportEvent, now: float, out: list[VoiceEvent]) -> None:
        if isinstance(event, StreamData):
            self._on_stream_data(event.stream_id, event.data, event.end_stream, now, out)
        elif isinstance(event, Datagram):
            self._on_datagram(event.data, now, out)
        elif isinstance(event, StreamAborted):
            self._on_stream_aborted(event, out)
        elif isinstance(event, Ready):
            if self.is_client and self._control_stream_id is None:
                self._control_stream_id = self._transport.open_stream(unidirectional=False)
                assert self._hello is not None
                self._send_message(self._hello)
        elif isinstance(event, Closed) and not self._closed_reported:
            self._closed_reported = True
            self.state = State.CLOSED
            out.append(SessionClosed(error_code=event.error_code, reason=event.reason))

    def _on_stream_data(
        self, stream_id: int, data: bytes, end_stream: bool, now: float, out: list[VoiceEvent]
    ) -> None:
        self._stats["bytes_received"] += len(data)
        inbound = self._inbound.get(stream_id)
        if inbound is not None and inbound.kind is StreamKind.UPLINK:
            # The per-frame case: more of the open uplink (it passed every check below when
            # it opened, and an uplink is never cancelled).
            self._on_uplink_data(inbound, data, end_stream, now, out)
            if end_stream:
                del self._inbound[stream_id]
            return
        if stream_id == self._control_stream_id or (
            self._control_stream_id is None
            and not self.is_client
            and self._transport.is_peer_bidi_stream(stream_id)
        ):
            self._control_stream_id = stream_id
            for message in self._control_reader.feed(data, end_stream):
                self._on_message(message, out)
            return
        if self._transport.is_peer_bidi_stream(stream_id) or not self._is_peer_uni(stream_id):
            self._refuse_stream(stream_id)
            return
        if inbound is None:
            if len(self._inbound) >= self.limits.max_open_peer_streams:
                raise ProtocolError("too many open streams", ErrorCode.LIMIT_EXCEEDED)
            inbound = self._inbound[stream_id] = _InboundStream(StreamHeaderReader(), FrameReader())
        rest: bytes | None = data
        # Media that arrives before the session has started waits for it (see SessionLimits).
        sink = out if self.state is State.ACTIVE else self._early_events
        if inbound.kind is None:
            rest = inbound.header.feed(data)
            if rest is None:
                if end_stream:
                    raise ProtocolError("stream ended inside its header", ErrorCode.STREAM_ERROR)
                return
            self._on_stream_opened(stream_id, inbound, sink)
        if inbound.cancelled:
            if end_stream:
                del self._inbound[stream_id]
            return
        if inbound.kind is StreamKind.UPLINK:
            self._on_uplink_data(inbound, rest or b"", end_stream, now, out)
        else:
            frames = inbound.frames.feed(rest or b"", end_stream)
            turn_id = inbound.turn_id
            sink.extend(AudioReceived(frame=frame, turn_id=turn_id) for frame in frames)
            self._stats["downlink_frames_received"] += len(frames)
            if end_stream:
                assert turn_id is not None
                self._turns_ended.add(turn_id)
                self._playing(turn_id)
                sink.append(TurnEnded(turn_id=turn_id))
            self._check_early_events()
        if end_stream:
            del self._inbound[stream_id]

    def _on_uplink_data(
        self,
        inbound: _InboundStream,
        data: bytes,
        end_stream: bool,
        now: float,
        out: list[VoiceEvent],
    ) -> None:
        """Frames of the reliable uplink, past its header."""
        frames = inbound.frames.feed(data, end_stream)
        # Media that arrives before the session has started waits for it (see SessionLimits).
        sink = out if self.state is State.ACTIVE else self._early_events
        arrivals = self._arrivals
        check = self._uplink_check
        for frame in frames:
            if check is not None:
                check.check(frame.payload)
            if arrivals is not None:
                arrivals.on_frame(frame.seq, frame.timestamp, now)
            sink.append(AudioReceived(frame=frame))
        self._stats["uplink_frames_received"] += len(frames)
        if end_stream:
            sink.append(UplinkEnded())
        if sink is not out:
            self._check_early_events()

    def _check_early_events(self) -> None:
        if len(self._early_events) > self.limits.max_early_events:
            raise ProtocolError(
                "too much media before the session started", ErrorCode.LIMIT_EXCEEDED
            )

    def _on_stream_opened(
        self, stream_id: int, inbound: _InboundStream, out: list[VoiceEvent]
    ) -> None:
        kind = inbound.header.kind
        if kind is StreamKind.UPLINK:
            if self.is_client:
                raise ProtocolError("uplink stream from the server", ErrorCode.STREAM_ERROR)
            mode = self._uplink_mode()
            if mode is not None and mode is not UplinkMode.RELIABLE:
                raise ProtocolError("uplink stream in realtime mode", ErrorCode.STREAM_ERROR)
            if any(s.kind is StreamKind.UPLINK for s in self._inbound.values()):
                raise ProtocolError("a second uplink stream", ErrorCode.STREAM_ERROR)
        elif kind is StreamKind.TURN:
            if not self.is_client:
                raise ProtocolError("turn stream from the client", ErrorCode.STREAM_ERROR)
            turn_id = inbound.header.turn_id
            assert turn_id is not None
            if turn_id in self._turn_streams or turn_id in self._turns_ended:
                raise ProtocolError(f"turn {turn_id} opened twice", ErrorCode.STREAM_ERROR)
            self._turn_streams[turn_id] = stream_id
            inbound.turn_id = turn_id
            self._stats["turns"] += 1
            out.append(TurnStarted(turn_id=turn_id))
        inbound.kind = kind

    def _uplink_mode(self) -> UplinkMode | None:
        """The uplink mode as far as known: from ``welcome``, else from ``hello``."""
        if self.welcome is not None:
            return self.welcome.uplink
        return self._hello.uplink if self._hello is not None else None

    def _on_datagram(self, data: bytes, now: float, out: list[VoiceEvent]) -> None:
        self._stats["bytes_received"] += len(data)
        if self.is_client or self.state is not State.ACTIVE:
            return
        _, frame = decode_datagram(data)
        if self.welcome is None or self.welcome.uplink is not UplinkMode.REALTIME:
            raise ProtocolError("uplink datagram in reliable mode", ErrorCode.FRAME_ERROR)
        if self._uplink_check is not None:
            self._uplink_check.check(frame.payload)
        if self._arrivals is not None:
            self._arrivals.on_frame(frame.seq, frame.timestamp, now)
        self._stats["uplink_frames_received"] += 1
        out.append(AudioReceived(frame=frame))

    def _on_stream_aborted(self, event: StreamAborted, out: list[VoiceEvent]) -> None:
        stream_id = event.stream_id
        if stream_id == self._control_stream_id:
            raise ProtocolError("the control stream was aborted", ErrorCode.STREAM_ERROR)
        turn_id = next((t for t, s in self._turn_streams.items() if s == stream_id), None)
        inbound = self._inbound.get(stream_id)
        if event.reset:
            self._inbound.pop(stream_id, None)
        if turn_id is None or turn_id in self._turns_ended:
            return
        if self.is_client:
            if inbound is not None and inbound.cancelled:
                return
        else:
            self._transport.reset(stream_id, ErrorCode.CANCELLED)
        self._turns_ended.add(turn_id)
        self._stats["turns_cancelled"] += 1
        out.append(TurnCancelled(turn_id=turn_id, by_peer=True))

    def _on_message(self, message: Message, out: list[VoiceEvent]) -> None:
        allowed = ALLOWED_MESSAGES.get((self.is_client, self.state), frozenset())
        if type(message) not in allowed:
            code = (
                ErrorCode.HELLO_REQUIRED
                if self.state is State.AWAITING_HELLO
                else (ErrorCode.PROTOCOL_ERROR)
            )
            raise ProtocolError(f"unexpected {message.TYPE} in state {self.state.name}", code)
        if isinstance(message, Hello):
            if message.uplink is UplinkMode.REALTIME and any(
                s.kind is StreamKind.UPLINK for s in self._inbound.values()
            ):
                raise ProtocolError("uplink stream in realtime mode", ErrorCode.STREAM_ERROR)
            self._hello = message
            self.state = State.NEGOTIATING
            out.append(HelloReceived(hello=message))
        elif isinstance(message, Welcome):
            self._start(message)
            if message.uplink is UplinkMode.RELIABLE and not self._uplink_opened:
                self._open_uplink()
            out.append(self._started_event(message))
            out.extend(self.take_early_events())
        elif isinstance(message, Event):
            out.append(EventReceived(name=message.name, data=message.data))
        elif isinstance(message, Error):
            out.append(ErrorReceived(code=message.code, message=message.message))
        elif isinstance(message, Cancel):
            self._cancel(message.turn_id, by_peer=True, out=out)
        elif isinstance(message, Bye):
            out.append(ByeReceived(uplink_frames=message.uplink_frames))
        elif isinstance(message, Played) and message.turn_id < self._next_turn_id:
            # A report for a turn this connection never opened (one from before a resume)
            # says nothing about this connection's turns: it is dropped.
            self._turns_playing.pop(message.turn_id, None)
            out.append(
                TurnPlayed(
                    turn_id=message.turn_id,
                    played_ms=message.played_ms,
                    complete=message.complete,
                )
            )

    def _start(self, welcome: Welcome) -> None:
        self.welcome = welcome
        self.state = State.ACTIVE
        rate = codec_clock_rate(welcome.codec)
        if rate is not None:
            self._arrivals = ArrivalStats(rate, late_threshold=welcome.frame_ms / 1000)
        if not self.is_client:
            self._uplink_check = UplinkCheck(codec=welcome.codec, frame_ms=welcome.frame_ms)

    @staticmethod
    def _started_event(welcome: Welcome) -> SessionStarted:
        return SessionStarted(
            session_id=welcome.session_id,
            codec=welcome.codec,
            frame_ms=welcome.frame_ms,
            uplink=welcome.uplink,
            server_id=welcome.server_id,
            resumed=welcome.resumed,
            resume_token=welcome.resume_token,
            home_cid=welcome.home_cid,
        )

    # -- writing -------------------------------------------------------------------------

    @property
    def hello(self) -> Hello | None:
        """The client's ``hello`` (sent, or received by the server)."""
        return self._hello

    def accept(self, welcome: Welcome) -> SessionStarted:
        """Server: start the session the client asked for.

        Media that arrived before (a 0-RTT uplink) is then available from
        ``take_early_events()``.
        """
        if self.is_client or self.state is not State.NEGOTIATING:
            raise InvalidStateError(f"accept() in state {self.state.name}")
        self._start(welcome)
        self._send_message(welcome)
        check = self._uplink_check
        try:
            for early in self._early_events:
                if check is not None and isinstance(early, AudioReceived):
                    check.check(early.frame.payload)
        except ProtocolError as error:
            # Only now is the codec known that the early uplink had to match.
            self._early_events = []
            self._abort(error)
        return self._started_event(welcome)

    def take_early_events(self) -> list[VoiceEvent]:
        """The media events that arrived before the session started, once (none when one
        of them did not match the codec and frame duration: the session is then closed)."""
        early, self._early_events = self._early_events, []
        return early

    def start_early(self) -> None:
        """Client: say ``hello`` now, before the handshake ends (0-RTT with a session ticket).

        In reliable mode the uplink stream opens at once too, so the first audio can travel
        in 0-RTT; the server holds it until it has accepted the session. Only idempotent data
        belongs here: a replayed 0-RTT flight can at worst repeat a hello and frames that the
        session numbering identifies.
        """
        if not self.is_client or self._control_stream_id is not None:
            return
        self._control_stream_id = self._transport.open_stream(unidirectional=False)
        assert self._hello is not None
        self._send_message(self._hello)
        if self._hello.uplink is UplinkMode.RELIABLE:
            self._open_uplink()

    def _open_uplink(self) -> None:
        self._uplink_opened = True
        self._uplink_stream_id = self._transport.open_stream(unidirectional=True)
        self._send(self._uplink_stream_id, encode_stream_header(StreamKind.UPLINK))

    def reject(self, code: int, message: str) -> None:
        """Server: refuse the session, with an ``error`` message and a close.

        ``code``: an ``ErrorCode`` or an application's refusal code (0x1000..0x1FFF).
        """
        self._send_message(Error(code=int(code), message=message))
        self._transport.close(int(code), message, deliver=self._last_words())
        self.state = State.CLOSED

    @property
    def uplink_stream_id(self) -> int | None:
        """Client, reliable mode: the ID of the open uplink stream."""
        return self._uplink_stream_id

    def send_audio(self, payload: bytes, timestamp: int, now: float, seq: int | None = None) -> int:
        """Client: send one uplink frame captured at ``timestamp`` (samples); return its seq.

        ``seq`` numbers the frame explicitly (a resumed call continues its numbering);
        by default frames are numbered from 0 on this connection.
        """
        early = self.state is State.AWAITING_WELCOME and self._uplink_stream_id is not None
        if not self.is_client or not (self.state is State.ACTIVE or early):
            raise InvalidStateError("send_audio() needs an active client session")
        if seq is None:
            seq = self._next_seq
        frame = MediaFrame(seq % U32, timestamp % U32, payload)
        self._next_seq = (seq + 1) % U32
        if self._uplink_mode() is UplinkMode.RELIABLE:
            if self._uplink_stream_id is None:
                raise InvalidStateError("the uplink has ended")
            self._send(self._uplink_stream_id, encode_frame(frame))
        else:
            datagram = encode_datagram(frame)
            if len(datagram) > self._transport.max_datagram_payload:
                raise ValueError(
                    f"a {len(payload)}-octet frame does not fit one datagram; "
                    "use a smaller frame or codec, or the reliable uplink"
                )
            self._bound_datagram_queue(now)
            self._transport.send_datagram(datagram)
            self._datagram_times.append(now)
            self._stats["bytes_sent"] += len(datagram)
        self._stats["uplink_frames_sent"] += 1
        return frame.seq

    def _bound_datagram_queue(self, now: float) -> None:
        transport = self._transport
        times = self._datagram_times
        while len(times) > transport.pending_datagrams():
            times.popleft()  # those were sent
        stale = 0
        while stale < len(times) and now - times[stale] > self.limits.datagram_deadline:
            stale += 1
        excess = max(stale, len(times) + 1 - self.limits.max_datagram_queue)
        if excess > 0:
            dropped = transport.drop_oldest_datagrams(excess)
            for _ in range(dropped):
                times.popleft()
            self._stats["uplink_frames_dropped"] += dropped

    def end_audio(self) -> None:
        """Client: finish the reliable uplink stream (FIN) after the last frame."""
        if self._uplink_stream_id is not None:
            self._send(self._uplink_stream_id, b"", end_stream=True)
            self._uplink_stream_id = None

    def start_turn(self) -> int:
        """Server: open a new response turn and return its ID."""
        if self.is_client or self.state is not State.ACTIVE:
            raise InvalidStateError("start_turn() needs an active server session")
        turn_id = self._next_turn_id
        self._next_turn_id += 1
        stream_id = self._transport.open_stream(unidirectional=True)
        self._turn_streams[turn_id] = stream_id
        self._stats["turns"] += 1
        header = encode_stream_header(StreamKind.TURN, turn_id)
        self._backlog_bound += STREAM_OPEN_SLACK + len(header)
        self._send(stream_id, header)
        return turn_id

    def send_turn_audio(self, turn_id: int, payload: bytes, timestamp: int) -> bool:
        """Server: append a frame to a turn; return False if the turn is cancelled or ended."""
        stream_id = self._turn_streams.get(turn_id)
        if stream_id is None or turn_id in self._turns_ended or self.state is not State.ACTIVE:
            return False
        if self._backlog_exceeded():
            return False
        seq = self._next_seq
        self._next_seq = (seq + 1) % U32
        data = encode_frame_fields(seq, timestamp, payload)
        self._backlog_bound += len(data)
        stats = self._stats
        stats["bytes_sent"] += len(data)
        self._transport.send(stream_id, data, False)
        stats["downlink_frames_sent"] += 1
        return True

    def end_turn(self, turn_id: int) -> None:
        """Server: finish a turn (FIN); the client plays out what it has buffered."""
        stream_id = self._turn_streams.get(turn_id)
        if stream_id is not None and turn_id not in self._turns_ended:
            self._turns_ended.add(turn_id)
            self._playing(turn_id)
            self._send(stream_id, b"", end_stream=True)

    def _playing(self, turn_id: int) -> None:
        self._turns_playing[turn_id] = None
        if len(self._turns_playing) > self.limits.max_playing_turns:
            del self._turns_playing[next(iter(self._turns_playing))]

    def cancel_turn(self, turn_id: int) -> list[VoiceEvent]:
        """Either side: barge-in. Stop the turn's stream and tell the peer; return the events."""
        out: list[VoiceEvent] = []
        self._cancel(turn_id, by_peer=False, out=out)
        return out

    def _cancel(self, turn_id: int, *, by_peer: bool, out: list[VoiceEvent]) -> None:
        if self._turns_playing.pop(turn_id, 0) is None:
            # Ended (FIN) but maybe still playing out at the client: no stream to stop, but
            # the cancel tells the client to flush it (specs/protocol.md, Barge-in).
            self._stats["turns_cancelled"] += 1
            if not by_peer:
                self._send_message(Cancel(turn_id=turn_id))
            out.append(TurnCancelled(turn_id=turn_id, by_peer=by_peer))
            return
        stream_id = self._turn_streams.get(turn_id)
        if stream_id is None or turn_id in self._turns_ended:
            return
        self._turns_ended.add(turn_id)
        self._stats["turns_cancelled"] += 1
        if self.is_client:
            self._transport.stop(stream_id, ErrorCode.CANCELLED)
            inbound = self._inbound.get(stream_id)
            if inbound is not None:
                inbound.cancelled = True
        else:
            self._transport.reset(stream_id, ErrorCode.CANCELLED)
        if not by_peer:
            self._send_message(Cancel(turn_id=turn_id))
        out.append(TurnCancelled(turn_id=turn_id, by_peer=by_peer))

    def send_played(self, turn_id: int, played_ms: int, *, complete: bool) -> bool:
        """Client: report how much of a turn was played out; False when not sent.

        Sent only in an active session whose server asked for reports (``played_reports``
        in ``welcome``): an older server would close the session on an unknown message.
        """
        welcome = self.welcome
        if self.is_client:
            self._turns_playing.pop(turn_id, None)  # reported: nothing left to cancel
        if not self.is_client or self.state is not State.ACTIVE or welcome is None:
            return False
        if not welcome.played_reports:
            return False
        self._send_message(Played(turn_id=turn_id, played_ms=played_ms, complete=complete))
        return True

    def turn_send_offsets(self, turn_id: int) -> tuple[int, int] | None:
        """Server: (acknowledged, written) octet offsets of a turn's stream.

        ``None`` for a turn this side never opened or has forgotten (finished and delivered).
        """
        stream_id = self._turn_streams.get(turn_id)
        if stream_id is None or self.is_client:
            return None
        return self._transport.send_offsets(stream_id)

    def send_event(self, name: str, data: Any = None) -> None:
        """Send an application event on the control stream."""
        self._send_message(Event(name=name, data=data))

    def send_bye(self, uplink_frames: int | None = None) -> None:
        """Say goodbye with this side's uplink count (sent, or received at the server)."""
        if uplink_frames is None:
            key = "uplink_frames_sent" if self.is_client else "uplink_frames_received"
            uplink_frames = self._stats[key]
        self._send_message(Bye(uplink_frames=uplink_frames))

    def close(self, code: ErrorCode | int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Close the connection; a server's control messages sent before (``bye``, ``error``)
        reach the client first."""
        self._transport.close(int(code), reason, deliver=self._last_words())

    def _send_message(self, message: Message) -> None:
        if self._control_stream_id is None:
            raise InvalidStateError("no control stream yet")
        self._send(self._control_stream_id, encode_message(message))

    def _send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        self._stats["bytes_sent"] += len(data)
        self._transport.send(stream_id, data, end_stream)

    def _backlog_exceeded(self) -> bool:
        """Close the session when the peer leaves too much of what we sent unacknowledged."""
        if self._backlog_bound <= self.limits.max_unacked_bytes and self._turns_ended.isdisjoint(
            self._turn_streams
        ):
            # What the turns hold unacknowledged only grows by what is written to them, so
            # the bound cannot be exceeded yet: no need to ask the transport, per stream, per
            # frame. (Turns ended and not yet forgotten take the full check below.)
            return False
        transport = self._transport
        backlog = 0
        for turn_id, stream_id in list(self._turn_streams.items()):
            unacked = transport.unacked_bytes(stream_id)
            if unacked == 0 and turn_id in self._turns_ended:
                # Finished and delivered: forget it, so this sum (run per frame sent) covers
                # only the turns still in flight however long the call.
                del self._turn_streams[turn_id]
            backlog += unacked
        self._backlog_bound = backlog
        if backlog <= self.limits.max_unacked_bytes:
            return False
        self._abort(
            ProtocolError(f"peer left {backlog} octets unacknowledged", ErrorCode.LIMIT_EXCEEDED)
        )
        return True

    def _refuse_stream(self, stream_id: int) -> None:
        self._unexpected_streams += 1
        if self._unexpected_streams > self.limits.max_unexpected_streams:
            raise ProtocolError("too many unexpected streams", ErrorCode.LIMIT_EXCEEDED)
        self._transport.stop(stream_id, ErrorCode.STREAM_ERROR)
        if self._transport.is_peer_bidi_stream(stream_id):
            self._transport.reset(stream_id, ErrorCode.STREAM_ERROR)

    def _is_peer_uni(self, stream_id: int) -> bool:
        # RFC 9000 §2.1: bit 0x2 marks unidirectional streams, bit 0x1 server-initiated ones.
        return bool(stream_id & 2) and bool(stream_id & 1) == self.is_client

    def _abort(self, error: ProtocolError) -> None:
        if self.state is State.CLOSED:
            return
        if self._control_stream_id is not None:
            try:
                self._send_message(Error(code=error.error_code, message=str(error)))
            except Exception:  # the stream may be unusable; the close still goes out
                pass
        self._transport.close(error.error_code, str(error), deliver=self._last_words())
        self.state = State.CLOSED

    def _last_words(self) -> tuple[int, ...]:
        """The streams whose data a closing server delivers before CONNECTION_CLOSE."""
        return () if self._control_stream_id is None else (self._control_stream_id,)

    # -- statistics ----------------------------------------------------------------------

    def stats(self) -> SessionStats:
        """Return a snapshot of this session's counters (migrations are the shell's)."""
        rtt = self._transport.rtt()
        arrivals = self._arrivals
        return SessionStats(
            rtt_latest_ms=rtt[0] * 1000 if rtt else None,
            rtt_smoothed_ms=rtt[1] * 1000 if rtt else None,
            rtt_min_ms=rtt[2] * 1000 if rtt else None,
            uplink_frames_lost=arrivals.lost if arrivals else 0,
            jitter_ms=arrivals.jitter * 1000 if arrivals else 0.0,
            frames_late=arrivals.late if arrivals else 0,
            uplink_frames_sent=self._stats["uplink_frames_sent"],
            uplink_frames_received=self._stats["uplink_frames_received"],
            uplink_frames_dropped=self._stats["uplink_frames_dropped"],
            downlink_frames_sent=self._stats["downlink_frames_sent"],
            downlink_frames_received=self._stats["downlink_frames_received"],
            turns=self._stats["turns"],
            turns_cancelled=self._stats["turns_cancelled"],
            bytes_sent=self._stats["bytes_sent"],
            bytes_received=self._stats["bytes_received"],
        )
