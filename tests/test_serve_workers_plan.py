"""Worker plans of ``quicvoice serve --workers`` and the event-loop choice: pure functions,
with arbitrary input refused by a ``ConfigurationError`` that names the setting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicvoice.asyncio.loops import LOOP_PACKAGES, check_loop
from quicvoice.asyncio.workers import (
    MAX_WORKERS,
    check_worker_count,
    worker_address,
    worker_server_id,
)
from quicvoice.errors import ConfigurationError


def test_worker_server_ids_count_up_from_the_base() -> None:
    assert worker_server_id(bytes.fromhex("0a000001"), 0) == bytes.fromhex("0a000001")
    assert worker_server_id(bytes.fromhex("0a0000ff"), 1) == bytes.fromhex("0a000100")
    with pytest.raises(ConfigurationError, match="does not fit in 2 octets"):
        worker_server_id(b"\xff\xff", 1)


@given(base=st.binary(min_size=1, max_size=15), index=st.integers(0, MAX_WORKERS - 1))
def test_worker_server_ids_are_distinct_or_refused(base: bytes, index: int) -> None:
    try:
        sid = worker_server_id(base, index)
    except ConfigurationError as error:
        assert "server_id" in str(error)
        return
    assert len(sid) == len(base)
    assert int.from_bytes(sid, "big") - int.from_bytes(base, "big") == index


@given(port=st.integers(0, 0xFFFF), index=st.integers(0, MAX_WORKERS - 1))
def test_worker_ports_count_up_or_are_refused(port: int, index: int) -> None:
    try:
        host, worker_port = worker_address(("127.0.0.1", port), index)
    except ConfigurationError as error:
        assert str(error).startswith("listen: port")
        return
    assert host == "127.0.0.1"
    assert worker_port == (0 if port == 0 else port + index)


@given(count=st.one_of(st.integers(), st.booleans(), st.text(max_size=5), st.none()))
def test_worker_counts_outside_the_range_are_refused(count: object) -> None:
    if isinstance(count, int) and not isinstance(count, bool) and 1 <= count <= MAX_WORKERS:
        assert check_worker_count(count) == count
    else:
        with pytest.raises(ConfigurationError, match="--workers"):
            check_worker_count(count)


@given(name=st.one_of(st.text(max_size=20), st.integers(), st.none()))
def test_a_loop_name_is_one_of_the_known_ones_or_refused(name: object) -> None:
    if name in LOOP_PACKAGES:
        assert check_loop(name) == name
    else:
        with pytest.raises(ConfigurationError, match="^--loop: .* is not one of asyncio, uvloop"):
            check_loop(name, "--loop")
