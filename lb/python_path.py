"""The pumps' loops in Python: the forwarder's path where the native one (lb/native_path.py)
cannot run (no compiler at install time, IPv6 sockets, ``--python-path``).

Six loops, one per direction and I/O style, each ``loop(pump)`` until the pump stops:

- per datagram (the default here): ``uplink_loop`` / ``downlink_loop``, one ``recvfrom`` and
  one ``sendto`` per datagram;
- batched, IPv4 sockets (``--batch``): ``uplink_relay`` / ``downlink_relay``, ``recvmmsg``
  into fixed buffers and ``sendmmsg`` gathered in place (``mmsg.Outbox``), no ``bytes`` per
  fast-path datagram;
- batched, IPv6 sockets (``--batch``): ``uplink_batches`` / ``downlink_batches``, every
  datagram through the Router (``mmsg.Receiver.receive`` / ``mmsg.Sender``).

The common datagram (a short header whose CID names a live backend; an IPv4 header from a
configured backend) is decided in the loop itself, from the Router's tables (``Router.fast_*``,
and ``InPlaceTables`` derived from them), exactly as ``route_from_client`` /
``route_from_backend`` would decide it, and counted in plain integers that ``Router.fold``
moves into the counters before each snapshot; everything else calls the Router.
tests/lb/test_lb_fast_path.py checks on any traffic that both give the same sends and counts.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

from quicvoice.encapsulation import (
    DECIMAL,
    FAMILY_IPV4,
    IPV4_HEADER,
    IPV4_HEADER_LEN,
    MAGIC_VERSION,
)
from quicvoice.settings import Address

from . import ecn, mmsg
from .health import PROBE_CLIENT, PROBE_REPLY_HEADER
from .packet import LONG_HEADER_BIT, MAX_CID_LEN_V1, MIN_SHORT_HEADER_LEN
from .router import (
    CONFIG_BITS_SHIFT,
    MAX_CLIENT_DATAGRAM,
    DownlinkCount,
    DropReason,
    Forward,
    Reply,
    Router,
    Send,
    UplinkCount,
)

if TYPE_CHECKING:
    from .pump import Pump

#: Larger than any UDP payload: a datagram is never truncated.
RECV_BUFFER_LEN = 65536
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


def port_and_address(address: Address) -> bytes:
    """``address`` (IPv4) as its port and address octets, network order (as in a
    ``sockaddr_in`` after its family, or an encapsulation header after its first two octets)."""
    return struct.pack("!H4s", address[1], socket.inet_pton(socket.AF_INET, address[0]))


class InPlaceTables(NamedTuple):
    """The batched in-place loops' view of a Router's fast-path tables."""

    #: ``(config bits, ECB decryption, server ID length)`` of each single-pass configuration.
    single_pass: tuple[tuple[int, Callable[[bytes], bytes], int], ...]
    #: Live backends by server ID: their counts and port and address octets.
    targets: dict[bytes | None, tuple[UplinkCount, bytes]]
    #: Configured backends by port and address octets.
    sources: dict[bytes, DownlinkCount]

    @classmethod
    def of(cls, router: Router, ipv4: bool) -> InPlaceTables:
        """The tables of ``router``; empty address tables unless both sockets are IPv4."""
        single_pass = tuple(
            (bits, spec[0], spec[1])
            for bits, spec in enumerate(router.fast_single_pass)
            if spec is not None
        )
        if not ipv4:
            return cls(single_pass, {}, {})
        return cls(
            single_pass,
            {
                server_id: (count, port_and_address(count.address))
                for server_id, count in router.fast_uplink.items()
            },
            {port_and_address(address): count for address, count in router.fast_downlink.items()},
        )


def uplink_loop(pump: Pump) -> None:
    """recvfrom, route, sendto. The common case (a short header whose CID names a live
    backend, from an IPv4 client) is decided inline, exactly as ``route_from_client``
    would; anything else goes through the Router. tests/lb/test_lb_fast_path.py checks
    that both give the same sends and counts."""
    recvmsg = pump.vip.recvmsg
    to_backend = pump.backend.sendto
    marked_to_backend = pump.backend.sendmsg
    backend_ipv6 = pump.backend.family == socket.AF_INET6
    control_for = ecn.control_for
    ecn_of = ecn.ecn_of
    to_client = pump.vip.sendto
    monotonic = time.monotonic
    fast = pump.vip.family == socket.AF_INET  # IPv6 clients go through the Router
    header = IPV4_HEADER.pack
    inet_aton = socket.inet_aton
    route = pump.router.route_from_client
    decoders = pump.router.fast_decoders
    single_pass = pump.router.fast_single_pass
    live = pump.router.fast_uplink

    def forward(
        parts: list[bytes], control: list[tuple[int, int, bytes]] | None, address: Address
    ) -> None:
        """Send ``parts`` as one datagram to a backend, with the client's ECN ``control``."""
        try:
            if control is not None:
                marked_to_backend(parts, control, 0, address)
            else:
                to_backend(b"".join(parts), address)
        except ConnectionRefusedError:  # an earlier datagram's ICMP error: read it, retry
            pump.read_error_queue()
            if control is not None:
                marked_to_backend(parts, control, 0, address)
            else:
                to_backend(b"".join(parts), address)

    while True:
        try:
            datagram, ancdata, _, client = recvmsg(RECV_BUFFER_LEN, ecn.ANCILLARY_SIZE)
        except BlockingIOError:
            pump.idle()
            route = pump.router.route_from_client
            decoders = pump.router.fast_decoders
            single_pass = pump.router.fast_single_pass
            live = pump.router.fast_uplink
            continue
        except OSError as error:
            pump.unexpected("recv_failed", error)
            continue
        if monotonic() >= pump.next_tick:
            pump.tick()
            route = pump.router.route_from_client
            decoders = pump.router.fast_decoders
            single_pass = pump.router.fast_single_pass
            live = pump.router.fast_uplink
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
                    wrapped = header(MAGIC_VERSION, FAMILY_IPV4, client[1], inet_aton(client[0]))
                    target.packets += 1
                    target.octets += length
                    # The client's ECN bits travel on the encapsulated datagram (specs/ecn.md).
                    mark = ecn_of(ancdata) if ancdata else 0
                    control = control_for(backend_ipv6, target.address[0], mark) if mark else None
                    forward([wrapped, datagram], control, target.address)
                    continue
            decision = route(datagram, client)
            if type(decision) is Forward:
                mark = ecn_of(ancdata) if ancdata else 0
                control = control_for(backend_ipv6, decision[0][0], mark) if mark else None
                forward([decision[1]], control, decision[0])
            elif type(decision) is Reply:
                to_client(decision[1], decision[0])
        except OSError as error:
            pump.send_failed(pump.counters.uplink_drops, error)
        except Exception as error:  # a bug must cost one datagram, never the forwarder
            pump.unexpected("route_failed", error)


