"""Helpers of the security tests: a bare aioquic client on its own UDP socket, driven by hand
(so a test can make it misbehave: stop reading, send from another address, break the
protocol), and a well-behaved call that proves the server still serves everyone else."""

from __future__ import annotations

import asyncio
import socket
import ssl

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent

from quicvoice.asyncio.client import connect
from quicvoice.session.events import TurnEnded
from quicvoice.session.messages import Hello, Message, encode_message
from quicvoice.session.transport import ALPN_VOICE

Address = tuple[str, int]
FRAME = bytes(640)


class RawPeer:
    """An aioquic client connection and a UDP socket; counts every octet both ways."""

    def __init__(self, server: Address, local_host: str = "127.0.0.1") -> None:
        self.server = server
        self.quic = QuicConnection(
            configuration=QuicConfiguration(
                is_client=True,
                alpn_protocols=[ALPN_VOICE],
                verify_mode=ssl.CERT_NONE,
                max_datagram_frame_size=65536,
            )
        )
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((local_host, 0))
        self.sock.setblocking(False)
        self.events: list[QuicEvent] = []
        self.stream_data: dict[int, bytes] = {}
        self.bytes_sent = 0
        self.bytes_received = 0
        #: False: datagrams are still counted but never processed (nothing is acknowledged).
        self.reading = True
        self.sending = True

    def close(self) -> None:
        self.sock.close()

    def flush(self, now: float) -> None:
        for data, address in self.quic.datagrams_to_send(now):
            if self.sending:
                self.sock.sendto(data, address)
                self.bytes_sent += len(data)

    async def run(self, seconds: float, until: type[QuicEvent] | None = None) -> bool:
        """Drive the connection for ``seconds``, or until an event of type ``until``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        if self.sending:
            self.flush(loop.time())
        while loop.time() < deadline:
            if until is not None and any(isinstance(e, until) for e in self.events):
                return True
            try:
                data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), 0.01)
            except TimeoutError:
                data = b""
            now = loop.time()
            if data:
                self.bytes_received += len(data)
                if self.reading:
                    self.quic.receive_datagram(data, self.server, now)
            if self.reading:
                timer = self.quic.get_timer()
                if timer is not None and timer <= now:
                    self.quic.handle_timer(now)
                self._collect()
                self.flush(now)
        return until is not None and any(isinstance(e, until) for e in self.events)

    def _collect(self) -> None:
        event = self.quic.next_event()
        while event is not None:
            self.events.append(event)
            data = getattr(event, "data", None)
            stream_id = getattr(event, "stream_id", None)
            if isinstance(data, bytes) and isinstance(stream_id, int):
                self.stream_data[stream_id] = self.stream_data.get(stream_id, b"") + data
            event = self.quic.next_event()

    async def handshake(self) -> None:
        self.quic.connect(self.server, asyncio.get_running_loop().time())
        assert await self.run(5.0, HandshakeCompleted), "no handshake"

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        self.quic.send_stream_data(stream_id, data, end_stream)

    def send_message(self, message: Message) -> None:
        self.send(0, encode_message(message))

    async def start_session(self, hello: Hello | None = None) -> None:
        """Handshake, ``hello``, and wait for ``welcome`` on the control stream."""
        await self.handshake()
        self.send_message(hello or Hello())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while b"welcome" not in self.stream_data.get(0, b"") and loop.time() < deadline:
            await self.run(0.05)
        assert b"welcome" in self.stream_data.get(0, b""), "no welcome"

    def close_code(self) -> int | None:
        """The error code of the CONNECTION_CLOSE received, if any."""
        for event in self.events:
            if isinstance(event, ConnectionTerminated):
                return event.error_code
        return None


async def normal_call(host: str, port: int, frames: int = 10) -> None:
    """A well-behaved call with the demo agent: audio, the reply turn, goodbye with the count."""
    async with connect(host, port, verify=False, local_address="127.0.0.4") as call:
        for _ in range(frames):
            call.send_audio(FRAME)
            await asyncio.sleep(0.005)
        call.end_audio()

        async def reply() -> None:
            while not isinstance(await call.receive(), TurnEnded):
                pass

        await asyncio.wait_for(reply(), 10)
        assert await call.bye(timeout=10) == frames
