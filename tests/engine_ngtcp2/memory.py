"""aioquic clients talking to an ``Ngtcp2Endpoint`` in memory: the real QUIC stacks on both
sides, datagrams handed across by the test, the time advanced by the test. Given a forwarder
address, the network plays the forwarder: clients' datagrams reach the endpoint encapsulated
from it, and what the endpoint sends to it is unwrapped for the client it names."""

from __future__ import annotations

import ssl
import time

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived

from quicvoice.encapsulation import unwrap, wrap
from quicvoice.engine_ngtcp2.endpoint import Address, Ngtcp2Endpoint
from quicvoice.quic import use_initial_destination_cid
from quicvoice.session.messages import Hello, encode_message
from quicvoice.session.transport import ALPN_VOICE
from quicvoice.session.wire import (
    FrameReader,
    MediaFrame,
    StreamHeaderReader,
    StreamKind,
    encode_frame,
    encode_stream_header,
)

from .harness import engine_config

SERVER: Address = ("127.0.0.1", 4433)
NS = 1_000_000_000
#: Bounds every exchange: a handshake or an echo takes a few rounds.
MAX_ROUNDS = 50
#: Timers this close are run by ``run()`` (ngtcp2's pacing, delayed ACKs); idle and loss
#: timers are left for ``advance()``.
SOON = 0.03
#: The time one round of datagrams takes, so that both sides measure a round-trip time.
TRANSIT = 0.0005


class Client:
    """One aioquic client connection of the voice protocol, raw QUIC, reliable uplink."""

    def __init__(self, address: Address, now: float, dcid: bytes | None = None) -> None:
        self.address = address
        configuration = QuicConfiguration(
            is_client=True, alpn_protocols=[ALPN_VOICE], verify_mode=ssl.CERT_NONE
        )
        self.quic = QuicConnection(configuration=configuration)
        if dcid is not None:
            use_initial_destination_cid(self.quic, dcid)
        self.quic.connect(SERVER, now)
        self.quic.send_stream_data(0, encode_message(Hello()))
        self.uplink: int | None = None
        self.header = StreamHeaderReader()
        self.frames = FrameReader()
        self.echoed: list[MediaFrame] = []
        self.terminated: ConnectionTerminated | None = None
        #: Sends straight to the endpoint even when the network has a forwarder.
        self.direct = False

    def take(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived) and event.stream_id % 4 == 3:
            data = event.data
            if self.header.kind is None:
                rest = self.header.feed(data)
                if rest is None:
                    return
                data = rest
            self.echoed += self.frames.feed(data)
        elif isinstance(event, ConnectionTerminated):
            self.terminated = event

    def send_frame(self, frame: MediaFrame) -> None:
        self.send_raw(encode_frame(frame))

    def send_raw(self, data: bytes) -> None:
        if self.uplink is None:
            self.uplink = self.quic.get_next_available_stream_id(is_unidirectional=True)
            data = encode_stream_header(StreamKind.UPLINK) + data
        self.quic.send_stream_data(self.uplink, data)


class MemoryNetwork:
    """An endpoint and its clients; ``run()`` moves datagrams until everyone is quiet."""

    def __init__(
        self, endpoint: Ngtcp2Endpoint | None = None, *, forwarder: Address | None = None
    ) -> None:
        self.endpoint = endpoint or Ngtcp2Endpoint(engine_config(local=SERVER, forwarder=forwarder))
        self.forwarder = forwarder
        self.now = 1000.0
        self.clients: list[Client] = []
        #: Datagrams the endpoint sent straight to a client, and wrapped to the forwarder.
        self.sent_direct = 0
        self.sent_wrapped = 0

    def add_client(
        self, address: Address, dcid: bytes | None = None, *, direct: bool = False
    ) -> Client:
        """A new client at ``address`` (its first Initial to ``dcid``; ``direct``: not
        through the forwarder)."""
        client = Client(address, self.now, dcid)
        client.direct = direct
        self.clients.append(client)
        return client

    def send(
        self, data: bytes, address: Address, *, direct: bool = False
    ) -> list[tuple[bytes, Address]]:
        """A datagram of the client at ``address`` reaches the endpoint (through the
        forwarder, if there is one, unless ``direct``)."""
        return self.send_batch([self.on_the_wire(data, address, direct=direct)])

    def on_the_wire(
        self, data: bytes, address: Address, *, direct: bool = False
    ) -> tuple[bytes, Address]:
        """What reaches the endpoint's socket when the client at ``address`` sends ``data``."""
        if self.forwarder is not None and not direct:
            return wrap(address, data), self.forwarder
        return data, address

    def send_batch(self, datagrams: list[tuple[bytes, Address]]) -> list[tuple[bytes, Address]]:
        """Datagrams as the endpoint's socket holds them, read in one batch (as the server
        reads them: ``receive_batch``)."""
        return self.endpoint.receive_batch(datagrams, self.ns, time.time())

    def deliver(self, datagrams: list[tuple[bytes, Address]]) -> int:
        """Hand the endpoint's datagrams to the clients they are addressed to."""
        for data, address in datagrams:
            if self.forwarder is not None and address == self.forwarder:
                address, data = unwrap(data)
                self.sent_wrapped += 1
            else:
                self.sent_direct += 1
            for client in self.clients:
                if client.address == address:
                    client.quic.receive_datagram(data, SERVER, self.now)
        return len(datagrams)

    def run(self) -> None:
        """Move datagrams both ways, and run the timers due within ``SOON`` (pacing, delayed
        ACKs), until nothing is due that soon; each round takes ``TRANSIT`` seconds."""
        for _ in range(MAX_ROUNDS):
            # Every client's datagrams of this round reach the socket together: one batch.
            batch = [
                self.on_the_wire(data, client.address, direct=client.direct)
                for client in self.clients
                for data, _ in client.quic.datagrams_to_send(self.now)
            ]
            moved = len(batch)
            if batch:
                moved += self.deliver(self.send_batch(batch))
            for client in self.clients:
                while (event := client.quic.next_event()) is not None:
                    client.take(event)
            self.now += TRANSIT
            if moved:
                continue
            timers = [t / NS for t in (self.endpoint.next_timer(),) if t is not None]
            timers += [t for c in self.clients if (t := c.quic.get_timer()) is not None]
            if not timers or min(timers) > self.now + SOON:
                return
            self.now = max(self.now, min(timers))
            self._timers()
        raise AssertionError(f"still talking after {MAX_ROUNDS} rounds")

    def _timers(self) -> None:
        self.deliver(self.endpoint.handle_timers(self.ns))
        for client in self.clients:
            timer = client.quic.get_timer()
            if timer is not None and timer <= self.now:
                client.quic.handle_timer(self.now)

    @property
    def ns(self) -> int:
        return int(self.now * NS)

    def advance(self, seconds: float) -> None:
        """Let time pass: both sides' timers run."""
        self.now += seconds
        self._timers()
        self.run()
