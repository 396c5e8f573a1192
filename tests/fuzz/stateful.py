"""Stateful fuzz targets: a voice session driven by a peer whose every operation the fuzzer picks.

Both run over real aioquic connections joined in memory, on a fake clock, with the in-memory
pair's certificate and QUIC-LB configuration (``tests/session/pair.py``):

- ``fuzz_voice_server``: the server is a ``VoiceConnection`` driven the way ``VoiceServer``
  drives it (codec negotiation, ``accept``/``reject``, turns); the client is a bare aioquic
  connection that writes whatever the input says, on any stream it may open, including the
  control stream before ``hello``, plus datagrams, resets and STOP_SENDING.
- ``fuzz_voice_client``: the mirror image; the client is a ``VoiceConnection`` (it says
  ``hello`` by itself), the server a bare connection.

Contract checked: ``handle_event`` never raises (``ProtocolError`` is caught inside and closes
the session); an application close carries a voice ``ErrorCode``; the per-peer bounds hold
after every step (open streams, buffered control octets, early media).
"""

from __future__ import annotations

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent

from quicvoice.audio.codecs import DEFAULT_CODECS, CodecSpec, negotiate
from quicvoice.quic import QuicLbConnection
from quicvoice.quiclb import QuicLbConnectionIdGenerator
from quicvoice.session.codes import ErrorCode
from quicvoice.session.connection import SessionLimits, State, VoiceConnection
from quicvoice.session.events import HelloReceived, VoiceEvent
from quicvoice.session.messages import (
    MAX_MESSAGE_LEN,
    Bye,
    Cancel,
    Error,
    Event,
    Hello,
    Message,
    UplinkMode,
    Welcome,
    encode_message,
)
from quicvoice.session.transport import ALPN_VOICE, RawQuicTransport
from quicvoice.session.wire import (
    MediaFrame,
    StreamKind,
    encode_datagram,
    encode_frame,
    encode_stream_header,
)
from tests.session.pair import (
    CERTIFICATE,
    CLIENT_ADDR,
    LB_CONFIG,
    RESET_KEY,
    SERVER_ADDR,
    SERVER_ID,
)

#: Small limits, so that the fuzzer reaches every bound within a few kilobytes of input.
LIMITS = SessionLimits(
    max_unexpected_streams=3, max_open_peer_streams=4, max_early_events=6, max_datagram_queue=3
)
APPLICATION_CODES = frozenset(int(code) for code in ErrorCode)
#: Streams a client may open (bidirectional 0, 4, ...; unidirectional 2, 6, ...).
CLIENT_STREAMS = (0, 2, 4, 6, 10, 14, 8, 18)
#: Streams a server may open (bidirectional 1, 5; unidirectional 3, 7, ...).
SERVER_STREAMS = (0, 3, 7, 11, 1, 15, 5, 19)
CODEC_NAMES = ("L16/16000", "opus/48000", "PCMU/8000", "G729/8000", "L16/16000/2", "x")


class _Input:
    """Reads the fuzzer's bytes as a sequence of small integers and byte strings."""

    __slots__ = ("data", "position")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def more(self) -> bool:
        return self.position < len(self.data)

    def byte(self) -> int:
        if self.position >= len(self.data):
            return 0
        self.position += 1
        return self.data[self.position - 1]

    def chunk(self) -> bytes:
        length = self.byte()
        if length & 0x80:
            length = (length & 0x7F) << 8 | self.byte()
        start = self.position
        self.position = min(len(self.data), start + length)
        return self.data[start : self.position]

    def text(self) -> str:
        return self.chunk()[:40].decode("utf-8", "replace")


def _message(source: _Input, server_side: bool) -> Message:
    """A well-formed message (so the fuzzer gets past the schema to the state machine)."""
    kind = source.byte() % 6
    if kind == 0:
        return Hello(
            version=1 if source.byte() % 8 else 2,
            codecs=tuple(CODEC_NAMES[source.byte() % len(CODEC_NAMES)] for _ in range(2)),
            frame_ms=(10, 20, 40, 60)[source.byte() % 4],
            uplink=UplinkMode.REALTIME if source.byte() % 2 else UplinkMode.RELIABLE,
            resume_token=source.chunk() or None,
        )
    if kind == 1:
        return Welcome(
            session_id=source.text() or "s",
            codec=CODEC_NAMES[source.byte() % len(CODEC_NAMES)],
            frame_ms=(10, 20, 40, 60)[source.byte() % 4],
            uplink=UplinkMode.REALTIME if source.byte() % 2 else UplinkMode.RELIABLE,
            server_id=SERVER_ID.hex(),
            resumed=bool(source.byte() % 2),
        )
    if kind == 2:
        return Event(name=source.text() or "e", data=source.chunk())
    if kind == 3:
        return Error(code=source.byte() + 0xF0, message=source.text())
    if kind == 4:
        return Cancel(turn_id=source.byte() % 4)
    return Bye(uplink_frames=source.byte())


