"""Backend health: the table's rules (probe timeout, ICMP suspicion confirmed by a probe) and
the backend socket's error queue on real loopback sockets (lb/health.py, lb/errqueue.py)."""

from __future__ import annotations

import select
import socket
import time

from hypothesis import given
from hypothesis import strategies as st

from lb import errqueue
from lb.health import HealthTable

HOST = "127.0.0.1"
#: Bound on waits for the kernel's ICMP error, seconds (it is queued at once on loopback).
ICMP_WAIT = 2.0


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_error(sock: socket.socket) -> None:
    """Wait (bounded) until the socket reports an error (POLLERR: the error queue)."""
    poller = select.poll()
    poller.register(sock.fileno(), 0)  # POLLERR is reported whatever is asked
    assert poller.poll(ICMP_WAIT * 1000), "no ICMP error came back"


def test_a_suspect_that_answers_its_probe_stays_up() -> None:
    table = HealthTable(4, timeout=10.0, confirm=0.05)
    assert table.suspect(1)
    assert not table.suspect(1)  # one suspicion (and one probe) at a time
    table.heard(1)  # the probe sent with the suspicion was answered
    time.sleep(0.06)
    assert table.dead(4) == frozenset()
    assert table.suspect(1)  # a new ICMP error opens a new suspicion


def test_a_suspect_that_answers_nothing_is_down_after_confirm_then_back_on_an_answer() -> None:
    table = HealthTable(4, timeout=10.0, confirm=0.05)
    assert table.suspect(2)
    assert table.dead(4) == frozenset()  # not before ``confirm``
    deadline = time.monotonic() + 1.0
    while not table.dead(4) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert table.dead(4) == frozenset({2})
    table.heard(2)
    assert table.dead(4) == frozenset()


def test_out_of_range_indexes_are_ignored() -> None:
    table = HealthTable(2, timeout=10.0)
    assert not table.suspect(5)
    assert not table.suspect(-1)
    table.heard(7)
    assert table.dead(2) == frozenset()


def test_the_error_queue_names_the_closed_port_a_datagram_went_to() -> None:
    port = closed_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        assert errqueue.enable(sock)
        sock.bind((HOST, 0))
        sock.sendto(b"x" * 40, (HOST, port))
        wait_for_error(sock)
        found: list[tuple[str, int]] = []
        assert errqueue.drain(sock, found.append) >= 1
        assert found == [(HOST, port)]
        assert errqueue.drain(sock, found.append) == 0  # drained
        # The kernel also set the socket's pending error: one receive reports it, once.
        sock.setblocking(False)
        try:
            sock.recvfrom(100)
        except OSError as error:
            assert error.errno in errqueue.ICMP_ERRNOS or isinstance(error, BlockingIOError)


def test_without_ip_recverr_nothing_is_queued() -> None:
    port = closed_port()
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as marker,
    ):
        sock.bind((HOST, 0))
        assert errqueue.enable(marker)
        marker.bind((HOST, 0))
        sock.sendto(b"x" * 40, (HOST, port))
        marker.sendto(b"x" * 40, (HOST, port))  # its error arrives after sock's would have
        wait_for_error(marker)
        found: list[tuple[str, int]] = []
        assert errqueue.drain(sock, found.append) == 0
        assert found == []


control_messages = st.lists(
    st.tuples(
        st.sampled_from([socket.IPPROTO_IP, socket.IPPROTO_IPV6, 1]),
        st.sampled_from([errqueue.IP_RECVERR, errqueue.IPV6_RECVERR, 0]),
        st.binary(max_size=40),
    ),
    max_size=4,
)


@given(control_messages)
def test_any_control_message_is_read_without_error(ancillary: list[tuple[int, int, bytes]]) -> None:
    assert errqueue.port_unreachable(ancillary) in (True, False)


def test_only_port_unreachable_counts() -> None:
    def entry(origin: int, kind: int, code: int) -> list[tuple[int, int, bytes]]:
        data = errqueue.EXTENDED_ERROR.pack(111, origin, kind, code, 0, 0, 0) + bytes(16)
        return [(socket.IPPROTO_IP, errqueue.IP_RECVERR, data)]

    assert errqueue.port_unreachable(entry(errqueue.SO_EE_ORIGIN_ICMP, 3, 3))
    assert not errqueue.port_unreachable(entry(errqueue.SO_EE_ORIGIN_ICMP, 3, 1))  # host
    assert not errqueue.port_unreachable(entry(1, 3, 3))  # a local error, no ICMP
    assert errqueue.port_unreachable(entry(errqueue.SO_EE_ORIGIN_ICMP6, 1, 4))
