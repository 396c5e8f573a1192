"""Just enough of a QUIC packet header to route it (RFC 8999 invariants, RFC 9000 §17).

Pure: ``parse(datagram)`` returns a ``LongHeader``, a ``ShortHeader`` or a ``Malformed``
reason and never raises on any bytes. Only the first packet of a datagram is looked at:
coalesced packets (RFC 9000 §12.2) share the datagram's destination by construction.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

#: RFC 8999 §5.1: the header form bit.
LONG_HEADER_BIT = 0x80
#: RFC 9000 §17.2: the long packet type bits.
LONG_TYPE_MASK = 0x30
VERSION_NEGOTIATION = 0x00000000
QUIC_V1 = 0x00000001
#: RFC 9369 (QUIC version 2) permutes the long packet types; Initial is 0b01 there.
QUIC_V2 = 0x6B3343CF
INITIAL_TYPE = {QUIC_V1: 0x00, QUIC_V2: 0x10}
#: RFC 9000 §17.2: version 1 (and 2) connection IDs are at most 20 octets.
MAX_CID_LEN_V1 = 20
#: RFC 8999 §5.1: first octet, version, DCID length, (DCID), SCID length, (SCID).
MIN_LONG_HEADER_LEN = 7
#: RFC 9000 §10.3: with QUIC v1's AEADs a short-header packet is at least 21 octets
#: (first octet, packet number, and the 16-octet sample header protection needs).
MIN_SHORT_HEADER_LEN = 21
#: RFC 9000 §14.1: a datagram carrying a client Initial is at least 1200 octets.
MIN_INITIAL_DATAGRAM_LEN = 1200


class Malformation(Enum):
    """Why a datagram is not a QUIC packet the forwarder can route."""

    #: Zero octets.
    EMPTY = "empty"
    #: A long header cut before the end of its connection IDs.
    TRUNCATED_LONG_HEADER = "truncated_long_header"
    #: A version 1/2 long header with a connection ID longer than 20 octets.
    CID_TOO_LONG = "cid_too_long"
    #: A short header too small to be any valid QUIC v1 packet (RFC 9000 §10.3).
    SHORT_PACKET_TOO_SMALL = "short_packet_too_small"


class LongHeader(NamedTuple):
    """A long-header packet (RFC 8999 §5.1)."""

    #: The 32-bit version; 0 is Version Negotiation.
    version: int
    #: Destination Connection ID, as long as the header says (0..255 octets).
    dcid: bytes
    #: Source Connection ID (0..255 octets).
    scid: bytes
    #: Whether this is a client Initial of a version we know (v1 or v2).
    is_initial: bool


class ShortHeader(NamedTuple):
    """A short-header packet: its DCID length is not on the wire (RFC 8999 §5.2)."""

    #: The octets after the first one, at most 20: the DCID and maybe some of what follows.
    #: A QUIC-LB decoder reads the prefix its configuration needs and ignores the rest.
    dcid_prefix: bytes


class Malformed(NamedTuple):
    """A datagram that cannot be routed as QUIC."""

    #: Why.
    reason: Malformation


Parsed = LongHeader | ShortHeader | Malformed


def parse(datagram: bytes) -> Parsed:
    """Parse the first packet header of ``datagram``; never raises on any bytes."""
    if not datagram:
        return Malformed(Malformation.EMPTY)
    first = datagram[0]
    if not first & LONG_HEADER_BIT:
        if len(datagram) < MIN_SHORT_HEADER_LEN:
            return Malformed(Malformation.SHORT_PACKET_TOO_SMALL)
        return ShortHeader(datagram[1 : 1 + MAX_CID_LEN_V1])
    return parse_long_header(datagram)


def parse_long_header(datagram: bytes) -> LongHeader | Malformed:
    """Parse a datagram whose first octet has the long header bit set."""
    length = len(datagram)
    if length < MIN_LONG_HEADER_LEN:
        return Malformed(Malformation.TRUNCATED_LONG_HEADER)
    version = int.from_bytes(datagram[1:5], "big")
    dcid_end = 6 + datagram[5]
    if length < dcid_end + 1:
        return Malformed(Malformation.TRUNCATED_LONG_HEADER)
    scid_end = dcid_end + 1 + datagram[dcid_end]
    if length < scid_end:
        return Malformed(Malformation.TRUNCATED_LONG_HEADER)
    initial_type = INITIAL_TYPE.get(version)
    if initial_type is not None and max(dcid_end - 6, scid_end - dcid_end - 1) > MAX_CID_LEN_V1:
        return Malformed(Malformation.CID_TOO_LONG)
    return LongHeader(
        version=version,
        dcid=datagram[6:dcid_end],
        scid=datagram[dcid_end + 1 : scid_end],
        is_initial=initial_type is not None and datagram[0] & LONG_TYPE_MASK == initial_type,
    )
