"""The pumps' fast paths decide exactly as the Router: same sends, same counts, any datagrams.

``lb/python_path.py`` routes the common datagram inline (a short header whose CID names a live
backend; an IPv4 header from a configured backend) instead of calling ``Router.route_from_*``,
and counts it in ``UplinkCount``/``DownlinkCount`` until ``Router.fold``. These tests run the
real pump loops on mixed traffic, every case of the routing table included, and compare what
they send and count with a plain Router given the same datagrams:

- the per-datagram loops, with fake sockets (any address, IPv6 and port 0 included);
- the batched in-place loops (``mmsg.Receiver`` + ``mmsg.Outbox``), on loopback sockets.
"""

from __future__ import annotations

import ctypes
import errno
import io
import math
import os
import random
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lb import mmsg, python_path
from lb.config import Backend, ForwarderConfig
from lb.health import PROBE_CLIENT
from lb.log import JsonLogger
from lb.packet import QUIC_V1
from lb.pump import DOWNLINK, UPLINK, Pump, Stopped
from lb.router import Counters, Drop, DropReason, Forward, MetricSample, Reply, Router, Send
from quicvoice.encapsulation import wrap
from quicvoice.quiclb import LoadBalancerConfig, QuicLbConnectionIdGenerator
from quicvoice.settings import Address

KEY = bytes.fromhex("8f95f09245765f80256934e50c66207f")
RESET_KEY = bytes(range(32))
SINGLE_PASS = LoadBalancerConfig(0, 4, 12, KEY)
PLAINTEXT = LoadBalancerConfig(1, 4, 8)
FOUR_PASS = LoadBalancerConfig(2, 4, 7, KEY)
#: A second single-pass configuration (config rotation): its own key, its own batch of blocks.
ROTATED = LoadBalancerConfig(5, 4, 12, bytes(range(16)))
CONFIGS = (SINGLE_PASS, PLAINTEXT, FOUR_PASS, ROTATED)
SERVER_IDS = [bytes([10, 0, 0, n]) for n in (1, 2, 3)]
UNKNOWN_SERVER_ID = bytes([10, 0, 0, 99])
#: Short-header payload octets after the CID (at least enough for a reset to be allowed).
PAYLOADS = st.binary(min_size=0, max_size=80)


def seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def cid_for(server_id: bytes, config: LoadBalancerConfig, seed: int) -> bytes:
    return QuicLbConnectionIdGenerator(server_id, config, RESET_KEY, random=seeded(seed)).generate()


@st.composite
def client_datagrams(draw: st.DrawFn) -> bytes:
    """Every kind of client datagram, the fast path's boundaries included."""
    kind = draw(st.sampled_from(["short", "short", "short", "long", "initial", "raw", "edge"]))
    if kind == "raw":
        return draw(st.binary(max_size=120))
    server_id = draw(st.sampled_from(SERVER_IDS + [UNKNOWN_SERVER_ID]))
    config = draw(st.sampled_from(CONFIGS))
    cid = cid_for(server_id, config, draw(st.integers(0, 1000)))
    if draw(st.booleans()):
        cid = cid[:1] + draw(st.binary(min_size=1, max_size=19))  # garbage after the config
    if kind == "short":
        first = draw(st.integers(0, 0x7F))
        return bytes([first]) + cid + draw(PAYLOADS)
    if kind == "edge":  # 20, 21 and 22 octets; a long-header bit; config bits 0b111
        first = draw(st.sampled_from([0x40, 0x41, 0xC0, 0x7F]))
        packet = bytes([first]) + cid + bytes(30)
        if draw(st.booleans()):
            packet = packet[:1] + bytes([0xE0 | packet[1] & 0x1F]) + packet[2:]
        return packet[: draw(st.sampled_from([20, 21, 22, len(packet)]))]
    version = QUIC_V1 if draw(st.booleans()) else draw(st.integers(0, 2**32 - 1))
    first = 0xC3 if kind == "initial" else 0xE0
    packet = bytes([first]) + version.to_bytes(4, "big") + bytes([len(cid)]) + cid + b"\x00"
    size = draw(st.sampled_from([len(packet), 100, 1199, 1200, 1300]))
    return packet + bytes(max(0, size - len(packet)))


