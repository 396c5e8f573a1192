"""The client library: ``async with connect(...) as call`` for native and mobile apps.

The client owns its UDP sockets, so it can move the connection to another local address
mid-call (``migrate``): it binds a new socket, switches to a fresh connection ID from the
server's pool (RFC 9000 §9.5), sends from the new socket at once, and keeps the old one open
for about one RTT so that nothing already in flight towards it is lost (make-before-break).
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, cast

from aioquic.quic.configuration import QuicConfiguration

from lb.config import format_address

from ..quic import VoiceQuicConnection, check_aioquic_version
from ..session.connection import SessionLimits, VoiceConnection
from ..session.events import (
    AudioReceived,
    ByeReceived,
    EventReceived,
    SessionClosed,
    SessionStarted,
    TurnCancelled,
    TurnEnded,
    TurnStarted,
    VoiceEvent,
)
from ..session.messages import Hello
from ..session.playout import PlayoutBuffer
from ..session.stats import Migration, SessionStats
from ..session.transport import (
    ALPN_H3,
    ALPN_VOICE,
    RawQuicTransport,
    VoiceTransport,
    WebTransportTransport,
)
from .timer import ConnectionTimer
from .udp import bind_udp_socket

Address = tuple[str, int]
#: How long the old socket stays open after a migration, at least (make-before-break).
MIN_OLD_PATH_LINGER = 0.05


class _ClientSocket(asyncio.DatagramProtocol):
    """One local UDP socket of the client; several exist during a migration."""

    def __init__(self, on_datagram: Callable[[bytes, Address, float], None]) -> None:
        self._on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None
        self.local_address: Address = ("", 0)
        self.first_receive: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.last_receive = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        host, port = self.transport.get_extra_info("sockname")[:2]
        self.local_address = (host, port)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        now = asyncio.get_running_loop().time()
        self.last_receive = now
        if not self.first_receive.done():
            self.first_receive.set_result(now)
        self._on_datagram(data, addr, now)

    def error_received(self, exc: Exception) -> None:
        pass

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class VoiceClient:
    """A voice call from the client side. Create it with ``connect()``."""

    def __init__(
        self,
        server: Address,
        configuration: QuicConfiguration,
        *,
        webtransport: bool,
        hello: Hello,
        limits: SessionLimits | None,
        authority: str,
    ) -> None:
        self._server = server
        self._quic = VoiceQuicConnection(configuration=configuration)
        transport: VoiceTransport = (
            WebTransportTransport(self._quic, authority=authority)
            if webtransport
            else RawQuicTransport(self._quic)
        )
        self._voice = VoiceConnection(transport, hello=hello, limits=limits)
        self._events: asyncio.Queue[VoiceEvent] = asyncio.Queue()
        self._sockets: list[_ClientSocket] = []
        self._active: _ClientSocket | None = None
        self._started: asyncio.Future[SessionStarted] = asyncio.get_running_loop().create_future()
        self._peer_bye: int | None = None
        self._peer_bye_event = asyncio.Event()
        self._closed = asyncio.Event()
        self._timer = ConnectionTimer(self._quic, self._on_timer)
        self._transmit_handle: asyncio.Handle | None = None
        self._migrations: list[Migration] = []
        self._ping_id = 0
        self._packets_sent = 0
        self._packets_received = 0
        self.playout: PlayoutBuffer | None = None
        #: The session as the server accepted it, once started.
        self.session: SessionStarted | None = None
        self._samples_per_frame = 320

    # -- life cycle ----------------------------------------------------------------------

    async def _open_socket(self, local_address: Address) -> _ClientSocket:
        loop = asyncio.get_running_loop()
        sock = bind_udp_socket(local_address)
        _, protocol = await loop.create_datagram_endpoint(
            lambda: _ClientSocket(self._on_datagram), sock=sock
        )
        self._sockets.append(protocol)
        return protocol

    async def open(self, local_address: Address, timeout: float) -> None:
        """Bind ``local_address``, handshake, and wait for the session (``connect()`` does this)."""
        self._active = await self._open_socket(local_address)
        loop = asyncio.get_running_loop()
        self._quic.connect(self._server, now=loop.time())
        self._transmit()
        try:
            self.session = await asyncio.wait_for(asyncio.shield(self._started), timeout)
        except TimeoutError:
            raise ConnectionError(
                f"no voice session with {format_address(self._server)} within {timeout} s"
            ) from None
        rate = _codec_rate(self.session.codec)
        self._samples_per_frame = rate * self.session.frame_ms // 1000
        self.playout = PlayoutBuffer(self._samples_per_frame)

    async def close(self) -> None:
        """Close the connection and every socket."""
        if not self._closed.is_set():
            self._quic.close()
            self._transmit()
        self._timer.cancel()
        if self._transmit_handle is not None:
            self._transmit_handle.cancel()
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        self._closed.set()

    # -- I/O -----------------------------------------------------------------------------

    def _on_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self._packets_received += 1
        self._quic.receive_datagram(data, addr, now)
        self._process_events(now)
        self._transmit()

    def _process_events(self, now: float) -> None:
        event = self._quic.next_event()
        while event is not None:
            for voice_event in self._voice.handle_event(event, now):
                self._on_voice_event(voice_event)
            event = self._quic.next_event()

    def _on_voice_event(self, event: VoiceEvent) -> None:
        playout = self.playout
        if isinstance(event, SessionStarted):
            if not self._started.done():
                self._started.set_result(event)
            return
        if isinstance(event, AudioReceived):
            if playout is not None and event.turn_id is not None:
                playout.push(event.turn_id, event.frame.payload)
        elif isinstance(event, TurnStarted):
            if playout is not None:
                playout.start_turn(event.turn_id)
        elif isinstance(event, TurnEnded):
            if playout is not None:
                playout.end_turn(event.turn_id)
        elif isinstance(event, TurnCancelled):
            if playout is not None:
                playout.cancel(event.turn_id)
        elif isinstance(event, ByeReceived):
            self._peer_bye = event.uplink_frames
            self._peer_bye_event.set()
        elif isinstance(event, SessionClosed):
            self._closed.set()
            self._peer_bye_event.set()
            if not self._started.done():
                self._started.set_exception(
                    ConnectionError(f"session closed: {event.reason or event.error_code}")
                )
        self._events.put_nowait(event)

    def _transmit_soon(self) -> None:
        if self._transmit_handle is None:
            self._transmit_handle = asyncio.get_running_loop().call_soon(self._transmit)

    def _transmit(self) -> None:
        self._transmit_handle = None
        loop = asyncio.get_running_loop()
        active = self._active
        if active is None or active.transport is None:
            return
        for data, addr in self._quic.datagrams_to_send(now=loop.time()):
            self._packets_sent += 1
            active.transport.sendto(data, addr)
        self._timer.update()

    def _on_timer(self, now: float) -> None:
        self._quic.handle_timer(now)
        self._process_events(now)
        self._transmit()

    # -- the call ------------------------------------------------------------------------

    @property
    def local_address(self) -> Address:
        """The local address audio is currently sent from."""
        assert self._active is not None
        return self._active.local_address

    @property
    def samples_per_frame(self) -> int:
        """Samples in one frame at the session's codec rate."""
        return self._samples_per_frame

    def send_audio(self, payload: bytes, timestamp: int | None = None) -> int:
        """Send one uplink frame; ``timestamp`` defaults to seq x samples per frame."""
        loop = asyncio.get_running_loop()
        seq = self._voice.stats().uplink_frames_sent
        if timestamp is None:
            timestamp = seq * self._samples_per_frame
        sent = self._voice.send_audio(payload, timestamp, loop.time())
        self._transmit_soon()
        return sent

    def end_audio(self) -> None:
        """Finish the reliable uplink: the server then knows every frame has arrived."""
        self._voice.end_audio()
        self._transmit_soon()

    def send_event(self, name: str, data: Any = None) -> None:
        """Send an application event to the server."""
        self._voice.send_event(name, data)
        self._transmit_soon()

    def cancel_turn(self, turn_id: int) -> None:
        """Barge in: stop turn ``turn_id`` here at once and tell the server to stop sending it."""
        for event in self._voice.cancel_turn(turn_id):
            self._on_voice_event(event)
        self._transmit_soon()

    async def receive(self) -> VoiceEvent:
        """Wait for the next event."""
        return await self._events.get()

    async def wait_event(self, name: str, timeout: float = 5.0) -> EventReceived:
        """Wait for the application event ``name``, skipping others (audio keeps playing out)."""

        async def wait() -> EventReceived:
            while True:
                event = await self._events.get()
                if isinstance(event, EventReceived) and event.name == name:
                    return event
                if isinstance(event, SessionClosed):
                    raise ConnectionError(f"session closed while waiting for {name}")

        return await asyncio.wait_for(wait(), timeout)

    async def bye(self, timeout: float = 5.0) -> int:
        """Say goodbye; return how many uplink frames the server says it received."""
        self._voice.send_bye()
        self._transmit_soon()
        await asyncio.wait_for(self._peer_bye_event.wait(), timeout)
        if self._peer_bye is None:
            raise ConnectionError("the session closed before the server said goodbye")
        return self._peer_bye

    async def migrate(
        self, local_address: str | Address, *, new_connection_id: bool = True, timeout: float = 3.0
    ) -> Migration:
        """Move the call to ``local_address`` (a new network) and return the measured gap.

        With ``new_connection_id=False`` the CID stays the same, which is what a NAT rebinding
        looks like to the server (a passive migration).
        """
        if isinstance(local_address, str):
            local_address = (local_address, 0)
        old = self._active
        assert old is not None
        new = await self._open_socket(local_address)
        loop = asyncio.get_running_loop()
        last_on_old = old.last_receive or loop.time()
        self._active = new
        if new_connection_id:
            self._quic.change_connection_id()
        # An ack-eliciting packet right away: the server answers on the new path at once.
        self._ping_id += 1
        self._quic.send_ping(self._ping_id)
        self._transmit()
        try:
            first_on_new = await asyncio.wait_for(asyncio.shield(new.first_receive), timeout)
        except TimeoutError:
            raise ConnectionError(f"no answer on the new path within {timeout} s") from None
        rtt = self._voice.stats().rtt_smoothed_ms or 0.0
        loop.call_later(max(1.5 * rtt / 1000, MIN_OLD_PATH_LINGER), self._retire_socket, old)
        migration = Migration(
            from_address=format_address(old.local_address),
            to_address=format_address(new.local_address),
            gap_ms=(first_on_new - last_on_old) * 1000,
        )
        self._migrations.append(migration)
        return migration

    def _retire_socket(self, sock: _ClientSocket) -> None:
        if sock is not self._active and sock in self._sockets:
            sock.close()
            self._sockets.remove(sock)

    def stats(self) -> SessionStats:
        """A snapshot of the call's statistics."""
        stats = self._voice.stats()
        if self.playout is not None:
            playout = self.playout.stats()
            stats = replace(
                stats,
                playout_buffer_frames=playout.buffered_frames,
                concealed_samples=playout.concealed_samples,
            )
        return replace(
            stats,
            migrations=tuple(self._migrations),
            packets_sent=self._packets_sent,
            packets_received=self._packets_received,
        )


