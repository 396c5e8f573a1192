"""The header parser (RFC 8999, RFC 9000 §17) and the encapsulation codec, fuzzed."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lb.packet import (
    QUIC_V1,
    QUIC_V2,
    LongHeader,
    Malformation,
    Malformed,
    ShortHeader,
    parse,
)
from quicvoice.encapsulation import (
    IPV4_HEADER_LEN,
    IPV6_HEADER_LEN,
    MAGIC_VERSION,
    EncapsulationError,
    unwrap,
    wrap,
)


def long_header(
    first: int, version: int, dcid: bytes, scid: bytes, rest: bytes = b"\x00" * 20
) -> bytes:
    return (
        bytes([first])
        + version.to_bytes(4, "big")
        + bytes([len(dcid)])
        + dcid
        + bytes([len(scid)])
        + scid
        + rest
    )


def test_v1_initial() -> None:
    packet = long_header(0xC3, QUIC_V1, b"D" * 8, b"S" * 5)
    assert parse(packet) == LongHeader(QUIC_V1, b"D" * 8, b"S" * 5, is_initial=True)


@pytest.mark.parametrize(("first", "initial"), [(0xC0, False), (0xD0, True), (0xE0, False)])
def test_v2_permutes_the_types(first: int, initial: bool) -> None:
    # RFC 9369 §3.2: Initial is 0b01 in QUIC version 2.
    assert parse(long_header(first, QUIC_V2, b"D" * 8, b"")).is_initial is initial  # type: ignore[union-attr]


@pytest.mark.parametrize("first", [0xD0, 0xE0, 0xF0])
def test_other_v1_long_types_are_not_initial(first: int) -> None:
    header = parse(long_header(first, QUIC_V1, b"D" * 8, b"S"))
    assert isinstance(header, LongHeader) and not header.is_initial


def test_unknown_versions_may_have_long_cids() -> None:
    # RFC 8999 §5.1: up to 255 octets for versions other than 1.
    header = parse(long_header(0xC0, 0x1A2A3A4A, b"D" * 200, b"S" * 255))
    assert header == LongHeader(0x1A2A3A4A, b"D" * 200, b"S" * 255, is_initial=False)


@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2])
def test_v1_cids_are_at_most_20_octets(version: int) -> None:
    assert parse(long_header(0xC0, version, b"D" * 21, b"")) == Malformed(Malformation.CID_TOO_LONG)
    assert parse(long_header(0xC0, version, b"D", b"S" * 21)) == Malformed(
        Malformation.CID_TOO_LONG
    )


def test_version_negotiation_is_parsed() -> None:
    header = parse(long_header(0x80, 0, b"D" * 8, b"S" * 8))
    assert isinstance(header, LongHeader) and header.version == 0 and not header.is_initial


@pytest.mark.parametrize("cut", range(1, 6 + 8 + 1 + 8))
def test_truncated_long_headers(cut: int) -> None:
    packet = long_header(0xC0, QUIC_V1, b"D" * 8, b"S" * 8, rest=b"")
    assert parse(packet[:cut]) == Malformed(Malformation.TRUNCATED_LONG_HEADER)


def test_short_header() -> None:
    packet = bytes([0x41]) + bytes(range(1, 40))
    assert parse(packet) == ShortHeader(bytes(range(1, 21)))
    assert parse(packet[:20]) == Malformed(Malformation.SHORT_PACKET_TOO_SMALL)
    assert parse(b"") == Malformed(Malformation.EMPTY)


@given(st.binary(max_size=400))
def test_parse_never_raises(data: bytes) -> None:
    result = parse(data)
    assert isinstance(result, LongHeader | ShortHeader | Malformed)
    if isinstance(result, LongHeader):
        assert len(result.dcid) <= 255 and len(result.scid) <= 255


# Encapsulation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "header_len"),
    [
        (("127.0.0.2", 50000), IPV4_HEADER_LEN),
        (("255.255.255.255", 1), IPV4_HEADER_LEN),
        (("::1", 65535), IPV6_HEADER_LEN),
        (("2001:db8::7", 443), IPV6_HEADER_LEN),
        (("::ffff:127.0.0.1", 443), IPV6_HEADER_LEN),
    ],
)
def test_round_trip(address: tuple[str, int], header_len: int) -> None:
    wrapped = wrap(address, b"quic")
    assert len(wrapped) == header_len + 4
    assert wrapped[0] == MAGIC_VERSION
    assert unwrap(wrapped) == (address, b"quic")


def test_layout_is_as_specified() -> None:
    # specs/forwarder.md: magic|version, family, port, address, datagram.
    assert wrap(("10.0.0.1", 0x1234), b"Q") == bytes.fromhex("7104 1234 0a000001") + b"Q"
    assert wrap(("::1", 443), b"") == bytes.fromhex("7106 01bb") + bytes(15) + b"\x01"


def test_ipv6_scope_and_extra_items_are_dropped() -> None:
    address = ("fe80::1%lo", 443, 0, 1)
    assert unwrap(wrap(address, b"x")) == (("fe80::1", 443), b"x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "address",
    [
        ("localhost", 1),
        ("1.2.3", 1),
        ("1.2.3.4", 0),
        ("1.2.3.4", 65536),
        ("::g", 1),
        ("1.2.3.4", -1),
    ],
)
def test_wrap_refuses_bad_addresses(address: tuple[str, int]) -> None:
    with pytest.raises(EncapsulationError):
        wrap(address, b"x")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x71\x04\x00\x01\x7f\x00\x00",  # 7 octets
        b"\x72\x04\x00\x01\x7f\x00\x00\x01",  # version 2
        b"\x41\x04\x00\x01\x7f\x00\x00\x01",  # a QUIC short header, not ours
        b"\x71\x05\x00\x01\x7f\x00\x00\x01",  # family 5
        b"\x71\x04\x00\x00\x7f\x00\x00\x01",  # port 0
        b"\x71\x06\x00\x01" + bytes(15),  # IPv6 header cut short
    ],
)
def test_unwrap_refuses_malformed_headers(data: bytes) -> None:
    with pytest.raises(EncapsulationError):
        unwrap(data)
    assert issubclass(EncapsulationError, ValueError)


@given(st.binary(max_size=64))
def test_unwrap_raises_only_value_error(data: bytes) -> None:
    try:
        (host, port), payload = unwrap(data)
    except ValueError:
        return
    assert 0 < port < 65536 and data.endswith(payload)
    assert wrap((host, port), payload) == data


@given(
    st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)),
    st.integers(1, 65535),
    st.binary(max_size=100),
)
def test_any_address_round_trips(host: str, port: int, payload: bytes) -> None:
    (unwrapped_host, unwrapped_port), unwrapped = unwrap(wrap((host, port), payload))
    # inet_ntop may spell an address differently (e.g. IPv4-mapped IPv6); compare values.
    assert ipaddress.ip_address(unwrapped_host) == ipaddress.ip_address(host)
    assert (unwrapped_port, unwrapped) == (port, payload)