def forwarder_config(
    listen: Address, backend_listen: Address, backends: list[Address], down: int | None
) -> ForwarderConfig:
    return ForwarderConfig(
        listen=listen,
        backend_listen=backend_listen,
        configs=CONFIGS,
        backends=tuple(
            Backend(server_id, address, down=index == down)
            for index, (server_id, address) in enumerate(zip(SERVER_IDS, backends, strict=True))
        ),
        reset_key=RESET_KEY,
        health_interval=0.0,
    )


def make_pump(
    direction: str,
    config: ForwarderConfig,
    vip: object,
    backend: object,
    tmp_path: Path,
    *,
    batch: bool = False,
    seed: int = 0,
) -> Pump:
    pump = Pump(
        direction=direction,
        worker=0,
        config_path=tmp_path / "unused.toml",
        config=config,
        vip=vip,  # type: ignore[arg-type]
        backend=backend,  # type: ignore[arg-type]
        snapshot=tmp_path / f"{direction}.json",
        parent_pid=os.getppid(),
        logger=JsonLogger("error", io.StringIO()),
        batch=batch,
        native=False,
    )
    # The same stateless-reset randomness as the reference router.
    pump.use(Router(config, pump.counters, random=seeded(seed)))
    return pump


def samples(counters: Counters) -> list[MetricSample]:
    return sorted(counters.samples())


# Per-datagram loops, fake sockets ------------------------------------------------------------


class FakeSocket:
    """Hands out scripted (datagram, address) pairs, then stops the pump; records sends."""

    def __init__(self, name: str, family: int, sent: list[tuple[str, bytes, object]]) -> None:
        self.name = name
        self.family = family
        self.incoming: list[tuple[bytes, object]] = []
        self.sent = sent

    def recvfrom(self, size: int) -> tuple[bytes, object]:
        if not self.incoming:
            raise Stopped
        return self.incoming.pop(0)

    def recvmsg(self, size: int, ancillary: int = 0) -> tuple[bytes, list[object], int, object]:
        data, address = self.recvfrom(size)
        return data, [], 0, address

    def sendto(self, data: bytes, address: object) -> int:
        self.sent.append((self.name, bytes(data), address))
        return len(data)

    def sendmsg(self, buffers: list[bytes], ancdata: object, flags: int, address: object) -> int:
        return self.sendto(b"".join(buffers), address)

    def setsockopt(self, *args: object) -> None:
        pass


BACKEND_ADDRESSES = [("127.0.0.1", 4501), ("127.0.0.1", 4502), ("127.0.0.1", 4503)]
CLIENTS = st.sampled_from(
    [("127.0.0.2", 50000), ("10.1.2.3", 1), ("192.0.2.1", 65535), ("127.0.0.2", 0)]
)


def fast_packets(pump: Pump) -> int:
    """Datagrams the fast path took since the last fold."""
    router = pump.router
    return sum(count.packets for count in router.fast_uplink.values()) + sum(
        count.packets for count in router.fast_downlink.values()
    )