def _media(source: _Input, server_side: bool) -> bytes:
    """A stream header and/or frames for a media stream."""
    out = b""
    choice = source.byte()
    if choice & 1:
        kind = StreamKind.TURN if choice & 2 else StreamKind.UPLINK
        out += encode_stream_header(kind, choice >> 4 if kind is StreamKind.TURN else None)
    for index in range(choice >> 5):
        out += encode_frame(MediaFrame(index, index * 320, source.chunk()))
    return out


class _Endpoints:
    """A client and a server aioquic connection in memory, after the handshake."""

    def __init__(self) -> None:
        generator = QuicLbConnectionIdGenerator(SERVER_ID, LB_CONFIG, RESET_KEY)
        server_configuration = QuicConfiguration(
            is_client=False,
            alpn_protocols=[ALPN_VOICE],
            connection_id_length=generator.cid_length,
            max_datagram_frame_size=65536,
        )
        server_configuration.certificate = CERTIFICATE.certificate
        server_configuration.private_key = CERTIFICATE.private_key
        self.client = QuicConnection(
            configuration=QuicConfiguration(
                is_client=True,
                alpn_protocols=[ALPN_VOICE],
                max_datagram_frame_size=65536,
                verify_mode=0,
            )
        )
        self.server = QuicLbConnection(
            configuration=server_configuration,
            cid_generator=generator,
            original_destination_connection_id=self.client.original_destination_connection_id,
        )
        self.now = 0.0
        self.client.connect(SERVER_ADDR, now=0.0)

    def step(self, advance: float = 0.005) -> bool:
        moved = False
        for data, _ in self.client.datagrams_to_send(self.now):
            moved = True
            self.server.receive_datagram(data, CLIENT_ADDR, self.now)
        for data, _ in self.server.datagrams_to_send(self.now):
            moved = True
            self.client.receive_datagram(data, SERVER_ADDR, self.now)
        self.now += advance
        for quic in (self.client, self.server):
            timer = quic.get_timer()
            if timer is not None and timer <= self.now:
                quic.handle_timer(self.now)
        return moved


def _raw_peer_operation(
    source: _Input, quic: QuicConnection, streams: tuple[int, ...], voice_side_is_server: bool
) -> None:
    """One operation of the bare peer: write on a stream, a datagram, a reset or a stop."""
    operation = source.byte() % 6
    stream_id = streams[source.byte() % len(streams)]
    try:
        if operation == 0:
            quic.send_stream_data(stream_id, source.chunk(), end_stream=source.byte() % 8 == 0)
        elif operation == 1:
            payload = encode_message(_message(source, voice_side_is_server))
            quic.send_stream_data(stream_id, payload, end_stream=source.byte() % 16 == 0)
        elif operation == 2:
            quic.send_stream_data(stream_id, _media(source, voice_side_is_server))
        elif operation == 3:
            if source.byte() % 2:
                quic.send_datagram_frame(source.chunk())
            else:
                frame = MediaFrame(source.byte(), 0, source.chunk())
                quic.send_datagram_frame(encode_datagram(frame))
        elif operation == 4:
            quic.reset_stream(stream_id, source.byte() | (source.byte() << 8))
        else:
            quic.stop_stream(stream_id, source.byte())
    except (ValueError, RuntimeError, AssertionError):
        # aioquic refuses the operation itself (stream in the wrong state, not yet open):
        # the peer cannot do it either. (aioquic asserts on some stream states.)
        pass


def _check_bounds(voice: VoiceConnection) -> None:
    limits = voice.limits
    if voice.state is State.CLOSED:
        return  # nothing is read any more; what was held goes with the connection
    assert len(voice._inbound) <= limits.max_open_peer_streams
    assert voice._control_reader.buffered <= MAX_MESSAGE_LEN + 8
    assert len(voice._early_events) <= limits.max_early_events
    assert voice._unexpected_streams <= limits.max_unexpected_streams + 1


def _check_events(events: list[VoiceEvent]) -> None:
    for event in events:
        assert isinstance(event, VoiceEvent), event


