"""The forwarder's part of ECN (specs/ecn.md): carry each datagram's ECN bits across.

A datagram relayed from a client to a backend (inside the encapsulation) and from a backend to
a client leaves with the ECN field (the low two bits of the IPv4 TOS / IPv6 traffic class) it
arrived with, set per datagram, so one client's marks never reach another's packets; the DSCP
bits are not copied (they are the network's, not the peer's). The receiving sockets report
the TOS of each datagram (IP_RECVTOS, IPV6_RECVTCLASS); a datagram without it leaves
not-ECT, as it did before.
"""

from __future__ import annotations

import socket
import struct

#: The ECN bits of the TOS octet / traffic class (RFC 3168 §5).
ECN_MASK = 0x03
#: Room for the control message(s) carrying one datagram's TOS / traffic class.
ANCILLARY_SIZE = socket.CMSG_SPACE(4) * 2

_IP_RECVTOS = getattr(socket, "IP_RECVTOS", 13)
_IPV6_RECVTCLASS = getattr(socket, "IPV6_RECVTCLASS", 66)
_IPV6_TCLASS = getattr(socket, "IPV6_TCLASS", 67)
_INT = struct.Struct("=i")
#: The control message setting one IPv4 datagram's ECN field, by codepoint.
IPV4_CONTROL = tuple(
    [(socket.IPPROTO_IP, socket.IP_TOS, _INT.pack(codepoint))] for codepoint in range(4)
)
#: The same for an IPv6 datagram.
IPV6_CONTROL = tuple(
    [(socket.IPPROTO_IPV6, _IPV6_TCLASS, _INT.pack(codepoint))] for codepoint in range(4)
)


def enable_tos_reporting(sock: socket.socket) -> bool:
    """Ask the kernel for each received datagram's TOS / traffic class; False if refused."""
    done = False
    options = [(socket.IPPROTO_IP, _IP_RECVTOS)]
    if sock.family == socket.AF_INET6:
        options.append((socket.IPPROTO_IPV6, _IPV6_RECVTCLASS))
    for level, option in options:
        try:
            sock.setsockopt(level, option, 1)
            done = True
        except OSError:
            continue
    return done


def ecn_of(ancdata: list[tuple[int, int, bytes]]) -> int:
    """The ECN codepoint in ``recvmsg``'s ancillary data; 0 (not-ECT) when there is none or
    it is malformed (what cannot be read is not trusted)."""
    for level, kind, data in ancdata:
        if (level == socket.IPPROTO_IP and kind == socket.IP_TOS) or (
            level == socket.IPPROTO_IPV6 and kind == _IPV6_TCLASS
        ):
            if len(data) == 1:
                return data[0] & ECN_MASK
            if len(data) == _INT.size:
                return int(_INT.unpack(data)[0]) & ECN_MASK
            return 0
    return 0


def control_for(ipv6_socket: bool, host: str, ecn: int) -> list[tuple[int, int, bytes]]:
    """The ancillary data giving one datagram to ``host`` the ECN codepoint ``ecn``.

    A dual-stack IPv6 socket sends IPv4 datagrams to IPv4-mapped peers (``::ffff:a.b.c.d``):
    Linux ignores IPV6_TCLASS for those and takes IP_TOS."""
    if ipv6_socket and not host.startswith("::ffff:"):
        return IPV6_CONTROL[ecn & ECN_MASK]
    return IPV4_CONTROL[ecn & ECN_MASK]
