"""LoadBalancerConfig validation, TOML tables, and codec round trips over every valid shape."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicvoice.quiclb import Algorithm, LoadBalancerConfig

KEY = bytes(range(16))


@st.composite
def configs(draw: st.DrawFn) -> LoadBalancerConfig:
    server_id_len = draw(st.integers(1, 15))
    nonce_len = draw(st.integers(4, 19 - server_id_len))
    key = draw(st.one_of(st.none(), st.binary(min_size=16, max_size=16)))
    return LoadBalancerConfig(
        config_id=draw(st.integers(0, 6)),
        server_id_len=server_id_len,
        nonce_len=nonce_len,
        key=key,
        encode_length=draw(st.booleans()),
    )


@given(configs(), st.data())
def test_round_trip_every_shape(config: LoadBalancerConfig, data: st.DataObject) -> None:
    server_id = data.draw(st.binary(min_size=config.server_id_len, max_size=config.server_id_len))
    nonce = data.draw(st.binary(min_size=config.nonce_len, max_size=config.nonce_len))
    extra = data.draw(st.binary(max_size=20 - config.cid_len))
    cid = config.encode(server_id, nonce, extra=extra)
    assert len(cid) == config.cid_len + len(extra)
    assert cid[0] >> 5 == config.config_id
    if config.encode_length:
        assert cid[0] & 0x1F == len(cid) - 1
    assert config.decode(cid) == server_id
    assert config.decode_nonce(cid) == nonce
    if config.key is not None:
        assert cid[1 : config.cid_len] != server_id + nonce or server_id + nonce == b""


@given(configs(), st.binary(max_size=64))
def test_decode_never_raises(config: LoadBalancerConfig, data: bytes) -> None:
    result = config.decode(data)
    assert result is None or len(result) == config.server_id_len
    if len(data) < config.cid_len or (data and data[0] >> 5 != config.config_id):
        assert result is None


def test_algorithm_choice() -> None:
    assert LoadBalancerConfig(0, 3, 4).algorithm is Algorithm.PLAINTEXT
    assert LoadBalancerConfig(0, 4, 12, KEY).algorithm is Algorithm.SINGLE_PASS
    assert LoadBalancerConfig(0, 4, 13, KEY).algorithm is Algorithm.FOUR_PASS
    assert LoadBalancerConfig(0, 3, 4, KEY).algorithm is Algorithm.FOUR_PASS


def test_decode_rejects_other_config_and_short() -> None:
    config = LoadBalancerConfig(2, 3, 4, KEY)
    cid = config.encode(b"abc", b"1234")
    assert config.decode(cid[:-1]) is None
    assert config.decode(bytes((cid[0] ^ 0x20,)) + cid[1:]) is None
    assert config.decode(b"") is None


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"config_id": 7}, "config_id"),
        ({"config_id": -1}, "config_id"),
        ({"config_id": True}, "config_id"),
        ({"server_id_len": 0}, "server_id_len"),
        ({"nonce_len": 3}, "nonce_len"),
        ({"server_id_len": 10, "nonce_len": 10}, "server_id_len + nonce_len"),
        ({"key": bytes(15)}, "key"),
        ({"key": "00" * 16}, "key"),
        ({"encode_length": 1}, "encode_length"),
    ],
)
def test_validation_names_the_field(arguments: dict[str, Any], field: str) -> None:
    base: dict[str, Any] = {"config_id": 0, "server_id_len": 3, "nonce_len": 4}
    with pytest.raises(ValueError, match=f"^{field.replace('+', '[+]')}"):
        LoadBalancerConfig(**{**base, **arguments})


def test_encode_checks_lengths() -> None:
    config = LoadBalancerConfig(0, 3, 4)
    with pytest.raises(ValueError, match="server_id"):
        config.encode(b"ab", b"1234")
    with pytest.raises(ValueError, match="nonce"):
        config.encode(b"abc", b"123")
    with pytest.raises(ValueError, match="20"):
        config.encode(b"abc", b"1234", extra=bytes(13))


def test_equality_ignores_cipher_contexts() -> None:
    assert LoadBalancerConfig(1, 3, 4, KEY) == LoadBalancerConfig(1, 3, 4, KEY)
    assert hash(LoadBalancerConfig(1, 3, 4, KEY)) == hash(LoadBalancerConfig(1, 3, 4, KEY))
    assert LoadBalancerConfig(1, 3, 4, KEY) != LoadBalancerConfig(1, 3, 4)
    assert "key" not in repr(LoadBalancerConfig(1, 3, 4, KEY)).replace("key=", "")


def test_from_mapping() -> None:
    config = LoadBalancerConfig.from_mapping(
        {"id": 1, "server_id_len": 4, "nonce_len": 12, "key": KEY.hex()}
    )
    assert config == LoadBalancerConfig(1, 4, 12, KEY)


@pytest.mark.parametrize(
    ("table", "key_named"),
    [
        ({"server_id_len": 4, "nonce_len": 12}, "configs.id"),
        ({"id": 9, "server_id_len": 4, "nonce_len": 12}, "configs.id"),
        ({"id": "1", "server_id_len": 4, "nonce_len": 12}, "configs.id"),
        ({"id": 1, "server_id_len": 4, "nonce_len": 2}, "configs.nonce_len"),
        ({"id": 1, "server_id_len": 4, "nonce_len": 12, "key": "zz"}, "configs.key"),
        ({"id": 1, "server_id_len": 4, "nonce_len": 12, "key": 5}, "configs.key"),
        ({"id": 1, "server_id_len": 4, "nonce_len": 12, "colour": 1}, "configs.colour"),
        (
            {"id": 1, "server_id_len": 4, "nonce_len": 12, "encode_length": "y"},
            "configs.encode_length",
        ),
    ],
)
def test_from_mapping_errors_name_the_key(table: dict[str, Any], key_named: str) -> None:
    with pytest.raises(ValueError, match=f"^{key_named}:"):
        LoadBalancerConfig.from_mapping(table)


@given(
    st.dictionaries(
        st.text(max_size=20), st.one_of(st.integers(), st.text(), st.none(), st.booleans())
    )
)
def test_from_mapping_garbage_gives_value_error(table: dict[str, Any]) -> None:
    try:
        LoadBalancerConfig.from_mapping(table)
    except ValueError as error:
        assert str(error).startswith("configs")
