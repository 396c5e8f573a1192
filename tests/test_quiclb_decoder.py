"""The multi-config decoder the forwarder uses: server IDs or reasons, never exceptions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicvoice.quiclb import LoadBalancerConfig, LoadBalancerDecoder, Unroutable

KEY = bytes(range(16))
CONFIGS = [
    LoadBalancerConfig(0, 4, 12, KEY),
    LoadBalancerConfig(1, 3, 4, KEY),
    LoadBalancerConfig(2, 10, 5, KEY),
    LoadBalancerConfig(3, 2, 6),
]


def test_each_config_decodes_its_own_cids() -> None:
    decoder = LoadBalancerDecoder(CONFIGS)
    for config in CONFIGS:
        server_id = bytes(range(7, 7 + config.server_id_len))
        cid = config.encode(server_id, bytes(config.nonce_len))
        assert decoder.decode(cid) == server_id
        assert decoder.config_for(cid) is config


def test_reasons() -> None:
    decoder = LoadBalancerDecoder(CONFIGS)
    assert decoder.decode(b"") is Unroutable.EMPTY
    assert decoder.decode(b"\xe0" + bytes(16)) is Unroutable.RESERVED_CONFIG
    assert decoder.decode(b"\xa0" + bytes(16)) is Unroutable.UNKNOWN_CONFIG
    assert decoder.decode(b"\x00" + bytes(15)) is Unroutable.TOO_SHORT
    assert LoadBalancerDecoder().decode(b"\x00" + bytes(16)) is Unroutable.UNKNOWN_CONFIG


def test_duplicate_config_id_refused() -> None:
    with pytest.raises(ValueError, match="config_id 1"):
        LoadBalancerDecoder([CONFIGS[1], LoadBalancerConfig(1, 5, 5)])
    with pytest.raises(TypeError):
        LoadBalancerDecoder(["config"])  # type: ignore[list-item]


@given(st.binary(max_size=64))
def test_decode_never_raises(data: bytes) -> None:
    result = LoadBalancerDecoder(CONFIGS).decode(data)
    assert isinstance(result, bytes | Unroutable)
    if isinstance(result, bytes):
        config = CONFIGS[data[0] >> 5]
        assert len(result) == config.server_id_len
