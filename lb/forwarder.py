"""The forwarder's I/O shell: sockets, processes, signals; every decision is the Router's.

Process layout::

    supervisor (quicvoice-lb)         parses the config, binds the sockets, serves /metrics,
     |                                 validates and relays SIGHUP, restarts dead pumps
     +- worker 0: uplink pump          VIP socket -> Router.route_from_client -> backend socket
     |            downlink pump        backend socket -> Router.route_from_backend -> VIP socket
     +- worker 1: ... (--workers N: N pairs of sockets on the same ports, SO_REUSEPORT)

Each pump is a plain blocking loop in its own process, no event loop and no lock shared with
the other direction (the field notes measured asyncio at 5x the cost of such a loop). By
default it is one ``recvfrom`` and one ``sendto`` per datagram. With ``--batch`` (Linux) it is
batched (``lb.mmsg``): one ``recvmmsg`` takes every datagram already queued (up to ``BATCH``;
it blocks only for the first), each is decided, and one ``sendmmsg`` per destination socket
sends them; with IPv4 sockets the datagrams are sent from where ``recvmmsg`` wrote them
(``mmsg.Outbox``: the encapsulation header is gathered from the received socket address, no
``bytes`` is made). Fewer CPU-seconds under load, more latency when light (specs/forwarder.md,
"Performance"). The two pumps of a worker share its two sockets, inherited across ``fork``:
the downlink pump sends from the VIP socket, the uplink pump from the backend socket, so
backends answer to ``backend_listen``.

The common datagram (a short header whose CID names a live backend; an IPv4 header from a
configured backend) is decided in the loop itself, from tables the Router precomputes
(``Router.fast_*``), exactly as ``route_from_client``/``route_from_backend`` would decide it,
and counted in plain integers that ``Router.fold`` moves into the counters before each
snapshot; everything else calls the Router. tests/lb/test_lb_fast_path.py checks on any
traffic that both give the same sends and the same counts.

A pump reloads on SIGHUP between two batches (between two datagrams unbatched: the next one
sees the new Router; the socket and its queue are untouched, so nothing is dropped) and exits
on SIGTERM or SIGINT, or when its supervisor is gone (PR_SET_PDEATHSIG, and a parent check when
idle).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import multiprocessing
import os
import shutil
import signal
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

from quicvoice.errors import ConfigurationError

from . import mmsg
from .config import Address, ForwarderConfig, format_address, load_config
from .encapsulation import DECIMAL, FAMILY_IPV4, IPV4_HEADER, IPV4_HEADER_LEN, MAGIC_VERSION
from .health import PROBE_CLIENT, PROBE_REPLY_HEADER, HealthTable, probes
from .log import JsonLogger
from .metrics import MetricsServer, read_snapshots, write_snapshot
from .packet import LONG_HEADER_BIT, MAX_CID_LEN_V1, MIN_SHORT_HEADER_LEN
from .router import (
    CONFIG_BITS_SHIFT,
    MAX_CLIENT_DATAGRAM,
    Counters,
    DownlinkCount,
    DropReason,
    Forward,
    MetricSample,
    Reply,
    Router,
    Send,
    UplinkCount,
)

#: Larger than any UDP payload: a datagram is never truncated.
RECV_BUFFER_LEN = 65536
#: Socket buffers asked for (the kernel may cap them at net.core.[rw]mem_max).
SOCKET_BUFFER_LEN = 4 * 1024 * 1024
#: How long a pump blocks in ``recvfrom`` before it looks after itself (SO_RCVTIMEO).
IDLE_TIMEOUT = 0.25
#: Counters reach the supervisor about this often (seconds).
SNAPSHOT_INTERVAL = 1.0
#: How often a pump looks after itself between datagrams (counters, backend health), seconds.
TICK_INTERVAL = 0.05
#: Backends whose health is tracked (a larger pool is tracked up to this many).
MAX_HEALTH_BACKENDS = 1024
#: Length of the encapsulation header of a probe answer, and its address octets.
PROBE_HEADER_LEN = len(PROBE_REPLY_HEADER)
PROBE_HOST_OCTETS = socket.inet_aton(PROBE_CLIENT[0])
#: Batches smaller than this decrypt each single-pass CID on its own (``decode``): one AES
#: call per datagram costs less than gathering the blocks for one call per batch.
BATCH_DECRYPT_MIN = 4
#: Config-bits values (draft-21 §3: three bits).
CONFIG_SLOTS = 8
#: A single-pass CID: its first octet, then one AES block (draft-21 §5.4.1).
SINGLE_PASS_BLOCK_LEN = 16
SINGLE_PASS_CID_END = 2 + SINGLE_PASS_BLOCK_LEN  # in a datagram: the first octet, then the CID
#: The first two octets of an IPv4 encapsulation header (magic and version, family), and
#: the same in memory for the batched pumps' iovecs.
IPV4_PREFIX = bytes((MAGIC_VERSION, FAMILY_IPV4))
_IPV4_PREFIX = ctypes.create_string_buffer(IPV4_PREFIX, len(IPV4_PREFIX))
#: The rest of a probe answer's header: the port and address of PROBE_CLIENT.
PROBE_PORT_AND_ADDRESS = PROBE_REPLY_HEADER[len(IPV4_PREFIX) :]
#: Most datagrams a batched pump takes in one ``recvmmsg`` (and sends in one ``sendmmsg``).
BATCH = mmsg.DEFAULT_BATCH
#: Failed sends by errno, per direction: a breakdown of the ``send_error`` drops.
SEND_ERRORS_METRIC = "quicvoice_lb_send_errors_total"
#: A pump that dies sooner than this after starting is restarted only after this long.
RESTART_BACKOFF = 1.0
#: How long the supervisor waits for pumps to exit on SIGTERM before it kills them.
STOP_GRACE = 2.0
#: Between relaying SIGHUP to the downlink pumps and to the uplink pumps (seconds): a backend
#: that a reload adds is trusted on the way back before the first datagram goes to it.
RELOAD_STAGGER = 0.05
SUPERVISOR_TICK = 0.1
#: Linux prctl(2) option: signal to receive when the parent dies.
PR_SET_PDEATHSIG = 1
#: Log at most this many unexpected errors per pump, then one in ERROR_LOG_EVERY.
ERROR_LOG_BURST = 10
ERROR_LOG_EVERY = 10_000
HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
UPLINK = "uplink"
DOWNLINK = "downlink"


class _Stopped(BaseException):
    """Raised by the SIGTERM/SIGINT handler to leave a blocking loop at once."""


def open_socket(address: Address) -> socket.socket:
    """A UDP socket bound to ``address`` with SO_REUSEPORT and large buffers, blocking.

    SO_RCVTIMEO makes ``recvfrom`` return EAGAIN after ``IDLE_TIMEOUT`` while Python still
    sees a blocking socket (a Python-level timeout would add a poll() per datagram).
    """
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        for option, forced in (
            (socket.SO_RCVBUF, getattr(socket, "SO_RCVBUFFORCE", None)),
            (socket.SO_SNDBUF, getattr(socket, "SO_SNDBUFFORCE", None)),
        ):
            try:
                if forced is None:
                    raise PermissionError
                sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER_LEN)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_LEN)
        seconds = int(IDLE_TIMEOUT)
        timeval = struct.pack("@ll", seconds, int((IDLE_TIMEOUT - seconds) * 1_000_000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _set_parent_death_signal() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (best effort elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


class Pump:
    """One direction of one worker: receive, ask the Router, send. Runs in its own process."""

    def __init__(
        self,
        *,
        direction: str,
        worker: int,
        config_path: Path,
        config: ForwarderConfig,
        vip: socket.socket,
        backend: socket.socket,
        snapshot: Path,
        parent_pid: int,
        logger: JsonLogger,
        batch: bool = False,
        health: HealthTable | None = None,
    ) -> None:
        if direction not in (UPLINK, DOWNLINK):
            raise ValueError(f"direction must be {UPLINK!r} or {DOWNLINK!r}")
        self.direction = direction
        self.worker = worker
        self.config_path = config_path
        self.counters = Counters()
        self._config = config
        self.router = Router(config, self.counters)
        self.logger = logger.bind(pump=direction, worker=worker)
        self._vip = vip
        self._backend = backend
        self._snapshot = snapshot
        self._parent_pid = parent_pid
        self._next_snapshot = 0.0
        self._errors = 0
        self._reload_pending = False
        #: Whether this pump uses recvmmsg/sendmmsg (asked for, and available here).
        self.batched = batch and mmsg.AVAILABLE
        #: Failed sendto calls by errno name (unbatched); batched senders count their own.
        self._send_errors: dict[str, int] = {}
        self._senders: tuple[mmsg.Sender | mmsg.Outbox, ...] = ()
        #: Probe answers (downlink) and health decisions (uplink): see lb/health.py.
        self._health = health
        self._backend_index = {b.address: i for i, b in enumerate(config.backends)}
        self._dead: frozenset[int] = frozenset()
        #: When the loop next looks after itself; a SIGHUP sets it to 0 so that the datagram
        #: being received is routed by the new Router (the loop tests no flag per datagram).
        self._next_tick = 0.0
        #: Whether the unbatched fast path applies: IPv4 sockets (IPv6 goes the general way).
        self._fast_uplink = vip.family == socket.AF_INET
        self._fast_downlink = backend.family == socket.AF_INET
        #: Whether the batched pumps can gather in place (``mmsg.Outbox``): both IPv4.
        self._ipv4 = self._fast_uplink and self._fast_downlink
        self._targets: dict[bytes | None, tuple[UplinkCount, bytes]] = {}
        self._single_pass: tuple[tuple[int, Callable[[bytes], bytes], int], ...] = ()
        self._raw_sources: dict[bytes, DownlinkCount] = {}
        self._use(self.router)

    def _use(self, router: Router) -> None:
        """Route with ``router`` from the next datagram on (counts of the old one kept)."""
        self.router.fold()
        self.router = router
        self._single_pass = tuple(
            (bits, spec[0], spec[1])
            for bits, spec in enumerate(router.fast_single_pass)
            if spec is not None
        )
        if self._ipv4:
            # The batched fast path's view of the router's tables: each backend's port and
            # address as 6 octets in network order (as in a sockaddr_in or a header).
            self._targets = {
                server_id: (count, _port_and_address(count.address))
                for server_id, count in router.fast_uplink.items()
            }
            self._raw_sources = {
                _port_and_address(address): count for address, count in router.fast_downlink.items()
            }

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT or until the supervisor is gone."""
        _set_parent_death_signal()
        signal.signal(signal.SIGHUP, self._on_sighup)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        self.logger.info("pump_started", pid=os.getpid(), batched=self.batched)
        try:
            if os.getppid() != self._parent_pid:
                return
            if self.batched and self._ipv4:
                if self.direction == UPLINK:
                    self._uplink_relay()
                else:
                    self._downlink_relay()
            elif self.batched:
                if self.direction == UPLINK:
                    self._uplink_batches()
                else:
                    self._downlink_batches()
            elif self.direction == UPLINK:
                self._uplink_loop()
            else:
                self._downlink_loop()
        except _Stopped:
            pass
        finally:
            with contextlib.suppress(_Stopped):
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                self.flush()
                self.logger.info("pump_stopped", pid=os.getpid())

    def _uplink_loop(self) -> None:
        """recvfrom, route, sendto. The common case (a short header whose CID names a live
        backend, from an IPv4 client) is decided inline, exactly as ``route_from_client``
        would; anything else goes through the Router. tests/lb/test_lb_fast_path.py checks
        that both give the same sends and counts."""
        recvfrom = self._vip.recvfrom
        to_backend = self._backend.sendto
        to_client = self._vip.sendto
        monotonic = time.monotonic
        fast = self._fast_uplink
        header = IPV4_HEADER.pack
        inet_aton = socket.inet_aton
        route = self.router.route_from_client
        decoders = self.router.fast_decoders
        single_pass = self.router.fast_single_pass
        live = self.router.fast_uplink
        while True:
            try:
                datagram, client = recvfrom(RECV_BUFFER_LEN)
            except BlockingIOError:
                self._idle()
                route = self.router.route_from_client
                decoders = self.router.fast_decoders
                single_pass = self.router.fast_single_pass
                live = self.router.fast_uplink
                continue
            except OSError as error:
                self._unexpected("recv_failed", error)
                continue
            if monotonic() >= self._next_tick:
                self._tick()
                route = self.router.route_from_client
                decoders = self.router.fast_decoders
                single_pass = self.router.fast_single_pass
                live = self.router.fast_uplink
            try:
                length = len(datagram)
                if (
                    MIN_SHORT_HEADER_LEN <= length <= MAX_CLIENT_DATAGRAM
                    and not datagram[0] & LONG_HEADER_BIT
                    and fast
                ):
                    bits = datagram[1] >> CONFIG_BITS_SHIFT
                    spec = single_pass[bits]
                    if spec is not None:  # what its decode does, without the call
                        server_id = spec[0](datagram[2:SINGLE_PASS_CID_END])[: spec[1]]
                    else:
                        decode = decoders[bits]
                        server_id = None
                        if decode is not None:
                            server_id = decode(datagram[1 : 1 + MAX_CID_LEN_V1])
                    target = live.get(server_id)
                    if target is not None and client[1]:
                        wrapped = header(
                            MAGIC_VERSION, FAMILY_IPV4, client[1], inet_aton(client[0])
                        )
                        target.packets += 1
                        target.octets += length
                        to_backend(wrapped + datagram, target.address)
                        continue
                decision = route(datagram, client)
                if type(decision) is Forward:
                    to_backend(decision[1], decision[0])
                elif type(decision) is Reply:
                    to_client(decision[1], decision[0])
            except OSError as error:
                self._send_failed(self.counters.uplink_drops, error)
            except Exception as error:  # a bug must cost one datagram, never the forwarder
                self._unexpected("route_failed", error)

    def _downlink_loop(self) -> None:
        """recvfrom, route, sendto; an IPv4 header from a configured backend is unwrapped
        inline, exactly as ``route_from_backend`` would (probe answers excepted)."""
        recvfrom = self._backend.recvfrom
        to_client = self._vip.sendto
        monotonic = time.monotonic
        fast = self._fast_downlink
        octet = DECIMAL
        dotted = ".".join
        route = self.router.route_from_backend
        sources = self.router.fast_downlink
        while True:
            try:
                datagram, source = recvfrom(RECV_BUFFER_LEN)
            except BlockingIOError:
                self._idle()
                route = self.router.route_from_backend
                sources = self.router.fast_downlink
                continue
            except OSError as error:
                self._unexpected("recv_failed", error)
                continue
            if monotonic() >= self._next_tick:
                self._tick()
                route = self.router.route_from_backend
                sources = self.router.fast_downlink
            try:
                if (
                    fast
                    and len(datagram) > IPV4_HEADER_LEN
                    and datagram[0] == MAGIC_VERSION
                    and datagram[1] == FAMILY_IPV4
                ):
                    port = datagram[2] << 8 | datagram[3]
                    origin = sources.get(source)
                    if (
                        origin is not None
                        and port
                        and (port != PROBE_CLIENT[1] or datagram[4:8] != PROBE_HOST_OCTETS)
                    ):
                        client = dotted(
                            (
                                octet[datagram[4]],
                                octet[datagram[5]],
                                octet[datagram[6]],
                                octet[datagram[7]],
                            )
                        )
                        origin.packets += 1
                        origin.octets += len(datagram)
                        to_client(datagram[IPV4_HEADER_LEN:], (client, port))
                        continue
                if datagram[:PROBE_HEADER_LEN] == PROBE_REPLY_HEADER:
                    self._probe_answered(source)
                    continue
                decision = route(datagram, source)
                if type(decision) is Send:
                    to_client(decision[1], decision[0])
            except OSError as error:
                self._send_failed(self.counters.downlink_drops, error)
            except Exception as error:  # a bug must cost one datagram, never the forwarder
                self._unexpected("route_failed", error)

    def _uplink_batches(self) -> None:
        receive = mmsg.Receiver(self._vip, BATCH).receive
        to_backend = mmsg.Sender(self._backend, BATCH)
        to_client = mmsg.Sender(self._vip, BATCH)
        self._senders = (to_backend, to_client)
        drops = self.counters.uplink_drops
        forwards: list[Forward] = []
        replies: list[Reply] = []
        forward = forwards.append
        reply = replies.append
        monotonic = time.monotonic
        while True:
            if self._reload_pending:
                self.reload()
            try:
                batch = receive()
            except BlockingIOError:
                self._idle()
                continue
            except OSError as error:
                self._unexpected("recv_failed", error)
                continue
            route = self.router.route_from_client
            for datagram, client in batch:
                try:
                    decision = route(datagram, client)
                except Exception as error:  # a bug must cost one datagram, never the forwarder
                    self._unexpected("route_failed", error)
                    continue
                if type(decision) is Forward:
                    forward(decision)
                elif type(decision) is Reply:
                    reply(decision)
            if forwards:
                failed = to_backend.send(forwards)
                forwards.clear()
                if failed:
                    drops[DropReason.SEND_ERROR] += failed
            if replies:
                failed = to_client.send(replies)
                replies.clear()
                if failed:
                    drops[DropReason.SEND_ERROR] += failed
            if monotonic() >= self._next_tick:
                self._tick()

    def _downlink_batches(self) -> None:
        receive = mmsg.Receiver(self._backend, BATCH).receive
        to_client = mmsg.Sender(self._vip, BATCH)
        self._senders = (to_client,)
        drops = self.counters.downlink_drops
        sends: list[Send] = []
        send = sends.append
        monotonic = time.monotonic
        while True:
            if self._reload_pending:
                self.reload()
            try:
                batch = receive()
            except BlockingIOError:
                self._idle()
                continue
            except OSError as error:
                self._unexpected("recv_failed", error)
                continue
            route = self.router.route_from_backend
            for datagram, source in batch:
                if datagram[:PROBE_HEADER_LEN] == PROBE_REPLY_HEADER:
                    self._probe_answered(source)
                    continue
                try:
                    decision = route(datagram, source)
                except Exception as error:  # a bug must cost one datagram, never the forwarder
                    self._unexpected("route_failed", error)
                    continue
                if type(decision) is Send:
                    send(decision)
            if sends:
                failed = to_client.send(sends)
                sends.clear()
                if failed:
                    drops[DropReason.SEND_ERROR] += failed
            if monotonic() >= self._next_tick:
                self._tick()

    def _uplink_relay(self) -> None:
        """--batch with IPv4 sockets: ``recvmmsg`` into fixed buffers, then the fast path of
        ``_uplink_loop`` on each datagram where it lies, and one ``sendmmsg`` whose iovecs
        gather the encapsulation header (its two constant octets, then the client's port and
        address where ``recvmmsg`` wrote them) and the datagram: no ``bytes``, no address
        string. Other datagrams go through the Router and are sent in the same order."""
        receiver = mmsg.Receiver(self._vip, BATCH)
        outbox = mmsg.Outbox(self._backend, BATCH)
        to_client = mmsg.Sender(self._vip, BATCH)
        self._senders = (outbox, to_client)
        drops = self.counters.uplink_drops
        replies: list[Reply] = []
        reply = replies.append
        monotonic = time.monotonic
        receive = receiver.receive_count
        item = receiver.item
        data = receiver.data
        names = receiver.names
        # Per batch, one call each: every datagram's first two octets (the second: the CID's
        # first, with the config bits) and the AES block of a single-pass CID after them,
        # and every client's port (the sockaddr_in's octets 2..3)...
        heads = receiver.data_unpackers(f"BB{SINGLE_PASS_BLOCK_LEN}s")
        ports = receiver.name_unpackers("2xH")
        # ... and where each lies: the datagrams, and the clients' port and address.
        data_address = receiver.data_address
        datagram_addresses = tuple(data_address + start for start in receiver.starts)
        client_addresses = tuple(
            receiver.names_address + slot * receiver.name_len + 2 for slot in range(BATCH)
        )
        slots = outbox.slots
        stage = outbox.stage
        slot_len = outbox.slot_len
        add = outbox.add
        flush = outbox.flush
        prefix = ctypes.addressof(_IPV4_PREFIX)
        family = int(socket.AF_INET)
        while True:
            if self._reload_pending:
                self.reload()
            try:
                count = receive()
            except BlockingIOError:
                self._idle()
                continue
            except OSError as error:
                self._unexpected("recv_failed", error)
                continue
            route = self.router.route_from_client
            decoders = self.router.fast_decoders
            single_pass = self._single_pass
            targets = self._targets
            lengths = receiver.lengths
            batch_heads = heads[count](data)
            seconds = batch_heads[1::3]
            # Pass 1: which datagrams may take the fast path (the conditions of _uplink_loop's),
            # by config bits; then the CID blocks of each single-pass configuration, all
            # decrypted in one call.
            decrypted: list[Iterator[bytes] | None] = [None] * CONFIG_SLOTS
            kinds: list[int] = []
            try:
                # (zip without strict=: the keyword doubles the cost of creating a zip, which a
                # batch pays several times; every sequence here is at least ``count`` long.)
                for length, first, second, port in zip(  # noqa: B905
                    lengths, batch_heads[0::3], seconds, ports[count](names)
                ):
                    if (
                        MIN_SHORT_HEADER_LEN <= length <= MAX_CLIENT_DATAGRAM
                        and not first & LONG_HEADER_BIT
                        and port
                    ):
                        kinds.append(second >> CONFIG_BITS_SHIFT)
                    else:
                        kinds.append(-1)
                for bits, decrypt, server_id_len in (
                    single_pass if count >= BATCH_DECRYPT_MIN else ()
                ):
                    group = [
                        block
                        for kind, block in zip(kinds, batch_heads[2::3])  # noqa: B905
                        if kind == bits
                    ]
                    if group:
                        plaintext = decrypt(b"".join(group))
                        decrypted[bits] = iter(
                            [
                                plaintext[start : start + server_id_len]
                                for start in range(0, len(plaintext), SINGLE_PASS_BLOCK_LEN)
                            ]
                        )
            except Exception as error:  # a bug: route this batch through the Router alone
                self._unexpected("route_failed", error)
                kinds = [-1] * count
                decrypted = [None] * CONFIG_SLOTS
            # Pass 2, in order: stage each fast datagram where it lies; route the others.
            position = 0
            for index, kind, length, datagram_address, client_address in zip(  # noqa: B905
                range(count), kinds, lengths, datagram_addresses, client_addresses
            ):
                try:
                    if kind >= 0:
                        server_ids = decrypted[kind]
                        if server_ids is not None:
                            server_id = next(server_ids)
                        else:
                            decode = decoders[kind]
                            server_id = None
                            if decode is not None:
                                start = datagram_address - data_address + 1
                                server_id = decode(data[start : start + MAX_CID_LEN_V1])
                        hit = targets.get(server_id)
                        if hit is not None:
                            target, port_and_address = hit
                            target.packets += 1
                            target.octets += length
                            stage(
                                slots,
                                position,
                                prefix,
                                2,
                                client_address,
                                6,
                                datagram_address,
                                length,
                                family,
                                port_and_address,
                            )
                            position += slot_len
                            continue
                    datagram, address = item(index)
                    decision = route(datagram, address)
                except Exception as error:  # a bug must cost one datagram, never the forwarder
                    self._unexpected("route_failed", error)
                    continue
                if type(decision) is Forward:
                    position = add(position, decision[0], decision[1])
                elif type(decision) is Reply:
                    reply(decision)
            failed = flush(position)
            if failed:
                drops[DropReason.SEND_ERROR] += failed
            if replies:
                failed = to_client.send(replies)
                replies.clear()
                if failed:
                    drops[DropReason.SEND_ERROR] += failed
            if monotonic() >= self._next_tick:
                self._tick()

    def _downlink_relay(self) -> None:
        """--batch with IPv4 sockets: the fast path of ``_downlink_loop`` on each datagram
        where ``recvmmsg`` left it; ``sendmmsg`` sends its payload from the receive buffer to
        a ``sockaddr_in`` made of the header's port and address. Others go through the
        Router (probe answers first), in order."""
        receiver = mmsg.Receiver(self._backend, BATCH)
        outbox = mmsg.Outbox(self._vip, BATCH)
        self._senders = (outbox,)
        drops = self.counters.downlink_drops
        monotonic = time.monotonic
        receive = receiver.receive_count
        item = receiver.item
        data = receiver.data
        names = receiver.names
        # Per batch, one call each: every datagram's header as its first two octets (magic and
        # version, family) and the client's port and address (6 octets, as in a sockaddr_in),
        # and every source's port and address.
        heads = receiver.data_unpackers("2s6s")
        sources = receiver.name_unpackers("2x6s")
        payload_addresses = tuple(
            receiver.data_address + start + IPV4_HEADER_LEN for start in receiver.starts
        )
        slots = outbox.slots
        stage_one = outbox.stage_one
        slot_len = outbox.slot_len
        add = outbox.add
        flush = outbox.flush
        family = int(socket.AF_INET)
        while True:
            if self._reload_pending:
                self.reload()
            try:
                count = receive()
            except BlockingIOError:
                self._idle()
                continue
            except OSError as error:
                self._unexpected("recv_failed", error)
                continue
            route = self.router.route_from_backend
            backends = self._raw_sources
            batch_heads = heads[count](data)
            position = 0
            for index, length, prefix, client, source, payload_address in zip(  # noqa: B905
                range(count),
                receiver.lengths,
                batch_heads[0::2],
                batch_heads[1::2],
                sources[count](names),
                payload_addresses,
            ):
                try:
                    # The conditions of _downlink_loop's fast path (client[:2]: the port).
                    if (
                        length > IPV4_HEADER_LEN
                        and prefix == IPV4_PREFIX
                        and (client[0] or client[1])
                        and client != PROBE_PORT_AND_ADDRESS
                    ):
                        origin = backends.get(source)
                        if origin is not None:
                            origin.packets += 1
                            origin.octets += length
                            stage_one(
                                slots,
                                position,
                                payload_address,
                                length - IPV4_HEADER_LEN,
                                family,
                                client,
                            )
                            position += slot_len
                            continue
                    datagram, address = item(index)
                    if datagram[:PROBE_HEADER_LEN] == PROBE_REPLY_HEADER:
                        self._probe_answered(address)
                        continue
                    decision = route(datagram, address)
                except Exception as error:  # a bug must cost one datagram, never the forwarder
                    self._unexpected("route_failed", error)
                    continue
                if type(decision) is Send:
                    position = add(position, decision[0], decision[1])
            failed = flush(position)
            if failed:
                drops[DropReason.SEND_ERROR] += failed
            if monotonic() >= self._next_tick:
                self._tick()

    def _send_failed(self, drops: dict[DropReason, int], error: OSError) -> None:
        drops[DropReason.SEND_ERROR] += 1
        name = errno.errorcode.get(error.errno or 0, mmsg.ADDRESS_ERROR)
        self._send_errors[name] = self._send_errors.get(name, 0) + 1

    def send_error_samples(self) -> list[MetricSample]:
        """Failed sends by errno name (``quicvoice_lb_send_errors_total``), both I/O paths."""
        totals = dict(self._send_errors)
        for sender in self._senders:
            for name, count in sender.errors.items():
                totals[name] = totals.get(name, 0) + count
        return [
            (SEND_ERRORS_METRIC, (("direction", self.direction), ("error", name)), count)
            for name, count in sorted(totals.items())
        ]

    def _tick(self) -> None:
        if self._reload_pending:
            self.reload()
        now = time.monotonic()
        self._next_tick = now + TICK_INTERVAL
        if now >= self._next_snapshot:
            self.flush()
        if self._health is not None and self.direction == UPLINK:
            self._apply_health()

    def _probe_answered(self, source: Any) -> None:
        index = self._backend_index.get((source[0], source[1]))
        if index is not None and self._health is not None:
            self._health.heard(index)

    def _apply_health(self) -> None:
        """Treat backends that stopped answering probes as down (and back when they answer)."""
        assert self._health is not None
        config = self.router.config
        dead = self._health.dead(len(config.backends))
        if dead == self._dead:
            return
        for index in dead - self._dead:
            self.logger.warning(
                "backend_unhealthy", server_id=config.backends[index].server_id.hex()
            )
        for index in self._dead - dead:
            self.logger.info("backend_healthy", server_id=config.backends[index].server_id.hex())
        self._dead = dead
        self._use(Router(_with_down(self._config, dead), self.counters))

    def _idle(self) -> None:
        if self._reload_pending:
            self.reload()
        if os.getppid() != self._parent_pid:
            self.logger.warning("supervisor_gone")
            raise _Stopped
        self._tick()

    def flush(self) -> None:
        """Publish this pump's counters for the supervisor's metrics endpoint."""
        self._next_snapshot = time.monotonic() + SNAPSHOT_INTERVAL
        self.router.fold()
        try:
            write_snapshot(self._snapshot, self.counters.samples() + self.send_error_samples())
        except OSError as error:
            self._unexpected("snapshot_failed", error)

    def reload(self) -> None:
        """Read the configuration file again; keep the old Router if it is invalid."""
        self._reload_pending = False
        try:
            config = load_config(self.config_path)
        except ConfigurationError as error:
            self.logger.error("reload_failed", error=str(error))
            config = None
        if config is not None:
            old = self.router.config
            for key in ("listen", "backend_listen"):
                if getattr(config, key) != getattr(old, key):
                    self.logger.warning("reload_ignores_key", key=key, reason="restart to rebind")
            self._config = config
            self._backend_index = {b.address: i for i, b in enumerate(config.backends)}
            self._dead = frozenset()
            self._use(Router(config, self.counters))
            self.logger.info(
                "reloaded",
                backends=len(config.backends),
                healthy=self.router.healthy_backends,
            )

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        self._reload_pending = True
        self._next_tick = 0.0  # the loop reloads before it routes its next datagram

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        raise _Stopped

    def _unexpected(self, event: str, error: BaseException) -> None:
        self._errors += 1
        if self._errors <= ERROR_LOG_BURST or not self._errors % ERROR_LOG_EVERY:
            self.logger.error(event, error=repr(error), count=self._errors)


