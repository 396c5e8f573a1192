"""The forwarder <-> backend encapsulation header: the client's address travels with each datagram.

Pure and stateless (standard library only) so that backends can import it cheaply. Layout
(version 1, network byte order; specs/forwarder.md has the full description)::

    octet 0      magic (high nibble 0x7) | version (low nibble, 1)
    octet 1      address family: 4 (IPv4) or 6 (IPv6)
    octets 2-3   UDP port of the client
    octets 4-    the client's IP address: 4 octets (IPv4) or 16 octets (IPv6)
    then         the QUIC datagram, unchanged

Client -> forwarder -> backend datagrams carry the client's address (the source); backend ->
forwarder datagrams carry the address to send the payload to (the destination). The forwarder
keeps no state: every datagram names its own peer.
"""

from __future__ import annotations

import socket
import struct

#: High nibble of octet 0 of every header.
MAGIC = 0x70
#: The header version this module writes and reads.
VERSION = 1
#: Octet 0 of a version-1 header.
MAGIC_VERSION = MAGIC | VERSION
FAMILY_IPV4 = 4
FAMILY_IPV6 = 6
IPV4_HEADER_LEN = 8
IPV6_HEADER_LEN = 20
#: The largest header; a datagram of ``65507 - MAX_HEADER_LEN`` octets always fits in IPv4 UDP.
MAX_HEADER_LEN = IPV6_HEADER_LEN
MAX_PORT = 0xFFFF

_PREFIX = struct.Struct("!BBH")
#: A whole IPv4 header: ``IPV4_HEADER.pack(MAGIC_VERSION, FAMILY_IPV4, port, address_octets)``
#: (the forwarder's fast path builds it inline).
IPV4_HEADER = struct.Struct("!BBH4s")
_pack_ipv4 = IPV4_HEADER.pack
_IPV6_PREFIX = _PREFIX.pack(MAGIC_VERSION, FAMILY_IPV6, 0)[:2]
_pack_port = struct.Struct("!H").pack
#: The decimal text of each octet value, to spell IPv4 addresses: a constant (not a cache),
#: a third of the cost of ``inet_ntoa``, whose glibc implementation goes through ``sprintf``.
DECIMAL = tuple(str(value) for value in range(256))
_dotted = ".".join
_inet_pton = socket.inet_pton
_inet_ntop = socket.inet_ntop
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6


class EncapsulationError(ValueError):
    """A datagram does not start with a valid encapsulation header, or an address is invalid."""


def wrap(address: tuple[str, int], datagram: bytes) -> bytes:
    """Return ``datagram`` prefixed with the header naming ``address`` (host, port).

    ``host`` is an IPv4 or IPv6 literal as ``socket.recvfrom`` reports it (an IPv6 scope
    suffix ``%eth0`` is dropped; extra tuple items such as flowinfo are ignored). Raises
    ``EncapsulationError`` for anything else or a port outside 1..65535.
    """
    host = address[0]
    port = address[1]
    if not port:
        raise EncapsulationError(f"cannot encapsulate address {address!r}: port 0")
    try:
        if ":" in host:
            return (
                _IPV6_PREFIX
                + _pack_port(port)
                + _inet_pton(_AF_INET6, host.partition("%")[0])
                + datagram
            )
        return _pack_ipv4(MAGIC_VERSION, FAMILY_IPV4, port, _inet_pton(_AF_INET, host)) + datagram
    except (OSError, struct.error, TypeError) as error:
        raise EncapsulationError(f"cannot encapsulate address {address!r}: {error}") from None


def unwrap(data: bytes) -> tuple[tuple[str, int], bytes]:
    """Split an encapsulated datagram into ((host, port), datagram).

    Raises ``EncapsulationError`` (a ``ValueError``) when the magic or version is not ours,
    the family is unknown, the header is truncated or the port is 0; never anything else for
    any ``bytes``.
    """
    if len(data) < IPV4_HEADER_LEN:
        raise EncapsulationError(f"{len(data)} octets: shorter than any header")
    if data[0] != MAGIC_VERSION:
        raise EncapsulationError(f"octet 0 is {data[0]:#04x}, not {MAGIC_VERSION:#04x}")
    port = data[2] << 8 | data[3]
    if port == 0:
        raise EncapsulationError("port 0")
    family = data[1]
    if family == FAMILY_IPV4:
        octet = DECIMAL
        host = _dotted((octet[data[4]], octet[data[5]], octet[data[6]], octet[data[7]]))
        return (host, port), data[8:]
    if family == FAMILY_IPV6:
        if len(data) < IPV6_HEADER_LEN:
            raise EncapsulationError(f"{len(data)} octets: IPv6 header truncated")
        return (_inet_ntop(_AF_INET6, data[4:20]), port), data[20:]
    raise EncapsulationError(f"unknown address family {family}")
