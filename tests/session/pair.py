"""A client and a server voice connection joined in memory, on a fake clock (no sockets)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from quicvoice.certificates import generate_certificate
from quicvoice.quic import QuicLbConnection
from quicvoice.quiclb import LoadBalancerConfig, QuicLbConnectionIdGenerator
from quicvoice.session.connection import SessionLimits, VoiceConnection
from quicvoice.session.events import HelloReceived, VoiceEvent
from quicvoice.session.messages import Hello, Welcome
from quicvoice.session.transport import (
    ALPN_H3,
    ALPN_VOICE,
    RawQuicTransport,
    VoiceTransport,
    WebTransportTransport,
)

CERTIFICATE = generate_certificate()
LB_CONFIG = LoadBalancerConfig(0, 4, 12, bytes(range(16)))
SERVER_ID = bytes.fromhex("0a0b0c0d")
RESET_KEY = bytes(32)
CLIENT_ADDR = ("127.0.0.2", 4000)
SERVER_ADDR = ("127.0.0.1", 4433)


@dataclass
class Pair:
    client: VoiceConnection
    server: VoiceConnection | None
    client_quic: QuicConnection
    server_quic: QuicLbConnection
    webtransport: bool
    now: float = 0.0
    client_events: list[VoiceEvent] = field(default_factory=list)
    server_events: list[VoiceEvent] = field(default_factory=list)
    server_limits: SessionLimits | None = None
    drop_to_server: int = 0
    wire_dcids: list[bytes] = field(default_factory=list)
    played_reports: bool = False
    #: Whether the server accepts each ``hello`` at once (else the test calls ``accept``).
    auto_accept: bool = True

    def pump(self, rounds: int = 20, advance: float = 0.005) -> None:
        """Exchange datagrams until both sides are quiet (or ``rounds`` run out)."""
        for _ in range(rounds):
            moved = False
            for data, _addr in self.client_quic.datagrams_to_send(self.now):
                moved = True
                if self.drop_to_server:
                    self.drop_to_server -= 1
                    continue
                self.server_quic.receive_datagram(data, CLIENT_ADDR, self.now)
            self._drain_server()
            for data, _addr in self.server_quic.datagrams_to_send(self.now):
                moved = True
                self.client_quic.receive_datagram(data, SERVER_ADDR, self.now)
                self.wire_dcids.append(data)
            self._drain_client()
            self.now += advance
            for quic in (self.client_quic, self.server_quic):
                timer = quic.get_timer()
                if timer is not None and timer <= self.now:
                    quic.handle_timer(self.now)
            self._drain_server()
            self._drain_client()
            if not moved:
                break

    def _drain_client(self) -> None:
        event = self.client_quic.next_event()
        while event is not None:
            self.client_events.extend(self.client.handle_event(event, self.now))
            event = self.client_quic.next_event()

    def _drain_server(self) -> None:
        event = self.server_quic.next_event()
        while event is not None:
            if self.server is None:
                transport: VoiceTransport = (
                    WebTransportTransport(self.server_quic, status=lambda: {"ok": True})
                    if self.webtransport
                    else RawQuicTransport(self.server_quic)
                )
                self.server = VoiceConnection(transport, limits=self.server_limits)
            new = self.server.handle_event(event, self.now)
            self.server_events.extend(new)
            for voice_event in new:
                if isinstance(voice_event, HelloReceived) and self.auto_accept:
                    hello = voice_event.hello
                    self.server_events.append(
                        self.server.accept(
                            Welcome(
                                session_id="s1",
                                codec=hello.codecs[0],
                                frame_ms=hello.frame_ms,
                                uplink=hello.uplink,
                                server_id=SERVER_ID.hex(),
                                played_reports=self.played_reports,
                            )
                        )
                    )
            event = self.server_quic.next_event()

    def take(self, side: str) -> list[VoiceEvent]:
        events = self.client_events if side == "client" else self.server_events
        taken = list(events)
        events.clear()
        return taken


def make_pair(
    *,
    webtransport: bool = False,
    hello: Hello | None = None,
    server_limits: SessionLimits | None = None,
    played_reports: bool = False,
    auto_accept: bool = True,
    before_handshake: Callable[[Pair], None] | None = None,
) -> Pair:
    alpn = ALPN_H3 if webtransport else ALPN_VOICE
    generator = QuicLbConnectionIdGenerator(SERVER_ID, LB_CONFIG, RESET_KEY)
    server_configuration = QuicConfiguration(
        is_client=False,
        alpn_protocols=[ALPN_VOICE, ALPN_H3],
        connection_id_length=generator.cid_length,
        max_datagram_frame_size=65536,
    )
    server_configuration.certificate = CERTIFICATE.certificate
    server_configuration.private_key = CERTIFICATE.private_key
    client_configuration = QuicConfiguration(
        is_client=True, alpn_protocols=[alpn], max_datagram_frame_size=65536, verify_mode=0
    )
    client_quic = QuicConnection(configuration=client_configuration)
    server_quic = QuicLbConnection(
        configuration=server_configuration,
        cid_generator=generator,
        original_destination_connection_id=client_quic.original_destination_connection_id,
    )
    client_transport: VoiceTransport = (
        WebTransportTransport(client_quic) if webtransport else RawQuicTransport(client_quic)
    )
    pair = Pair(
        client=VoiceConnection(client_transport, hello=hello),
        server=None,
        client_quic=client_quic,
        server_quic=server_quic,
        webtransport=webtransport,
        server_limits=server_limits,
        played_reports=played_reports,
        auto_accept=auto_accept,
    )
    client_quic.connect(SERVER_ADDR, now=0.0)
    if before_handshake is not None:
        before_handshake(pair)
    pair.pump(rounds=40)
    return pair
