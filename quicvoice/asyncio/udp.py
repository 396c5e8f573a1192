"""UDP sockets for the asyncio shell, tuned for many small datagrams, with ECN on the wire.

Every socket marks what it sends with an ECN codepoint (IPv4 TOS, IPv6 traffic class; both on a
dual-stack socket) and reports the TOS / traffic class of what it receives (IP_RECVTOS,
IPV6_RECVTCLASS). asyncio's datagram transport cannot return ancillary data, so sockets are
read here with ``recvmsg`` from a reader callback on the loop, in bounded batches.
specs/ecn.md has the design.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

from ..settings import Address

#: ``callback(data, addr, tos)``: ``tos`` is the IP TOS / traffic class octet the datagram
#: arrived with, ``None`` when the kernel gave none or something unreadable.
DatagramCallback = Callable[[bytes, Address, "int | None"], None]

#: QUIC datagrams are at most 64 KiB (and in practice ~1.5 KiB); stock asyncio reads every
#: datagram into a fresh 256 KiB buffer, which cost ~3x in forwarding (field notes).
RECEIVE_SIZE = 65535
SOCKET_BUFFER = 4 * 1024 * 1024
#: Datagrams read per wake-up of the loop at most, so one busy socket cannot starve the rest.
MAX_READS_PER_WAKEUP = 32
#: Room for one IP_TOS (1 octet) and one IPV6_TCLASS (an int) control message.
ANCILLARY_SIZE = socket.CMSG_SPACE(4) * 2
#: The ECN bits of the TOS octet / traffic class (RFC 3168 §5).
ECN_MASK = 0x03

_IP_RECVTOS = getattr(socket, "IP_RECVTOS", 13)
_IPV6_RECVTCLASS = getattr(socket, "IPV6_RECVTCLASS", 66)
_IPV6_TCLASS = getattr(socket, "IPV6_TCLASS", 67)
_INT = struct.Struct("=i")


def set_ecn_marking(sock: socket.socket, codepoint: int) -> bool:
    """Make ``sock`` mark every datagram with ECN ``codepoint`` (0..3), keeping the DSCP bits.

    A dual-stack IPv6 socket gets both the traffic class and the IPv4 TOS (for IPv4-mapped
    peers). Returns False when the system refused (marking is then simply absent).
    """
    done = False
    options = [(socket.IPPROTO_IP, socket.IP_TOS)]
    if sock.family == socket.AF_INET6:
        options.insert(0, (socket.IPPROTO_IPV6, _IPV6_TCLASS))
    for level, option in options:
        try:
            current = sock.getsockopt(level, option)
            sock.setsockopt(level, option, (current & ~ECN_MASK & 0xFF) | (codepoint & ECN_MASK))
            done = True
        except OSError:
            continue
    return done


def enable_tos_reporting(sock: socket.socket) -> bool:
    """Ask the kernel for each received datagram's TOS / traffic class; False if refused."""
    done = False
    options = [(socket.IPPROTO_IP, _IP_RECVTOS)]
    if sock.family == socket.AF_INET6:
        options.insert(0, (socket.IPPROTO_IPV6, _IPV6_RECVTCLASS))
    for level, option in options:
        try:
            sock.setsockopt(level, option, 1)
            done = True
        except OSError:
            continue
    return done