def _port_and_address(address: Address) -> bytes:
    """``address`` (IPv4) as its port and address octets, network order."""
    return struct.pack("!H4s", address[1], socket.inet_pton(socket.AF_INET, address[0]))


def _with_down(config: ForwarderConfig, dead: frozenset[int]) -> ForwarderConfig:
    """``config`` with the backends at the ``dead`` indexes marked down."""
    if not dead:
        return config
    backends = tuple(
        replace(backend, down=True) if index in dead else backend
        for index, backend in enumerate(config.backends)
    )
    return replace(config, backends=backends)


def _run_pump(kwargs: dict[str, Any]) -> None:
    Pump(**kwargs).run()


class Supervisor:
    """Starts ``workers`` pairs of pumps, relays signals, serves metrics, restarts dead pumps."""

    def __init__(
        self,
        config_path: Path,
        config: ForwarderConfig,
        workers: int,
        logger: JsonLogger,
        *,
        batch: bool = False,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.config_path = config_path
        self.config = config
        self.workers = workers
        #: Whether pumps batch system calls (``--batch``).
        self.batch = batch
        self.logger = logger.bind(role="supervisor")
        self._context = multiprocessing.get_context("fork")
        self._run_dir = Path(tempfile.mkdtemp(prefix="quicvoice-lb-"))
        self._sockets: list[tuple[socket.socket, socket.socket]] = []
        self._pumps: dict[tuple[int, str], BaseProcess] = {}
        self._started: dict[tuple[int, str], float] = {}
        self._stopping = False
        self._reload_requested = False
        self._reloads = {"ok": 0, "error": 0}
        self._restarts = 0
        self._metrics: MetricsServer | None = None
        #: When each backend last answered a probe; shared with the pumps across fork.
        self._health = (
            HealthTable(MAX_HEALTH_BACKENDS, config.health_timeout)
            if config.health_interval > 0
            else None
        )
        self._next_probe = 0.0

    def collect(self) -> list[MetricSample]:
        """Every pump's latest counters plus the supervisor's own."""
        samples = read_snapshots(self._run_dir)
        samples.append(("quicvoice_lb_workers", (), self.workers))
        samples.append(("quicvoice_lb_pump_restarts_total", (), self._restarts))
        for result, count in self._reloads.items():
            samples.append(("quicvoice_lb_config_reloads_total", (("result", result),), count))
        return samples

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit status."""
        try:
            self._bind()
            signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
            try:
                for worker in range(self.workers):
                    for direction in (DOWNLINK, UPLINK):
                        self._start(worker, direction)
                signal.signal(signal.SIGHUP, self._on_sighup)
                signal.signal(signal.SIGTERM, self._on_stop)
                signal.signal(signal.SIGINT, self._on_stop)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
            if self.config.metrics is not None:
                self._metrics = MetricsServer(self.config.metrics, self.collect)
                self._metrics.start()
                self.logger.info("metrics_listening", address=format_address(self._metrics.address))
            self.logger.info(
                "forwarding",
                listen=format_address(self.config.listen),
                backend_listen=format_address(self.config.backend_listen),
                workers=self.workers,
                batched=self.batch and mmsg.AVAILABLE,
                backends=len(self.config.backends),
                pid=os.getpid(),
            )
            while not self._stopping:
                time.sleep(SUPERVISOR_TICK)
                if self._reload_requested:
                    self._reload()
                self._reap()
                self._probe()
            return 0
        finally:
            self._shutdown()

    def _bind(self) -> None:
        for _ in range(self.workers):
            vip = backend = None
            try:
                vip = open_socket(self.config.listen)
                backend = open_socket(self.config.backend_listen)
            except OSError as error:
                for sock in (vip, backend):
                    if sock is not None:
                        sock.close()
                key = "listen" if vip is None else "backend_listen"
                address = getattr(self.config, key)
                raise ConfigurationError(
                    f"{key}: cannot bind {format_address(address)}: {error.strerror or error}"
                ) from None
            self._sockets.append((vip, backend))

    def _start(self, worker: int, direction: str) -> None:
        vip, backend = self._sockets[worker]
        kwargs = {
            "direction": direction,
            "worker": worker,
            "config_path": self.config_path,
            "config": self.config,
            "vip": vip,
            "backend": backend,
            "snapshot": self._run_dir / f"worker{worker}-{direction}.json",
            "parent_pid": os.getpid(),
            "logger": self.logger.bind(role="pump"),
            "batch": self.batch,
            "health": self._health,
        }
        process = self._context.Process(
            target=_run_pump, args=(kwargs,), name=f"quicvoice-lb {direction} {worker}"
        )
        process.start()
        self._pumps[(worker, direction)] = process
        self._started[(worker, direction)] = time.monotonic()

    def _reap(self) -> None:
        now = time.monotonic()
        for key, process in list(self._pumps.items()):
            if process.is_alive() or self._stopping:
                continue
            if now - self._started[key] < RESTART_BACKOFF:
                continue  # it died young: wait before trying again
            self.logger.error("pump_died", worker=key[0], pump=key[1], exit_code=process.exitcode)
            process.join(0)
            self._restarts += 1
            signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
            try:
                self._start(*key)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)

    def _reload(self) -> None:
        self._reload_requested = False
        try:
            config = load_config(self.config_path)
        except ConfigurationError as error:
            self._reloads["error"] += 1
            self.logger.error("reload_refused", error=str(error))
            return
        self._reloads["ok"] += 1
        for key in ("listen", "backend_listen", "metrics"):
            if getattr(config, key) != getattr(self.config, key):
                self.logger.warning("reload_ignores_key", key=key, reason="restart to rebind")
        self.config = config
        if self._health is not None:
            self._health.reset(len(config.backends))
        for direction in (DOWNLINK, UPLINK):
            for (_, pump_direction), process in self._pumps.items():
                if pump_direction == direction and process.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGHUP)
            if direction == DOWNLINK:
                time.sleep(RELOAD_STAGGER)
        self.logger.info("reload_relayed", backends=len(config.backends))

    def _probe(self) -> None:
        """Send each backend a health probe every ``health_interval``."""
        now = time.monotonic()
        if self._health is None or now < self._next_probe or not self._sockets:
            return
        self._next_probe = now + self.config.health_interval
        backend_socket = self._sockets[0][1]
        for backend, packet in zip(
            self.config.backends, probes(self.config.configs, self.config.backends), strict=True
        ):
            try:
                backend_socket.sendto(packet, backend.address)
            except OSError:
                pass  # a probe that cannot leave is a probe unanswered

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        self._reload_requested = True

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _shutdown(self) -> None:
        self._stopping = True
        for process in self._pumps.values():
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for process in self._pumps.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(1.0)
        if self._metrics is not None:
            self._metrics.close()
        for pair in self._sockets:
            for sock in pair:
                sock.close()
        shutil.rmtree(self._run_dir, ignore_errors=True)
        self.logger.info("stopped")
