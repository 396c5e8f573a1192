"""Router decisions for every rule, with real QUIC-LB CIDs; hashing; resets; memory."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lb.config import Backend, ForwarderConfig
from lb.packet import QUIC_V1
from lb.router import (
    MAX_CLIENT_DATAGRAM,
    MIN_STATELESS_RESET_LEN,
    Drop,
    DropReason,
    Forward,
    Rendezvous,
    Reply,
    Router,
    Send,
)
from quicvoice.encapsulation import unwrap, wrap
from quicvoice.quiclb import (
    LoadBalancerConfig,
    QuicLbConnectionIdGenerator,
    Unroutable,
    stateless_reset_token,
)

KEY = bytes.fromhex("8f95f09245765f80256934e50c66207f")
RESET_KEY = bytes(range(32))
SINGLE_PASS = LoadBalancerConfig(0, 4, 12, KEY)
PLAINTEXT = LoadBalancerConfig(1, 4, 8)
BACKENDS = tuple(Backend(bytes([10, 0, 0, n]), ("127.0.0.1", 4500 + n)) for n in (1, 2, 3))
CLIENT = ("127.0.0.2", 50000)
CONFIG = ForwarderConfig(
    listen=("127.0.0.1", 4433),
    backend_listen=("127.0.0.1", 4434),
    configs=(SINGLE_PASS, PLAINTEXT),
    backends=BACKENDS,
)


def seeded_random(seed: int) -> Callable[[int], bytes]:
    generator = random.Random(seed)
    return generator.randbytes


def cid_of(server_id: bytes, config: LoadBalancerConfig = SINGLE_PASS, **kwargs: int) -> bytes:
    return QuicLbConnectionIdGenerator(
        server_id, config, RESET_KEY, random=seeded_random(1), **kwargs
    ).generate()


def short_packet(dcid: bytes, size: int = 100) -> bytes:
    packet = bytes([0x41]) + dcid
    return packet + bytes(range(256))[: size - len(packet)]


def long_packet(
    dcid: bytes,
    *,
    first: int = 0xE0,
    version: int = QUIC_V1,
    size: int = 100,
    scid: bytes = b"S" * 8,
) -> bytes:
    packet = bytes([first]) + version.to_bytes(4, "big") + bytes([len(dcid)]) + dcid
    packet += bytes([len(scid)]) + scid
    return packet + bytes(size - len(packet))


def initial(dcid: bytes, size: int = 1200) -> bytes:
    return long_packet(dcid, first=0xC3, size=size)


def test_short_headers_go_where_the_cid_says() -> None:
    router = Router(CONFIG)
    for backend in BACKENDS:
        for config in (SINGLE_PASS, PLAINTEXT):
            packet = short_packet(cid_of(backend.server_id, config))
            decision = router.route_from_client(packet, CLIENT)
            assert decision == Forward(backend.address, wrap(CLIENT, packet))
    assert router.counters.routed_server_id == 6
    stats = router.counters.backends[(BACKENDS[0].server_id, BACKENDS[0].address)]
    assert (stats.uplink_packets, stats.uplink_bytes) == (2, 200)


def test_cids_with_extra_octets_still_route() -> None:
    # draft-21 §5.3: a server may append octets for its own use; decoders ignore them.
    router = Router(CONFIG)
    cid = cid_of(BACKENDS[1].server_id, PLAINTEXT, cid_length=20)
    assert router.route_from_client(short_packet(cid), CLIENT).address == BACKENDS[1].address  # type: ignore[union-attr]


def test_long_headers_with_a_server_cid_go_to_that_server() -> None:
    router = Router(CONFIG)
    cid = cid_of(BACKENDS[2].server_id)
    for first in (0xC3, 0xD0, 0xE0):  # Initial after the server's first answer, 0-RTT, Handshake
        decision = router.route_from_client(long_packet(cid, first=first, size=1200), CLIENT)
        assert isinstance(decision, Forward) and decision.address == BACKENDS[2].address
    assert router.counters.routed_server_id == 3


def test_first_flight_lands_together_by_dcid() -> None:
    router = Router(CONFIG)
    rng = random.Random(7)
    seen = set()
    for _ in range(300):
        dcid = bytes([rng.randrange(0xE0)]) + rng.randbytes(7)  # 0b111 is tested below
        targets = {
            router.route_from_client(initial(dcid), (f"127.0.0.{n}", 40000 + n)).address  # type: ignore[union-attr]
            for n in (2, 3)
        }
        # Chromium splits its first flight; a NAT may rebind: the DCID decides alone.
        assert len(targets) == 1
        seen |= targets
    assert seen == {b.address for b in BACKENDS}
    assert router.counters.routed_first_flight + router.counters.routed_server_id == 600


def test_first_flights_with_reserved_config_bits_follow_the_four_tuple() -> None:
    # One eighth of client-chosen DCIDs start with 0b111, like the CIDs of a server without a
    # config (draft-21 §3.1): those go by the client's address, consistently for all of them.
    router = Router(CONFIG)
    dcid = bytes([0xF5]) + bytes(7)
    for client in (CLIENT, ("127.0.0.3", 1234)):
        assert router.route_from_client(initial(dcid), client).address == (  # type: ignore[union-attr]
            router.fallback_backend(client).address  # type: ignore[union-attr]
        )


def test_first_flight_ignores_version_specific_bits() -> None:
    # draft-21 §4.2: the fallback uses no bit of the first octet but the header form.
    router = Router(CONFIG)
    dcid = bytes.fromhex("5a" * 8)
    unknown = long_packet(dcid, first=0xC7, version=0x1A2A3A4A, size=1200)
    assert (
        router.route_from_client(unknown, CLIENT).address  # type: ignore[union-attr]
        == router.route_from_client(initial(dcid), CLIENT).address  # type: ignore[union-attr]
        == router.first_flight_backend(dcid).address  # type: ignore[union-attr]
    )


def test_short_initials_are_dropped() -> None:
    # RFC 9000 §14.1: datagrams with a client Initial are at least 1200 octets.
    router = Router(CONFIG)
    assert router.route_from_client(initial(b"D" * 8, size=1199), CLIENT) == Drop(
        DropReason.INITIAL_TOO_SMALL
    )
    assert router.counters.uplink_drops[DropReason.INITIAL_TOO_SMALL] == 1


@pytest.mark.parametrize(
    ("dcid", "reason"),
    [
        (bytes([0xE0 | 19]) + bytes(19), Unroutable.RESERVED_CONFIG),
        (bytes([0x40]) + bytes(19), Unroutable.UNKNOWN_CONFIG),
    ],
)
def test_unroutable_short_headers_hash_the_four_tuple(dcid: bytes, reason: Unroutable) -> None:
    router = Router(CONFIG)
    decisions = {
        router.route_from_client(short_packet(dcid[:k] + bytes(20 - k)), CLIENT).address  # type: ignore[union-attr]
        for k in (1, 5, 20)
    }
    assert decisions == {router.fallback_backend(CLIENT).address}  # type: ignore[union-attr]
    assert router.counters.routed_fallback == 3
    assert router.counters.decode_failures[reason] == 3
    spread = {router.fallback_backend(("127.0.0.2", port)) for port in range(1000, 1100)}
    assert spread == set(BACKENDS)


def test_reserved_config_long_headers_hash_the_four_tuple() -> None:
    # A server without a config issues 0b111 CIDs (draft-21 §3.1): its handshake must follow
    # the client's address, not the CID.
    router = Router(CONFIG)
    decision = router.route_from_client(long_packet(bytes([0xE7]) + bytes(7)), CLIENT)
    assert decision.address == router.fallback_backend(CLIENT).address  # type: ignore[union-attr]
    assert router.counters.routed_fallback == 1


def test_too_short_long_header_cid_is_a_first_flight() -> None:
    router = Router(CONFIG)
    dcid = bytes([0x00]) + bytes(7)  # config 0 needs 17 octets
    decision = router.route_from_client(long_packet(dcid), CLIENT)
    assert decision.address == router.first_flight_backend(dcid).address  # type: ignore[union-attr]
    assert router.counters.decode_failures[Unroutable.TOO_SHORT] == 1


def test_unknown_server_id_is_dropped_without_a_reset_key() -> None:
    router = Router(CONFIG)
    packet = short_packet(cid_of(b"\x09\x09\x09\x09"))
    assert router.route_from_client(packet, CLIENT) == Drop(DropReason.UNKNOWN_SERVER_ID)
    assert router.counters.uplink_drops[DropReason.UNKNOWN_SERVER_ID] == 1


def with_down(config: ForwarderConfig, index: int, **changes: object) -> ForwarderConfig:
    backends = list(config.backends)
    backends[index] = replace(backends[index], down=True)
    return replace(config, backends=tuple(backends), **changes)  # type: ignore[arg-type]


def test_down_backend_leaves_the_first_flight_hash_and_its_packets_drop() -> None:
    router = Router(with_down(CONFIG, 0))
    assert router.healthy_backends == 2
    rng = random.Random(3)
    for _ in range(300):
        decision = router.route_from_client(initial(rng.randbytes(8)), CLIENT)
        assert isinstance(decision, Forward) and decision.address != BACKENDS[0].address
    cid = cid_of(BACKENDS[0].server_id)
    assert router.route_from_client(short_packet(cid), CLIENT) == Drop(DropReason.BACKEND_DOWN)
    # A long header naming a down server is treated as unroutable: fallback, never a reset.
    decision = router.route_from_client(long_packet(cid), CLIENT)
    assert isinstance(decision, Forward) and decision.address != BACKENDS[0].address


def test_all_down_drops_first_flights() -> None:
    config = with_down(with_down(with_down(CONFIG, 0), 1), 2)
    router = Router(config)
    assert router.route_from_client(initial(b"D" * 8), CLIENT) == Drop(
        DropReason.NO_HEALTHY_BACKEND
    )
    assert router.route_from_client(short_packet(bytes([0xF3]) + bytes(19)), CLIENT) == Drop(
        DropReason.NO_HEALTHY_BACKEND
    )


def reset_router(index: int = 0) -> Router:
    return Router(with_down(CONFIG, index, reset_key=RESET_KEY), random=seeded_random(5))


@pytest.mark.parametrize("config", [SINGLE_PASS, PLAINTEXT])
def test_stateless_reset_for_a_down_backend(config: LoadBalancerConfig) -> None:
    router = reset_router()
    generator = QuicLbConnectionIdGenerator(BACKENDS[0].server_id, config, RESET_KEY)
    cid = generator.generate()
    packet = short_packet(cid, size=200)
    decision = router.route_from_client(packet, CLIENT)
    assert isinstance(decision, Reply) and decision.address == CLIENT
    reset = decision.datagram
    # RFC 9000 §10.3: 0b01 first bits, then unpredictable octets, then the token.
    assert reset[0] & 0xC0 == 0x40
    assert (
        reset[-16:] == generator.stateless_reset_token(cid) == stateless_reset_token(RESET_KEY, cid)
    )
    assert MIN_STATELESS_RESET_LEN <= len(reset) < len(packet)
    assert router.counters.stateless_resets == 1


def test_stateless_reset_for_an_unknown_server_id() -> None:
    router = reset_router()
    packet = short_packet(cid_of(b"\x09\x09\x09\x09"), size=50)
    decision = router.route_from_client(packet, CLIENT)
    assert isinstance(decision, Reply) and len(decision.datagram) == 49


def test_cid_with_extra_octets_gets_the_token_of_the_whole_cid() -> None:
    router = reset_router()
    cid = cid_of(BACKENDS[0].server_id, SINGLE_PASS, cid_length=20)
    decision = router.route_from_client(short_packet(cid), CLIENT)
    assert isinstance(decision, Reply)
    assert decision.datagram[-16:] == stateless_reset_token(RESET_KEY, cid)


@given(st.integers(1, 1500), st.integers(0, 2**32))
@settings(max_examples=300)
def test_a_reset_is_always_smaller_than_its_trigger(size: int, seed: int) -> None:
    router = Router(with_down(CONFIG, 0, reset_key=RESET_KEY), random=seeded_random(seed))
    cid = cid_of(BACKENDS[0].server_id)
    packet = (bytes([0x41]) + cid + bytes(1500))[:size]
    decision = router.route_from_client(packet, CLIENT)
    if isinstance(decision, Reply):
        assert MIN_STATELESS_RESET_LEN <= len(decision.datagram) < size
        if size <= 43:
            assert len(decision.datagram) == size - 1
    else:
        assert size <= MIN_STATELESS_RESET_LEN
        assert isinstance(decision, Drop)


def test_no_reset_for_long_headers_or_tiny_packets() -> None:
    router = reset_router()
    cid = cid_of(BACKENDS[0].server_id)
    assert router.stateless_reset(long_packet(cid)) is None
    assert router.stateless_reset(short_packet(cid, size=21)) is None
    assert router.stateless_reset(short_packet(bytes([0x60]) + bytes(19))) is None  # config 3


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", DropReason.EMPTY),
        (bytes(MAX_CLIENT_DATAGRAM + 1), DropReason.TOO_LARGE),
        (bytes([0x41]) + bytes(19), DropReason.SHORT_PACKET_TOO_SMALL),
        (long_packet(b"D" * 8)[:10], DropReason.TRUNCATED_LONG_HEADER),
        (long_packet(b"D" * 21), DropReason.CID_TOO_LONG),
        (long_packet(b"D" * 8, first=0x80, version=0), DropReason.VERSION_NEGOTIATION),
    ],
)
def test_garbage_is_dropped_and_counted(datagram: bytes, reason: DropReason) -> None:
    router = Router(CONFIG)
    assert router.route_from_client(datagram, CLIENT) == Drop(reason)
    assert router.counters.uplink_drops[reason] == 1
    assert router.counters.uplink_packets == 1


# The return path ----------------------------------------------------------------------------


def test_replies_from_a_backend_go_to_the_named_client() -> None:
    router = Router(CONFIG)
    payload = short_packet(b"C" * 8)
    for client in (CLIENT, ("::1", 443)):
        decision = router.route_from_backend(wrap(client, payload), BACKENDS[1].address)
        assert decision == Send(client, payload)
    decision = router.route_from_backend(wrap(CLIENT, payload), BACKENDS[1].address + (0, 0))  # type: ignore[arg-type]
    assert decision == Send(CLIENT, payload)
    stats = router.counters.backends[(BACKENDS[1].server_id, BACKENDS[1].address)]
    assert (stats.downlink_packets, stats.downlink_bytes) == (3, 3 * len(payload))


def test_replies_of_a_down_backend_still_flow() -> None:
    router = Router(with_down(CONFIG, 1))
    payload = short_packet(b"C" * 8)
    assert router.route_from_backend(wrap(CLIENT, payload), BACKENDS[1].address) == Send(
        CLIENT, payload
    )


@pytest.mark.parametrize(
    "source", [("127.0.0.9", 4501), ("127.0.0.1", 4509), ("127.0.0.1", 4433), ("::1", 4501)]
)
def test_the_forwarder_is_no_reflector(source: tuple[str, int]) -> None:
    router = Router(CONFIG)
    victim = ("192.0.2.1", 53)
    assert router.route_from_backend(wrap(victim, b"x" * 100), source) == Drop(
        DropReason.NOT_A_BACKEND
    )
    assert router.counters.downlink_drops[DropReason.NOT_A_BACKEND] == 1


def test_bad_encapsulation_from_a_backend_is_dropped() -> None:
    router = Router(CONFIG)
    source = BACKENDS[0].address
    assert router.route_from_backend(b"\x41" + bytes(40), source) == Drop(
        DropReason.BAD_ENCAPSULATION
    )
    assert router.route_from_backend(wrap(CLIENT, b""), source) == Drop(DropReason.EMPTY)


@given(st.binary(max_size=300), st.sampled_from([CLIENT, ("::1", 1), BACKENDS[0].address]))
@settings(max_examples=500)
def test_routing_never_raises(data: bytes, address: tuple[str, int]) -> None:
    router = Router(replace(CONFIG, reset_key=RESET_KEY))
    assert isinstance(router.route_from_client(data, address), Forward | Reply | Drop)
    assert isinstance(router.route_from_backend(data, address), Send | Drop)
    back = router.route_from_backend(wrap(CLIENT, data), BACKENDS[0].address)
    assert back == (Send(CLIENT, data) if data else Drop(DropReason.EMPTY))


@given(st.binary(min_size=1, max_size=100))
def test_forwarded_datagrams_unwrap_to_the_original(data: bytes) -> None:
    decision = Router(CONFIG).route_from_client(data, CLIENT)
    if isinstance(decision, Forward):
        assert unwrap(decision.datagram) == (CLIENT, data)


# Consistent hashing -------------------------------------------------------------------------

KEYS = [random.Random(11).randbytes(8) + i.to_bytes(4, "big") for i in range(20_000)]


def assignment(backends: tuple[Backend, ...]) -> list[Backend | None]:
    rendezvous = Rendezvous(backends)
    return [rendezvous.pick(key) for key in KEYS]


def four_backends() -> tuple[Backend, ...]:
    return BACKENDS + (Backend(bytes([10, 0, 0, 4]), ("127.0.0.1", 4504)),)


def test_the_hash_is_balanced() -> None:
    picks = assignment(BACKENDS)
    for backend in BACKENDS:
        assert abs(picks.count(backend) / len(KEYS) - 1 / 3) < 0.02


def test_adding_a_fourth_backend_moves_a_quarter_all_to_it() -> None:
    before, after = assignment(BACKENDS), assignment(four_backends())
    moved = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert all(new == four_backends()[3] for _, new in moved)
    assert abs(len(moved) / len(KEYS) - 0.25) < 0.02


def test_removing_a_backend_moves_only_its_share() -> None:
    backends = four_backends()
    before = assignment(backends)
    after = assignment(backends[:1] + backends[2:])
    moved = [old for old, new in zip(before, after, strict=True) if old != new]
    assert set(moved) == {backends[1]}
    assert len(moved) == before.count(backends[1])


def test_the_order_of_backends_does_not_matter() -> None:
    assert assignment(BACKENDS) == assignment(BACKENDS[::-1])


def test_the_hash_is_the_same_in_every_process() -> None:
    # Python's hash() is salted per process; ours must not be (forwarders on other hosts).
    probe = (
        "from lb.router import Rendezvous\n"
        "from lb.config import Backend\n"
        "bs = [Backend(bytes([10, 0, 0, n]), ('127.0.0.1', 4500 + n)) for n in (1, 2, 3)]\n"
        "r = Rendezvous(bs)\n"
        "print(''.join(str(r.pick(bytes([i, i * 7 % 256]) * 4).server_id[3]) for i in range(64)))\n"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            timeout=30,
        ).stdout
        for seed in (1, 2)
    }
    local = Rendezvous(BACKENDS)
    expected = "".join(
        str(local.pick(bytes([i, i * 7 % 256]) * 4).server_id[3])  # type: ignore[union-attr]
        for i in range(64)
    )
    assert outputs == {expected + "\n"}


# Memory -------------------------------------------------------------------------------------


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_memory_stays_flat_over_1e5_distinct_cids() -> None:
    router = Router(replace(with_down(CONFIG, 2), reset_key=RESET_KEY))
    rng = random.Random(13)

    def flood(count: int) -> None:
        for n in range(count):
            cid = rng.randbytes(17)
            client = ("127.0.0.2", 1024 + n % 60000)
            router.route_from_client(short_packet(cid), client)
            if not n % 4:
                router.route_from_client(initial(cid[:8]), client)

    flood(10_000)  # warm up allocator arenas and per-backend counters
    before = rss_kib()
    flood(100_000)
    grown = rss_kib() - before
    counters = router.counters
    assert counters.uplink_packets == 137_500
    assert grown < 1024, f"RSS grew by {grown} KiB over 10^5 distinct CIDs"
    assert len(counters.backends) == 3
