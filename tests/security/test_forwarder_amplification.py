"""The forwarder is neither a reflector nor an amplifier: a real ``quicvoice-lb`` process, fed
random and crafted datagrams from several loopback sources; for every source that is not a
backend, the octets it receives never exceed the octets it sent (stateless resets are
smaller than their trigger) and nothing goes to an address named in a spoofed header.

The backends are UDP sinks on their configured addresses that count what reaches them: the
only thing a client can cause is its own datagram forwarded, plus the 8-octet header.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicvoice.encapsulation import wrap
from tests.integration.deployment import LB_CONFIG, Deployment

pytestmark = pytest.mark.integration
DOWN = "0a000003"
SOURCES = ("127.0.0.5", "127.0.0.6", "127.0.0.7", "127.0.0.1")
#: Replies are collected this long after each batch.
SETTLE = 0.25


@dataclass
class Lab:
    deployment: Deployment
    sources: list[socket.socket]
    victim: socket.socket
    sinks: dict[str, socket.socket]
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("sent", "received", "resets", "forwarded"), 0
    ))  # fmt: skip


def _udp(host: str, port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    # The backends here are UDP sinks that count octets: no health probes to count.
    deployment = Deployment(
        tmp_path_factory.mktemp("amplification"), down={DOWN}, health_interval=0
    )
    sinks = {sid: _udp(*address) for sid, address in deployment.backends.items()}
    deployment.start_forwarder()
    lab = Lab(deployment, [_udp(host) for host in SOURCES], _udp("127.0.0.9"), sinks)
    try:
        yield lab
    finally:
        deployment.stop()
        for sock in [*lab.sources, lab.victim, *sinks.values()]:
            sock.close()


def _drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out


def exchange(lab: Lab, batch: list[tuple[int, str, bytes]]) -> None:
    """Send (source, "vip" | "backend_listen", datagram) and account for everything that comes
    back, per source; assert the invariants."""
    sent = [0] * len(lab.sources)
    triggers: list[int] = []
    expected_forward = 0
    for index, where, datagram in batch:
        target = lab.deployment.vip if where == "vip" else lab.deployment.backend_listen
        try:
            lab.sources[index].sendto(datagram, target)
        except BlockingIOError:
            continue
        sent[index] += len(datagram)
        if where == "vip":
            triggers.append(len(datagram))
            expected_forward += len(datagram) + 8
    time.sleep(SETTLE)
    for index, sock in enumerate(lab.sources):
        replies = _drain(sock)
        received = sum(map(len, replies))
        assert received <= sent[index], (SOURCES[index], sent[index], received)
        for reply in replies:
            # Only stateless resets come back: short header form, 21 octets at least, and
            # smaller than the largest trigger of the batch.
            assert not reply[0] & 0x80 and reply[0] & 0x40, reply[:4].hex()
            assert 21 <= len(reply) < max(triggers), (len(reply), triggers)
        lab.totals["resets"] += len(replies)
        lab.totals["received"] += received
    lab.totals["sent"] += sum(sent)
    assert _drain(lab.victim) == [], "the forwarder relayed a spoofed encapsulated datagram"
    forwarded = sum(len(d) for sink in lab.sinks.values() for d in _drain(sink))
    assert forwarded <= expected_forward
    lab.totals["forwarded"] += forwarded


def _short(server_id: bytes, tail: bytes, first: int) -> bytes:
    cid = LB_CONFIG.encode(server_id, os.urandom(12))
    return bytes((0x40 | first & 0x3F,)) + cid + tail


def datagrams(lab_victim: tuple[str, int]) -> st.SearchStrategy[tuple[str, bytes]]:
    tails = st.binary(min_size=0, max_size=1400)
    down = bytes.fromhex(DOWN)
    return st.one_of(
        st.tuples(st.just("vip"), st.binary(min_size=1, max_size=1500)),
        st.tuples(st.just("vip"), st.builds(_short, st.just(down), tails, st.integers(0, 255))),
        st.tuples(
            st.just("vip"),
            st.builds(_short, st.binary(min_size=4, max_size=4), tails, st.integers(0, 255)),
        ),  # fmt: skip
        st.tuples(
            st.just("vip"),
            st.builds(
                lambda dcid, body: (
                    b"\xc0\x00\x00\x00\x01" + bytes((len(dcid),)) + dcid + b"\x00" + body
                ),
                st.binary(min_size=0, max_size=20),
                st.binary(min_size=1180, max_size=1400),
            ),
        ),
        st.tuples(
            st.just("backend_listen"),
            st.builds(lambda body: wrap(lab_victim, body), st.binary(min_size=1, max_size=1400)),
        ),
    )


@settings(
    max_examples=int(os.environ.get("QUICVOICE_SECURITY_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_no_source_gets_more_than_it_sent(lab: Lab, data: st.DataObject) -> None:
    victim = lab.victim.getsockname()
    batch = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(SOURCES) - 1), datagrams(victim)), min_size=1, max_size=40
        )
    )
    exchange(lab, [(index, where, datagram) for index, (where, datagram) in batch])


def test_stateless_resets_for_a_down_backend_are_smaller_than_their_trigger(lab: Lab) -> None:
    """Short headers naming the down backend, every size from 21 to 80 and some large ones:
    each gets one reset, smaller than itself (one octet smaller up to 43); 21 gets none."""
    down = bytes.fromhex(DOWN)
    sock = lab.sources[0]
    answered = 0
    for size in [*range(21, 81), 200, 1200, 1500]:
        trigger = _short(down, os.urandom(size - 18), 0x41)
        assert len(trigger) == size
        sock.sendto(trigger, lab.deployment.vip)
        deadline = time.monotonic() + 1.0
        replies: list[bytes] = []
        while not replies and time.monotonic() < deadline and size > 21:
            replies = _drain(sock)
            time.sleep(0.005)
        time.sleep(0.01)
        replies += _drain(sock)
        if size <= 21:
            assert replies == []
            continue
        assert len(replies) == 1, (size, replies)
        assert 21 <= len(replies[0]) < size
        if size <= 43:
            assert len(replies[0]) == size - 1
        answered += 1
    assert answered == 62


def test_encapsulated_datagrams_from_a_backend_host_but_another_port_are_dropped(
    lab: Lab,
) -> None:
    """127.0.0.1 is where the backends live; only their exact (address, port) may send."""
    same_host = lab.sources[SOURCES.index("127.0.0.1")]
    victim = lab.victim.getsockname()
    for _ in range(20):
        same_host.sendto(wrap(victim, os.urandom(300)), lab.deployment.backend_listen)
    time.sleep(SETTLE)
    assert _drain(lab.victim) == []


def test_totals_were_exercised(lab: Lab) -> None:
    """Runs last in this module: the random campaign above did send, and resets came back."""
    print(f"\nforwarder accounting: {lab.totals}")
    assert lab.totals["sent"] > 0 and lab.totals["forwarded"] > 0 and lab.totals["resets"] > 0
