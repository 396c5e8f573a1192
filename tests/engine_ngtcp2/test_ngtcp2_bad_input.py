"""Bad input to the ngtcp2 prototype: garbage datagrams never crash it nor hurt a live call, and a
call that breaks the voice protocol is closed with the protocol's error code, alone.

In memory: aioquic clients and the endpoint exchange datagrams through the test (memory.py).
Skipped, with the reason, where quicvoice._ngtcp2 was not built (no libngtcp2-dev)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicvoice.engine_ngtcp2 import AVAILABLE, UNAVAILABLE
from quicvoice.session.codes import ErrorCode
from quicvoice.session.wire import MediaFrame

pytestmark = pytest.mark.skipif(not AVAILABLE, reason=f"ngtcp2 engine not built: {UNAVAILABLE}")

if AVAILABLE:
    from .memory import MemoryNetwork

CLIENT = ("127.0.0.2", 40000)
ADDRESSES = st.sampled_from([CLIENT, ("127.0.0.3", 40001), ("::1", 40002), ("127.0.0.2", 1)])


def _frame(seq: int) -> MediaFrame:
    return MediaFrame(seq, seq * 320, bytes([seq % 256]) * 640)


def _call() -> tuple[MemoryNetwork, bytes]:
    """A network with one welcomed call that has echoed one frame; the CID it sends to."""
    network = MemoryNetwork()
    client = network.add_client(CLIENT)
    network.run()
    client.send_frame(_frame(0))
    network.run()
    assert client.echoed == [_frame(0)]
    return network, client.quic._peer_cid.cid


def _garbage(cid: bytes) -> st.SearchStrategy[bytes]:
    """Datagrams of every shape: random, and headers aimed at the live connection."""
    tail = st.binary(max_size=1300)
    long_type = st.integers(0, 3).map(lambda t: 0xC0 | (t << 4))
    return st.one_of(
        st.binary(max_size=1500),
        tail.map(lambda rest: b"\x40" + cid + rest),
        st.tuples(long_type, st.sampled_from([1, 0, 0x6B3343CF, 0x1A2A3A4A]), tail).map(
            lambda p: bytes([p[0]]) + struct.pack("!I", p[1]) + bytes([len(cid)]) + cid + p[2]
        ),
        st.tuples(st.binary(min_size=8, max_size=20), st.binary(min_size=1200, max_size=1300)).map(
            lambda p: b"\xc0\x00\x00\x00\x01" + bytes([len(p[0])]) + p[0] + b"\x00" + p[1]
        ),
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_garbage_datagrams_never_crash_the_endpoint_nor_hurt_a_live_call(
    data: st.DataObject,
) -> None:
    network, cid = _call()
    client = network.clients[0]
    garbage = data.draw(st.lists(st.tuples(_garbage(cid), ADDRESSES), max_size=12))
    for datagram, address in garbage:
        network.deliver(network.endpoint.datagram_received(datagram, address, network.ns))
    network.advance(0.05)
    client.send_frame(_frame(1))
    network.run()
    assert client.echoed == [_frame(0), _frame(1)]
    assert client.terminated is None


def test_a_call_that_breaks_the_protocol_is_closed_alone() -> None:
    network, _ = _call()
    good = network.clients[0]
    bad = network.add_client(("127.0.0.9", 40009))
    network.run()
    bad.send_raw(b"\x7f\xff" + bytes(8))  # a frame length of 16383: beyond 8 + 4096
    network.run()
    network.advance(1.0)  # aioquic reports the close once its draining period is over
    assert bad.terminated is not None
    assert bad.terminated.error_code == ErrorCode.FRAME_ERROR
    good.send_frame(_frame(1))
    network.run()
    assert good.echoed == [_frame(0), _frame(1)]
    assert network.endpoint.stats.failed == 1