def run_loop(pump: Pump) -> int:
    """Run the per-datagram loop over its fake socket's datagrams; return how many took the
    fast path (no tick meanwhile: nothing is folded before the end)."""
    pump.next_tick = math.inf
    with pytest.raises(Stopped):
        if pump.direction == UPLINK:
            python_path.uplink_loop(pump)
        else:
            python_path.downlink_loop(pump)
    fast = fast_packets(pump)
    pump.flush()
    return fast


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    traffic=st.lists(st.tuples(client_datagrams(), CLIENTS), max_size=30),
    down=st.sampled_from([None, 0, 2]),
    ipv6=st.booleans(),
    seed=st.integers(0, 100),
)
def test_the_uplink_loop_sends_and_counts_as_the_router(
    tmp_path: Path,
    traffic: list[tuple[bytes, Address]],
    down: int | None,
    ipv6: bool,
    seed: int,
) -> None:
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    if ipv6:  # an IPv6 VIP: addresses as recvfrom gives them there, all through the Router
        traffic = [(data, (f"::ffff:{host}", port, 0, 0)) for data, (host, port) in traffic]  # type: ignore[misc]
    config = forwarder_config(("127.0.0.1", 4433), ("127.0.0.1", 4434), BACKEND_ADDRESSES, down)
    sent: list[tuple[str, bytes, object]] = []
    vip = FakeSocket("vip", family, sent)
    backend = FakeSocket("backend", socket.AF_INET, sent)
    vip.incoming = list(traffic)
    pump = make_pump(UPLINK, config, vip, backend, tmp_path, seed=seed)
    fast = run_loop(pump)

    reference = Router(config, random=seeded(seed))
    expected: list[tuple[str, bytes, object]] = []
    expected_fast = 0
    for datagram, client in traffic:
        by_server_id = reference.counters.routed_server_id
        try:
            decision = reference.route_from_client(datagram, client)
        except ValueError:  # port 0: not encapsulable, one datagram lost, as in the pump
            continue
        if (
            reference.counters.routed_server_id > by_server_id
            and not ipv6
            and not datagram[0] & 0x80
            and client[1]
        ):
            expected_fast += 1  # a short header forwarded by server ID: the fast path's
        if type(decision) is Forward:
            expected.append(("backend", decision.datagram, decision.address))
        elif type(decision) is Reply:
            expected.append(("vip", decision.datagram, decision.address))
        else:
            assert type(decision) is Drop
    assert sent == expected
    assert samples(pump.counters) == samples(reference.counters)
    assert fast == expected_fast


@st.composite
def backend_datagrams(draw: st.DrawFn) -> tuple[bytes, object]:
    """What a backend socket may receive: replies to any client, probes, garbage, strangers."""
    source = draw(st.sampled_from(BACKEND_ADDRESSES + [("127.0.0.9", 4501), ("127.0.0.1", 9)]))
    kind = draw(st.sampled_from(["reply", "reply", "reply", "probe", "raw", "edge", "ipv6"]))
    payload = draw(st.binary(max_size=60))
    if kind == "reply":
        client = draw(CLIENTS.filter(lambda address: address[1] != 0))
        return wrap(client, payload), source
    if kind == "probe":
        return wrap(PROBE_CLIENT, payload), source
    if kind == "ipv6":
        return wrap(("::1", draw(st.integers(1, 65535))), payload), source
    if kind == "edge":  # port 0, wrong magic or family, header only, truncated
        header = bytearray(wrap(("192.0.2.7", 4000), b""))
        header[draw(st.integers(0, 3))] = draw(st.sampled_from([0, 6, 0x70, 0x72]))
        data = bytes(header) + payload
        return data[: draw(st.sampled_from([0, 7, 8, 9, len(data)]))], source
    return draw(st.binary(max_size=40)), source


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    traffic=st.lists(backend_datagrams(), max_size=30),
    down=st.sampled_from([None, 1]),
    ipv6=st.booleans(),
)
def test_the_downlink_loop_sends_and_counts_as_the_router(
    tmp_path: Path, traffic: list[tuple[bytes, Address]], down: int | None, ipv6: bool
) -> None:
    config = forwarder_config(("127.0.0.1", 4433), ("127.0.0.1", 4434), BACKEND_ADDRESSES, down)
    sent: list[tuple[str, bytes, object]] = []
    vip = FakeSocket("vip", socket.AF_INET, sent)
    backend = FakeSocket("backend", socket.AF_INET6 if ipv6 else socket.AF_INET, sent)
    if ipv6:  # an IPv6 backend socket reports 4-tuples: all through the Router
        traffic = [(data, (*source, 0, 0)) for data, source in traffic]  # type: ignore[misc]
    backend.incoming = list(traffic)
    pump = make_pump(DOWNLINK, config, vip, backend, tmp_path)
    heard: list[object] = []
    pump.probe_answered = heard.append  # type: ignore[method-assign,assignment]
    fast = run_loop(pump)

    reference = Router(config)
    expected: list[tuple[str, bytes, object]] = []
    probes: list[object] = []
    expected_fast = 0
    for datagram, source in traffic:
        if datagram[:8] == wrap(PROBE_CLIENT, b""):
            probes.append(source)
            continue
        decision = reference.route_from_backend(datagram, source)
        if type(decision) is Send:
            expected.append(("vip", decision.datagram, decision.address))
            expected_fast += not ipv6 and datagram[1] == 4  # IPv4 headers: the fast path's
    assert sent == expected
    assert heard == probes
    assert samples(pump.counters) == samples(reference.counters)
    assert fast == expected_fast


