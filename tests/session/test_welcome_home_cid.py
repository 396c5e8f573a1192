"""``welcome``'s ``home_cid``: 8..20 octets or absent; anything else from a peer is a
``MESSAGE_ERROR``, never a crash."""

from __future__ import annotations

from dataclasses import replace

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicvoice.errors import ProtocolError
from quicvoice.session.codes import ErrorCode
from quicvoice.session.messages import (
    MAX_HOME_CID,
    MIN_HOME_CID,
    UplinkMode,
    Welcome,
    decode_message,
)

BASE = Welcome(
    session_id="s1",
    codec="L16/16000",
    frame_ms=20,
    uplink=UplinkMode.RELIABLE,
    server_id="0a000001",
    resume_token=b"t",
)


@given(st.binary(min_size=MIN_HOME_CID, max_size=MAX_HOME_CID))
def test_a_home_cid_goes_through(cid: bytes) -> None:
    welcome = replace(BASE, home_cid=cid)
    assert decode_message(msgpack.packb(welcome.to_wire(), use_bin_type=True)) == welcome


def test_without_a_home_cid_nothing_is_sent() -> None:
    assert "home_cid" not in BASE.to_wire()


@given(
    st.one_of(
        st.binary(max_size=64),
        st.text(max_size=30),
        st.integers(-(2**63), 2**64 - 1),
        st.booleans(),
        st.lists(st.integers(0, 255), max_size=20),
    )
)
def test_any_home_cid_from_a_peer_is_taken_or_refused_cleanly(value: object) -> None:
    body = {**BASE.to_wire(), "home_cid": value}
    try:
        decoded = decode_message(msgpack.packb(body, use_bin_type=True))
    except ProtocolError as error:
        assert error.error_code == ErrorCode.MESSAGE_ERROR
        assert not (isinstance(value, bytes) and MIN_HOME_CID <= len(value) <= MAX_HOME_CID)
        return
    assert isinstance(decoded, Welcome) and decoded.home_cid == value


@pytest.mark.parametrize("size", [0, MIN_HOME_CID - 1, MAX_HOME_CID + 1])
def test_a_welcome_with_a_bad_home_cid_cannot_be_made(size: int) -> None:
    with pytest.raises(ValueError, match="home_cid"):
        replace(BASE, home_cid=bytes(size))
