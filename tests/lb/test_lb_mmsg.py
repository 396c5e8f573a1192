"""lb.mmsg against real loopback sockets: batches, IPv4 and IPv6, the largest datagrams, partial
sends and errors (real ones from the kernel, and scripted ones through an injected sendmmsg)."""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lb import mmsg
from lb.mmsg import Receiver, Sender

pytestmark = pytest.mark.skipif(not mmsg.AVAILABLE, reason="recvmmsg/sendmmsg not available")

#: The largest UDP payloads: 65535 - 20 - 8 over IPv4, 65535 - 8 over IPv6.
MAX_IPV4_PAYLOAD = 65507
MAX_IPV6_PAYLOAD = 65527
RECEIVE_TIMEOUT = 1.0


def udp_socket(host: str, *, dual_stack: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if dual_stack:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    seconds = int(RECEIVE_TIMEOUT)
    timeval = struct.pack("@ll", seconds, int((RECEIVE_TIMEOUT - seconds) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.bind((host, 0))
    return sock


def two_tuple(address: tuple[object, ...]) -> tuple[str, int]:
    return (str(address[0]), int(str(address[1])))


@pytest.fixture
def ipv4_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    receiver, sender = udp_socket("127.0.0.1"), udp_socket("127.0.0.2")
    yield receiver, sender
    receiver.close()
    sender.close()


@pytest.fixture
def ipv6_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    receiver, sender = udp_socket("::1"), udp_socket("::1")
    yield receiver, sender
    receiver.close()
    sender.close()


def receive_all(receiver: Receiver, count: int) -> list[tuple[bytes, tuple[str, int]]]:
    got: list[tuple[bytes, tuple[str, int]]] = []
    while len(got) < count:
        got += receiver.receive()
    return got


@pytest.mark.parametrize("count", [1, 2, 7, 31, 32, 33, 100])
def test_a_batch_takes_what_is_queued_in_order_up_to_its_size(
    ipv4_pair: tuple[socket.socket, socket.socket], count: int
) -> None:
    vip, client = ipv4_pair
    receiver = Receiver(vip, 32)
    for n in range(count):
        client.sendto(n.to_bytes(2, "big") * (n + 1), vip.getsockname())
    first = receiver.receive()
    assert len(first) == min(count, 32)
    got = first + receive_all(receiver, count - len(first))
    assert [data for data, _ in got] == [n.to_bytes(2, "big") * (n + 1) for n in range(count)]
    assert {source for _, source in got} == {two_tuple(client.getsockname())}
    assert all(type(data) is bytes for data, _ in got)


def test_a_lone_datagram_is_returned_at_once_and_silence_times_out(
    ipv4_pair: tuple[socket.socket, socket.socket],
) -> None:
    vip, client = ipv4_pair
    receiver = Receiver(vip, 32)
    client.sendto(b"alone", vip.getsockname())
    started = time.monotonic()
    assert receiver.receive() == [(b"alone", two_tuple(client.getsockname()))]
    assert time.monotonic() - started < RECEIVE_TIMEOUT / 2  # MSG_WAITFORONE: no waiting
    started = time.monotonic()
    with pytest.raises(BlockingIOError):
        receiver.receive()
    assert time.monotonic() - started >= RECEIVE_TIMEOUT * 0.9  # SO_RCVTIMEO is honoured


def test_ipv6_sources_and_the_largest_datagrams_arrive_whole(
    ipv6_pair: tuple[socket.socket, socket.socket],
) -> None:
    vip, client = ipv6_pair
    receiver = Receiver(vip, 4)
    sender = Sender(client, 4)
    sizes = [MAX_IPV6_PAYLOAD, 1, MAX_IPV4_PAYLOAD, 1200]
    datagrams = [bytes([n]) * size for n, size in enumerate(sizes)]
    assert sender.send([(two_tuple(vip.getsockname()), data) for data in datagrams]) == 0
    got = receive_all(receiver, len(datagrams))
    assert [data for data, _ in got] == datagrams
    assert {source for _, source in got} == {("::1", client.getsockname()[1])}


def test_the_largest_ipv4_datagram_arrives_whole(
    ipv4_pair: tuple[socket.socket, socket.socket],
) -> None:
    vip, client = ipv4_pair
    receiver = Receiver(vip, 2)
    datagram = bytes(range(256)) * (MAX_IPV4_PAYLOAD // 256) + b"end"
    datagram = datagram[:MAX_IPV4_PAYLOAD]
    assert Sender(client, 2).send([(two_tuple(vip.getsockname()), datagram)]) == 0
    assert receiver.receive() == [(datagram, two_tuple(client.getsockname()))]


def test_ipv4_clients_of_a_dual_stack_socket_come_as_mapped_addresses() -> None:
    vip = udp_socket("::", dual_stack=True)
    client = udp_socket("127.0.0.2")
    try:
        receiver = Receiver(vip, 8)
        client.sendto(b"v4", ("127.0.0.1", vip.getsockname()[1]))
        [(data, source)] = receiver.receive()
        assert data == b"v4" and source == ("::ffff:127.0.0.2", client.getsockname()[1])
        # ... and replies to them, either spelling, go out of the dual-stack socket.
        sender = Sender(vip, 8)
        assert sender.send([(source, b"one"), (two_tuple(client.getsockname()), b"two")]) == 0
        assert [client.recvfrom(100)[0] for _ in range(2)] == [b"one", b"two"]
    finally:
        vip.close()
        client.close()


def test_one_send_reaches_several_destinations() -> None:
    sinks = [udp_socket("127.0.0.1") for _ in range(3)]
    source = udp_socket("127.0.0.2")
    try:
        sender = Sender(source, 8)
        items = [(two_tuple(sinks[n % 3].getsockname()), f"d{n}".encode()) for n in range(20)]
        assert sender.send(items) == 0  # 20 items, batches of 8: three system calls
        for index, sink in enumerate(sinks):
            expected = [f"d{n}".encode() for n in range(index, 20, 3)]
            assert [sink.recvfrom(100)[0] for _ in expected] == expected
        assert sender.errors == {}
    finally:
        for sock in [*sinks, source]:
            sock.close()


def test_a_datagram_the_kernel_refuses_costs_only_itself(
    ipv4_pair: tuple[socket.socket, socket.socket],
) -> None:
    vip, client = ipv4_pair
    receiver = Receiver(vip, 16)
    sender = Sender(client, 16)
    destination = two_tuple(vip.getsockname())
    items = [
        (destination, b"first"),
        (("127.0.0.1", 0), b"port 0: EINVAL"),  # the kernel stops the batch here
        (destination, b"second"),
        (destination, bytes(MAX_IPV4_PAYLOAD + 1)),  # EMSGSIZE
        (("255.255.255.255", 9), b"broadcast without SO_BROADCAST: EACCES"),
        (("::1", 9), b"IPv6 address on an IPv4 socket"),
        (destination, b"third"),
    ]
    assert sender.send(items) == 4
    assert sender.errors == {"EINVAL": 1, "EMSGSIZE": 1, "EACCES": 1, "EAFNOSUPPORT": 1}
    got = receive_all(receiver, 3)
    assert [data for data, _ in got] == [b"first", b"second", b"third"]


def test_datagrams_that_are_not_bytes_are_sent_too(
    ipv4_pair: tuple[socket.socket, socket.socket],
) -> None:
    vip, client = ipv4_pair
    destination = two_tuple(vip.getsockname())
    items: list[tuple[tuple[str, int], bytes]] = [
        (destination, bytearray(b"array")),  # type: ignore[list-item]
        (destination, b"plain"),
    ]
    assert Sender(client, 4).send(items) == 0
    assert [data for data, _ in receive_all(Receiver(vip, 4), 2)] == [b"array", b"plain"]


def test_receive_returns_nothing_when_a_signal_interrupts_it(
    ipv4_pair: tuple[socket.socket, socket.socket],
) -> None:
    vip, _ = ipv4_pair
    receiver = Receiver(vip, 4, recvmmsg=lambda *args: -1, get_errno=lambda: errno.EINTR)
    assert receiver.receive() == []
    failing = Receiver(vip, 4, recvmmsg=lambda *args: -1, get_errno=lambda: errno.EBADF)
    with pytest.raises(OSError) as raised:
        failing.receive()
    assert raised.value.errno == errno.EBADF


def test_batch_sizes_and_sockets_are_checked() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for bad in (0, mmsg.MAX_BATCH + 1):
            with pytest.raises(ValueError):
                Receiver(sock, bad)
            with pytest.raises(ValueError):
                Sender(sock, bad)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stream, pytest.raises(ValueError):
        Receiver(stream)


class ScriptedSendmmsg:
    """A sendmmsg that follows a script of outcomes and records which slots it sent.

    An outcome ``n >= 0`` sends at most ``n`` datagrams of the call (at least one: the kernel
    never returns 0 for a non-empty batch); a negative outcome fails with that errno.
    """

    def __init__(self, sender: Sender, script: list[int]) -> None:
        self.sender = sender
        self.script = list(script)
        #: The datagrams "sent", read back from the iovecs the sender filled in.
        self.sent: list[bytes] = []
        self.errno = 0

    def __call__(self, fd: object, pointer: object, count: int, flags: int) -> int:
        assert isinstance(pointer, ctypes.c_void_p) and pointer.value is not None
        first = (pointer.value - self.sender._headers_address) // mmsg._HEADER_LEN
        outcome = self.script.pop(0) if self.script else count
        if outcome < 0:
            self.errno = -outcome
            return -1
        taken = max(1, min(outcome, count))
        for slot in range(first, first + taken):
            iov = mmsg._IoVec.from_address(self.sender._headers[slot].msg_hdr.msg_iov)
            self.sent.append(ctypes.string_at(iov.iov_base, iov.iov_len))
        return taken


OUTCOMES = st.one_of(
    st.integers(min_value=0, max_value=40),
    st.sampled_from(
        [
            -errno.EINTR,
            -errno.EAGAIN,
            -errno.ENOBUFS,
            -errno.ECONNREFUSED,
            -errno.EMSGSIZE,
            -errno.EHOSTUNREACH,
            -errno.EPERM,
        ]
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(count=st.integers(min_value=2, max_value=40), script=st.lists(OUTCOMES, max_size=60))
def test_partial_sends_and_errors_never_lose_the_rest_of_a_batch(
    count: int, script: list[int]
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sender = Sender(sock, 16)
        scripted = ScriptedSendmmsg(sender, script)
        sender._sendmmsg = scripted
        sender._get_errno = lambda: scripted.errno
        items = [(("127.0.0.1", 9), bytes([n])) for n in range(count)]
        dropped = sender.send(items)
        # Every datagram is sent at most once, in order, and what was not sent is counted,
        # by errno name, exactly once.
        sent = [data[0] for data in scripted.sent]
        assert sent == sorted(set(sent))
        assert dropped == sum(sender.errors.values())
        assert len(sent) + dropped == count
        assert set(sender.errors) <= {
            errno.errorcode[code]
            for code in (
                errno.EINTR,
                errno.EAGAIN,
                errno.ENOBUFS,
                errno.ECONNREFUSED,
                errno.EMSGSIZE,
                errno.EHOSTUNREACH,
                errno.EPERM,
            )
        }
        transient_drops = sum(
            sender.errors.get(errno.errorcode[code], 0) for code in mmsg.TRANSIENT_ERRORS
        )
        transient_failures = sum(1 for outcome in script if -outcome in mmsg.TRANSIENT_ERRORS)
        assert transient_drops <= transient_failures // (mmsg.TRANSIENT_RETRIES + 1)


@settings(max_examples=60, deadline=None)
@given(
    datagrams=st.lists(st.binary(min_size=0, max_size=2000), min_size=1, max_size=40),
    batch=st.integers(min_value=1, max_value=64),
)
def test_any_datagrams_round_trip_unchanged(datagrams: list[bytes], batch: int) -> None:
    vip, client = udp_socket("127.0.0.1"), udp_socket("127.0.0.2")
    try:
        sender = Sender(client, batch)
        receiver = Receiver(vip, batch)
        assert sender.send([(two_tuple(vip.getsockname()), data) for data in datagrams]) == 0
        got: list[tuple[bytes, tuple[str, int]]] = []
        while len(got) < len(datagrams):
            items = receiver.receive()
            assert 1 <= len(items) <= batch
            got += items
        assert [data for data, _ in got] == datagrams
    finally:
        vip.close()
        client.close()
