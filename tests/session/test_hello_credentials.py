"""The ``hello``'s credential and metadata: carried intact, bounded; a bad token is refused
with TOKEN_MALFORMED, bad metadata with MESSAGE_ERROR."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicvoice.errors import ProtocolError
from quicvoice.session.codes import ErrorCode
from quicvoice.session.messages import (
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY_LEN,
    MAX_METADATA_VALUE_LEN,
    MAX_TOKEN_LEN,
    Hello,
    decode_message,
)

BASE: dict[str, Any] = {
    "type": "hello",
    "version": 1,
    "codecs": ["L16/16000"],
    "frame_ms": 20,
    "uplink": "reliable",
}

metadata_maps = st.dictionaries(
    st.text(min_size=1, max_size=MAX_METADATA_KEY_LEN),
    st.text(max_size=MAX_METADATA_VALUE_LEN),
    max_size=MAX_METADATA_ENTRIES,
)


@given(
    token=st.none() | st.text(min_size=1, max_size=MAX_TOKEN_LEN),
    metadata=metadata_maps,
)
def test_token_and_metadata_round_trip(token: str | None, metadata: dict[str, str]) -> None:
    hello = Hello(token=token, metadata=metadata)
    assert decode_message(msgpack.packb(hello.to_wire())) == hello


@pytest.mark.parametrize(
    "extra",
    [{"token": ""}, {"token": "x" * (MAX_TOKEN_LEN + 1)}, {"token": b"bytes"}, {"token": 7}],
)
def test_bad_tokens_are_token_malformed(extra: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as raised:
        decode_message(msgpack.packb({**BASE, **extra}))
    assert raised.value.error_code == ErrorCode.TOKEN_MALFORMED
    assert "x" * 16 not in str(raised.value)  # the token is not echoed


@pytest.mark.parametrize(
    "extra",
    [
        {"metadata": ["not", "a", "map"]},
        {"metadata": {"k": 1}},
        {"metadata": {"": "empty key"}},
        {"metadata": {"k" * (MAX_METADATA_KEY_LEN + 1): "v"}},
        {"metadata": {"k": "v" * (MAX_METADATA_VALUE_LEN + 1)}},
        {"metadata": {f"k{i}": "v" for i in range(MAX_METADATA_ENTRIES + 1)}},
    ],
)
def test_bad_credentials_are_message_errors(extra: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as raised:
        decode_message(msgpack.packb({**BASE, **extra}))
    assert raised.value.error_code == ErrorCode.MESSAGE_ERROR


@given(
    st.dictionaries(
        st.text(max_size=80), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=2000), max_size=40
    )
)
def test_arbitrary_metadata_decodes_or_is_a_message_error(metadata: dict[str, Any]) -> None:
    try:
        hello = decode_message(msgpack.packb({**BASE, "metadata": metadata}))
    except ProtocolError as error:
        assert error.error_code == ErrorCode.MESSAGE_ERROR
    else:
        assert isinstance(hello, Hello) and hello.metadata == metadata


def test_local_misuse_raises_value_error() -> None:
    with pytest.raises(ValueError):
        Hello(token="")
    with pytest.raises(ValueError):
        Hello(metadata={"k": "v" * (MAX_METADATA_VALUE_LEN + 1)})


def test_the_token_is_not_in_the_repr() -> None:
    hello = Hello(token="eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.c2ln", metadata={"k": "v"})
    assert "eyJhbGci" not in repr(hello) and "'k'" in repr(hello)
