"""The server's connection-ID generator: uniqueness, fixed length, rotation, reset tokens."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicvoice.errors import NonceExhaustedError
from quicvoice.quiclb import (
    ConnectionIdGenerator,
    LoadBalancerConfig,
    LoadBalancerDecoder,
    QuicLbConnectionIdGenerator,
    Unroutable,
    stateless_reset_token,
)

KEY = bytes.fromhex("8f95f09245765f80256934e50c66207f")
RESET_KEY = bytes(range(32))
SINGLE_PASS = LoadBalancerConfig(0, 4, 12, KEY)
FOUR_PASS = LoadBalancerConfig(1, 3, 5, KEY)
PLAINTEXT = LoadBalancerConfig(2, 2, 6)


def seeded(seed: int) -> random.Random:
    return random.Random(seed)


@pytest.mark.parametrize(
    "config", [SINGLE_PASS, FOUR_PASS, PLAINTEXT], ids=lambda c: c.algorithm.value
)
def test_unique_fixed_length_decodable_over_1e5(config: LoadBalancerConfig) -> None:
    server_id = bytes(range(1, config.server_id_len + 1))
    generator = QuicLbConnectionIdGenerator(server_id, config, RESET_KEY)
    decoder = LoadBalancerDecoder([config])
    cids = {generator.generate() for _ in range(100_000)}
    assert len(cids) == 100_000
    assert {len(cid) for cid in cids} == {config.cid_len}
    assert all(decoder.decode(cid) == server_id for cid in cids)
    assert isinstance(generator, ConnectionIdGenerator)


def test_plaintext_nonces_do_not_count_visibly() -> None:
    """Plaintext CIDs show the nonce: consecutive ones must not look like a counter."""
    generator = QuicLbConnectionIdGenerator(b"\x01\x02", PLAINTEXT, RESET_KEY)
    nonces = [int.from_bytes(generator.generate()[3:], "big") for _ in range(1000)]
    steps = {b - a for a, b in zip(nonces, nonces[1:], strict=False)}
    assert len(steps) > 990


def test_nonce_exhaustion_is_detected() -> None:
    """A 4-octet nonce from a counter: after 2**32 CIDs the generator must stop, not repeat."""
    config = LoadBalancerConfig(0, 1, 4, KEY)
    source = seeded(1)
    generator = QuicLbConnectionIdGenerator(b"\x07", config, RESET_KEY, random=source.randbytes)
    assert generator.nonces_remaining == 2**32
    # Fast-forward the counter rather than issue four billion CIDs.
    counter = generator._counter
    assert counter is not None
    counter._remaining = 3
    seen = {generator.generate() for _ in range(3)}
    assert len(seen) == 3
    with pytest.raises(NonceExhaustedError):
        generator.generate()


def test_counter_wraps_around_from_random_start() -> None:
    config = LoadBalancerConfig(0, 1, 4, KEY)
    generator = QuicLbConnectionIdGenerator(
        b"\x07", config, RESET_KEY, random=lambda n: b"\xff" * n
    )
    first, second = generator.generate(), generator.generate()
    assert config.decode_nonce(first) == b"\xff\xff\xff\xff"
    assert config.decode_nonce(second) == b"\x00\x00\x00\x00"


def test_no_config_issues_unroutable_cids() -> None:
    generator = QuicLbConnectionIdGenerator(b"", None, RESET_KEY, cid_length=12)
    cid = generator.generate()
    assert len(cid) == 12
    assert cid[0] == 0b111_01011
    assert LoadBalancerDecoder([SINGLE_PASS]).decode(cid) is Unroutable.RESERVED_CONFIG
    assert generator.generate() != cid


def test_rotation_switches_config_and_keeps_length() -> None:
    generator = QuicLbConnectionIdGenerator(b"\x00\x00\x00\x09", SINGLE_PASS, RESET_KEY)
    old = generator.generate()
    generator.rotate(FOUR_PASS, b"\x00\x00\x09")
    new = generator.generate()
    assert len(new) == len(old) == SINGLE_PASS.cid_len
    decoder = LoadBalancerDecoder([SINGLE_PASS, FOUR_PASS])
    assert decoder.decode(old) == b"\x00\x00\x00\x09"
    assert decoder.decode(new) == b"\x00\x00\x09"
    assert new[0] >> 5 == FOUR_PASS.config_id
    assert generator.validate(old) and generator.validate(new)
    generator.retire(SINGLE_PASS.config_id)
    assert not generator.validate(old)
    assert generator.validate(new)


def test_rotation_to_longer_config_is_refused() -> None:
    generator = QuicLbConnectionIdGenerator(b"\x00\x00\x09", FOUR_PASS, RESET_KEY)
    with pytest.raises(ValueError, match="needs 17-octet"):
        generator.rotate(SINGLE_PASS, b"\x00\x00\x00\x09")


def test_validate_rejects_other_servers_and_garbage() -> None:
    ours = QuicLbConnectionIdGenerator(b"\x00\x00\x00\x01", SINGLE_PASS, RESET_KEY)
    theirs = QuicLbConnectionIdGenerator(b"\x00\x00\x00\x02", SINGLE_PASS, RESET_KEY)
    assert ours.validate(ours.generate())
    assert not ours.validate(theirs.generate())
    assert not ours.validate(b"")
    assert not ours.validate(ours.generate()[:-1])


@given(st.binary(max_size=40))
def test_validate_never_raises(data: bytes) -> None:
    generator = QuicLbConnectionIdGenerator(b"\x00\x00\x00\x01", SINGLE_PASS, RESET_KEY)
    assert generator.validate(data) in (True, False)


def test_reset_token_is_shared_hmac() -> None:
    one = QuicLbConnectionIdGenerator(b"\x00\x00\x00\x01", SINGLE_PASS, RESET_KEY)
    other = QuicLbConnectionIdGenerator(b"\x00\x00\x00\x02", SINGLE_PASS, RESET_KEY)
    cid = one.generate()
    token = one.stateless_reset_token(cid)
    assert len(token) == 16
    assert token == other.stateless_reset_token(cid) == stateless_reset_token(RESET_KEY, cid)
    assert token != stateless_reset_token(bytes(32), cid)
    assert token != one.stateless_reset_token(one.generate())


def test_random_source_is_injectable_and_deterministic() -> None:
    def make() -> QuicLbConnectionIdGenerator:
        return QuicLbConnectionIdGenerator(
            b"\x00\x00\x00\x01", SINGLE_PASS, RESET_KEY, random=seeded(5).randbytes
        )

    assert [make().generate() for _ in range(3)] == [make().generate() for _ in range(3)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reset_key": b"short"}, "reset_key"),
        ({"cid_length": 5}, "cid_length"),
        ({"cid_length": 21}, "cid_length"),
        ({"server_id": b"\x01"}, "server_id"),
    ],
)
def test_generator_argument_errors(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {
        "server_id": b"\x00\x00\x00\x01",
        "config": SINGLE_PASS,
        "reset_key": RESET_KEY,
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        QuicLbConnectionIdGenerator(**arguments)  # type: ignore[arg-type]


def test_encode_length_off_randomises_low_bits() -> None:
    config = LoadBalancerConfig(0, 4, 12, KEY, encode_length=False)
    generator = QuicLbConnectionIdGenerator(b"\x00\x00\x00\x01", config, RESET_KEY)
    low_bits = {generator.generate()[0] & 0x1F for _ in range(500)}
    assert len(low_bits) > 16
