"""Backend health: the table's rules (probe timeout, ICMP suspicion confirmed by a probe) and
the backend socket's error queue on real loopback sockets (lb/health.py, lb/errqueue.py)."""

from __future__ import annotations

import select
import socket
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_lb_forwarder_integration import IO_MODES, Client, FakeBackend, Forwarder, packet

from lb import errqueue
from lb.config import Backend, load_config
from lb.health import PROBE_CLIENT, HealthTable
from quicvoice.errors import ConfigurationError

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


def wait_for_a_probe(backend: FakeBackend) -> None:
    """Wait (bounded) until ``backend`` has answered a health probe."""
    deadline = time.monotonic() + 3.0
    while PROBE_CLIENT not in backend.clients:
        assert time.monotonic() < deadline, "no probe reached the backend"
        time.sleep(0.01)


def test_a_suspect_that_answers_its_probe_stays_up() -> None:
    table = HealthTable(4, timeout=10.0, confirm_timeout=0.05)
    table.heard(1)
    assert table.suspect(1)
    assert not table.suspect(1)  # one suspicion (and one probe) at a time
    table.heard(1)  # the probe sent with the suspicion was answered
    time.sleep(0.06)
    assert table.dead(4) == frozenset()
    assert table.suspect(1)  # a new ICMP error opens a new suspicion


def test_a_suspect_that_answers_nothing_is_down_after_the_timeout_then_back_on_an_answer() -> None:
    table = HealthTable(4, timeout=10.0, confirm_timeout=0.05)
    table.heard(2)
    assert table.suspect(2)
    assert table.dead(4) == frozenset()  # not before ``confirm_timeout``
    deadline = time.monotonic() + 1.0
    while not table.dead(4) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert table.dead(4) == frozenset({2})
    table.heard(2)
    assert table.dead(4) == frozenset()


def test_a_refused_probe_confirms_at_once_until_the_next_answer() -> None:
    table = HealthTable(4, timeout=10.0, confirm_timeout=5.0)
    table.heard(3)
    assert table.suspect(3)
    assert table.dead(4) == frozenset()
    table.confirm(3)
    assert table.dead(4) == frozenset({3})
    table.heard(3)  # it came back
    assert table.dead(4) == frozenset()
    table.confirm(3)  # a refused probe alone (a regular probe's ICMP) is enough too
    assert table.dead(4) == frozenset({3})


def test_icmp_is_not_believed_of_a_backend_unheard_since_the_table_was_set() -> None:
    """At start-up and after a reload a backend's port may not be bound yet: the timeout
    decides, not an ICMP error for a datagram that came too early."""
    table = HealthTable(4, timeout=10.0, confirm_timeout=0.01)
    assert not table.suspect(0)
    table.confirm(0)
    time.sleep(0.02)
    assert table.dead(4) == frozenset()
    table.heard(0)
    table.reset(4)
    assert not table.suspect(0)
    table.confirm(0)
    assert table.dead(4) == frozenset()


def test_a_reload_keeps_what_is_known_of_the_backends_it_keeps() -> None:
    """A backend found dead stays dead across a reload (even when it moves in the list); a
    new one gets a grace period; a replaced address is a new backend."""
    a, b, c = (Backend(bytes.fromhex(f"0a00000{n}"), ("127.0.0.1", 4500 + n)) for n in (1, 2, 3))
    table = HealthTable(4, timeout=10.0, confirm_timeout=5.0)
    table.heard(0)
    table.heard(1)
    table.confirm(0)  # a is dead
    assert table.dead(2) == frozenset({0})
    moved_b = Backend(b.server_id, ("127.0.0.1", 4999))
    table.carry_over([a, b], [c, moved_b, a])
    assert table.dead(3) == frozenset({2})  # a, now third
    assert not table.suspect(1)  # the moved b is new: not heard since it joined
    table.heard(2)
    assert table.dead(3) == frozenset()


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
        found: list[tuple[tuple[str, int], bytes]] = []
        assert errqueue.drain(sock, lambda *entry: found.append(entry)) >= 1
        assert found == [((HOST, port), b"x" * 40)]  # the datagram comes back quoted
        assert errqueue.drain(sock, lambda *entry: found.append(entry)) == 0  # drained
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
        found: list[tuple[tuple[str, int], bytes]] = []
        assert errqueue.drain(sock, lambda *entry: found.append(entry)) == 0
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


