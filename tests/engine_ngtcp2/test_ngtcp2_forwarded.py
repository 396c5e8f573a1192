"""The ngtcp2 endpoint behind the forwarder, in memory: encapsulated calls, migration through the
forwarder, health probes and the strangers' reset allowance, the home CID, and garbage from the
forwarder's address (Hypothesis).

aioquic clients and the endpoint exchange datagrams through the test (memory.py), which plays
the forwarder: wraps what clients send, unwraps what the endpoint sends to it. Skipped, with the
reason, where quicvoice._ngtcp2 was not built (no libngtcp2-dev)."""

from __future__ import annotations

import os
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicvoice.encapsulation import MAGIC_VERSION, unwrap, wrap
from quicvoice.engine_ngtcp2 import AVAILABLE, UNAVAILABLE
from quicvoice.healthprobe import PROBE_CLIENT, probe_key, probe_trailer
from quicvoice.quiclb import stateless_reset_token
from quicvoice.reset_allowance import RESETS_PER_SECOND
from quicvoice.session.wire import MediaFrame

from .harness import RESET_KEY

pytestmark = pytest.mark.skipif(not AVAILABLE, reason=f"ngtcp2 engine not built: {UNAVAILABLE}")

if AVAILABLE:
    from quicvoice.engine_ngtcp2.endpoint import MAX_FORWARDED_REMOTES

    from .memory import MemoryNetwork

FORWARDER = ("127.0.0.1", 4000)
CLIENT = ("192.0.2.7", 40000)
MOVED = ("198.51.100.9", 50000)


def _frame(seq: int) -> MediaFrame:
    return MediaFrame(seq, seq * 320, bytes([seq % 256]) * 640)


def _forwarded_call() -> tuple[MemoryNetwork, bytes]:
    """A network behind a forwarder with one welcomed call that echoed a frame; its CID."""
    network = MemoryNetwork(forwarder=FORWARDER)
    client = network.add_client(CLIENT)
    network.run()
    client.send_frame(_frame(0))
    network.run()
    assert client.echoed == [_frame(0)]
    return network, client.quic._peer_cid.cid


def _probe(network: MemoryNetwork, wall: float) -> tuple[bytes, bytes]:
    """An authentic probe as the forwarder sends it (encapsulated), and its DCID."""
    cid = network.endpoint.generator.generate()
    packet = b"\x41" + cid + probe_trailer(probe_key(RESET_KEY), cid, wall) + os.urandom(8)
    return wrap(PROBE_CLIENT, packet), cid


def test_a_call_through_the_forwarder_is_answered_through_it_and_a_direct_one_directly() -> None:
    network, _ = _forwarded_call()
    assert network.sent_wrapped > 0 and network.sent_direct == 0
    wrapped = network.sent_wrapped
    direct = network.add_client(("127.0.0.5", 40005), direct=True)
    network.run()
    direct.send_frame(_frame(0))
    network.run()
    assert direct.echoed == [_frame(0)]
    assert network.sent_direct > 0
    # The forwarded call goes on, still through the forwarder.
    forwarded = network.clients[0]
    forwarded.send_frame(_frame(1))
    network.run()
    assert forwarded.echoed == [_frame(0), _frame(1)]
    assert network.sent_wrapped > wrapped


def test_a_new_client_address_behind_the_forwarder_is_a_new_path() -> None:
    network, _ = _forwarded_call()
    client = network.clients[0]
    # The client's NAT rebinds: the forwarder now names another address; ngtcp2 validates it.
    client.address = MOVED
    client.quic.change_connection_id()
    for seq in range(1, 6):
        client.send_frame(_frame(seq))
        network.run()
    assert client.echoed == [_frame(seq) for seq in range(6)]
    assert client.terminated is None
    # Everything to the new address went through the forwarder too.
    assert network.sent_direct == 0


def test_probes_are_answered_from_their_own_allowance_and_strangers_are_limited() -> None:
    network, _ = _forwarded_call()
    endpoint = network.endpoint
    # Strangers' short headers for CIDs of this backend that no connection holds, all at once:
    # only RESETS_PER_SECOND of them are answered.
    answered = 0
    for _ in range(RESETS_PER_SECOND + 20):
        cid = endpoint.generator.generate()
        answered += len(network.send(b"\x41" + cid + os.urandom(40), ("203.0.113.1", 1234)))
    assert answered == RESETS_PER_SECOND
    assert endpoint.stats.resets_limited == 20
    # The forwarder's probes still are, each with a reset the forwarder can check, to it.
    wall = time.time()
    for _ in range(5):
        probe, cid = _probe(network, wall)
        out = endpoint.datagram_received(probe, FORWARDER, network.ns, wall)
        assert len(out) == 1 and out[0][1] == FORWARDER
        to, reset = unwrap(out[0][0])
        assert to == PROBE_CLIENT
        assert 21 <= len(reset) < len(probe) - 8
        assert reset[-16:] == stateless_reset_token(RESET_KEY, cid)
    assert endpoint.stats.probes_answered == 5
    # A replayed probe, or one from anywhere but the forwarder, is a stranger (no allowance left).
    assert endpoint.datagram_received(probe, FORWARDER, network.ns, wall) == []
    assert endpoint.datagram_received(unwrap(probe)[1], PROBE_CLIENT, network.ns, wall) == []
    # A probe with a stale timestamp is not a probe either.
    stale, _ = _probe(network, wall - 60)
    assert endpoint.datagram_received(stale, FORWARDER, network.ns, wall) == []
    assert endpoint.stats.probes_answered == 5
    # The call was not disturbed.
    client = network.clients[0]
    client.send_frame(_frame(1))
    network.run()
    assert client.echoed == [_frame(0), _frame(1)]


