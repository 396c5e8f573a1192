"""The one module that touches aioquic's private internals (specs/architecture.md).

aioquic 1.7 has no hook for connection IDs, does not mark locally opened bidirectional
WebTransport streams, and keeps no public count of unacknowledged stream data. Each fix lives
here, is small, and is pinned by tests/test_quic_glue.py, which asserts that every private
attribute used below still exists in the installed aioquic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from aioquic import tls
from aioquic._buffer import Buffer
from aioquic.h3.connection import FrameType, H3Connection, H3Stream
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import END_STATES as _END_STATES
from aioquic.quic.connection import (
    NetworkAddress,
    QuicConnection,
    QuicConnectionId,
    QuicConnectionState,
)
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import (
    QuicFrameType,
    QuicHeader,
    QuicPacketType,
    pull_ack_frame,
    pull_quic_header,
    push_ack_frame,
)
from aioquic.quic.packet_builder import QuicPacketBuilder, QuicSentPacket
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.tls import ClientHello, pull_client_hello
from cryptography import x509

from .ecn import Codepoint, EcnCounts, EcnMode, EcnTracker
from .errors import CertificateVerificationError
from .quiclb import Algorithm, ConnectionIdGenerator, QuicLbConnectionIdGenerator

#: Longest a server waits for its last words (an ``error`` message, a WebTransport close
#: capsule) to be acknowledged before it sends CONNECTION_CLOSE anyway, in seconds; the wait
#: is otherwise 3 PTO (RFC 9000 §10.2 uses the same period for closing).
CLOSE_LINGER_MAX = 1.0
#: The aioquic releases whose internals this module was written against.
SUPPORTED_AIOQUIC = ((1, 7, 2), (1, 8, 0))
#: Private names this module relies on, by owner, checked by the glue test.
PRIVATE_NAMES = {
    "QuicConnection": (
        "_host_cids",
        "_host_cid_seq",
        "_local_initial_source_connection_id",
        "_original_destination_connection_id",
        "_remote_active_connection_id_limit",
        "_replenish_connection_ids",
        "_streams",
        "_is_client",
        "_loss",
        "_datagrams_pending",
        "_ack_delay",
        "_spaces",
        "_peer_cid",
        "_peer_cid_available",
        "_cryptos",
        "_close_event",
        "_close_end",
        "_events",
        "_state",
        "_initialize",
        "_configuration",
        "_payload_received",
        "_write_ack_frame",
        "_handle_ack_frame",
        "_flush_builder",
        "_local_ack_delay_exponent",
        "_on_ack_delivery",
        "_quic_logger",
        "_write_ping_frame",
    ),
    "Context": (
        "_client_handle_certificate_verify",
        "_peer_certificate",
        "_peer_certificate_chain",
    ),
    "QuicPacketRecovery": (
        "_rtt_initialized",
        "_rtt_latest",
        "_rtt_smoothed",
        "_rtt_min",
        "on_packet_sent",
        "_on_packets_lost",
    ),
    "QuicStreamSender": ("_buffer_start", "_buffer_stop"),
    "H3Connection": ("_stream", "_get_local_settings", "_enable_webtransport"),
}


def aioquic_version() -> tuple[int, ...]:
    """Return the installed aioquic version as a tuple of integers."""
    return tuple(int(part) for part in version("aioquic").split(".")[:3])


def check_aioquic_version() -> None:
    """Raise ``RuntimeError`` when the installed aioquic is outside the supported range."""
    low, high = SUPPORTED_AIOQUIC
    installed = aioquic_version()
    if not low <= installed < high:
        raise RuntimeError(
            f"quicvoice needs aioquic >= {'.'.join(map(str, low))}, < {'.'.join(map(str, high))};"
            f" {'.'.join(map(str, installed))} is installed"
        )


#: How long a receiver may hold an ACK back hoping to bundle it with data: longer than one
#: 20 ms frame period, so the next frame carries it, and under the 25 ms max_ack_delay that
#: aioquic advertises (RFC 9000 §13.2.1).
VOICE_ACK_DELAY = 0.024


#: A client's own check of the server's certificate: the leaf and the rest of the chain the
#: server sent; raises ``CertificateVerificationError`` to refuse it.
CertificateCheck = Callable[[x509.Certificate, list[x509.Certificate]], None]


@dataclass
class VoiceQuicConfiguration(QuicConfiguration):
    """aioquic's configuration plus a certificate check of the client's own.

    aioquic verifies against ``certifi``'s CAs with its own name rules and cannot pin a
    certificate by hash; with ``certificate_check`` set (and ``verify_mode`` at
    ``ssl.CERT_NONE``, so aioquic's own check stays out of the way) the client runs its check
    instead, inside the handshake (``install_certificate_check``).
    """

    certificate_check: CertificateCheck | None = None


#: The TLS alert sent for each failed check (RFC 8446 §6.2); anything else is bad_certificate.
_ALERT_DESCRIPTIONS = {
    "validity": tls.AlertDescription.certificate_expired,
    "trust": tls.AlertDescription.unknown_ca,
}


class CertificateRejected(tls.Alert):
    """The client's certificate check refused the server's certificate (a TLS alert)."""

    def __init__(self, error: CertificateVerificationError) -> None:
        super().__init__(str(error))
        self.description = _ALERT_DESCRIPTIONS.get(
            error.check, tls.AlertDescription.bad_certificate
        )


def install_certificate_check(context: tls.Context, check: CertificateCheck) -> None:
    """Run ``check`` when the server's CertificateVerify arrives, after aioquic has checked
    its signature (the server holds the certificate's key) and before the server's Finished
    is processed. The client sends its Finished, and with it the first 1-RTT data, only after
    that, so a refused certificate closes the connection (with a TLS alert) before any hello
    or audio leaves. (A 0-RTT resumption sends no certificate: its ticket came from a
    connection that passed this check.)"""
    handle_certificate_verify = context._client_handle_certificate_verify

    def checked(input_buf: Buffer) -> None:
        handle_certificate_verify(input_buf)
        leaf = context._peer_certificate
        if leaf is None:
            raise tls.AlertBadCertificate("no server certificate")
        try:
            check(leaf, list(context._peer_certificate_chain))
        except CertificateVerificationError as error:
            raise CertificateRejected(error) from error
        except Exception as error:  # a failing check must close the connection, not crash it
            raise tls.AlertBadCertificate(f"certificate check failed: {error!r}") from error

    context._client_handle_certificate_verify = checked  # type: ignore[method-assign]


@dataclass(slots=True)
class _DeliveryClose:
    """A close waiting for the data written on ``stream_ids`` to be acknowledged."""

    error_code: int
    reason_phrase: str
    stream_ids: tuple[int, ...]
    #: Close only when the peer answers (``close_now``) or at the deadline, not when the data
    #: is acknowledged: a browser acknowledges a WebTransport close capsule before its page
    #: has read it, and a CONNECTION_CLOSE then overtakes it ("Connection lost").
    until_answered: bool = False
    #: Set at the first transmission after the close was asked for.
    deadline: float | None = None


class VoiceQuicConnection(QuicConnection):
    """A ``QuicConnection`` that sends one packet per voice frame, not two, and can close
    after its last words are delivered.

    aioquic writes an ACK only once its ACK timer fires (1 ms after an ack-eliciting packet),
    never into a data packet sent earlier, so every frame echoed or answered costs a data
    packet and a separate ACK packet. Here the ACK timer waits ``VOICE_ACK_DELAY``, and any
    pending ACK rides in the next data packet whenever there is data to send.

    aioquic's ``close()`` sends nothing but CONNECTION_CLOSE from then on: stream data still
    queued (an ``error`` message, a WebTransport CLOSE_WEBTRANSPORT_SESSION capsule) is
    never sent. ``close_after_delivery`` sends it first and closes once it is acknowledged.
    """

    def __init__(
        self, *, configuration: QuicConfiguration, ecn: EcnMode = EcnMode.L4S, **kwargs: Any
    ) -> None:
        super().__init__(configuration=configuration, **kwargs)
        self._ack_delay = VOICE_ACK_DELAY
        self._peer_close_reported = False
        self._delivery_close: _DeliveryClose | None = None
        #: ECN of this connection (specs/ecn.md): marks, counts, validation per path.
        self.ecn = EcnTracker(ecn)
        #: Called with the number of application packets each time loss detection (RFC 9002)
        #: declares some lost, for a congestion response (specs/l4s.md); ``None``: nobody.
        self.loss_listener: Callable[[int], None] | None = None
        #: The path name of the local socket sending now (a client names its sockets; a server
        #: leaves it ``None`` and its paths are named by the peer's address).
        self.ecn_local_path: str | None = None
        self._ecn_received: Codepoint | None = None
        self._ecn_names: dict[NetworkAddress, str] = {}
        self._ecn_sending_addr: NetworkAddress = ("", 0)
        self._ecn_sending_path: str | None = None
        self._ecn_sending_codepoint = Codepoint.NOT_ECT
        recovery_on_packet_sent = self._loss.on_packet_sent

        def on_packet_sent(*, packet: QuicSentPacket, space: QuicPacketSpace) -> None:
            recovery_on_packet_sent(packet=packet, space=space)
            path = self._ecn_sending_path
            if path is None:  # the flush's first packet: name its path once
                path = self._ecn_sending_path = self.ecn_path_name(self._ecn_sending_addr)
                self._ecn_sending_codepoint = self.ecn.send_codepoint(path)
            self.ecn.on_packet_sent(
                _ecn_space(packet.epoch), packet.packet_number, path, self._ecn_sending_codepoint
            )

        self._loss.on_packet_sent = on_packet_sent  # type: ignore[method-assign]
        recovery_on_packets_lost = self._loss._on_packets_lost

        def on_packets_lost(*, packets: Any, space: QuicPacketSpace, **kwargs: Any) -> None:
            if type(packets) is not list:
                packets = list(packets)  # aioquic may hand over a one-pass iterable
            recovery_on_packets_lost(packets=packets, space=space, **kwargs)
            if packets:
                ecn_space = _ecn_space(packets[0].epoch)
                self.ecn.on_packets_lost(ecn_space, [packet.packet_number for packet in packets])
                listener = self.loss_listener
                if listener is not None and ecn_space == _ECN_APPLICATION_SPACE:
                    listener(len(packets))

        self._loss._on_packets_lost = on_packets_lost  # type: ignore[method-assign]

    def ecn_path_name(self, addr: NetworkAddress) -> str:
        """The ECN path name of datagrams exchanged with peer ``addr`` now."""
        if self.ecn_local_path is not None:
            return self.ecn_local_path
        names = self._ecn_names
        name = names.get(addr)
        if name is None:
            if len(names) >= _MAX_PATH_NAMES:
                names.clear()  # a peer hopping addresses cannot grow the cache
            name = names[addr] = _address_name(addr)
        return name

    def ecn_codepoint(self, addr: NetworkAddress) -> Codepoint:
        """The ECN codepoint datagrams to ``addr`` must carry now (the I/O shell sets it)."""
        return self.ecn.send_codepoint(self.ecn_path_name(addr))

    def receive_datagram_ecn(
        self, data: bytes, addr: NetworkAddress, now: float, tos: int | None
    ) -> None:
        """``receive_datagram``, with the IP TOS / traffic class the socket reported
        (``None``: unreadable); the packets in it are counted for our ACK_ECN frames."""
        self._ecn_received = self.ecn.on_datagram_received(self.ecn_path_name(addr), tos)
        try:
            self.receive_datagram(data, addr, now)
        finally:
            self._ecn_received = None

    def _payload_received(
        self, context: Any, plain: bytes, crypto_frame_required: bool = False
    ) -> tuple[bool, bool]:
        result = super()._payload_received(context, plain, crypto_frame_required)
        if self._ecn_received is not None:
            self.ecn.on_packet_received(_ecn_space(context.epoch), self._ecn_received)
        return result

    def _flush_builder(
        self, builder: QuicPacketBuilder, network_path: Any, peer_cid: bytes, now: float
    ) -> list[tuple[bytes, NetworkAddress]]:
        # Every packet of the flush leaves on this path with the path's codepoint, which
        # changes only when an ACK is processed, never during a flush (named lazily: most
        # flushes send nothing).
        self._ecn_sending_addr = network_path.addr
        self._ecn_sending_path = None
        result: list[tuple[bytes, NetworkAddress]] = super()._flush_builder(
            builder, network_path, peer_cid, now
        )
        return result

    def _write_ack_frame(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, now: float
    ) -> None:
        counts = self.ecn.counts_to_report(self._ecn_space_of(space))
        if counts is None:
            super()._write_ack_frame(builder, space, now)
            return
        # RFC 9000 §19.3: an ACK frame of type 0x03 carries the ECT(0), ECT(1) and CE counts
        # after the ranges. aioquic writes only type 0x02; this is its writer plus the counts.
        delay = now - (space.largest_received_time or now)
        delay_encoded = int(delay * 1000000) >> self._local_ack_delay_exponent
        buf = builder.start_frame(
            QuicFrameType.ACK_ECN,
            capacity=_ACK_ECN_FRAME_CAPACITY,
            handler=self._on_ack_delivery,
            handler_args=(space, space.largest_received_packet),
        )
        ranges = push_ack_frame(
            buf,
            space.ack_queue,
            delay_encoded,
            builder.remaining_buffer_space - _ECN_COUNTS_CAPACITY,
        )
        buf.push_uint_var(counts.ect0)
        buf.push_uint_var(counts.ect1)
        buf.push_uint_var(counts.ce)
        space.ack_at = None
        frames = builder.quic_logger_frames
        if self._quic_logger is not None and frames is not None:
            frames.append(
                self._quic_logger.encode_ack_frame(
                    ranges=list(space.ack_queue)[-ranges:], delay=delay
                )
            )
        if ranges > 1 and builder.packet_number % 8 == 0:
            self._write_ping_frame(builder, comment="ACK-of-ACK trigger")

    def _handle_ack_frame(self, context: Any, frame_type: int, buf: Buffer) -> None:
        start = buf.tell()
        largest, counts = _peek_ack(buf, frame_type == QuicFrameType.ACK_ECN)
        buf.seek(start)
        epoch = context.epoch
        space = self._spaces[epoch]
        in_flight = list(space.sent_packets)
        super()._handle_ack_frame(context, frame_type, buf)
        if largest < 0:
            return  # malformed: aioquic has closed the connection
        # What aioquic no longer holds was acknowledged now, or declared lost meanwhile (the
        # tracker has forgotten those already, through on_packets_lost).
        remaining = space.sent_packets
        acked = [number for number in in_flight if number not in remaining]
        ecn_space = _ecn_space(epoch)
        self.ecn.on_ack_received(
            ecn_space, acked, largest, counts, application=ecn_space == _ECN_APPLICATION_SPACE
        )
        oldest_unacked = next(iter(remaining), None)
        if oldest_unacked is not None:
            self.ecn.forget_before(ecn_space, oldest_unacked)

    def _ecn_space_of(self, space: QuicPacketSpace) -> int:
        if space.is_application_data:
            return _ECN_APPLICATION_SPACE
        for epoch, candidate in self._spaces.items():
            if candidate is space:
                return _ecn_space(epoch)
        return _ECN_APPLICATION_SPACE

    def close_after_delivery(
        self,
        *,
        error_code: int,
        reason_phrase: str,
        stream_ids: tuple[int, ...],
        until_answered: bool = False,
    ) -> None:
        """Close like ``close()``, once what was written on ``stream_ids`` is acknowledged,
        or 3 PTO (at most ``CLOSE_LINGER_MAX``) after the next transmission, whichever is
        first. ``until_answered``: not on the acknowledgement but when the peer answers
        (``close_now``), or ``CLOSE_LINGER_MAX`` after the next transmission. Nothing new may
        be written meanwhile; a later ``close()`` takes over."""
        if self._close_event is not None or self._state in _END_STATES:
            return
        if self._delivery_close is None:
            self._delivery_close = _DeliveryClose(
                error_code, reason_phrase, stream_ids, until_answered
            )

    @property
    def closing_after_delivery(self) -> bool:
        """Whether a ``close_after_delivery`` is waiting."""
        return self._delivery_close is not None

    def close_now(self) -> None:
        """Send the close ``close_after_delivery`` is waiting with at the next transmission."""
        pending = self._delivery_close
        if pending is not None:
            self._delivery_close = None
            self.close(error_code=pending.error_code, reason_phrase=pending.reason_phrase)

    def _check_delivery_close(self, now: float) -> None:
        pending = self._delivery_close
        if pending is None:
            return
        if self._close_event is not None or self._state in _END_STATES:
            self._delivery_close = None
            return
        if pending.deadline is None:
            linger = 3 * self._loss.get_probe_timeout()
            if pending.until_answered:
                linger = CLOSE_LINGER_MAX
            pending.deadline = now + min(CLOSE_LINGER_MAX, linger)
            return  # the data goes out in this transmission
        if now >= pending.deadline or (
            not pending.until_answered
            and all(unacked_stream_bytes(self, stream_id) == 0 for stream_id in pending.stream_ids)
        ):
            self.close_now()

    def get_timer(self) -> float | None:
        """Like aioquic's, and the deadline of a close waiting for delivery."""
        timer = super().get_timer()
        pending = self._delivery_close
        if pending is None or pending.deadline is None:
            return timer
        return pending.deadline if timer is None else min(timer, pending.deadline)

    def handle_timer(self, now: float) -> None:
        """Like aioquic's; a close waiting for delivery past its deadline is sent."""
        pending = self._delivery_close
        if pending is not None and pending.deadline is not None and now >= pending.deadline:
            self.close_now()
        super().handle_timer(now)

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        """Like aioquic's, but a peer's CONNECTION_CLOSE is reported as soon as it arrives.

        aioquic holds ``ConnectionTerminated`` back until the draining period ends, 3 PTO
        later: seconds, or minutes under overload, during which a departed caller's session
        would live on. A draining endpoint sends nothing (RFC 9000 §10.2.2), so nothing is
        lost by reporting at once; the event is not reported a second time when draining ends.
        """
        super().receive_datagram(data, addr, now)
        if (
            not self._peer_close_reported
            and self._close_event is not None
            and self._state is QuicConnectionState.DRAINING
        ):
            self._peer_close_reported = True
            self._events.append(self._close_event)

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        check = getattr(self._configuration, "certificate_check", None)
        if check is not None and self._is_client:
            install_certificate_check(self.tls, check)

    def _close_end(self) -> None:
        super()._close_end()
        if self._peer_close_reported:
            self._events.pop()  # the ConnectionTerminated reported when the peer closed

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        """Like aioquic's, with pending ACKs bundled into outgoing data (and a close waiting
        for delivery sent once the data it waits for is acknowledged)."""
        self._check_delivery_close(now)
        space = self._spaces.get(tls.Epoch.ONE_RTT)
        if (
            space is not None
            and space.ack_at is not None
            and space.ack_at > now
            and self._has_data_to_send()
        ):
            space.ack_at = now
        return super().datagrams_to_send(now)

    def _has_data_to_send(self) -> bool:
        if self._datagrams_pending:
            return True
        return any(not stream.sender.buffer_is_empty for stream in self._streams.values())


#: Peer addresses whose path names are kept (formatted once, not per datagram).
_MAX_PATH_NAMES = 32
#: An ACK_ECN frame's three counts take at most three 8-octet varints.
_ECN_COUNTS_CAPACITY = 3 * 8
#: aioquic's ACK capacity (type and four varints) plus the counts.
_ACK_ECN_FRAME_CAPACITY = 1 + 4 * 8 + _ECN_COUNTS_CAPACITY
#: ECN counts are kept per packet number space; 0-RTT packets belong to the application's.
_ECN_APPLICATION_SPACE = int(tls.Epoch.ONE_RTT.value)


_ZERO_RTT = tls.Epoch.ZERO_RTT


def _ecn_space(epoch: tls.Epoch) -> int:
    # Per packet: identity and the member's raw value, not Enum's (slower) property.
    return _ECN_APPLICATION_SPACE if epoch is _ZERO_RTT else int(epoch._value_)


def _peek_ack(buf: Buffer, with_counts: bool) -> tuple[int, EcnCounts | None]:
    """The Largest Acknowledged of the ACK frame at ``buf`` and, for type 0x03, its ECN
    counts (RFC 9000 §19.3), reading no more than the frame; (-1, None) when malformed."""
    try:
        largest = int(buf.pull_uint_var())
        if not with_counts:
            return largest, None
        buf.pull_uint_var()  # ACK Delay
        ranges = buf.pull_uint_var()
        if ranges > (buf.capacity - buf.tell()) // 2:
            return -1, None  # more ranges than octets left: aioquic will refuse the frame
        buf.pull_uint_var()  # First ACK Range
        for _ in range(ranges):
            buf.pull_uint_var()  # Gap
            buf.pull_uint_var()  # ACK Range Length
        return largest, EcnCounts(
            ect0=buf.pull_uint_var(), ect1=buf.pull_uint_var(), ce=buf.pull_uint_var()
        )
    except Exception:  # a truncated frame: aioquic reports it
        return -1, None


def _address_name(addr: NetworkAddress) -> str:
    host, port = str(addr[0]), int(addr[1])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class QuicLbConnection(VoiceQuicConnection):
    """A ``QuicConnection`` whose server-side CIDs all come from a ``ConnectionIdGenerator``.

    The first CID (sequence 0, also the initial source connection ID) is replaced right after
    construction, before any transport parameter is serialised; every spare CID issued in
    NEW_CONNECTION_ID frames comes from ``_replenish_connection_ids``. Reset tokens are the
    generator's, so any backend holding the shared key can reset these connections.
    Clients keep aioquic's random CIDs: only servers sit behind the load balancer.
    """

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        cid_generator: ConnectionIdGenerator | None = None,
        **kwargs: Any,
    ) -> None:
        if (
            cid_generator is not None
            and configuration.connection_id_length != cid_generator.cid_length
        ):
            raise ValueError(
                "configuration.connection_id_length must equal the generator's cid_length"
            )
        self._cid_generator = cid_generator
        super().__init__(configuration=configuration, **kwargs)
        if cid_generator is not None and not self._is_client:
            first = self._host_cids[0]
            first.cid = cid_generator.generate()
            first.stateless_reset_token = cid_generator.stateless_reset_token(first.cid)
            self.host_cid = first.cid
            self._local_initial_source_connection_id = first.cid

    def _replenish_connection_ids(self) -> None:
        generator = self._cid_generator
        if generator is None or self._is_client:
            super()._replenish_connection_ids()
            return
        if _issues_no_spare_cids(generator):
            return
        while len(self._host_cids) < min(8, self._remote_active_connection_id_limit):
            cid = generator.generate()
            self._host_cids.append(
                QuicConnectionId(
                    cid=cid,
                    sequence_number=self._host_cid_seq,
                    stateless_reset_token=generator.stateless_reset_token(cid),
                )
            )
            self._host_cid_seq += 1

    def host_cids(self) -> list[bytes]:
        """Return every CID this endpoint has issued and not seen retired."""
        return [connection_id.cid for connection_id in self._host_cids]


def _issues_no_spare_cids(generator: ConnectionIdGenerator) -> bool:
    # draft-21 §9: plaintext CIDs link every CID of a connection to its server, so a server
    # using them issues no spare CIDs (and clients therefore cannot migrate actively).
    return (
        isinstance(generator, QuicLbConnectionIdGenerator)
        and generator.active_config is not None
        and generator.active_config.algorithm is Algorithm.PLAINTEXT
    )


#: draft-ietf-webtrans-http3-13/-14 §9.2: SETTINGS_WT_MAX_SESSIONS. Safari (26.4 and later)
#: opens no session unless the server sends it, at least 1 (aioquic issue 644). Chromium
#: ignores this code point (it knows draft-02's 0x2b603742 and draft-07's 0xc671706a only),
#: so it keeps speaking draft-02.
SETTINGS_WT_MAX_SESSIONS = 0x14E9CD29
#: One WebTransport session per connection (a second CONNECT gets 409): with at most one,
#: the draft needs no session-level flow control (no SETTINGS_WT_INITIAL_MAX_*).
WT_MAX_SESSIONS = 1


class VoiceH3Connection(H3Connection):
    """aioquic's ``H3Connection`` announcing WebTransport to current browsers too.

    aioquic sends ENABLE_CONNECT_PROTOCOL, H3_DATAGRAM and draft-02's ENABLE_WEBTRANSPORT;
    this adds draft-14's SETTINGS_WT_MAX_SESSIONS. Draft-07's 0xc671706a is left out (Chromium
    would then switch to draft-07), and so is draft-15's SETTINGS_WT_ENABLED (a draft-15
    client would expect that draft's flow control and stream limits, which are not here).
    """

    def _get_local_settings(self) -> dict[int, int]:
        settings = super()._get_local_settings()
        if self._enable_webtransport:
            settings[SETTINGS_WT_MAX_SESSIONS] = WT_MAX_SESSIONS
        return settings


def mark_local_webtransport_stream(h3: H3Connection, stream_id: int, session_id: int) -> None:
    """Make ``h3`` read the peer's data on a bidirectional WebTransport stream we opened.

    aioquic's ``create_webtransport_stream`` writes the stream's header but leaves the local
    ``H3Stream`` unmarked, so whatever the peer sends back is parsed as HTTP/3 frames and lost.
    """
    stream = h3._stream.get(stream_id)
    if stream is None:
        stream = h3._stream[stream_id] = H3Stream(stream_id)
    stream.frame_type = FrameType.WEBTRANSPORT_STREAM
    stream.session_id = session_id


def close_after_delivery(
    quic: QuicConnection,
    error_code: int,
    reason_phrase: str,
    stream_ids: tuple[int, ...],
    *,
    until_answered: bool = False,
) -> None:
    """Close ``quic`` once the data written on ``stream_ids`` is acknowledged, or (with
    ``until_answered``) once the peer answers it (bounded in time,
    ``VoiceQuicConnection.close_after_delivery``); a plain ``QuicConnection`` closes at once,
    as aioquic does."""
    if isinstance(quic, VoiceQuicConnection) and stream_ids:
        quic.close_after_delivery(
            error_code=error_code,
            reason_phrase=reason_phrase,
            stream_ids=stream_ids,
            until_answered=until_answered,
        )
    else:
        quic.close(error_code=error_code, reason_phrase=reason_phrase)


def close_now(quic: QuicConnection) -> None:
    """Send at once a close that waits for its data to be delivered (the peer answered)."""
    if isinstance(quic, VoiceQuicConnection):
        quic.close_now()


def unacked_stream_bytes(quic: QuicConnection, stream_id: int) -> int:
    """Return how many octets written to ``stream_id`` the peer has not acknowledged yet.

    aioquic buffers whatever the application writes, without limit; a peer that never reads
    would make that buffer grow forever. The voice layer checks this to bound it.
    """
    stream = quic._streams.get(stream_id)
    if stream is None:
        return 0
    sender = stream.sender
    # The sender's buffer holds [_buffer_start, _buffer_stop): all that is not acked in order.
    return int(sender._buffer_stop - sender._buffer_start)


def rtt_seconds(quic: QuicConnection) -> tuple[float, float, float] | None:
    """Return (latest, smoothed, minimum) RTT in seconds, or ``None`` before the first sample."""
    recovery = quic._loss
    if not recovery._rtt_initialized:
        return None
    return (
        float(recovery._rtt_latest),
        float(recovery._rtt_smoothed),
        float(recovery._rtt_min),
    )


def pending_datagrams(quic: QuicConnection) -> int:
    """Return how many DATAGRAM frames wait in aioquic's (unbounded) send queue."""
    return len(quic._datagrams_pending)


def drop_oldest_datagrams(quic: QuicConnection, count: int) -> int:
    """Drop up to ``count`` of the oldest queued DATAGRAM frames; return how many were dropped."""
    queue = quic._datagrams_pending
    dropped = 0
    while queue and dropped < count:
        queue.popleft()
        dropped += 1
    return dropped


def parse_header(data: bytes, cid_length: int) -> QuicHeader:
    """Parse the header of a datagram's first packet; raise ``ValueError`` when malformed."""
    return pull_quic_header(Buffer(data=data), host_cid_length=cid_length)


def stream_send_offsets(quic: QuicConnection, stream_id: int) -> tuple[int, int]:
    """Return (acknowledged, written) stream offsets of what we sent on ``stream_id``.

    Everything before the first offset has been acknowledged by the peer; the second is the
    offset after the last octet written. The client keeps uplink frames between the two so
    that it can send them again if the connection dies.
    """
    stream = quic._streams.get(stream_id)
    if stream is None:
        return 0, 0
    sender = stream.sender
    return int(sender._buffer_start), int(sender._buffer_stop)


def peer_reset_tokens(quic: QuicConnection) -> set[bytes]:
    """Return the stateless-reset tokens the peer gave for the CIDs we may send to.

    aioquic 1.7 never checks incoming datagrams against them (RFC 9000 §10.3.1), so a client
    would sit out the idle timeout after its backend is gone; the client checks itself.
    """
    tokens = {quic._peer_cid.stateless_reset_token}
    tokens.update(cid.stateless_reset_token for cid in quic._peer_cid_available)
    tokens.discard(b"")
    return {token for token in tokens if token}


def peek_client_hello(data: bytes, cid_length: int) -> ClientHello | None:
    """The TLS ClientHello in a client's first Initial datagram, if it holds a whole one.

    Initial keys derive from the client's DCID (RFC 9001 §5.2), so this needs no state.
    Returns ``None`` for anything else, including a ClientHello spread over several datagrams.
    """
    try:
        buf = Buffer(data=data)
        header = pull_quic_header(buf, host_cid_length=cid_length)
        if header.packet_type != QuicPacketType.INITIAL or header.version is None:
            return None
        crypto = CryptoPair()
        crypto.setup_initial(cid=header.destination_cid, is_client=False, version=header.version)
        _, payload, _ = crypto.decrypt_packet(data[: header.packet_length], buf.tell(), 0)
        handshake = _initial_crypto_stream(payload)
        if handshake is None or len(handshake) < 4:
            return None
        if len(handshake) < 4 + int.from_bytes(handshake[1:4], "big"):
            return None
        return pull_client_hello(Buffer(data=handshake))
    except Exception:  # anything malformed is simply "no hello": aioquic will judge it
        return None


def peek_psk_identity(data: bytes, cid_length: int) -> bytes | None:
    """The PSK identity (TLS session ticket label) offered in a client's first Initial, if any.

    aioquic looks tickets up synchronously, inside the handshake; a backend that keeps tickets
    in a shared store reads the label first, fetches the ticket, then starts the connection.
    """
    hello = peek_client_hello(data, cid_length)
    if hello is None or hello.pre_shared_key is None or not hello.pre_shared_key.identities:
        return None
    return bytes(hello.pre_shared_key.identities[0][0])


def peek_server_name(data: bytes, cid_length: int) -> str | None:
    """The SNI (RFC 6066 §3) of the ClientHello in a client's first Initial, if any."""
    hello = peek_client_hello(data, cid_length)
    return None if hello is None else hello.server_name


def _initial_crypto_stream(payload: bytes) -> bytes | None:
    """The contiguous CRYPTO data from offset 0 in an Initial packet's frames."""
    buf = Buffer(data=payload)
    pieces: dict[int, bytes] = {}
    while not buf.eof():
        frame_type = buf.pull_uint_var()
        if frame_type in (QuicFrameType.PADDING, QuicFrameType.PING):
            continue
        if frame_type == QuicFrameType.CRYPTO:
            offset = buf.pull_uint_var()
            pieces[offset] = buf.pull_bytes(buf.pull_uint_var())
        elif frame_type in (QuicFrameType.ACK, QuicFrameType.ACK_ECN):
            pull_ack_frame(buf)
            if frame_type == QuicFrameType.ACK_ECN:
                for _ in range(3):
                    buf.pull_uint_var()
        else:
            return None
    stream = b""
    while len(stream) in pieces:
        piece = pieces.pop(len(stream))
        if not piece:
            break
        stream += piece
    return stream


def use_initial_destination_cid(quic: QuicConnection, cid: bytes) -> None:
    """Make a client's first Initial go to ``cid`` instead of aioquic's random DCID.

    RFC 9000 §7.2 lets the client choose any DCID of at least 8 octets; one a backend issued
    routes the first flight to that backend through a QUIC-LB forwarder. Call before
    ``connect()``: the Initial keys and the server's transport parameters derive from it.
    """
    if not quic._is_client:
        raise ValueError("only a client chooses its Initial's destination CID")
    if not 8 <= len(cid) <= 20:
        raise ValueError("an Initial's destination CID is 8..20 octets (RFC 9000 §7.2, §17.2)")
    if quic._state is not QuicConnectionState.FIRSTFLIGHT or quic._cryptos:
        raise ValueError("the connection has started: its destination CID is chosen")
    quic._peer_cid.cid = cid
    quic._original_destination_connection_id = cid


def can_send_early_data(quic: QuicConnection) -> bool:
    """Whether a client that just called ``connect()`` may send 0-RTT data now."""
    return bool(quic._cryptos[tls.Epoch.ZERO_RTT].send.is_valid())