def received_tos(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The TOS / traffic class in ``recvmsg``'s ancillary data; ``None`` if absent or malformed
    (a value of any length but the kernel's own, or outside one octet, is never trusted)."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == socket.IP_TOS:
            if len(data) == 1:
                return data[0]
            if len(data) == _INT.size:
                value = _INT.unpack(data)[0]
                return value if 0 <= value <= 0xFF else None
            return None
        if level == socket.IPPROTO_IPV6 and kind == _IPV6_TCLASS:
            if len(data) != _INT.size:
                return None
            value = _INT.unpack(data)[0]
            return value if 0 <= value <= 0xFF else None
    return None


def enlarge_buffers(sock: socket.socket) -> None:
    """Ask for ``SOCKET_BUFFER`` octets of receive and send buffer (the kernel caps it at
    ``rmem_max``/``wmem_max``): the default overflows when a burst of calls meets a loop that
    was busy for a few milliseconds."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        except OSError:
            pass


def bind_udp_socket(address: Address, ecn: int = 0) -> socket.socket:
    """Return a non-blocking UDP socket bound to ``address`` with large buffers, marking what
    it sends with ECN codepoint ``ecn`` and reporting the TOS of what it receives."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        enlarge_buffers(sock)
        enable_tos_reporting(sock)
        if ecn:
            set_ecn_marking(sock, ecn)
        sock.bind(address)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def tos_ancillary(sock: socket.socket, host: str, tos: int) -> list[tuple[int, int, bytes]]:
    """The control message that sets one datagram's TOS / traffic class to ``tos``."""
    if sock.family == socket.AF_INET6 and ":" in host and not host.startswith("::ffff:"):
        return [(socket.IPPROTO_IPV6, _IPV6_TCLASS, _INT.pack(tos))]
    return [(socket.IPPROTO_IP, socket.IP_TOS, _INT.pack(tos))]


class UdpEndpoint:
    """A bound UDP socket read by the loop (``recvmsg``, ancillary TOS) and written directly.

    ``sendto`` sends with the socket's marking; ``send_marked`` overrides the ECN codepoint of
    one datagram (a path whose validation failed gets not-ECT while the others stay marked).
    """

    def __init__(self, sock: socket.socket, callback: DatagramCallback, ecn: int) -> None:
        self._sock = sock
        self._callback = callback
        #: The codepoint every datagram carries unless ``send_marked`` says otherwise.
        self.ecn = ecn & ECN_MASK
        self._tos_base = 0
        try:
            level, option = (
                (socket.IPPROTO_IPV6, _IPV6_TCLASS)
                if sock.family == socket.AF_INET6
                else (socket.IPPROTO_IP, socket.IP_TOS)
            )
            self._tos_base = sock.getsockopt(level, option) & ~ECN_MASK & 0xFF
        except OSError:
            pass
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._loop.add_reader(sock.fileno(), self._read_ready)

    def _read_ready(self) -> None:
        recvmsg = self._sock.recvmsg
        callback = self._callback
        for _ in range(MAX_READS_PER_WAKEUP):
            if self._closing:
                return
            try:
                data, ancdata, _flags, addr = recvmsg(RECEIVE_SIZE, ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error queued on the socket (a peer left): read on
            # An IPv6 socket reports (host, port, flowinfo, scope_id); peers are (host, port).
            callback(data, (addr[0], addr[1]), received_tos(ancdata) if ancdata else None)

    @property
    def local_address(self) -> Address:
        """The bound (host, port)."""
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def get_extra_info(self, name: str) -> object:
        """``"sockname"`` and ``"socket"``, as asyncio's transports answer them."""
        if name == "sockname":
            return self._sock.getsockname()
        if name == "socket":
            return self._sock
        return None

    def is_closing(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closing

    def sendto(self, data: bytes, addr: Address) -> None:
        """Send one datagram with the socket's marking; a full buffer loses it (QUIC
        recovers), an error from the network is ignored as asyncio's transport does."""
        try:
            self._sock.sendto(data, addr)
        except OSError:
            pass

    def send_marked(self, data: bytes, addr: Address, codepoint: int) -> None:
        """Send one datagram carrying ECN ``codepoint`` instead of the socket's."""
        if codepoint & ECN_MASK == self.ecn:
            self.sendto(data, addr)
            return
        tos = self._tos_base | (codepoint & ECN_MASK)
        try:
            self._sock.sendmsg([data], tos_ancillary(self._sock, addr[0], tos), 0, addr)
        except OSError:
            pass

    def close(self) -> None:
        """Stop reading and close the socket."""
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()


async def open_udp_endpoint(
    address: Address, callback: DatagramCallback, *, ecn: int = 0
) -> UdpEndpoint:
    """Bind ``address``, mark datagrams with ECN codepoint ``ecn`` and call
    ``callback(data, addr, tos)`` for every datagram received."""
    return UdpEndpoint(bind_udp_socket(address, ecn), callback, ecn)
