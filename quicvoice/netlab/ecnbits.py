"""The ECN field of raw IP packets, as the delay line sees them on a TUN device (RFC 3168 §5).

The two low bits of the IPv4 TOS octet (or of the IPv6 traffic class) are the ECN field:
``00`` not-ECT, ``01`` ECT(1) (L4S, RFC 9331), ``10`` ECT(0) (classic ECN), ``11`` CE. The
line relays whole IP packets, so the bits survive unless it rewrites them; rewriting an IPv4
header means fixing its checksum (RFC 1624's incremental update would do, but a 20-60 octet
header is cheap to sum again). Anything that is not a well-formed IPv4 or IPv6 header is
classed not-ECT and never rewritten: garbage is counted, never trusted.
"""

from __future__ import annotations

import enum

IPV4_MIN_HEADER = 20
IPV6_HEADER = 40


class Ecn(enum.IntEnum):
    """An ECN codepoint (the two bits' value)."""

    NOT_ECT = 0b00
    ECT1 = 0b01
    ECT0 = 0b10
    CE = 0b11


def _ipv4_header_length(packet: bytes | bytearray) -> int | None:
    if len(packet) < IPV4_MIN_HEADER or packet[0] >> 4 != 4:
        return None
    length = (packet[0] & 0x0F) * 4
    if length < IPV4_MIN_HEADER or length > len(packet):
        return None
    return length


def _is_ipv6(packet: bytes | bytearray) -> bool:
    return len(packet) >= IPV6_HEADER and packet[0] >> 4 == 6


def read_ecn(packet: bytes | bytearray) -> Ecn | None:
    """The packet's ECN codepoint, or None when it is not a well-formed IPv4/IPv6 header."""
    if _ipv4_header_length(packet) is not None:
        return Ecn(packet[1] & 0b11)
    if _is_ipv6(packet):
        # Traffic class spans the low nibble of octet 0 and the high nibble of octet 1.
        return Ecn((packet[1] >> 4) & 0b11)
    return None


def ipv4_checksum(header: bytes | bytearray) -> int:
    """The one's-complement sum of ``header`` (checksum field included) folded to 16 bits,
    complemented: 0 for a header whose checksum is right."""
    total = 0
    for index in range(0, len(header) - 1, 2):
        total += (header[index] << 8) | header[index + 1]
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def write_ecn(packet: bytes, ecn: Ecn) -> bytes:
    """``packet`` with its ECN field set to ``ecn`` (IPv4 checksum fixed); unchanged if it
    is not a well-formed IP header or already carries ``ecn``."""
    current = read_ecn(packet)
    if current is None or current is ecn:
        return packet
    out = bytearray(packet)
    header_length = _ipv4_header_length(packet)
    if header_length is not None:
        out[1] = (out[1] & 0xFC) | ecn
        out[10:12] = b"\x00\x00"
        out[10:12] = ipv4_checksum(out[:header_length]).to_bytes(2, "big")
    else:
        out[1] = (out[1] & 0xCF) | (ecn << 4)
    return bytes(out)


def tos_of(packet: bytes | bytearray) -> int | None:
    """The whole IPv4 TOS octet / IPv6 traffic class, or None for a malformed header."""
    if _ipv4_header_length(packet) is not None:
        return packet[1]
    if _is_ipv6(packet):
        return ((packet[0] & 0x0F) << 4) | (packet[1] >> 4)
    return None