def _codec_rate(codec: str) -> int:
    _, _, rate = codec.partition("/")
    return int(rate) if rate.isdigit() else 16000


@asynccontextmanager
async def connect(
    host: str,
    port: int,
    *,
    webtransport: bool = False,
    local_address: str | Address | None = None,
    hello: Hello | None = None,
    server_name: str | None = None,
    cafile: str | None = None,
    verify: bool = True,
    limits: SessionLimits | None = None,
    idle_timeout: float = 30.0,
    timeout: float = 5.0,
) -> AsyncIterator[VoiceClient]:
    """Open a voice call to ``host:port`` (an IP literal) and close it on exit.

    ``local_address`` is the local IP (or (IP, port)) to send from; ``verify=False`` accepts
    any certificate (development only); ``cafile`` trusts a specific CA or self-signed cert.
    """
    check_aioquic_version()
    ipaddress.ip_address(host)
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=[ALPN_H3 if webtransport else ALPN_VOICE],
        max_datagram_frame_size=65536,
        idle_timeout=idle_timeout,
        server_name=server_name or "localhost",
    )
    if not verify:
        configuration.verify_mode = ssl.CERT_NONE
    elif cafile is not None:
        configuration.load_verify_locations(cafile)
    if local_address is None:
        local_address = ("::" if ":" in host else "0.0.0.0", 0)
    elif isinstance(local_address, str):
        local_address = (local_address, 0)
    client = VoiceClient(
        (host, port),
        configuration,
        webtransport=webtransport,
        hello=hello or Hello(),
        limits=limits,
        authority=f"{server_name or host}:{port}",
    )
    try:
        await client.open(local_address, timeout)
        yield client
    finally:
        await client.close()
