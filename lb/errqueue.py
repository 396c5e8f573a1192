"""Which backends' ports the kernel said are closed: the backend socket's error queue (Linux).

With ``IP_RECVERR`` (``IPV6_RECVERR``) set on the backend-facing socket, an ICMP port
unreachable that answers one of its datagrams is queued on the socket (ip(7), "IP_RECVERR"):
``recvmsg(MSG_ERRQUEUE)`` returns it with the original destination address as the message's
address and a ``sock_extended_err`` in a control message. A backend process that died on a live
host is found that way at its next datagram, long before a probe times out. The kernel also
sets the socket's pending error, so the next receive or send on it fails once with
``ECONNREFUSED``: the pumps drain the queue then (and on every tick, since either pump may be the
one that sees the error). Anyone can forge an ICMP message: an entry only makes the backend a
suspect, confirmed by a probe (lb/health.py). The entry also returns the start of the datagram
the ICMP message answered: when that is one of the forwarder's own authenticated probes, which
an off-path forger cannot know, the port is closed for certain.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable

from quicvoice.settings import Address

#: linux/in.h and linux/in6.h (Python's socket module names neither everywhere).
IP_RECVERR = 11
IPV6_RECVERR = 25
MSG_ERRQUEUE = 0x2000
#: linux/errqueue.h: ``sock_extended_err`` (errno, origin, type, code, pad, info, data).
EXTENDED_ERROR = struct.Struct("=IBBBBII")
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
#: RFC 792 destination unreachable / port unreachable; RFC 4443 the same for ICMPv6.
ICMP_DEST_UNREACH, ICMP_PORT_UNREACH = 3, 3
ICMP6_DST_UNREACH, ICMP6_DST_UNREACH_NOPORT = 1, 4
#: Errors a receive or send reports when the kernel queued an ICMP error for the socket.
ICMP_ERRNOS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH})
#: Entries read per drain at most: the queue is bounded by the socket's receive buffer, and
#: a flood of them must not keep a pump from its datagrams.
MAX_ENTRIES_PER_DRAIN = 64
_ANCILLARY_LEN = socket.CMSG_SPACE(EXTENDED_ERROR.size + 28)
#: Octets of the offending datagram read back with each entry: enough for an encapsulated
#: probe (RFC 1812 routers quote up to 576 octets of the IP packet; Linux quotes as much).
QUOTE_LEN = 256


def sendto_past_icmp(sock: socket.socket, data: bytes, address: tuple[str, int]) -> bool:
    """Send ``data`` to ``address``; whether it left.

    On a socket with ``IP_RECVERR`` an earlier datagram's ICMP error fails the next send once
    (the previous probe went to a dead backend): that send is retried once, or a live backend
    after a dead one would never be reached. Any other failure is a datagram that did not
    leave (UDP: the caller's timeout deals with it).
    """
    for _ in range(2):
        try:
            sock.sendto(data, address)
        except OSError as error:
            if error.errno in ICMP_ERRNOS:
                continue
            return False
        return True
    return False


def enable(sock: socket.socket) -> bool:
    """Ask the kernel to queue ICMP errors on ``sock``; ``False`` where it cannot."""
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            # Datagrams to IPv4-mapped backends get their ICMP errors this way.
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    except OSError:
        return False
    return True


def port_unreachable(ancillary: list[tuple[int, int, bytes]]) -> bool:
    """Whether the control messages of an error-queue entry say "port unreachable"."""
    for level, kind, data in ancillary:
        if len(data) < EXTENDED_ERROR.size:
            continue
        if (level, kind) not in (
            (socket.IPPROTO_IP, IP_RECVERR),
            (socket.IPPROTO_IPV6, IPV6_RECVERR),
        ):
            continue
        _, origin, icmp_type, code, _, _, _ = EXTENDED_ERROR.unpack_from(data)
        if origin == SO_EE_ORIGIN_ICMP and (icmp_type, code) == (
            ICMP_DEST_UNREACH,
            ICMP_PORT_UNREACH,
        ):
            return True
        if origin == SO_EE_ORIGIN_ICMP6 and (icmp_type, code) == (
            ICMP6_DST_UNREACH,
            ICMP6_DST_UNREACH_NOPORT,
        ):
            return True
    return False


def drain(sock: socket.socket, found: Callable[[Address, bytes], None]) -> int:
    """Read ``sock``'s error queue without blocking; call ``found(destination, quoted)`` for
    each port unreachable, ``quoted`` the start of the datagram it answered (as much of it as
    the ICMP message carried, at most ``QUOTE_LEN`` octets). Returns how many entries were
    read."""
    read = 0
    while read < MAX_ENTRIES_PER_DRAIN:
        try:
            quoted, ancillary, _, address = sock.recvmsg(
                QUOTE_LEN, _ANCILLARY_LEN, MSG_ERRQUEUE | socket.MSG_DONTWAIT
            )
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            break
        read += 1
        if isinstance(address, tuple) and port_unreachable(ancillary):
            host = str(address[0])
            if host.startswith("::ffff:"):
                host = host[len("::ffff:") :]
            found((host, int(address[1])), quoted)
    return read