# Batched in-place loops, loopback sockets ---------------------------------------------------

RECEIVE_TIMEOUT = 0.05


def udp(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    timeval = struct.pack("@ll", 0, int(RECEIVE_TIMEOUT * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.bind((host, 0))
    return sock


def drain(sock: socket.socket, count: int = 0) -> list[tuple[bytes, Address]]:
    """``count`` datagrams (waiting up to a second for each), then whatever else is queued."""
    got: list[tuple[bytes, Address]] = []
    deadline = time.monotonic() + 1.0
    while len(got) < count and time.monotonic() < deadline:
        try:
            got.append(sock.recvfrom(65536))
        except (BlockingIOError, TimeoutError):
            continue
    while True:
        try:
            got.append(sock.recvfrom(65536, socket.MSG_DONTWAIT))
        except (BlockingIOError, TimeoutError):
            return got


class Loopback:
    """A pump's two sockets, three backends and three clients, all real, on loopback."""

    def __init__(self) -> None:
        self.vip = udp()
        self.backend = udp()
        self.backends = [udp() for _ in SERVER_IDS]
        self.clients = [udp("127.0.0.2") for _ in range(3)]
        self.stranger = udp("127.0.0.3")

    def address(self, sock: socket.socket) -> Address:
        host, port = sock.getsockname()
        return (str(host), int(port))

    def close(self) -> None:
        for sock in [self.vip, self.backend, self.stranger, *self.backends, *self.clients]:
            sock.close()


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    made = Loopback()
    yield made
    made.close()


def stop() -> None:
    """A pump's ``_idle`` for tests: the socket stayed empty, the run is over."""
    raise Stopped


def run_batches(pump: Pump) -> int:
    """Run the batched loop until its socket stays empty for RECEIVE_TIMEOUT; return how many
    datagrams took the fast path."""

    pump.idle = stop  # type: ignore[method-assign]
    pump.next_tick = math.inf
    assert pump.ipv4
    with pytest.raises(Stopped):
        if pump.direction == UPLINK:
            python_path.uplink_relay(pump)
        else:
            python_path.downlink_relay(pump)
    fast = fast_packets(pump)
    pump.flush()
    return fast


needs_mmsg = pytest.mark.skipif(not mmsg.AVAILABLE, reason="recvmmsg/sendmmsg not available")


@needs_mmsg
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    traffic=st.lists(st.tuples(client_datagrams(), st.integers(0, 2)), max_size=60),
    down=st.sampled_from([None, 0]),
    seed=st.integers(0, 100),
)
def test_the_batched_uplink_sends_and_counts_as_the_router(
    loopback: Loopback,
    tmp_path: Path,
    traffic: list[tuple[bytes, int]],
    down: int | None,
    seed: int,
) -> None:
    for sock in [loopback.vip, *loopback.backends, *loopback.clients]:
        drain(sock)  # what an earlier example left
    backends = [loopback.address(sock) for sock in loopback.backends]
    config = forwarder_config(
        loopback.address(loopback.vip), loopback.address(loopback.backend), backends, down
    )
    pump = make_pump(
        UPLINK, config, loopback.vip, loopback.backend, tmp_path, batch=True, seed=seed
    )
    items = []
    for datagram, client_index in traffic:
        sender = loopback.clients[client_index]
        sender.sendto(datagram, loopback.address(loopback.vip))
        items.append((datagram, loopback.address(sender)))
    fast = run_batches(pump)

    reference = Router(config, random=seeded(seed))
    to_backend: dict[Address, list[bytes]] = {address: [] for address in backends}
    to_client: dict[Address, list[bytes]] = {loopback.address(c): [] for c in loopback.clients}
    expected_fast = 0
    for datagram, client in items:
        by_server_id = reference.counters.routed_server_id
        decision = reference.route_from_client(datagram, client)
        if reference.counters.routed_server_id > by_server_id and not datagram[0] & 0x80:
            expected_fast += 1
        if type(decision) is Forward:
            to_backend[decision.address].append(decision.datagram)
        elif type(decision) is Reply:
            to_client[decision.address].append(decision.datagram)
    for sock in loopback.backends:
        got = drain(sock, len(to_backend[loopback.address(sock)]))
        assert [data for data, _ in got] == to_backend[loopback.address(sock)]
        assert {source for _, source in got} <= {loopback.address(loopback.backend)}
    for sock in loopback.clients:
        got = drain(sock, len(to_client[loopback.address(sock)]))
        assert [data for data, _ in got] == to_client[loopback.address(sock)]
    assert samples(pump.counters) == samples(reference.counters)
    assert fast == expected_fast


@needs_mmsg
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    traffic=st.lists(
        st.tuples(
            st.sampled_from(["reply", "reply", "reply", "probe", "raw", "edge"]),
            st.integers(0, 3),  # which backend sends it (3: a stranger)
            st.integers(0, 2),  # which client it names
            st.binary(max_size=60),
        ),
        max_size=60,
    ),
    down=st.sampled_from([None, 1]),
    damage=st.sampled_from([(0, 0x70), (0, 0), (1, 0), (1, 6), (2, 0)]),
)
def test_the_batched_downlink_sends_and_counts_as_the_router(
    loopback: Loopback,
    tmp_path: Path,
    traffic: list[tuple[str, int, int, bytes]],
    down: int | None,
    damage: tuple[int, int],
) -> None:
    for sock in [loopback.backend, *loopback.clients]:
        drain(sock)
    backends = [loopback.address(sock) for sock in loopback.backends]
    config = forwarder_config(
        loopback.address(loopback.vip), loopback.address(loopback.backend), backends, down
    )
    pump = make_pump(DOWNLINK, config, loopback.vip, loopback.backend, tmp_path, batch=True)
    heard: list[object] = []
    pump.probe_answered = heard.append  # type: ignore[method-assign,assignment]
    senders = [*loopback.backends, loopback.stranger]
    items = []
    for kind, sender_index, client_index, payload in traffic:
        client = loopback.address(loopback.clients[client_index])
        if kind == "reply":
            data = wrap(client, payload)
        elif kind == "probe":
            data = wrap(PROBE_CLIENT, payload)
        elif kind == "edge":  # wrong magic or family, port 0, header only
            header = bytearray(wrap(client, b""))
            header[damage[0]] = damage[1]
            if damage[0] == 2:
                header[3] = 0
            data = bytes(header) + payload
        else:
            data = bytes([0x40]) + payload
        sender = senders[sender_index]
        sender.sendto(data, loopback.address(loopback.backend))
        items.append((data, loopback.address(sender)))
    fast = run_batches(pump)

    reference = Router(config)
    expected: dict[Address, list[bytes]] = {loopback.address(c): [] for c in loopback.clients}
    probes = []
    expected_fast = 0
    for data, source in items:
        if data[:8] == wrap(PROBE_CLIENT, b""):
            probes.append(source)
            continue
        decision = reference.route_from_backend(data, source)
        if type(decision) is Send:
            if ":" in decision.address[0]:  # an IPv6 client behind an IPv4 VIP: cannot send
                reference.counters.downlink_drops[DropReason.SEND_ERROR] += 1
                continue
            expected[decision.address].append(decision.datagram)
            expected_fast += data[1] == 4
    for sock in loopback.clients:
        got = drain(sock, len(expected[loopback.address(sock)]))
        assert [data for data, _ in got] == expected[loopback.address(sock)]
        assert {source for _, source in got} <= {loopback.address(loopback.vip)}
    assert heard == probes
    assert samples(pump.counters) == samples(reference.counters)
    assert fast == expected_fast


@needs_mmsg
def test_the_batched_uplink_leaves_clients_without_a_port_to_the_router(
    loopback: Loopback, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forged source port 0 (raw sockets can send one) cannot be encapsulated: the Router
    raises, the datagram is lost and counted as it would be without the fast path."""

    class PortZero(mmsg.Receiver):
        def receive_count(self) -> int:
            count = super().receive_count()
            for index in range(count):
                offset = index * self.name_len + 2
                self.names[offset : offset + 2] = b"\0\0"
            return count

    monkeypatch.setattr(mmsg, "Receiver", PortZero)
    backends = [loopback.address(sock) for sock in loopback.backends]
    config = forwarder_config(
        loopback.address(loopback.vip), loopback.address(loopback.backend), backends, None
    )
    pump = make_pump(UPLINK, config, loopback.vip, loopback.backend, tmp_path, batch=True)
    client = loopback.clients[0]
    datagrams = [
        bytes([0x41]) + cid_for(server_id, SINGLE_PASS, 1) + bytes(30) for server_id in SERVER_IDS
    ]
    for datagram in datagrams:
        client.sendto(datagram, loopback.address(loopback.vip))
    assert run_batches(pump) == 0
    reference = Router(config)
    for datagram in datagrams:
        with pytest.raises(ValueError):
            reference.route_from_client(datagram, (loopback.address(client)[0], 0))
    assert all(drain(sock) == [] for sock in loopback.backends)
    assert samples(pump.counters) == samples(reference.counters)
    assert pump.errors == len(datagrams)  # each logged as route_failed


# mmsg.Outbox --------------------------------------------------------------------------------


@needs_mmsg
def test_an_outbox_gathers_pieces_in_place_and_sends_them_in_order(loopback: Loopback) -> None:
    outbox = mmsg.Outbox(loopback.vip, 4)
    pieces = ctypes.create_string_buffer(b"abcdefgh")
    base = ctypes.addressof(pieces)
    client = loopback.address(loopback.clients[0])
    port_and_address = struct.pack("!H4s", client[1], socket.inet_aton(client[0]))
    position = outbox.add(0, client, b"first")
    outbox.stage(
        outbox.slots,
        position,
        base,
        2,
        base + 4,
        3,
        base + 7,
        1,
        socket.AF_INET,
        port_and_address,
    )
    position += outbox.slot_len
    position = outbox.add(position, ("::1", 5), b"wrong family")  # counted, not staged
    position = outbox.add(position, client, bytearray(b"last"))
    assert outbox.flush(position) == 1
    assert outbox.errors == {mmsg.ADDRESS_ERROR: 1}
    got = [data for data, _ in drain(loopback.clients[0], 3)]
    assert got == [b"first", b"abefgh", b"last"]
    assert outbox.flush(0) == 0


@needs_mmsg
@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(min_value=1, max_value=16),
    script=st.lists(
        st.one_of(
            st.integers(min_value=0, max_value=20),
            st.sampled_from([-errno.EINTR, -errno.ENOBUFS, -errno.EMSGSIZE, -errno.EPERM]),
        ),
        max_size=40,
    ),
)
def test_an_outbox_loses_only_the_datagrams_the_kernel_refuses(
    count: int, script: list[int]
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        outbox = mmsg.Outbox(sock, 16)
        sent: list[bytes] = []
        failure = [0]
        outcomes = list(script)

        def sendmmsg(fd: object, pointer: ctypes.c_void_p, n: int, flags: int) -> int:
            assert pointer.value is not None
            first = (pointer.value - outbox._headers_address) // mmsg._HEADER_LEN
            outcome = outcomes.pop(0) if outcomes else n
            if outcome < 0:
                failure[0] = -outcome
                return -1
            taken = max(1, min(outcome, n))
            for slot in range(first, first + taken):
                iov = mmsg._IoVec.from_address(outbox._headers[slot].msg_hdr.msg_iov)
                sent.append(ctypes.string_at(iov.iov_base, iov.iov_len))
            return taken

        outbox._sendmmsg = sendmmsg
        outbox._get_errno = lambda: failure[0]
        position = 0
        for n in range(count):
            position = outbox.add(position, ("127.0.0.1", 9), bytes([n]))
        dropped = outbox.flush(position)
        numbers = [data[0] for data in sent]
        assert numbers == sorted(set(numbers))
        assert len(numbers) + dropped == count
        assert dropped == sum(outbox.errors.values())


@needs_mmsg
def test_ipv6_sockets_batch_through_the_router(tmp_path: Path) -> None:
    """IPv6 sockets take the general batched loops (Receiver.receive, Router, Sender.send)."""

    def udp6() -> socket.socket:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        timeval = struct.pack("@ll", 0, int(RECEIVE_TIMEOUT * 1_000_000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.bind(("::1", 0))
        return sock

    def address(sock: socket.socket) -> Address:
        host, port = sock.getsockname()[:2]
        return (str(host), int(port))

    vip, backend, client = udp6(), udp6(), udp6()
    backends = [udp6() for _ in SERVER_IDS]
    try:
        config = forwarder_config(
            address(vip), address(backend), [address(sock) for sock in backends], 2
        )
        rng = random.Random(3)
        uplink = [
            bytes([0x41]) + cid_for(server_id, config_, n) + rng.randbytes(n)
            for n, (server_id, config_) in enumerate(
                (server_id, config_) for server_id in SERVER_IDS for config_ in CONFIGS
            )
        ] + [b"", bytes(10), rng.randbytes(100), bytes([0xC3]) + bytes(1300)]
        for datagram in uplink:
            client.sendto(datagram, address(vip))
        pump = make_pump(UPLINK, config, vip, backend, tmp_path, batch=True, seed=4)
        assert not pump.ipv4
        pump.idle = stop  # type: ignore[method-assign]
        with pytest.raises(Stopped):
            python_path.uplink_batches(pump)
        pump.flush()
        reference = Router(config, random=seeded(4))
        expected: dict[Address, list[bytes]] = {address(sock): [] for sock in backends}
        resets = []
        for datagram in uplink:
            decision = reference.route_from_client(datagram, address(client))
            if type(decision) is Forward:
                expected[decision.address].append(decision.datagram)
            elif type(decision) is Reply:
                resets.append(decision.datagram)
        for sock in backends:
            got = drain(sock, len(expected[address(sock)]))
            assert [data for data, _ in got] == expected[address(sock)]
        assert [data for data, _ in drain(client, len(resets))] == resets
        assert samples(pump.counters) == samples(reference.counters)

        downlink = [wrap(address(client), bytes([n])) for n in range(5)]
        downlink += [wrap(PROBE_CLIENT, b"p"), b"\x00garbage", wrap(address(client), b"")]
        for datagram in downlink:
            backends[0].sendto(datagram, address(backend))
        pump = make_pump(DOWNLINK, config, vip, backend, tmp_path, batch=True)
        heard: list[object] = []
        pump.probe_answered = heard.append  # type: ignore[method-assign,assignment]
        pump.idle = stop  # type: ignore[method-assign]
        with pytest.raises(Stopped):
            python_path.downlink_batches(pump)
        pump.flush()
        got = drain(client, 5)
        assert [data for data, _ in got] == [bytes([n]) for n in range(5)]
        assert len(heard) == 1
        reference = Router(config)
        for datagram in downlink:
            if datagram[:8] != wrap(PROBE_CLIENT, b""):
                reference.route_from_backend(datagram, address(backends[0]))
        assert samples(pump.counters) == samples(reference.counters)
    finally:
        for sock in [vip, backend, client, *backends]:
            sock.close()


def test_the_batched_in_place_loops_are_for_ipv4_sockets_only(tmp_path: Path) -> None:
    backends = [("::1", 4501 + n) for n in range(3)]
    config = forwarder_config(("::1", 4433), ("::1", 4434), backends, None)
    sent: list[tuple[str, bytes, object]] = []
    vip = FakeSocket("vip", socket.AF_INET6, sent)
    pump = make_pump(UPLINK, config, vip, FakeSocket("b", socket.AF_INET6, sent), tmp_path)
    assert not pump.ipv4 and pump.in_place.targets == {} and pump.in_place.sources == {}