def downlink_loop(pump: Pump) -> None:
    """recvfrom, route, sendto; an IPv4 header from a configured backend is unwrapped
    inline, exactly as ``route_from_backend`` would (probe answers excepted)."""
    recvmsg = pump.backend.recvmsg
    to_client = pump.vip.sendto
    marked_to_client = pump.vip.sendmsg
    vip_ipv6 = pump.vip.family == socket.AF_INET6
    control_for = ecn.control_for
    ecn_of = ecn.ecn_of
    monotonic = time.monotonic
    fast = pump.backend.family == socket.AF_INET
    octet = DECIMAL
    dotted = ".".join
    route = pump.router.route_from_backend
    sources = pump.router.fast_downlink
    while True:
        try:
            datagram, ancdata, _, source = recvmsg(RECV_BUFFER_LEN, ecn.ANCILLARY_SIZE)
        except BlockingIOError:
            pump.idle()
            route = pump.router.route_from_backend
            sources = pump.router.fast_downlink
            continue
        except OSError as error:
            pump.receive_failed(error)
            continue
        if monotonic() >= pump.next_tick:
            pump.tick()
            route = pump.router.route_from_backend
            sources = pump.router.fast_downlink
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
                    # The backend marked this one client's datagram: its bits go on with it.
                    mark = ecn_of(ancdata) if ancdata else 0
                    if mark:
                        control = control_for(vip_ipv6, client, mark)
                        marked_to_client([datagram[IPV4_HEADER_LEN:]], control, 0, (client, port))
                    else:
                        to_client(datagram[IPV4_HEADER_LEN:], (client, port))
                    continue
            if datagram[:PROBE_HEADER_LEN] == PROBE_REPLY_HEADER:
                pump.probe_answered(source)
                continue
            decision = route(datagram, source)
            if type(decision) is Send:
                mark = ecn_of(ancdata) if ancdata else 0
                if mark:
                    control = control_for(vip_ipv6, decision[0][0], mark)
                    marked_to_client([decision[1]], control, 0, decision[0])
                else:
                    to_client(decision[1], decision[0])
        except OSError as error:
            pump.send_failed(pump.counters.downlink_drops, error)
        except Exception as error:  # a bug must cost one datagram, never the forwarder
            pump.unexpected("route_failed", error)


