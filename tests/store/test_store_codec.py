"""Record envelopes and application state blobs: round trips, and garbage as ``StoreError``."""

from __future__ import annotations

import asyncio

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicvoice.errors import StoreError
from quicvoice.store import MemoryStore, SessionRecord, pack_state, unpack_state
from quicvoice.store.codec import MAX_STATE_DEPTH, decode_record, encode_record

from .conftest import FakeClock

records = st.builds(
    SessionRecord,
    session_id=st.text(
        st.characters(codec="utf-8", categories=("L", "N")), min_size=1, max_size=30
    ),
    version=st.integers(1, 2**63 - 1),
    state=st.binary(max_size=200),
    expires_at=st.integers(0, 2**40).map(lambda ms: ms / 1000),
    owner=st.text(max_size=20).filter(str.isprintable),
    caller=st.binary(max_size=64),
)


@given(record=records)
def test_envelope_round_trip(record: SessionRecord) -> None:
    assert decode_record(encode_record(record), record.session_id) == record


@given(record=records)
def test_envelope_of_another_session_is_refused(record: SessionRecord) -> None:
    with pytest.raises(StoreError, match="another session"):
        decode_record(encode_record(record), record.session_id + "x")


@settings(max_examples=500)
@given(blob=st.one_of(st.binary(max_size=300), st.none(), st.integers(), st.text(max_size=5)))
def test_garbage_envelopes_are_store_errors(blob: object) -> None:
    with pytest.raises(StoreError):
        decode_record(blob, "s")


@pytest.mark.parametrize(
    "fields",
    [[2, "s", 1, 0, "", b""], [1, "s", 0, 0, "", b""], [1, "s", 1.0, 0, "", b""],
     [1, "s", True, 0, "", b""], [1, "s", 1, 0, 5, b""], [1, "s", 1, 0, "", "text"],
     [1, "s", 1, 0, ""], {"a": 1}, [1, "s", 1, 0, "\x00", b""]],
)  # fmt: skip
def test_wrong_fields_are_store_errors(fields: object) -> None:
    with pytest.raises(StoreError):
        decode_record(msgpack.packb(fields, use_bin_type=True), "s")


@given(record=records)
def test_records_without_a_caller_keep_format_1(record: SessionRecord) -> None:
    """Older backends read format 1 only: a record gets format 2 only when it has a caller."""
    fields = msgpack.unpackb(encode_record(record))
    if record.caller:
        assert (fields[0], len(fields), fields[-1]) == (2, 7, record.caller)
    else:
        assert (fields[0], len(fields)) == (1, 6)


@pytest.mark.parametrize(
    "fields",
    [[2, "s", 1, 0, "", b"", b""], [2, "s", 1, 0, "", b"", "text"], [2, "s", 1, 0, "", b"", None],
     [1, "s", 1, 0, "", b"", b"caller"], [2, "s", 1, 0, "", b"", b"c", b"more"],
     [2, "s", 1, 0, "", b"", b"x" * (16 * 1024 + 1)]],
)  # fmt: skip
def test_wrong_caller_fields_are_store_errors(fields: object) -> None:
    with pytest.raises(StoreError):
        decode_record(msgpack.packb(fields, use_bin_type=True), "s")


def test_oversized_envelope_is_refused() -> None:
    with pytest.raises(StoreError):
        decode_record(bytes(300 * 1024), "s")


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=10)
    | st.binary(max_size=10)
)
json_like = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(state=json_like)
def test_state_round_trip(state: object) -> None:
    assert unpack_state(pack_state(state)) == state


def test_state_limits() -> None:
    with pytest.raises(StoreError, match="exceeds"):
        pack_state(bytes(256 * 1024))
    with pytest.raises(StoreError, match="msgpack"):
        pack_state(object())
    deep: object = []
    for _ in range(MAX_STATE_DEPTH + 1):
        deep = [deep]
    with pytest.raises(StoreError, match="deeper"):
        unpack_state(msgpack.packb(deep))
    with pytest.raises(StoreError):
        unpack_state(b"\xc1")
    with pytest.raises(StoreError):
        unpack_state(msgpack.packb({1: 2}))  # map keys must be strings
    with pytest.raises(StoreError):
        unpack_state(msgpack.packb(msgpack.ExtType(1, b"x")))
    with pytest.raises(StoreError):
        unpack_state(b"\x91")  # truncated


def test_memory_store_capacity_and_close(clock: FakeClock) -> None:
    async def main() -> None:
        store = MemoryStore(clock=clock, max_sessions=2, max_tickets=2)
        for sid in ("a", "b"):
            await store.save(SessionRecord.new(sid, b"", expires_at=clock() + 10), 0)
        with pytest.raises(StoreError, match="full"):
            await store.save(SessionRecord.new("c", b"", expires_at=clock() + 10), 0)
        clock.advance(11)  # expired ones make room
        await store.save(SessionRecord.new("c", b"", expires_at=clock() + 10), 0)
        for label in (b"1", b"2", b"3"):
            await store.put_ticket(label, b"t", 5)
        assert await store.take_ticket(b"1") is None  # the oldest went
        await store.aclose()
        with pytest.raises(StoreError, match="closed"):
            await store.load("c")

    asyncio.run(main())
