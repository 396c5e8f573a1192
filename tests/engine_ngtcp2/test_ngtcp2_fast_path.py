"""The ngtcp2 endpoint's fast path (``receive_batch``): short-header datagrams of established
calls are handed to their connections in C (``_ngtcp2.dispatch``), each connection is flushed
once per batch, and everything else takes the general path in order.

In memory: aioquic clients and the endpoint exchange datagrams through the test (memory.py),
which hands the endpoint each round's datagrams as one batch, as the server's socket loop does.
Skipped, with the reason, where quicvoice._ngtcp2 was not built (no libngtcp2-dev)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicvoice.encapsulation import wrap
from quicvoice.engine_ngtcp2 import AVAILABLE, UNAVAILABLE
from quicvoice.session.codes import ErrorCode
from quicvoice.session.wire import MediaFrame

pytestmark = pytest.mark.skipif(not AVAILABLE, reason=f"ngtcp2 engine not built: {UNAVAILABLE}")

if AVAILABLE:
    from .memory import Client, MemoryNetwork

FORWARDER = ("127.0.0.1", 4000)


def _frame(seq: int) -> MediaFrame:
    return MediaFrame(seq, seq * 320, bytes([seq % 256]) * 640)


def _welcomed(network: MemoryNetwork, count: int) -> list[Client]:
    """``count`` calls from 127.0.0.2.. that each echoed frame 0."""
    clients = [network.add_client((f"127.0.0.{2 + i}", 40000 + i)) for i in range(count)]
    network.run()
    for client in clients:
        client.send_frame(_frame(0))
    network.run()
    assert all(client.echoed == [_frame(0)] for client in clients)
    return clients


def _datagrams(client: Client, network: MemoryNetwork) -> list[tuple[bytes, tuple[str, int]]]:
    return [(data, client.address) for data, _ in client.quic.datagrams_to_send(network.now)]


def test_established_calls_are_served_in_c_and_every_frame_comes_back_in_order() -> None:
    network = MemoryNetwork()
    clients = _welcomed(network, 3)
    before = network.endpoint.stats.dispatched
    for seq in range(1, 11):
        for client in clients:
            client.send_frame(_frame(seq))
        network.run()
    for client in clients:
        assert client.echoed == [_frame(seq) for seq in range(11)]
        assert client.terminated is None
    # Every frame datagram of every call went through the fast path.
    assert network.endpoint.stats.dispatched - before >= 30


def test_datagrams_of_one_call_in_one_batch_are_answered_by_one_flush() -> None:
    network = MemoryNetwork()
    (client,) = _welcomed(network, 1)
    batch = []
    for seq in (1, 2):
        client.send_frame(_frame(seq))
        batch += _datagrams(client, network)  # one packet per frame
    assert len(batch) == 2
    out = network.send_batch(batch)
    # One packet carries both echoes and the ACK of both frames.
    assert len(out) == 1
    network.deliver(out)
    network.run()
    assert client.echoed == [_frame(0), _frame(1), _frame(2)]


def test_calls_through_the_forwarder_take_the_fast_path_and_are_answered_through_it() -> None:
    network = MemoryNetwork(forwarder=FORWARDER)
    forwarded = network.add_client(("192.0.2.7", 40000))
    direct = network.add_client(("127.0.0.5", 40005), direct=True)
    network.run()
    for client in (forwarded, direct):
        client.send_frame(_frame(0))
    network.run()
    wrapped, sent_direct = network.sent_wrapped, network.sent_direct
    before = network.endpoint.stats.dispatched
    for seq in range(1, 6):
        forwarded.send_frame(_frame(seq))
        direct.send_frame(_frame(seq))
        network.run()
    assert forwarded.echoed == direct.echoed == [_frame(seq) for seq in range(6)]
    # Both calls' frames were read in C; each call was answered the way it was heard.
    assert network.endpoint.stats.dispatched - before >= 10
    assert network.sent_wrapped - wrapped >= 5 and network.sent_direct - sent_direct >= 5
    # A forwarded call that once sends directly is still answered through the forwarder at
    # the address it was heard at through it.
    wrapped = network.sent_wrapped
    forwarded.direct = True
    forwarded.send_frame(_frame(6))
    network.run()
    assert forwarded.echoed[-1] == _frame(6)
    assert network.sent_wrapped > wrapped


def test_an_encapsulation_the_fast_path_cannot_read_takes_the_general_path() -> None:
    network = MemoryNetwork(forwarder=FORWARDER)
    client = network.add_client(("192.0.2.7", 40000))
    network.run()
    client.send_frame(_frame(0))
    network.run()
    client.send_frame(_frame(1))
    (datagram,) = [data for data, _ in client.quic.datagrams_to_send(network.now)]
    bad = network.endpoint.stats.bad_encapsulation
    broken = [
        b"\x72" + wrap(client.address, datagram)[1:],  # another version
        wrap(client.address, datagram)[:1] + b"\x05" + wrap(client.address, datagram)[2:],
        wrap(client.address, datagram)[:2] + b"\x00\x00" + wrap(client.address, datagram)[4:],
        wrap(client.address, datagram)[:7],  # truncated
    ]
    out = network.send_batch([(data, FORWARDER) for data in broken])
    assert out == []
    assert network.endpoint.stats.bad_encapsulation == bad + len(broken)
    # The call goes on.
    network.deliver(network.send_batch([(wrap(client.address, datagram), FORWARDER)]))
    network.run()
    assert client.echoed == [_frame(0), _frame(1)]


def test_a_call_that_breaks_the_protocol_mid_batch_is_closed_alone() -> None:
    network = MemoryNetwork()
    good, bad = _welcomed(network, 2)
    bad.send_raw(b"\x7f\xff" + bytes(8))  # a frame length of 16383: beyond 8 + 4096
    batch = _datagrams(bad, network)
    good.send_frame(_frame(1))
    batch += _datagrams(good, network)
    bad.send_frame(_frame(1))  # after the bad frame, in the same batch
    batch += _datagrams(bad, network)
    network.deliver(network.send_batch(batch))
    network.run()
    network.advance(1.0)  # aioquic reports the close once its draining period is over
    assert bad.terminated is not None
    assert bad.terminated.error_code == ErrorCode.FRAME_ERROR
    assert good.echoed == [_frame(0), _frame(1)]
    assert network.endpoint.stats.failed == 1


def _garbage(cid: bytes) -> st.SearchStrategy[bytes]:
    tail = st.binary(max_size=1300)
    return st.one_of(
        st.binary(max_size=1500),
        tail.map(lambda rest: b"\x40" + cid + rest),
        tail.map(lambda rest: b"\x40" + cid[:-1] + rest),
        st.tuples(st.integers(0, 3), tail).map(
            lambda p: (
                bytes([0xC0 | p[0] << 4]) + struct.pack("!I", 1) + bytes([len(cid)]) + cid + p[1]
            )
        ),
    )


ADDRESSES = st.sampled_from([("127.0.0.2", 40000), ("127.0.0.9", 40009), ("::1", 40002), FORWARDER])


CLIENTS = st.sampled_from([("127.0.0.2", 40000), ("192.0.2.9", 1), ("::1", 40002)])


def _garbage_from_the_forwarder(cid: bytes) -> st.SearchStrategy[tuple[bytes, tuple[str, int]]]:
    """What the forwarder's address may send: garbage, or garbage wrapped for any client."""
    return st.one_of(
        st.binary(max_size=1500),
        st.tuples(CLIENTS, _garbage(cid)).map(lambda p: wrap(p[0], p[1])),
    ).map(lambda data: (data, FORWARDER))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), behind_forwarder=st.booleans())
def test_garbage_in_the_same_batch_as_live_calls_never_crashes_nor_hurts_them(
    data: st.DataObject, behind_forwarder: bool
) -> None:
    network = MemoryNetwork(forwarder=FORWARDER if behind_forwarder else None)
    clients = _welcomed(network, 2)
    cid = clients[0].quic._peer_cid.cid
    garbage = data.draw(
        st.lists(
            st.one_of(st.tuples(_garbage(cid), ADDRESSES), _garbage_from_the_forwarder(cid)),
            max_size=12,
        )
    )
    live = []
    for client in clients:
        client.send_frame(_frame(1))
        live += [
            network.on_the_wire(datagram, client.address)
            for datagram, _ in client.quic.datagrams_to_send(network.now)
        ]
    batch = list(garbage)
    for item in live:
        batch.insert(data.draw(st.integers(0, len(batch))), item)
    network.deliver(network.send_batch(batch))
    network.run()
    network.advance(0.05)
    for client in clients:
        client.send_frame(_frame(2))
    network.run()
    for client in clients:
        assert client.echoed == [_frame(0), _frame(1), _frame(2)]
        assert client.terminated is None
