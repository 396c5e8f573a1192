"""``quicvoice._udpbatch`` on real loopback sockets: many datagrams per recvmmsg/sendmmsg, in
order, with their peers' addresses; oversized datagrams and refused sends are counted, not
raised; bad arguments are a TypeError or ValueError.

Skipped, with the reason, where the ngtcp2 engine (built with this extension) is not."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from quicvoice.engine_ngtcp2 import AVAILABLE, UNAVAILABLE

pytestmark = pytest.mark.skipif(not AVAILABLE, reason=f"ngtcp2 engine not built: {UNAVAILABLE}")

if AVAILABLE:
    from quicvoice import _udpbatch


def _socket(family: int = socket.AF_INET, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind((host, 0))
    return sock


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    receiver, sender = _socket(), _socket()
    yield receiver, sender
    receiver.close()
    sender.close()


def _wait_readable(sock: socket.socket) -> None:
    import select

    readable, _, _ = select.select([sock], [], [], 2.0)
    assert readable, "nothing arrived within 2 s"


def test_nothing_waiting_is_an_empty_list(pair: tuple[socket.socket, socket.socket]) -> None:
    receiver, _ = pair
    assert _udpbatch.receive(receiver.fileno(), 64) == []


def test_a_hundred_datagrams_come_in_order_in_batches_of_at_most_the_limit(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    receiver, sender = pair
    to = receiver.getsockname()
    datagrams = [(index.to_bytes(2, "big") * 50, to) for index in range(100)]
    assert _udpbatch.send(sender.fileno(), socket.AF_INET, datagrams) == (100, 0)
    _wait_readable(receiver)
    got: list[tuple[bytes, tuple[str, int]]] = []
    for _ in range(10):  # bounded
        batch = _udpbatch.receive(receiver.fileno(), 64)
        assert len(batch) <= 64
        got += batch
        if len(got) == 100:
            break
    assert [data for data, _ in got] == [data for data, _ in datagrams]
    peer = sender.getsockname()
    assert all(remote == peer for _, remote in got)
    # One peer, one tuple object: the engine compares a connection's remote by identity first.
    assert len({id(remote) for _, remote in got}) == 1


def test_a_datagram_larger_than_any_quic_packet_is_dropped_not_truncated(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    receiver, sender = pair
    to = receiver.getsockname()
    sender.sendto(b"x" * 3000, to)
    sender.sendto(b"small", to)
    _wait_readable(receiver)
    batch = _udpbatch.receive(receiver.fileno(), 8)
    assert [data for data, _ in batch] == [b"small"]


def test_a_datagram_the_kernel_refuses_is_counted_and_the_rest_are_sent(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    receiver, sender = pair
    to = receiver.getsockname()
    datagrams = [(b"one", to), (b"to port zero", ("127.0.0.1", 0)), (b"three", to)]
    assert _udpbatch.send(sender.fileno(), socket.AF_INET, datagrams) == (2, 1)
    _wait_readable(receiver)
    batch: list[tuple[bytes, tuple[str, int]]] = []
    for _ in range(20):  # bounded: the second datagram may come a moment later
        batch += _udpbatch.receive(receiver.fileno(), 8)
        if len(batch) == 2:
            break
        _wait_readable(receiver)
    assert [data for data, _ in batch] == [b"one", b"three"]


def test_ipv6_and_ipv4_mapped_peers_on_a_dual_stack_socket() -> None:
    receiver = _socket(socket.AF_INET6, "::")
    v6, v4 = _socket(socket.AF_INET6, "::1"), _socket()
    try:
        port = receiver.getsockname()[1]
        assert _udpbatch.send(v6.fileno(), socket.AF_INET6, [(b"six", ("::1", port))]) == (1, 0)
        assert _udpbatch.send(v4.fileno(), socket.AF_INET, [(b"four", ("127.0.0.1", port))]) == (
            1,
            0,
        )
        got: list[tuple[bytes, tuple[str, int]]] = []
        for _ in range(20):  # bounded
            _wait_readable(receiver)
            got += _udpbatch.receive(receiver.fileno(), 8)
            if len(got) == 2:
                break
        by_data = dict(got)
        assert by_data[b"six"][:2] == ("::1", v6.getsockname()[1])
        assert by_data[b"four"][:2] == ("::ffff:127.0.0.1", v4.getsockname()[1])
        # Answers go back to both, the IPv4 peer named as Python's socket module names it.
        answers = [(b"back", by_data[b"six"]), (b"back", ("127.0.0.1", v4.getsockname()[1]))]
        assert _udpbatch.send(receiver.fileno(), socket.AF_INET6, answers) == (2, 0)
        for peer in (v6, v4):
            _wait_readable(peer)
            assert peer.recv(64) == b"back"
    finally:
        for sock in (receiver, v6, v4):
            sock.close()


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda fd: _udpbatch.receive(fd, 0), ValueError),
        (lambda fd: _udpbatch.receive(fd, 65), ValueError),
        (lambda fd: _udpbatch.send(fd, socket.AF_INET, [(b"x", "127.0.0.1")]), TypeError),
        (lambda fd: _udpbatch.send(fd, socket.AF_INET, [("text", ("127.0.0.1", 9))]), TypeError),
        (lambda fd: _udpbatch.send(fd, socket.AF_INET, [(b"x", ("nowhere", 9))]), ValueError),
        (lambda fd: _udpbatch.send(fd, socket.AF_INET, [(b"x", ("127.0.0.1", 70000))]), ValueError),
        (lambda fd: _udpbatch.send(fd, socket.AF_INET, [(b"x", ("::1", 9))]), ValueError),
        (lambda fd: _udpbatch.send(fd, socket.AF_UNIX, []), ValueError),
    ],
)
def test_bad_arguments_are_a_clear_error(
    pair: tuple[socket.socket, socket.socket], call: object, error: type[Exception]
) -> None:
    _, sender = pair
    with pytest.raises(error):
        call(sender.fileno())  # type: ignore[operator]


def test_a_closed_descriptor_is_an_oserror() -> None:
    sock = _socket()
    fd = sock.fileno()
    sock.close()
    with pytest.raises(OSError):
        _udpbatch.receive(fd, 8)