def uplink_batches(pump: Pump) -> None:
    receiver = mmsg.Receiver(pump.vip, BATCH)
    receive = receiver.receive
    ecns = receiver.ecns
    to_backend = mmsg.Sender(pump.backend, BATCH)
    to_client = mmsg.Sender(pump.vip, BATCH)
    pump.senders = (to_backend, to_client)
    drops = pump.counters.uplink_drops
    forwards: list[Forward] = []
    marks: list[int] = []
    replies: list[Reply] = []
    forward = forwards.append
    mark = marks.append
    reply = replies.append
    monotonic = time.monotonic
    while True:
        if pump.reload_pending:
            pump.reload()
        try:
            batch = receive()
        except BlockingIOError:
            pump.idle()
            continue
        except OSError as error:
            pump.unexpected("recv_failed", error)
            continue
        route = pump.router.route_from_client
        # Each datagram's ECN bits go on with it (lb/ecn.py); the forwarder's replies: none.
        for (datagram, client), codepoint in zip(batch, ecns(len(batch))):  # noqa: B905
            try:
                decision = route(datagram, client)
            except Exception as error:  # a bug must cost one datagram, never the forwarder
                pump.unexpected("route_failed", error)
                continue
            if type(decision) is Forward:
                forward(decision)
                mark(codepoint)
            elif type(decision) is Reply:
                reply(decision)
        if forwards:
            failed = to_backend.send(forwards, marks)
            forwards.clear()
            marks.clear()
            if failed:
                drops[DropReason.SEND_ERROR] += failed
        if replies:
            failed = to_client.send(replies)
            replies.clear()
            if failed:
                drops[DropReason.SEND_ERROR] += failed
        if monotonic() >= pump.next_tick:
            pump.tick()


def downlink_batches(pump: Pump) -> None:
    receiver = mmsg.Receiver(pump.backend, BATCH)
    receive = receiver.receive
    ecns = receiver.ecns
    to_client = mmsg.Sender(pump.vip, BATCH)
    pump.senders = (to_client,)
    drops = pump.counters.downlink_drops
    sends: list[Send] = []
    marks: list[int] = []
    send = sends.append
    mark = marks.append
    monotonic = time.monotonic
    while True:
        if pump.reload_pending:
            pump.reload()
        try:
            batch = receive()
        except BlockingIOError:
            pump.idle()
            continue
        except OSError as error:
            pump.receive_failed(error)
            continue
        route = pump.router.route_from_backend
        for (datagram, source), codepoint in zip(batch, ecns(len(batch))):  # noqa: B905
            if datagram[:PROBE_HEADER_LEN] == PROBE_REPLY_HEADER:
                pump.probe_answered(source)
                continue
            try:
                decision = route(datagram, source)
            except Exception as error:  # a bug must cost one datagram, never the forwarder
                pump.unexpected("route_failed", error)
                continue
            if type(decision) is Send:
                send(decision)
                mark(codepoint)
        if sends:
            failed = to_client.send(sends, marks)
            sends.clear()
            marks.clear()
            if failed:
                drops[DropReason.SEND_ERROR] += failed
        if monotonic() >= pump.next_tick:
            pump.tick()