def _check_close(event: QuicEvent) -> None:
    if isinstance(event, ConnectionTerminated) and event.frame_type is None:
        # An application close (a transport close from aioquic carries a frame type, or is
        # one of QUIC's own codes).
        assert event.error_code in APPLICATION_CODES or event.error_code < 0x100, event


def fuzz_voice_server(data: bytes) -> None:
    """A ``VoiceConnection`` server against a client that sends what the input says."""
    source = _Input(data)
    pair = _Endpoints()
    voice: VoiceConnection | None = None

    def drain_server() -> None:
        nonlocal voice
        event = pair.server.next_event()
        while event is not None:
            if voice is None:
                voice = VoiceConnection(RawQuicTransport(pair.server), limits=LIMITS)
            events = voice.handle_event(event, pair.now)  # must never raise
            _check_events(events)
            for voice_event in events:
                if isinstance(voice_event, HelloReceived):
                    _server_accepts(voice, voice_event.hello)
            _check_bounds(voice)
            event = pair.server.next_event()

    def drain_client() -> None:
        event = pair.client.next_event()
        while event is not None:
            _check_close(event)
            event = pair.client.next_event()

    for _ in range(40):
        moved = pair.step()
        drain_server()
        drain_client()
        if not moved:
            break
    while source.more():
        operation = source.byte()
        if operation < 0xC0:
            _raw_peer_operation(source, pair.client, CLIENT_STREAMS, True)
        elif operation < 0xE0 and voice is not None:
            _server_application(source, voice, pair.now)
        else:
            for _ in range(operation % 4 + 1):
                pair.step(advance=0.005 * (1 + operation % 8))
                drain_server()
                drain_client()
        pair.step()
        drain_server()
        drain_client()


def _server_accepts(voice: VoiceConnection, hello: Hello) -> None:
    """What ``VoiceServer`` does with a ``hello`` (without the store)."""
    offered = []
    for text in hello.codecs:
        try:
            offered.append(CodecSpec.parse(text))
        except ValueError:
            continue
    codec = negotiate(offered, DEFAULT_CODECS)
    if hello.version != 1 or codec is None:
        voice.reject(ErrorCode.UNSUPPORTED, "no common codec")
        return
    voice.accept(
        Welcome(
            session_id="s1",
            codec=str(codec),
            frame_ms=hello.frame_ms,
            uplink=hello.uplink,
            server_id=SERVER_ID.hex(),
            resume_token=b"t" * 60,
        )
    )
    voice.take_early_events()


def _server_application(source: _Input, voice: VoiceConnection, now: float) -> None:
    """The server application's calls: turns, barge-in, events, goodbye."""
    if voice.state is not State.ACTIVE:
        return
    action = source.byte() % 5
    turn = source.byte() % 4
    if action == 0:
        voice.start_turn()
    elif action == 1:
        voice.send_turn_audio(turn, source.chunk(), 0)
    elif action == 2:
        voice.end_turn(turn)
    elif action == 3:
        voice.cancel_turn(turn)
    else:
        voice.send_event("agent.said", source.text())


def fuzz_voice_client(data: bytes) -> None:
    """A ``VoiceConnection`` client against a server that sends what the input says."""
    source = _Input(data)
    pair = _Endpoints()
    hello = Hello(uplink=UplinkMode.REALTIME if source.byte() % 2 else UplinkMode.RELIABLE)
    voice = VoiceConnection(RawQuicTransport(pair.client), hello=hello, limits=LIMITS)

    def drain() -> None:
        event = pair.client.next_event()
        while event is not None:
            _check_events(voice.handle_event(event, pair.now))  # must never raise
            _check_bounds(voice)
            event = pair.client.next_event()
        event = pair.server.next_event()
        while event is not None:
            _check_close(event)
            event = pair.server.next_event()

    for _ in range(40):
        moved = pair.step()
        drain()
        if not moved and voice.state is State.AWAITING_WELCOME:
            break
    while source.more():
        operation = source.byte()
        if operation < 0xC0:
            _raw_peer_operation(source, pair.server, SERVER_STREAMS, False)
        elif operation < 0xE0:
            if voice.state is State.ACTIVE:
                try:
                    voice.send_audio(source.chunk(), 0, pair.now)
                except (RuntimeError, ValueError):
                    pass  # documented: uplink ended, or a frame too large for a datagram
            elif operation & 1:
                voice.cancel_turn(source.byte() % 4)
        else:
            for _ in range(operation % 4 + 1):
                pair.step(advance=0.005 * (1 + operation % 8))
                drain()
        pair.step()
        drain()
