"""The ngtcp2 prototype's server endpoint, sans-I/O: datagrams and time in, datagrams out.

``Ngtcp2Endpoint`` demultiplexes datagrams to ngtcp2 connections by destination CID, accepts
new connections from client Initials, answers short-header packets for CIDs of this backend
that no connection holds with a stateless reset, and runs every connection's timers from one
heap. Every CID a connection issues comes from the endpoint's QUIC-LB generator: the handshake
SCID here, each NEW_CONNECTION_ID through ngtcp2's ``get_new_connection_id`` callback; every
stateless-reset token is the shared reset key's HMAC of its CID, so any backend or forwarder
holding the key can reset the connection.

Behind the forwarder (``EngineConfig.forwarder``), datagrams from its address are
encapsulated (``quicvoice.encapsulation``): the endpoint unwraps them (bad encapsulation is
dropped and counted), ngtcp2 sees the client's address inside as the path's remote (a new
client address is a new path: migration through the forwarder), and what goes to such a path
is wrapped and sent to the forwarder. The forwarder's authenticated health probes are answered
with a stateless reset from an allowance of their own; strangers' resets share
``RESETS_PER_SECOND`` (``quicvoice.reset_allowance``, as on the aioquic backend).

A client's Initial to a CID that decodes to this backend but that no connection holds (a
``welcome``'s ``home_cid``) is accepted like any client-chosen DCID; connections are told
apart by their first Initial's (DCID, SCID), so a second attempt to the same home CID from
another SCID is a connection of its own.

Each connection runs an application made by ``application`` (``EchoSession`` by default).
Times are integer nanoseconds of a monotonic clock; the wall clock (probes' timestamps) is
passed beside it.
"""

from __future__ import annotations

import enum
import functools
import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..encapsulation import EncapsulationError, unwrap, wrap
from ..errors import ConfigurationError, ProtocolError
from ..healthprobe import PROBE_CLIENT
from ..quiclb import LoadBalancerConfig, LoadBalancerDecoder, QuicLbConnectionIdGenerator
from ..reset_allowance import ResetAllowance
from ..session.transport import ALPN_VOICE
from . import require
from .echo import EchoSession, StreamSink

if TYPE_CHECKING:
    from .. import _ngtcp2

Address = tuple[str, int]
Datagrams = list[tuple[bytes, Address]]

NS = 1_000_000_000
#: RFC 9000 §10.3: a stateless reset looks like a short-header packet of at least 21 octets;
#: it is kept smaller than the packet that triggered it so that two endpoints cannot loop.
MIN_RESET_LEN = 21
MAX_RESET_LEN = 41
#: A long header's DCID length octet sits after the first octet and the version.
LONG_DCID_LEN_OFFSET = 5
#: Client addresses behind the forwarder a connection remembers (its paths: ngtcp2 validates
#: a new one and keeps few, so more than this are forged or long gone).
MAX_FORWARDED_REMOTES = 8


class ConnectionEnd(enum.Enum):
    """How a connection ended, as its session application is told (``connection_closed``)."""

    #: An application close (CONNECTION_CLOSE 0x1d): ours, the peer's, or the server's.
    APPLICATION = "application"
    #: The peer's transport close (CONNECTION_CLOSE 0x1c): the code is a QUIC transport error.
    TRANSPORT = "transport"
    #: No packet arrived within the idle timeout.
    IDLE_TIMEOUT = "idle_timeout"
    #: ngtcp2 failed the connection here: the code is ngtcp2's error (a negative
    #: ``NGTCP2_ERR_*``); the transport close it sent has a code the extension keeps in C.
    FAILED = "failed"


class Application(Protocol):
    """What runs on one connection: it is given stream data and answers through its sink."""

    def stream_data(self, stream_id: int, data: bytes, fin: bool) -> None:
        """Take data of one stream (-1: a DATAGRAM); raise ``ProtocolError`` to close."""
        ...