def uplink_relay(pump: Pump) -> None:
    """--batch with IPv4 sockets: ``recvmmsg`` into fixed buffers, then the fast path of
    ``_uplink_loop`` on each datagram where it lies, and one ``sendmmsg`` whose iovecs
    gather the encapsulation header (its two constant octets, then the client's port and
    address where ``recvmmsg`` wrote them) and the datagram: no ``bytes``, no address
    string. Other datagrams go through the Router and are sent in the same order."""
    receiver = mmsg.Receiver(pump.vip, BATCH)
    outbox = mmsg.Outbox(pump.backend, BATCH)
    to_client = mmsg.Sender(pump.vip, BATCH)
    pump.senders = (outbox, to_client)
    drops = pump.counters.uplink_drops
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
    mark = outbox.mark
    ecns = receiver.ecns
    prefix = ctypes.addressof(_IPV4_PREFIX)
    family = int(socket.AF_INET)
    while True:
        if pump.reload_pending:
            pump.reload()
        try:
            count = receive()
        except BlockingIOError:
            pump.idle()
            continue
        except OSError as error:
            pump.unexpected("recv_failed", error)
            continue
        route = pump.router.route_from_client
        decoders = pump.router.fast_decoders
        single_pass = pump.in_place.single_pass
        targets = pump.in_place.targets
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
            for bits, decrypt, server_id_len in single_pass if count >= BATCH_DECRYPT_MIN else ():
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
            pump.unexpected("route_failed", error)
            kinds = [-1] * count
            decrypted = [None] * CONFIG_SLOTS
        # Pass 2, in order: stage each fast datagram where it lies (with the ECN bits it
        # arrived with, lb/ecn.py); route the others.
        position = 0
        for index, kind, length, datagram_address, client_address, codepoint in zip(  # noqa: B905
            range(count), kinds, lengths, datagram_addresses, client_addresses, ecns(count)
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
                        if codepoint:
                            mark(position, codepoint)
                        position += slot_len
                        continue
                datagram, address = item(index)
                decision = route(datagram, address)
            except Exception as error:  # a bug must cost one datagram, never the forwarder
                pump.unexpected("route_failed", error)
                continue
            if type(decision) is Forward:
                staged = add(position, decision[0], decision[1])
                if codepoint and staged != position:
                    mark(position, codepoint)
                position = staged
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
        if monotonic() >= pump.next_tick:
            pump.tick()


def downlink_relay(pump: Pump) -> None:
    """--batch with IPv4 sockets: the fast path of ``_downlink_loop`` on each datagram
    where ``recvmmsg`` left it; ``sendmmsg`` sends its payload from the receive buffer to
    a ``sockaddr_in`` made of the header's port and address. Others go through the
    Router (probe answers first), in order."""
    receiver = mmsg.Receiver(pump.backend, BATCH)
    outbox = mmsg.Outbox(pump.vip, BATCH)
    pump.senders = (outbox,)
    drops = pump.counters.downlink_drops
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
    mark = outbox.mark
    ecns = receiver.ecns
    family = int(socket.AF_INET)
    while True:
        if pump.reload_pending:
            pump.reload()
        try:
            count = receive()
        except BlockingIOError:
            pump.idle()
            continue
        except OSError as error:
            pump.receive_failed(error)
            continue
        route = pump.router.route_from_backend
        backends = pump.in_place.sources
        batch_heads = heads[count](data)
        position = 0
        for index, length, prefix, client, source, payload_address, codepoint in zip(  # noqa: B905
            range(count),
            receiver.lengths,
            batch_heads[0::2],
            batch_heads[1::2],
            sources[count](names),
            payload_addresses,
            ecns(count),
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
                        if codepoint:
                            mark(position, codepoint)
                        position += slot_len
                        continue
                datagram, address = item(index)
                if datagram[:PROBE_HEADER_LEN] == PROBE_REPLY_HEADER:
                    pump.probe_answered(address)
                    continue
                decision = route(datagram, address)
            except Exception as error:  # a bug must cost one datagram, never the forwarder
                pump.unexpected("route_failed", error)
                continue
            if type(decision) is Send:
                staged = add(position, decision[0], decision[1])
                if codepoint and staged != position:
                    mark(position, codepoint)
                position = staged
        failed = flush(position)
        if failed:
            drops[DropReason.SEND_ERROR] += failed
        if monotonic() >= pump.next_tick:
            pump.tick()
