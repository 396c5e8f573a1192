"""Batched UDP I/O for the pumps: ``recvmmsg``/``sendmmsg`` (Linux) through ``ctypes``.

A ``Receiver`` takes every datagram already queued on a socket in one system call (up to its
batch size) and a ``Sender`` sends a list of ``(address, datagram)`` pairs in one, so that a
pump pays two system calls per batch instead of two per datagram. Latency is unchanged:
``recvmmsg`` is called with ``MSG_WAITFORONE``, which blocks until one datagram is there and
then takes only what is already queued, so a lone datagram is handed over at once.

Everything the kernel reads or writes is allocated once per object and reused for every batch:
the ``mmsghdr`` array, one ``iovec`` and one ``sockaddr_in``/``sockaddr_in6`` per slot, and
(receive side) one 64 KiB buffer per slot in an anonymous ``mmap`` whose pages the kernel
provides only when a datagram first touches them. Per datagram the receive side allocates the
``bytes`` and the ``(host, port)`` the router needs and nothing else; the send side points the
``iovec`` straight at the octets of the ``bytes`` it is given, no copy (CPython: ``id()`` is
the object's address, and the offset of the octets in a ``bytes`` object is measured and
checked at import). There is no table of any kind: addresses are decoded and encoded by
``struct`` on every datagram.

In place (the forwarder's batched pumps, IPv4): ``Receiver.receive_count`` leaves the batch in
its buffers, ``data_unpackers``/``name_unpackers`` read a few fields of every datagram and
source address of the batch in one ``struct`` call, and an ``Outbox`` sends each datagram
gathered from up to three pieces of memory (say a constant, the source's port and address
where ``recvmmsg`` wrote them, and the datagram in its receive buffer): no ``bytes``, no
address string, no copy in Python.

``AVAILABLE`` is false where ``recvmmsg``/``sendmmsg`` cannot be found (not Linux, or not
CPython); callers then use ``recvfrom``/``sendto``.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import select
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal

from quicvoice.settings import Address

#: Datagrams per system call. 32 slots of receive buffer are 2 MiB of address space, of
#: which only the pages datagrams actually reach become resident.
DEFAULT_BATCH = 32
MAX_BATCH = 1024
#: Larger than any UDP payload (65535 - 8 over IPv6, 65507 over IPv4): nothing is truncated.
SLOT_LEN = 65536
#: Receive slots start this far apart: not a multiple of 4 KiB, so that the first octets of
#: the datagrams of a batch do not all compete for the same CPU cache sets (a 64 KiB stride
#: made a batch of 32 cost 30 % more per datagram than a batch of 8).
SLOT_STRIDE = SLOT_LEN + 5 * 64
#: Linux recvmmsg(2) flag: block for the first datagram only.
MSG_WAITFORONE = 0x10000
#: Sizes of the socket addresses the kernel writes and reads (struct sockaddr_in, _in6).
SOCKADDR_IN_LEN = 16
SOCKADDR_IN6_LEN = 28
#: A send that fails with one of these is retried (the same datagram, at most this many
#: times) before the datagram is counted as dropped: EINTR (a signal), EAGAIN/ENOBUFS (no
#: buffer space right now) and ECONNREFUSED (a stale ICMP error of an earlier datagram, reported
#: on this call; the datagram itself was not sent).
TRANSIENT_ERRORS = frozenset(
    {errno.EINTR, errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.ECONNREFUSED}
)
TRANSIENT_RETRIES = 3
#: How long a send waits for buffer space after EAGAIN before retrying (milliseconds).
SEND_WAIT_MS = 1
#: The ``error`` label of a datagram whose address the socket cannot send to.
ADDRESS_ERROR = "EAFNOSUPPORT"

_IPV4_MAPPED_PREFIX = "::ffff:"
_htons = socket.htons
_inet_pton = socket.inet_pton
_inet_ntop = socket.inet_ntop
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
#: The decimal text of each octet value, to spell IPv4 addresses (a constant, not a cache:
#: half the cost of inet_ntoa here).
_DECIMAL = tuple(str(value) for value in range(256))
_dotted = ".".join


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


_HEADER_LEN = ctypes.sizeof(_MMsgHdr)
_MSG_LEN_OFFSET = _MMsgHdr.msg_len.offset
_IOVEC_LEN = ctypes.sizeof(_IoVec)
#: Send slot: the iovec, then the socket address (native layout; the port in network order
#: is written as ``htons(port)`` in native order, which is the same octets).
_SEND_SLOT_V4 = struct.Struct(f"@PNHH4s{SOCKADDR_IN_LEN - 8}x")
_SEND_SLOT_V6 = struct.Struct("@PNHHI16sI4x")
_PORT_AND_IPV4 = struct.Struct("!H4s").pack
#: Control data of a received datagram: room for its TOS (IP_TOS, one octet) or traffic class
#: (IPV6_TCLASS, an int), the only ancillary data the pumps ask for (lb/ecn.py).
CONTROL_LEN = socket.CMSG_SPACE(4) * 2
#: Where ``msg_control`` (then ``msg_controllen``) lies in an ``mmsghdr``.
_CONTROL_OFFSET = _MsgHdr.msg_control.offset
_CONTROLLEN_OFFSET = _MsgHdr.msg_controllen.offset
#: ``msg_control`` and ``msg_controllen`` of one message, written together.
_CONTROL_FIELDS = struct.Struct("@PN")
#: A received control message's length, level, type and its first four data octets.
_CMSG_HEAD = f"NII4s{CONTROL_LEN - struct.calcsize('@NII4s')}x"
_CMSG_LEN_ONE_OCTET = socket.CMSG_LEN(1)
_BYTE_ORDER: Literal["little", "big"] = "little" if sys.byteorder == "little" else "big"
_IPV6_TCLASS = getattr(socket, "IPV6_TCLASS", 67)
_TOS_CONTROL_LEN = socket.CMSG_SPACE(4)
_INT = struct.Struct("=i")
_TOS_CMSG = struct.Struct(f"@NIIi{_TOS_CONTROL_LEN - struct.calcsize('@NIIi')}x")


class _TosControls:
    """One ready control message per ECN codepoint, for IPv4 (IP_TOS) and IPv6 (IPV6_TCLASS)
    destinations: marking a message is pointing its header at one (lb/ecn.py)."""

    def __init__(self) -> None:
        self._buffer = ctypes.create_string_buffer(8 * _TOS_CONTROL_LEN)
        base = ctypes.addressof(self._buffer)
        kinds = ((socket.IPPROTO_IP, socket.IP_TOS), (socket.IPPROTO_IPV6, _IPV6_TCLASS))
        for row, (level, kind) in enumerate(kinds):
            for codepoint in range(4):
                offset = (row * 4 + codepoint) * _TOS_CONTROL_LEN
                _TOS_CMSG.pack_into(
                    self._buffer, offset, socket.CMSG_LEN(4), level, kind, codepoint
                )
        #: Addresses of the IPv4 control messages by codepoint, then of the IPv6 ones.
        self.ipv4 = tuple(base + codepoint * _TOS_CONTROL_LEN for codepoint in range(4))
        self.ipv6 = tuple(base + (4 + codepoint) * _TOS_CONTROL_LEN for codepoint in range(4))


def _bytes_data_offset() -> int | None:
    """Where a ``bytes`` object's octets start, relative to ``id()``; None if not constant."""
    offsets = set()
    for probe in (b"quicvoice-lb probe", bytes(range(200)), b"x" * 70000):
        address = ctypes.cast(ctypes.c_char_p(probe), ctypes.c_void_p).value
        if address is None or ctypes.string_at(address, len(probe)) != probe:
            return None
        offsets.add(address - id(probe))
    return offsets.pop() if len(offsets) == 1 else None