@runtime_checkable
class SessionApplication(Protocol):
    """An application that follows its whole connection, not only its stream data (the
    voice layer, ``voice_server.py``); the endpoint then calls these instead of
    ``stream_data``."""

    def receive_events(
        self, events: list[tuple[int, bytes, bool]], remote: Address, now: int
    ) -> None:
        """Take what one datagram from ``remote`` brought (possibly nothing but ACKs)."""
        ...

    def close_request(self, now: int) -> tuple[int, str] | None:
        """Before each flush: an application close (code, reason) to send now, or None."""
        ...

    def connection_closed(
        self, error_code: int, reason: str, end: ConnectionEnd = ConnectionEnd.APPLICATION
    ) -> None:
        """The connection ended (closed by either side, failed, or timed out: ``end``);
        called once."""
        ...


ApplicationFactory = Callable[[StreamSink, str], Application]


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    """What the prototype endpoint needs: its address, its QUIC-LB identity, TLS and limits."""

    #: The local address datagrams arrive on (ngtcp2 tracks paths by it).
    local: Address
    #: This backend's QUIC-LB server ID under ``lb_config``.
    server_id: bytes
    lb_config: LoadBalancerConfig
    #: The shared stateless-reset key (at least 16 octets).
    reset_key: bytes
    #: PEM certificate chain and PEM private key.
    certificate: bytes
    private_key: bytes
    alpn: str = ALPN_VOICE
    idle_timeout: float = 30.0
    max_connections: int = 4096
    #: How long a closing or draining connection keeps its CIDs before it is forgotten.
    close_linger: float = 1.0
    #: The forwarder's address: datagrams from it are encapsulated, answers to its clients go
    #: back to it wrapped (``None``: no forwarder, every datagram is the peer's own).
    forwarder: Address | None = None

    def __post_init__(self) -> None:
        if self.idle_timeout <= 0 or self.close_linger < 0 or self.max_connections < 1:
            raise ValueError("idle_timeout > 0, close_linger >= 0 and max_connections >= 1")


@dataclass(slots=True)
class EndpointStats:
    """What the endpoint did with the datagrams it was given."""

    accepted: int = 0
    #: Datagrams dropped: unknown CIDs without a reset, non-Initial first packets, garbage.
    dropped: int = 0
    resets_sent: int = 0
    #: Connections closed because ngtcp2 or the application failed them.
    failed: int = 0
    #: Datagrams from the forwarder whose encapsulation header was invalid (also dropped).
    bad_encapsulation: int = 0
    #: The forwarder's authentic health probes answered with a stateless reset.
    probes_answered: int = 0
    #: Strangers' short headers for our CIDs not answered: over ``RESETS_PER_SECOND``.
    resets_limited: int = 0
    #: Datagrams handed to their connection in C by ``receive_batch`` (the fast path).
    dispatched: int = 0


@dataclass(slots=True, eq=False)
class _Conn:
    key: int
    native: _ngtcp2.Connection | None = None
    application: Application | None = None
    #: The application, when it follows the whole connection.
    session: SessionApplication | None = None
    cids: set[bytes] = field(default_factory=set)
    #: The time its timer entry in the heap is for (None: no timer).
    expiry: int | None = None
    #: Set once it is closing or draining: forget it at this time.
    linger_until: int | None = None
    #: The first Initial's (DCID, SCID): tells apart attempts to the same client-chosen DCID.
    origin: tuple[bytes, bytes] = (b"", b"")
    #: Remote addresses heard through the forwarder, least recently heard first (an ordered
    #: set of at most ``MAX_FORWARDED_REMOTES``): what goes to them is wrapped to it.
    forwarded: dict[Address, None] = field(default_factory=dict)
    #: Its CIDs are in the fast path's routes (``receive_batch``): past the handshake and not
    #: closing.
    fast: bool = False


