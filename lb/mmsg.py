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
from collections.abc import Callable, Sequence

from .config import Address

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
        self._names = ctypes.create_string_buffer(batch * name_len)
        self._iovecs = (_IoVec * batch)()
        self._headers = (_MMsgHdr * batch)()
        data = ctypes.addressof(self._data_view)
        names = ctypes.addressof(self._names)
        for slot in range(batch):
            self._iovecs[slot].iov_base = data + slot * SLOT_STRIDE
            self._iovecs[slot].iov_len = SLOT_LEN
            header = self._headers[slot].msg_hdr
            header.msg_name = names + slot * name_len
            header.msg_namelen = name_len
            header.msg_iov = ctypes.addressof(self._iovecs[slot])
            header.msg_iovlen = 1
        self._fd = ctypes.c_int(sock.fileno())
        self._headers_pointer = ctypes.c_void_p(ctypes.addressof(self._headers))
        self._batch = ctypes.c_uint(batch)
        self._flags = ctypes.c_int(MSG_WAITFORONE)
        self._starts = tuple(slot * SLOT_STRIDE for slot in range(batch))
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

    def receive(self) -> list[tuple[bytes, Address]]:
        """Block until a datagram arrives; return it and all others queued, up to ``batch``.

        Each item is ``(datagram, (host, port))``. Raises ``BlockingIOError`` when the socket's
        receive timeout (SO_RCVTIMEO) expires, returns ``[]`` when a signal interrupts the
        wait (its Python handler runs on return), raises ``OSError`` for anything else.
        """
        count = self._recvmmsg(self._fd, self._headers_pointer, self._batch, self._flags, None)
        if count <= 0:
            code = self._get_errno() if count < 0 else errno.EAGAIN
            if code == errno.EINTR:
                return []
            raise OSError(code, errno.errorcode.get(code, "recvmmsg failed"))
        lengths = self._unpack_lengths[count](self._headers)
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


class Sender:
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

    def send(self, items: Sequence[tuple[Address, bytes]]) -> int:
        """Send every ``datagram`` to its ``address``; return how many could not be sent.

        Partial sends go on from the first datagram not sent; a transient error (see
        ``TRANSIENT_ERRORS``) retries that datagram, any other error drops it alone and the
        rest of the list is still sent. Every datagram dropped is counted in ``errors``.
        """
        if len(items) == 1:
            # A lone datagram (a quiet moment): sendto costs less than building an mmsghdr.
            address, datagram = items[0]
            try:
                self._sendto(datagram, address)
                return 0
            except OSError:
                pass  # the general path below retries transient errors and counts the rest
        batch = self.batch
        if len(items) <= batch:
            return self._send_chunk(items)
        dropped = 0
        for first in range(0, len(items), batch):
            dropped += self._send_chunk(items[first : first + batch])
        return dropped

    def _send_chunk(self, items: Sequence[tuple[Address, bytes]]) -> int:
        pack = self._pack
        slots = self._slots
        slot_len = self._slot_len
        offset = self._offset
        family = self._family
        ipv6 = self._ipv6
        keep: list[bytes] | None = None
        dropped = 0
        position = 0
        for address, datagram in items:
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
            position += slot_len
        count = position // slot_len
        if not count:
            return dropped
        sent = self._sendmmsg(self._fd, self._headers_pointer, count, 0)
        if sent == count:
            return dropped
        return dropped + self._finish(sent, count)

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


def _encode_ipv6(host: str) -> bytes:
    """The 16 octets of ``host``; an IPv4 host is mapped (a dual-stack socket sends it)."""
    if ":" not in host:
        host = _IPV4_MAPPED_PREFIX + host
    return _inet_pton(_AF_INET6, host.partition("%")[0])


def _wait_writable(sock: socket.socket) -> None:
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    poller.poll(SEND_WAIT_MS)
