"""The verified caller: read-only claims, and the stored form kept with a session record."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicvoice.auth import Caller, decode_caller, encode_caller
from quicvoice.auth.caller import MAX_CALLER_LEN, thaw

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
callers = st.builds(
    Caller,
    subject=st.text(min_size=1, max_size=256),
    issuer=st.none() | st.text(min_size=1, max_size=512),
    key_id=st.none() | st.text(min_size=1, max_size=128).filter(str.isprintable),
    claims=st.dictionaries(st.text(max_size=10), json_values, max_size=6),
)


@given(callers)
def test_stored_form_round_trips(caller: Caller) -> None:
    blob = encode_caller(caller)
    assert len(blob) <= MAX_CALLER_LEN
    assert decode_caller(blob) == caller


@settings(max_examples=300)
@given(st.binary(max_size=200) | st.text(max_size=100).map(str.encode))
def test_garbage_stored_forms_are_value_errors(blob: bytes) -> None:
    try:
        caller = decode_caller(blob)
    except ValueError:
        return
    assert isinstance(caller, Caller)


@pytest.mark.parametrize(
    "blob",
    [b"[]", b'{"v":2}', b'{"v":1,"sub":"a"}', b'{"v":1,"sub":5,"claims":{}}',
     b'{"v":1,"sub":"","claims":{}}', b'{"v":1,"sub":"a","kid":7,"claims":{}}',
     b"x" * (MAX_CALLER_LEN + 1)],
)  # fmt: skip
def test_broken_stored_forms_are_value_errors(blob: bytes) -> None:
    with pytest.raises(ValueError):
        decode_caller(blob)


def test_claims_are_read_only_all_the_way_down() -> None:
    source: dict[str, Any] = {"roles": ["agent"], "org": {"id": 7, "tags": ["a"]}}
    caller = Caller(subject="alice", issuer=None, claims=source)
    source["roles"].append("admin")  # the caller holds its own copy
    assert caller.claims["roles"] == ("agent",)
    with pytest.raises(TypeError):
        caller.claims["org"]["id"] = 8
    assert thaw(caller.claims) == {"roles": ["agent"], "org": {"id": 7, "tags": ["a"]}}
    assert hash(caller) == hash(Caller(subject="alice", issuer=None, claims={"x": 1}))