def test_attempts_to_a_home_cid_are_accepted_and_told_apart_by_their_source_cid() -> None:
    network = MemoryNetwork(forwarder=FORWARDER)
    home = network.endpoint.generator.generate()  # as a welcome's home_cid is drawn
    first = network.add_client(CLIENT, dcid=home)
    second = network.add_client(MOVED, dcid=home)
    network.run()
    for seq, client in enumerate((first, second)):
        client.send_frame(_frame(seq))
        network.run()
        assert client.echoed == [_frame(seq)]
    assert network.endpoint.stats.accepted == 2
    assert network.endpoint.connections == 2


def _garbage(cid: bytes) -> st.SearchStrategy[bytes]:
    """What the forwarder's address might send: bad headers, and good headers carrying
    garbage aimed at the live connection."""
    tail = st.binary(max_size=1300)
    inner = st.one_of(
        st.binary(max_size=1400),
        tail.map(lambda rest: b"\x40" + cid + rest),
        st.tuples(st.integers(0, 3), tail).map(
            lambda p: bytes([0xC0 | p[0] << 4]) + struct.pack("!IB", 1, len(cid)) + cid + p[1]
        ),
    )
    addresses = st.sampled_from([CLIENT, MOVED, ("::1", 40002), PROBE_CLIENT, ("10.0.0.1", 1)])
    header = st.one_of(
        st.binary(max_size=24),  # anything at all
        st.tuples(st.integers(0, 255), st.integers(0, 255), st.binary(min_size=2, max_size=18)).map(
            lambda p: bytes([p[0], p[1]]) + p[2]
        ),
        st.just(bytes([MAGIC_VERSION, 4, 0, 0, 127, 0, 0, 1])),  # port 0
        st.just(bytes([MAGIC_VERSION, 6, 0, 80]) + bytes(10)),  # IPv6, truncated
    )
    return st.one_of(
        st.tuples(header, inner).map(lambda p: p[0] + p[1]),
        st.tuples(addresses, inner).map(lambda p: wrap(p[0], p[1])),
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_garbage_from_the_forwarder_never_crashes_the_endpoint_nor_hurts_a_live_call(
    data: st.DataObject,
) -> None:
    network, cid = _forwarded_call()
    client = network.clients[0]
    garbage = data.draw(st.lists(_garbage(cid), max_size=12))
    endpoint = network.endpoint
    for datagram in garbage:
        out = endpoint.datagram_received(datagram, FORWARDER, network.ns, time.time())
        # Whatever answers garbage from the forwarder goes back to it, wrapped.
        assert all(address == FORWARDER for _, address in out)
        network.deliver(out)
    network.advance(0.05)
    client.send_frame(_frame(1))
    network.run()
    assert client.echoed == [_frame(0), _frame(1)]
    assert client.terminated is None


def test_an_ipv6_forwarder_is_recognised_by_its_socket_s_four_tuple() -> None:
    """An IPv6 socket reports (host, port, flowinfo, scope_id): still the forwarder."""
    network = MemoryNetwork(forwarder=("::1", 4000))
    endpoint = network.endpoint
    probe, _ = _probe(network, time.time())
    out = endpoint.datagram_received(probe, ("::1", 4000, 0, 0), network.ns, time.time())  # type: ignore[arg-type]
    assert len(out) == 1 and unwrap(out[0][0])[0] == PROBE_CLIENT
    assert endpoint.stats.probes_answered == 1


def test_forged_client_addresses_behind_the_forwarder_are_bounded_per_connection() -> None:
    """Packets with the live CID naming 200 addresses (anyone can send them to the VIP): the
    connection remembers at most ``MAX_FORWARDED_REMOTES`` and the call goes on wrapped."""
    network, cid = _forwarded_call()
    endpoint = network.endpoint
    for index in range(200):
        forged = wrap((f"203.0.113.{index % 250 + 1}", 1000 + index), b"\x40" + cid + bytes(40))
        network.deliver(endpoint.datagram_received(forged, FORWARDER, network.ns, time.time()))
    (conn,) = endpoint._conns.values()
    assert len(conn.forwarded) <= MAX_FORWARDED_REMOTES
    client = network.clients[0]
    direct = network.sent_direct
    client.send_frame(_frame(1))
    network.run()
    assert client.echoed == [_frame(0), _frame(1)]
    assert network.sent_direct == direct