def _load() -> tuple[Callable[..., int], Callable[..., int]] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        recvmmsg = libc.recvmmsg
        sendmmsg = libc.sendmmsg
    except (OSError, AttributeError):
        return None
    # No argtypes: converting the arguments on every call cost 0.6 µs more than passing
    # ready-made ctypes objects and small ints, which is what callers do.
    recvmmsg.restype = ctypes.c_int
    sendmmsg.restype = ctypes.c_int
    return recvmmsg, sendmmsg


_BYTES_DATA_OFFSET = _bytes_data_offset()
_LIBC = _load() if _BYTES_DATA_OFFSET is not None else None
#: True when batched I/O works here (Linux with recvmmsg/sendmmsg, CPython ``bytes`` layout).
AVAILABLE = _LIBC is not None


def _check(sock: socket.socket, batch: int) -> None:
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch must be between 1 and {MAX_BATCH}")
    if sock.family not in (_AF_INET, _AF_INET6) or sock.type != socket.SOCK_DGRAM:
        raise ValueError("an AF_INET or AF_INET6 datagram socket is required")


class Receiver:
    """``recvmmsg`` on one socket into preallocated buffers: up to ``batch`` datagrams a call."""

    def __init__(
        self,
        sock: socket.socket,
        batch: int = DEFAULT_BATCH,
        *,
        recvmmsg: Callable[..., int] | None = None,
        get_errno: Callable[[], int] = ctypes.get_errno,
    ) -> None:
        _check(sock, batch)
        if recvmmsg is None:
            if _LIBC is None:
                raise OSError(errno.ENOSYS, "recvmmsg is not available")
            recvmmsg = _LIBC[0]
        #: The socket read from (kept open by this reference).
        self.socket = sock
        #: Most datagrams one ``receive`` returns.
        self.batch = batch
        self._recvmmsg = recvmmsg
        self._get_errno = get_errno
        self._ipv6 = sock.family == _AF_INET6
        name_len = SOCKADDR_IN6_LEN if self._ipv6 else SOCKADDR_IN_LEN
        self._data = mmap.mmap(-1, batch * SLOT_STRIDE)
        self._data_view = ctypes.c_char.from_buffer(self._data)
        self._names = mmap.mmap(-1, batch * name_len)
        self._names_view = ctypes.c_char.from_buffer(self._names)
        self._iovecs = (_IoVec * batch)()
        self._headers = (_MMsgHdr * batch)()
        data = ctypes.addressof(self._data_view)
        names = ctypes.addressof(self._names_view)
        # For callers that read the batch in place (``receive_count``): datagram ``i`` is
        # ``data[starts[i] : starts[i] + lengths[i]]`` at address ``data_address + starts[i]``,
        # its source's socket address ``names[i * name_len : (i + 1) * name_len]`` at
        # ``names_address + i * name_len``. Valid until the next receive.
        #: The receive buffers (an anonymous mmap; slicing it copies).
        self.data = self._data
        #: The source addresses, ``sockaddr_in`` (16 octets) or ``sockaddr_in6`` (28) each.
        self.names = self._names
        self.data_address = data
        self.names_address = names
        self.name_len = name_len
        #: Octet lengths of the datagrams of the last ``receive_count``.
        self.lengths: tuple[int, ...] = ()
        # Each slot's control data: the datagram's TOS / traffic class (lb/ecn.py).
        self._controls = ctypes.create_string_buffer(batch * CONTROL_LEN)
        controls = ctypes.addressof(self._controls)
        for slot in range(batch):
            self._iovecs[slot].iov_base = data + slot * SLOT_STRIDE
            self._iovecs[slot].iov_len = SLOT_LEN
            header = self._headers[slot].msg_hdr
            header.msg_name = names + slot * name_len
            header.msg_namelen = name_len
            header.msg_iov = ctypes.addressof(self._iovecs[slot])
            header.msg_iovlen = 1
            header.msg_control = controls + slot * CONTROL_LEN
            header.msg_controllen = CONTROL_LEN
        # The kernel rewrites the lengths of what it fills in: the headers are restored from
        # this copy before each receive (one memmove for the slots the last receive used).
        self._pristine = (_MMsgHdr * batch)()
        ctypes.memmove(self._pristine, self._headers, ctypes.sizeof(self._headers))
        self._used = 0
        self._fd = ctypes.c_int(sock.fileno())
        self._headers_pointer = ctypes.c_void_p(ctypes.addressof(self._headers))
        self._batch = ctypes.c_uint(batch)
        self._flags = ctypes.c_int(MSG_WAITFORONE)
        self._starts = tuple(slot * SLOT_STRIDE for slot in range(batch))
        #: Where each slot's datagram starts in ``data``.
        self.starts = self._starts
        after = _HEADER_LEN - _MSG_LEN_OFFSET - 4
        self._unpack_lengths = [
            struct.Struct("=" + f"{_MSG_LEN_OFFSET}xI{after}x" * count).unpack_from
            for count in range(batch + 1)
        ]
        # Only the port and the address: sockaddr_in6's flow label and scope ID are not carried.
        # IPv4 addresses come as four octets, IPv6 ones as one 16-octet string.
        name = "2xH4x16s4x" if self._ipv6 else f"2xHBBBB{SOCKADDR_IN_LEN - 8}x"
        self._unpack_names = [
            struct.Struct("!" + name * count).unpack_from for count in range(batch + 1)
        ]
        self._unpack_name = self._unpack_names[1]
        controllen = f"{_CONTROLLEN_OFFSET}xN{_HEADER_LEN - _CONTROLLEN_OFFSET - 8}x"
        self._unpack_controllens = [
            struct.Struct("@" + controllen * count).unpack_from for count in range(batch + 1)
        ]
        self._unpack_cmsgs = [
            struct.Struct("@" + _CMSG_HEAD * count).unpack_from for count in range(batch + 1)
        ]

    def data_unpackers(self, fields: str) -> list[Callable[[mmap.mmap], tuple[Any, ...]]]:
        """For each count, an unpacker of ``data``: the ``struct`` ``fields`` (network order)
        at the start of each of the first ``count`` datagrams, flat, in one call. Octets past
        a datagram's end are stale: callers check ``lengths``."""
        size = struct.calcsize("!" + fields)
        if not 0 < size <= SLOT_LEN:
            raise ValueError(f"{fields!r} does not fit a slot")
        slot = f"{fields}{SLOT_STRIDE - size}x"
        return [struct.Struct("!" + slot * count).unpack_from for count in range(self.batch + 1)]

    def name_unpackers(self, fields: str) -> list[Callable[[mmap.mmap], tuple[Any, ...]]]:
        """For each count, an unpacker of ``names``: the ``struct`` ``fields`` (network order)
        of each of the first ``count`` source addresses (``sockaddr_in`` or ``_in6``), flat."""
        size = struct.calcsize("!" + fields)
        if not 0 < size <= self.name_len:
            raise ValueError(f"{fields!r} does not fit a socket address")
        slot = f"{fields}{self.name_len - size}x"
        return [struct.Struct("!" + slot * count).unpack_from for count in range(self.batch + 1)]

    def receive_count(self) -> int:
        """Block until a datagram arrives; return how many were taken (up to ``batch``).

        The datagrams stay in the buffers (see ``data``, ``starts``, ``lengths``, ``names``,
        ``item``) until the next receive. Returns 0 when a signal interrupts the wait (its
        Python handler runs on return), raises ``BlockingIOError`` when the receive timeout
        (SO_RCVTIMEO) expires and ``OSError`` for anything else.
        """
        if self._used:
            ctypes.memmove(self._headers, self._pristine, self._used * _HEADER_LEN)
        count = self._recvmmsg(self._fd, self._headers_pointer, self._batch, self._flags, None)
        if count <= 0:
            code = self._get_errno() if count < 0 else errno.EAGAIN
            if code == errno.EINTR:
                return 0
            raise OSError(code, errno.errorcode.get(code, "recvmmsg failed"))
        self._used = count
        self.lengths = self._unpack_lengths[count](self._headers)
        return count

    def ecns(self, count: int) -> list[int]:
        """The ECN codepoint each of the first ``count`` datagrams of the last receive arrived
        with (0 where the kernel gave no TOS / traffic class)."""
        lengths = self._unpack_controllens[count](self._headers)
        heads = self._unpack_cmsgs[count](self._controls)
        order = _BYTE_ORDER
        return [
            (
                (data[0] if cmsg_len == _CMSG_LEN_ONE_OCTET else int.from_bytes(data, order)) & 0x03
                if control_len
                else 0
            )
            for control_len, cmsg_len, data in zip(  # noqa: B905
                lengths, heads[0::4], heads[3::4]
            )
        ]

    def item(self, index: int) -> tuple[bytes, Address]:
        """Datagram ``index`` of the last ``receive_count`` as ``receive`` returns it."""
        start = self._starts[index]
        datagram = self._data[start : start + self.lengths[index]]
        if self._ipv6:
            port, address = self._unpack_name(self._names, index * SOCKADDR_IN6_LEN)
            return datagram, (_inet_ntop(_AF_INET6, address), port)
        port, a, b, c, d = self._unpack_name(self._names, index * SOCKADDR_IN_LEN)
        octet = _DECIMAL
        return datagram, (_dotted((octet[a], octet[b], octet[c], octet[d])), port)

    def receive(self) -> list[tuple[bytes, Address]]:
        """Block until a datagram arrives; return it and all others queued, up to ``batch``.

        Each item is ``(datagram, (host, port))``. Raises ``BlockingIOError`` when the socket's
        receive timeout (SO_RCVTIMEO) expires, returns ``[]`` when a signal interrupts the
        wait (its Python handler runs on return), raises ``OSError`` for anything else.
        """
        count = self.receive_count()
        if not count:
            return []
        lengths = self.lengths
        names = self._unpack_names[count](self._names)
        data = self._data
        if count == 1 and not self._ipv6:  # the lone datagram of a quiet moment: no zip
            port, a, b, c, d = names
            octet = _DECIMAL
            return [(data[: lengths[0]], (_dotted((octet[a], octet[b], octet[c], octet[d])), port))]
        if self._ipv6:
            return [
                (data[start : start + length], (_inet_ntop(_AF_INET6, address), port))
                for start, length, port, address in zip(
                    self._starts, lengths, names[0::2], names[1::2], strict=False
                )
            ]
        join = _dotted
        octet = _DECIMAL
        return [
            (data[start : start + length], (join((octet[a], octet[b], octet[c], octet[d])), port))
            for start, length, port, a, b, c, d in zip(
                self._starts,
                lengths,
                names[0::5],
                names[1::5],
                names[2::5],
                names[3::5],
                names[4::5],
                strict=False,
            )
        ]