def test_health_icmp_must_be_a_boolean(tmp_path: Path) -> None:
    text = (
        'listen = "127.0.0.1:4433"\nbackend_listen = "127.0.0.1:4434"\nhealth_icmp = "yes"\n'
        "[[configs]]\nid = 0\nserver_id_len = 4\nnonce_len = 12\n"
        'key = "8f95f09245765f80256934e50c66207f"\n'
        '[[backends]]\nserver_id = "0a000001"\naddress = "127.0.0.1:4501"\n'
    )
    path = tmp_path / "lb.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match="health_icmp: must be true or false"):
        load_config(path)
    path.write_text(text.replace('"yes"', "false"))
    assert load_config(path).health_icmp is False
    path.write_text(text.replace('health_icmp = "yes"\n', ""))
    assert load_config(path).health_icmp is True


@pytest.mark.integration
@pytest.mark.parametrize("mode", list(IO_MODES))
def test_a_closed_backend_port_is_down_long_before_the_probe_timeout(
    tmp_path: Path, mode: str
) -> None:
    """On every I/O path: the ICMP error of the next datagram, not the 5 s probe timeout."""
    fakes = [FakeBackend(f"0a00000{n}") for n in (1, 2)]
    forwarder = Forwarder(tmp_path, fakes, extra_args=IO_MODES[mode])
    forwarder.write(fakes, health_interval=0.5)
    forwarder.path.write_text(
        forwarder.path.read_text().replace("health_timeout = 0.5", "health_timeout = 5.0")
    )
    forwarder.start()
    client = Client()
    try:
        wait_for_a_probe(fakes[1])
        # Answered after the probe's answer, on the same socket: the pump has recorded that.
        reply, _ = client.ask(forwarder.listen, fakes[1].cid(), b"x" * 60)
        assert reply.startswith(b"0a000002|")
        fakes[1].close()  # the process is gone, the host is not: its kernel sends ICMP
        closed_at = time.monotonic()
        client.sock.settimeout(0.05)
        while time.monotonic() - closed_at < 3.0:
            client.sock.sendto(packet(fakes[1].cid(), b"x" * 60), forwarder.listen)
            try:
                reply, source = client.sock.recvfrom(65536)
            except TimeoutError:
                continue
            if not reply.startswith(b"0a0000"):
                break
        else:
            pytest.fail("the closed backend was not found down within 3 s")
        found = time.monotonic() - closed_at
        assert found < 1.0, found
        assert source == forwarder.listen and reply[0] & 0xC0 == 0x40  # a stateless reset
        client.sock.settimeout(2.0)
        reply, _ = client.ask(forwarder.listen, fakes[0].cid())
        assert reply.startswith(b"0a000001|")  # the live backend is untouched
        assert "backend_unreachable" in forwarder.log.read_text()
    finally:
        client.close()
        forwarder.stop()
        fakes[0].close()


def test_the_next_confirmation_is_that_of_the_earliest_open_suspicion() -> None:
    table = HealthTable(4, timeout=10.0, confirm_timeout=0.5)
    assert table.next_confirmation(4) is None
    table.heard(3)
    table.heard(1)
    before = time.monotonic()
    table.suspect(3)
    table.suspect(1)
    due = table.next_confirmation(4)
    assert due is not None and before + 0.5 <= due <= time.monotonic() + 0.5
    table.heard(3)
    table.heard(1)
    assert table.next_confirmation(4) is None