class Ngtcp2Endpoint:
    """Many ngtcp2 server connections behind one UDP address, sans-I/O."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        application: ApplicationFactory = EchoSession,
    ) -> None:
        native = require()
        self._native = native
        self._config = config
        self._application = application
        self._generator = QuicLbConnectionIdGenerator(
            config.server_id, config.lb_config, config.reset_key
        )
        self._cid_len = self._generator.cid_length
        self._decoder = LoadBalancerDecoder((config.lb_config,))
        self._server_id_hex = config.server_id.hex()
        try:
            self._context = native.ServerContext(
                config.certificate, config.private_key, config.alpn.encode()
            )
        except ValueError as error:
            raise ConfigurationError(str(error)) from None
        self._by_cid: dict[bytes, _Conn] = {}
        #: The fast path's routes: CID -> native connection, for ``fast`` connections only.
        self._fast_routes: dict[bytes, _ngtcp2.Connection] = {}
        self._by_native: dict[_ngtcp2.Connection, _Conn] = {}
        self._by_origin: dict[tuple[bytes, bytes], _Conn] = {}
        self._resets = ResetAllowance(config.reset_key)
        self._conns: dict[int, _Conn] = {}
        self._by_application: dict[int, _Conn] = {}
        self._next_key = 0
        self._timers: list[tuple[int, int, _Conn]] = []
        self._timer_seq = 0
        #: Counters of what happened to incoming datagrams.
        self.stats = EndpointStats()

    @property
    def connections(self) -> int:
        """Connections held (closing and draining ones included)."""
        return len(self._conns)

    @property
    def generator(self) -> QuicLbConnectionIdGenerator:
        """The QUIC-LB generator every CID of this endpoint comes from."""
        return self._generator

    def issued_cids(self) -> set[bytes]:
        """Every CID some connection of this endpoint can be reached by now."""
        return {cid for conn in self._conns.values() for cid in conn.cids}

    # -- datagrams ------------------------------------------------------------------------

    def receive_batch(
        self, datagrams: list[tuple[bytes, Address]], now: int, wall: float | None = None
    ) -> Datagrams:
        """Process datagrams read together at ``now``; return the datagrams to send.

        Short-header packets of established calls, direct or encapsulated by the forwarder,
        are handed to their connections in C (``_ngtcp2.dispatch``), every connection that
        received is flushed once after all its datagrams, so one packet can acknowledge
        several; the rest goes through ``datagram_received`` in order.
        """
        delivered, others = self._native.dispatch(
            datagrams, self._fast_routes, self._cid_len, now, self._config.forwarder
        )
        out: Datagrams = []
        touched: dict[int, _Conn] = {}
        by_native = self._by_native
        self.stats.dispatched += len(delivered)
        for native, (status, events), remote, forwarded in delivered:
            conn = by_native.get(native)
            if conn is None or conn.linger_until is not None:
                continue  # closed by what an earlier datagram of this batch brought
            if forwarded:
                self._heard_through_forwarder(conn, remote)
            if status != 0:
                touched.pop(conn.key, None)
                out += self._routed(conn, self._failed(conn, status, now))
                continue
            touched[conn.key] = conn
            session = conn.session
            if session is not None:
                session.receive_events(events, remote, now)
            elif events and conn.application is not None:
                try:
                    for stream_id, payload, fin in events:
                        conn.application.stream_data(stream_id, payload, fin)
                except ProtocolError as error:
                    touched.pop(conn.key, None)
                    out += self._routed(conn, self._close(conn, error.error_code, now))
        for conn in touched.values():
            if conn.native is not None and conn.linger_until is None:
                out += self._routed(conn, self._flush(conn, now))
        for data, remote in others:
            out += self.datagram_received(data, remote, now, wall)
        return out

    def datagram_received(
        self, data: bytes, remote: Address, now: int, wall: float | None = None
    ) -> Datagrams:
        """Process one datagram from ``remote``; return the datagrams to send. ``wall``: the
        wall clock in seconds, to check the forwarder's health probes (``None``: none is
        answered)."""
        forwarder = self._config.forwarder
        # (An IPv6 socket reports 4-tuples: host and port are what name the forwarder.)
        if forwarder is not None and remote[1] == forwarder[1] and remote[0] == forwarder[0]:
            try:
                client, inner = unwrap(data)
            except EncapsulationError:
                self.stats.bad_encapsulation += 1
                self.stats.dropped += 1
                return []
            return self._receive(inner, client, now, wall, forwarded=True)
        return self._receive(data, remote, now, wall, forwarded=False)

    def _receive(
        self, data: bytes, remote: Address, now: int, wall: float | None, *, forwarded: bool
    ) -> Datagrams:
        size = len(data)
        if size == 0:
            self.stats.dropped += 1
            return []
        scid = b""
        if data[0] & 0x80:
            if size <= LONG_DCID_LEN_OFFSET:
                self.stats.dropped += 1
                return []
            dcid_len = data[LONG_DCID_LEN_OFFSET]
            start = LONG_DCID_LEN_OFFSET + 1
            dcid = data[start : start + dcid_len]
            scid_at = start + dcid_len
            if scid_at < size:
                scid = data[scid_at + 1 : scid_at + 1 + data[scid_at]]
        else:
            dcid = data[1 : 1 + self._cid_len]
        conn = self._by_cid.get(dcid)
        if conn is not None and scid and conn.origin[0] == dcid and conn.origin[1] != scid:
            # Another attempt to the same client-chosen DCID (a session's home CID).
            conn = self._by_origin.get((dcid, scid))
        if conn is None:
            if data[0] & 0x80:
                conn = self._accept(data, remote, now)
                if conn is None:
                    return []
            else:
                return self._reset(data, dcid, remote, now, wall, forwarded=forwarded)
        native = conn.native
        if native is None or conn.linger_until is not None:
            return []
        if forwarded:
            self._heard_through_forwarder(conn, remote)
        status, events = native.receive(data, remote, now)
        if status != 0:
            return self._routed(conn, self._failed(conn, status, now))
        if not conn.fast and native.handshake_completed:
            self._promote(conn, native)
        session = conn.session
        if session is not None:
            session.receive_events(events, remote, now)
            return self._routed(conn, self._flush(conn, now))
        application = conn.application
        if events and application is not None:
            try:
                for stream_id, payload, fin in events:
                    application.stream_data(stream_id, payload, fin)
            except ProtocolError as error:
                return self._routed(conn, self._close(conn, error.error_code, now))
        return self._routed(conn, self._flush(conn, now))

    @staticmethod
    def _heard_through_forwarder(conn: _Conn, remote: Address) -> None:
        """Note that ``remote`` was heard through the forwarder: what goes to it is wrapped.
        Most recently heard last; anyone can send packets with a live CID from any address,
        so the oldest beyond ``MAX_FORWARDED_REMOTES`` is forgotten."""
        remotes = conn.forwarded
        remotes.pop(remote, None)
        remotes[remote] = None
        if len(remotes) > MAX_FORWARDED_REMOTES:
            del remotes[next(iter(remotes))]

    def _promote(self, conn: _Conn, native: _ngtcp2.Connection) -> None:
        """Put ``conn``'s CIDs into the fast path's routes."""
        conn.fast = True
        self._by_native[native] = conn
        routes = self._fast_routes
        for cid in conn.cids:
            if self._by_cid.get(cid) is conn:
                routes[cid] = native

    def _demote(self, conn: _Conn) -> None:
        """Take ``conn`` out of the fast path (closing or forgotten)."""
        if not conn.fast:
            return
        conn.fast = False
        native = conn.native
        routes = self._fast_routes
        for cid in conn.cids:
            if native is not None and routes.get(cid) is native:
                del routes[cid]
        if native is not None:
            self._by_native.pop(native, None)

    def _routed(self, conn: _Conn, out: Datagrams) -> Datagrams:
        """``out`` with what goes to a client heard through the forwarder wrapped to it."""
        forwarded = conn.forwarded
        forwarder = self._config.forwarder
        if not forwarded or forwarder is None:
            return out
        return [
            (wrap(remote, datagram), forwarder) if remote in forwarded else (datagram, remote)
            for datagram, remote in out
        ]

    def _accept(self, data: bytes, remote: Address, now: int) -> _Conn | None:
        header = self._native.accept(data)
        if header is None or len(self._conns) >= self._config.max_connections:
            self.stats.dropped += 1
            return None
        version, client_dcid, client_scid = header
        key = self._next_key
        self._next_key += 1
        conn = _Conn(key, origin=(client_dcid, client_scid))
        scid = self._generator.generate()
        try:
            native = self._native.Connection(
                self._context,
                client_dcid,
                client_scid,
                scid,
                self._generator.stateless_reset_token(scid),
                version,
                self._config.local,
                remote,
                now,
                functools.partial(self._issue_cid, key),
                functools.partial(self._retire_cid, key),
                int(self._config.idle_timeout * 1000),
            )
        except ValueError:
            self.stats.dropped += 1
            return None
        conn.native = native
        application = self._application(native, self._server_id_hex)
        conn.application = application
        if isinstance(application, SessionApplication):
            conn.session = application
            self._by_application[id(application)] = conn
        self._conns[key] = conn
        self._by_origin[conn.origin] = conn
        # The client's own DCID reaches the connection until it switches to ours; an earlier
        # attempt to the same DCID keeps it (later attempts are found by their origin).
        self._by_cid[scid] = conn
        conn.cids.add(scid)
        if client_dcid not in self._by_cid:
            self._by_cid[client_dcid] = conn
            conn.cids.add(client_dcid)
        self.stats.accepted += 1
        return conn

    def _reset(
        self,
        data: bytes,
        dcid: bytes,
        remote: Address,
        now: int,
        wall: float | None,
        *,
        forwarded: bool,
    ) -> Datagrams:
        size = len(data)
        # A CID of this deployment (any of its backends, as on the aioquic engine: the key is
        # shared, and a client misrouted here learns at once), not an unroutable one.
        if size <= MIN_RESET_LEN or not isinstance(self._decoder.decode(dcid), bytes):
            self.stats.dropped += 1
            return []
        seconds = now / NS
        if (
            forwarded
            and wall is not None
            and remote == PROBE_CLIENT
            and self._resets.answer_probe(data, len(dcid), seconds, wall)
        ):
            self.stats.probes_answered += 1
        elif not self._resets.allow_stranger(seconds):
            self.stats.resets_limited += 1
            self.stats.dropped += 1
            return []
        token = self._generator.stateless_reset_token(dcid)
        self.stats.resets_sent += 1
        reset = self._native.stateless_reset(token, min(size - 1, MAX_RESET_LEN))
        forwarder = self._config.forwarder
        if forwarded and forwarder is not None:
            return [(wrap(remote, reset), forwarder)]
        return [(reset, remote)]

    # -- CIDs (called by ngtcp2 through the extension) -----------------------------------

    def _issue_cid(self, key: int, length: int) -> tuple[bytes, bytes]:
        if length != self._cid_len:
            raise ValueError(f"ngtcp2 asked for a {length}-octet CID, not {self._cid_len}")
        cid = self._generator.generate()
        conn = self._conns.get(key)
        if conn is not None:
            self._by_cid[cid] = conn
            conn.cids.add(cid)
            if conn.fast and conn.native is not None:
                self._fast_routes[cid] = conn.native
        return cid, self._generator.stateless_reset_token(cid)

    def _retire_cid(self, key: int, cid: bytes) -> None:
        conn = self._conns.get(key)
        if conn is not None and cid in conn.cids:
            conn.cids.discard(cid)
            if self._by_cid.get(cid) is conn:
                del self._by_cid[cid]
            if conn.native is not None and self._fast_routes.get(cid) is conn.native:
                del self._fast_routes[cid]

    # -- sending, closing, timers ---------------------------------------------------------

    def transmit(self, application: Application, now: int) -> Datagrams:
        """What ``application``'s connection has to send now (it wrote outside a datagram's
        handling: an application task); nothing when the connection is gone or closing."""
        conn = self._by_application.get(id(application))
        if conn is None or conn.native is None or conn.linger_until is not None:
            return []
        return self._routed(conn, self._flush(conn, now))

    def _flush(self, conn: _Conn, now: int) -> Datagrams:
        assert conn.native is not None
        session = conn.session
        if session is not None:
            close = session.close_request(now)
            if close is not None:
                # What was written before the close goes out first, in the same flush.
                status, out = conn.native.flush(now)
                return out + self._close(conn, close[0], now, close[1], failed=False)
        status, out = conn.native.flush(now)
        if status != 0:
            return out + self._failed(conn, status, now)
        self._arm(conn, conn.native.expiry)
        return out

    def _close(
        self, conn: _Conn, error_code: int, now: int, reason: str = "", *, failed: bool = True
    ) -> Datagrams:
        assert conn.native is not None
        out = conn.native.close(now, error_code, reason.encode()[:1024])
        self.stats.failed += failed
        self._closed(conn, error_code, reason)
        self._linger(conn, now)
        return out

    def _closed(
        self,
        conn: _Conn,
        error_code: int,
        reason: str,
        end: ConnectionEnd = ConnectionEnd.APPLICATION,
    ) -> None:
        """Tell a session application, once, that its connection ended."""
        session = conn.session
        if session is not None:
            conn.session = None
            self._by_application.pop(id(session), None)
            session.connection_closed(error_code, reason, end)

    def _failed(self, conn: _Conn, status: int, now: int) -> Datagrams:
        assert conn.native is not None
        native = self._native
        if conn.session is not None:
            peer = conn.native.peer_close
            if peer is not None:
                code, reason, application = peer
                end = ConnectionEnd.APPLICATION if application else ConnectionEnd.TRANSPORT
                self._closed(conn, code, reason.decode(errors="replace"), end)
            elif status == native.ERR_IDLE_CLOSE:
                self._closed(conn, 0, "idle timeout", ConnectionEnd.IDLE_TIMEOUT)
            else:
                failure = f"connection failed: {native.strerror(status)}"
                self._closed(conn, status, failure, ConnectionEnd.FAILED)
        if status in (native.ERR_DROP_CONN, native.ERR_IDLE_CLOSE):
            self._forget(conn)
            return []
        out = [] if status in (native.ERR_DRAINING, native.ERR_CLOSING) else conn.native.close(now)
        self.stats.failed += status not in (native.ERR_DRAINING, native.ERR_CLOSING)
        self._linger(conn, now)
        return out

    def _linger(self, conn: _Conn, now: int) -> None:
        self._demote(conn)
        conn.linger_until = now + int(self._config.close_linger * NS)
        self._arm(conn, conn.linger_until)

    def _forget(self, conn: _Conn) -> None:
        self._demote(conn)
        self._closed(conn, 0, "connection forgotten")
        self._conns.pop(conn.key, None)
        if self._by_origin.get(conn.origin) is conn:
            del self._by_origin[conn.origin]
        for cid in conn.cids:
            if self._by_cid.get(cid) is conn:
                del self._by_cid[cid]
        conn.cids.clear()
        conn.expiry = None

    def _arm(self, conn: _Conn, when: int | None) -> None:
        if when == conn.expiry:
            return
        conn.expiry = when
        if when is not None:
            self._timer_seq += 1
            heapq.heappush(self._timers, (when, self._timer_seq, conn))
            if len(self._timers) > 64 + 4 * len(self._conns):
                self._timers = [entry for entry in self._timers if entry[2].expiry == entry[0]]
                heapq.heapify(self._timers)

    def next_timer(self) -> int | None:
        """When ``handle_timers`` must next run (ns), or ``None``."""
        timers = self._timers
        while timers:
            when, _, conn = timers[0]
            if conn.expiry == when and conn.key in self._conns:
                return when
            heapq.heappop(timers)
        return None

    def handle_timers(self, now: int) -> Datagrams:
        """Run every timer due at ``now``; return the datagrams to send."""
        out: Datagrams = []
        timers = self._timers
        ran: set[int] = set()
        again: list[tuple[int, int, _Conn]] = []
        while timers and timers[0][0] <= now:
            entry = heapq.heappop(timers)
            when, _, conn = entry
            if conn.expiry != when or conn.key not in self._conns or conn.native is None:
                continue
            if conn.key in ran:
                # Re-armed at or before ``now`` by its own run: due again, but in the next
                # call (ngtcp2 may need the clock to move; a loop here would never end).
                again.append(entry)
                continue
            ran.add(conn.key)
            conn.expiry = None
            if conn.linger_until is not None:
                self._forget(conn)
                continue
            status = conn.native.handle_expiry(now)
            if status != 0:
                out += self._routed(conn, self._failed(conn, status, now))
            else:
                out += self._routed(conn, self._flush(conn, now))
        for entry in again:
            heapq.heappush(timers, entry)
        return out

    def close_all(self, now: int) -> Datagrams:
        """Close every connection (application close, NO_ERROR) and forget them all."""
        out: Datagrams = []
        for conn in list(self._conns.values()):
            if conn.native is not None and conn.linger_until is None:
                out += self._routed(conn, conn.native.close(now, 0, b"server shutting down"))
            self._closed(conn, 0, "server shutting down")
            self._forget(conn)
        self._timers.clear()
        return out