class _Sending:
    """What ``Sender`` and ``Outbox`` share: going on after a partial or failed ``sendmmsg``."""

    socket: socket.socket
    errors: dict[str, int]
    _sendmmsg: Callable[..., int]
    _get_errno: Callable[[], int]
    _fd: ctypes.c_int
    _headers_address: int

    def _finish(self, result: int, count: int) -> int:
        """Go on after ``sendmmsg`` returned ``result`` (a partial count or -1) for ``count``."""
        sent = 0
        dropped = 0
        retries = 0
        while True:
            if result > 0:
                sent += result
                retries = 0
            else:
                code = self._get_errno() if result < 0 else errno.EIO
                if code in TRANSIENT_ERRORS and retries < TRANSIENT_RETRIES:
                    retries += 1
                    if code == errno.EAGAIN or code == errno.EWOULDBLOCK:
                        _wait_writable(self.socket)
                else:  # this datagram is the cause: drop it alone
                    self._count(errno.errorcode.get(code, f"errno_{code}"))
                    dropped += 1
                    sent += 1
                    retries = 0
            if sent >= count:
                return dropped
            pointer = ctypes.c_void_p(self._headers_address + sent * _HEADER_LEN)
            result = self._sendmmsg(self._fd, pointer, count - sent, 0)

    def _count(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    _headers: Any
    _tos: _TosControls
    _marked: list[int]

    def _mark(self, index: int, ecn: int, ipv6_destination: bool) -> None:
        """Give message ``index`` the ECN codepoint ``ecn`` (an IP_TOS / IPV6_TCLASS control
        message) until the end of this send."""
        controls = self._tos.ipv6 if ipv6_destination else self._tos.ipv4
        _CONTROL_FIELDS.pack_into(
            self._headers,
            index * _HEADER_LEN + _CONTROL_OFFSET,
            controls[ecn & 0x03],
            _TOS_CONTROL_LEN,
        )
        self._marked.append(index)

    def _unmark(self) -> None:
        """Take the marks of the last send off its messages."""
        for index in self._marked:
            _CONTROL_FIELDS.pack_into(self._headers, index * _HEADER_LEN + _CONTROL_OFFSET, 0, 0)
        self._marked.clear()


class Sender(_Sending):
    """``sendmmsg`` on one socket: a list of ``(address, datagram)`` in as few calls as possible.

    Counts what it could not send by errno name in ``errors`` (a dict bounded by the errno
    table, never by traffic).
    """

    def __init__(
        self,
        sock: socket.socket,
        batch: int = DEFAULT_BATCH,
        *,
        sendmmsg: Callable[..., int] | None = None,
        get_errno: Callable[[], int] = ctypes.get_errno,
    ) -> None:
        _check(sock, batch)
        if sendmmsg is None:
            if _LIBC is None or _BYTES_DATA_OFFSET is None:
                raise OSError(errno.ENOSYS, "sendmmsg is not available")
            sendmmsg = _LIBC[1]
        #: The socket sent from (kept open by this reference).
        self.socket = sock
        #: Most datagrams one system call sends; longer lists take several calls.
        self.batch = batch
        #: Datagrams not sent, by errno name (``ENOBUFS``, ``EMSGSIZE``...).
        self.errors: dict[str, int] = {}
        self._sendmmsg = sendmmsg
        self._get_errno = get_errno
        self._sendto = sock.sendto
        self._ipv6 = sock.family == _AF_INET6
        self._pack = (_SEND_SLOT_V6 if self._ipv6 else _SEND_SLOT_V4).pack_into
        self._slot_len = (_SEND_SLOT_V6 if self._ipv6 else _SEND_SLOT_V4).size
        self._slots = ctypes.create_string_buffer(batch * self._slot_len)
        self._headers = (_MMsgHdr * batch)()
        slots = ctypes.addressof(self._slots)
        for slot in range(batch):
            header = self._headers[slot].msg_hdr
            header.msg_iov = slots + slot * self._slot_len
            header.msg_iovlen = 1
            header.msg_name = slots + slot * self._slot_len + _IOVEC_LEN
            header.msg_namelen = SOCKADDR_IN6_LEN if self._ipv6 else SOCKADDR_IN_LEN
        self._headers_address = ctypes.addressof(self._headers)
        self._headers_pointer = ctypes.c_void_p(self._headers_address)
        self._fd = ctypes.c_int(sock.fileno())
        self._offset = _BYTES_DATA_OFFSET or 0
        self._family = _AF_INET6 if self._ipv6 else _AF_INET
        self._tos = _TosControls()
        self._marked = []
        self._sendmsg = sock.sendmsg

    def send(
        self, items: Sequence[tuple[Address, bytes]], ecns: Sequence[int] | None = None
    ) -> int:
        """Send every ``datagram`` to its ``address``; return how many could not be sent.

        Partial sends go on from the first datagram not sent; a transient error (see
        ``TRANSIENT_ERRORS``) retries that datagram, any other error drops it alone and the
        rest of the list is still sent. Every datagram dropped is counted in ``errors``.
        ``ecns``, when given, holds each datagram's ECN codepoint (0: not-ECT, as the socket
        sends by default; lb/ecn.py).
        """
        if len(items) == 1:
            # A lone datagram (a quiet moment): sendto costs less than building an mmsghdr.
            address, datagram = items[0]
            try:
                if ecns is not None and ecns[0]:
                    ipv6 = self._ipv6 and ":" in address[0] and not address[0].startswith("::ffff:")
                    level = (
                        (socket.IPPROTO_IPV6, _IPV6_TCLASS)
                        if ipv6
                        else (socket.IPPROTO_IP, socket.IP_TOS)
                    )
                    control = [(level[0], level[1], _INT.pack(ecns[0] & 0x03))]
                    self._sendmsg([datagram], control, 0, address)
                else:
                    self._sendto(datagram, address)
                return 0
            except OSError:
                pass  # the general path below retries transient errors and counts the rest
        batch = self.batch
        if len(items) <= batch:
            return self._send_chunk(items, ecns)
        dropped = 0
        for first in range(0, len(items), batch):
            chunk_ecns = None if ecns is None else ecns[first : first + batch]
            dropped += self._send_chunk(items[first : first + batch], chunk_ecns)
        return dropped

    def _send_chunk(
        self, items: Sequence[tuple[Address, bytes]], ecns: Sequence[int] | None = None
    ) -> int:
        pack = self._pack
        slots = self._slots
        slot_len = self._slot_len
        offset = self._offset
        family = self._family
        ipv6 = self._ipv6
        keep: list[bytes] | None = None
        dropped = 0
        position = 0
        for index, (address, datagram) in enumerate(items):
            if type(datagram) is not bytes:
                datagram = bytes(datagram)
                if keep is None:
                    keep = []
                keep.append(datagram)  # alive until sendmmsg has read it
            try:
                if ipv6:
                    pack(
                        slots,
                        position,
                        id(datagram) + offset,
                        len(datagram),
                        family,
                        _htons(address[1]),
                        0,
                        _encode_ipv6(address[0]),
                        0,
                    )
                else:
                    pack(
                        slots,
                        position,
                        id(datagram) + offset,
                        len(datagram),
                        family,
                        _htons(address[1]),
                        _inet_pton(family, address[0]),
                    )
            except (OSError, OverflowError, struct.error, TypeError, IndexError, ValueError):
                self._count(ADDRESS_ERROR)
                dropped += 1
                continue
            if ecns is not None and ecns[index]:
                host = address[0]
                self._mark(
                    position // slot_len,
                    ecns[index],
                    ipv6 and ":" in host and not host.startswith("::ffff:"),
                )
            position += slot_len
        count = position // slot_len
        if not count:
            return dropped
        try:
            sent = self._sendmmsg(self._fd, self._headers_pointer, count, 0)
            if sent == count:
                return dropped
            return dropped + self._finish(sent, count)
        finally:
            if self._marked:
                self._unmark()


class Outbox(_Sending):
    """``sendmmsg`` of datagrams gathered from up to three pieces of memory each, no copy.

    The forwarder's batched fast path (IPv4 sockets only) stages each datagram in place:
    ``outbox.stage(outbox.slots, position, base0, len0, base1, len1, base2, len2, family,
    port_and_address)`` writes slot ``position // outbox.slot_len``: three ``iovec``
    (``stage_one``: one, then two empty ones, NULL and 0) and the destination
    ``sockaddr_in`` (``family`` native, then the port and IPv4 address as 6 octets in network
    order, as in a received ``sockaddr_in`` or an encapsulation header). ``add`` stages a
    ``bytes`` datagram for an ``(host, port)`` address. ``flush(position)`` sends every
    staged datagram in order, with ``Sender``'s handling of partial sends and errors, and
    returns how many could not be sent. The memory staged must stay unchanged until then.
    """

    #: ``@PNPNPNH6s8x``: the slot layout (64 octets).
    SLOT = struct.Struct("@PNPNPNH6s8x")
    #: The same slot with one piece: its second and third iovecs zero (NULL, length 0).
    SLOT_ONE = struct.Struct("@PN32xH6s8x")

    def __init__(
        self,
        sock: socket.socket,
        batch: int = DEFAULT_BATCH,
        *,
        sendmmsg: Callable[..., int] | None = None,
        get_errno: Callable[[], int] = ctypes.get_errno,
    ) -> None:
        _check(sock, batch)
        if sock.family != _AF_INET:
            raise ValueError("an AF_INET socket is required")
        if sendmmsg is None:
            if _LIBC is None or _BYTES_DATA_OFFSET is None:
                raise OSError(errno.ENOSYS, "sendmmsg is not available")
            sendmmsg = _LIBC[1]
        #: The socket sent from (kept open by this reference).
        self.socket = sock
        #: Most datagrams one ``flush`` sends.
        self.batch = batch
        #: Datagrams not sent, by errno name.
        self.errors: dict[str, int] = {}
        self._sendmmsg = sendmmsg
        self._get_errno = get_errno
        #: ``pack_into`` of ``SLOT``, and the buffer it writes to.
        self.stage = self.SLOT.pack_into
        #: ``stage_one(slots, position, base, length, family, port_and_address)``: one piece.
        self.stage_one = self.SLOT_ONE.pack_into
        self.slot_len = self.SLOT.size
        self.slots = ctypes.create_string_buffer(batch * self.slot_len)
        self._headers = (_MMsgHdr * batch)()
        slots = ctypes.addressof(self.slots)
        address_offset = self.slot_len - SOCKADDR_IN_LEN
        for slot in range(batch):
            header = self._headers[slot].msg_hdr
            header.msg_iov = slots + slot * self.slot_len
            header.msg_iovlen = 3
            header.msg_name = slots + slot * self.slot_len + address_offset
            header.msg_namelen = SOCKADDR_IN_LEN
        self._headers_address = ctypes.addressof(self._headers)
        self._headers_pointer = ctypes.c_void_p(self._headers_address)
        self._fd = ctypes.c_int(sock.fileno())
        self._offset = _BYTES_DATA_OFFSET or 0
        #: ``bytes`` staged by ``add``, alive until ``flush`` has sent them.
        self._keep: list[bytes] = []
        #: Datagrams ``add`` could not stage (their address), reported by the next ``flush``.
        self._refused = 0
        self._tos = _TosControls()
        self._marked = []

    def mark(self, position: int, ecn: int) -> None:
        """Send the datagram staged at ``position`` with ECN codepoint ``ecn`` (lb/ecn.py);
        for this ``flush`` only."""
        self._mark(position // self.slot_len, ecn, False)

    def add(self, position: int, address: Address, datagram: bytes | bytearray) -> int:
        """Stage ``datagram`` for ``address`` at ``position``; return the next position.

        An address this socket cannot send to is counted (``EAFNOSUPPORT``) and dropped: the
        position is then returned unchanged and the next ``flush`` reports the drop.
        """
        data: bytes = datagram if type(datagram) is bytes else bytes(datagram)
        try:
            port_and_address = _PORT_AND_IPV4(address[1], _inet_pton(_AF_INET, address[0]))
            self.stage_one(
                self.slots,
                position,
                id(data) + self._offset,
                len(data),
                _AF_INET,
                port_and_address,
            )
        except (OSError, OverflowError, struct.error, TypeError, IndexError, ValueError):
            self._count(ADDRESS_ERROR)
            self._refused += 1
            return position
        self._keep.append(data)  # alive until flush has sent it
        return position + self.slot_len

    def flush(self, position: int) -> int:
        """Send what is staged below ``position``; return how many could not be sent."""
        dropped = self._refused
        self._refused = 0
        count = position // self.slot_len
        try:
            if count:
                sent = self._sendmmsg(self._fd, self._headers_pointer, count, 0)
                if sent != count:
                    dropped += self._finish(sent, count)
        finally:
            if self._marked:
                self._unmark()
        if self._keep:
            self._keep.clear()
        return dropped


def _encode_ipv6(host: str) -> bytes:
    """The 16 octets of ``host``; an IPv4 host is mapped (a dual-stack socket sends it)."""
    if ":" not in host:
        host = _IPV4_MAPPED_PREFIX + host
    return _inet_pton(_AF_INET6, host.partition("%")[0])


def _wait_writable(sock: socket.socket) -> None:
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    poller.poll(SEND_WAIT_MS)
