"""The forwarder carries each datagram's ECN bits, on real loopback sockets, in both directions.

A plain socket relay (``recvfrom`` then ``sendto``, what the forwarder's loops did before)
bleaches them: the kernel sends with the socket's own TOS, not the one that arrived. The
forwarder's loops read each datagram's TOS (IP_RECVTOS) and set it on the datagram they send
(an IP_TOS control message), the ECN bits only, per datagram: clients marking differently,
interleaved, each get their own bits through, never another's.
"""

from __future__ import annotations

import math
import socket
import struct
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_lb_config import GOOD
from test_lb_fast_path import (
    CONFIGS,
    SERVER_IDS,
    Loopback,
    drain,
    forwarder_config,
    loopback,
    make_pump,
    stop,
)

from lb import ecn, native_path, python_path
from lb.config import ForwarderConfig
from lb.pump import DOWNLINK, UPLINK, Pump, Stopped
from quicvoice.asyncio.config import BackendConfig
from quicvoice.ecn import EcnMode
from quicvoice.encapsulation import unwrap, wrap
from quicvoice.settings import Address

__all__ = ["loopback"]  # the fixture, imported for pytest

ECN_MASK = 0x03
_INT = struct.Struct("=i")
#: A DSCP value (EF, 46) the forwarder must not copy: the network's, not the peer's.
DSCP_EF = 46 << 2


def mark(sock: socket.socket, codepoint: int, dscp: int = 0) -> None:
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, dscp | codepoint)


def receive_marked(sock: socket.socket, count: int) -> list[tuple[bytes, int]]:
    """``count`` datagrams from ``sock`` with the TOS each arrived with."""
    ecn.enable_tos_reporting(sock)
    got = []
    for _ in range(count):
        data, ancdata, _, _ = sock.recvmsg(65536, ecn.ANCILLARY_SIZE)
        tos = -1
        for level, kind, value in ancdata:
            if level == socket.IPPROTO_IP and kind == socket.IP_TOS:
                tos = value[0]
        got.append((data, tos))
    return got


def test_a_plain_socket_relay_bleaches_the_ecn_bits(loopback: Loopback) -> None:
    sender, relay, receiver = loopback.clients[0], loopback.vip, loopback.backends[0]
    mark(sender, 0b01)
    ecn.enable_tos_reporting(relay)
    sender.sendto(b"ect1", loopback.address(relay))
    [(data, tos)] = receive_marked(relay, 1)
    assert tos & ECN_MASK == 0b01  # ECT(1) arrived
    relay.sendto(data, loopback.address(receiver))
    [(_, relayed)] = receive_marked(receiver, 1)
    assert relayed & ECN_MASK == 0  # and left not-ECT: bleached


def short_datagram(backend_index: int, tag: int) -> bytes:
    cid = bytes([0x41]) + CONFIGS[0].encode(SERVER_IDS[backend_index], bytes(12))
    return cid + bytes([tag]) * 40


#: The pumps' loops: ``(uplink, downlink)`` of each Python path, or the native one.
LOOPS = {
    "python": (python_path.uplink_loop, python_path.downlink_loop),
    "python-batch": (python_path.uplink_relay, python_path.downlink_relay),
    "python-batch-router": (python_path.uplink_batches, python_path.downlink_batches),
}


def run(pump: Pump, path: str) -> None:
    pump.idle = stop  # type: ignore[method-assign]
    pump.next_tick = math.inf
    with pytest.raises(Stopped):
        if path == "native":
            assert pump.native is not None
            pump.native.run(pump)
        else:
            uplink, downlink = LOOPS[path]
            (uplink if pump.direction == UPLINK else downlink)(pump)


def pump_for(direction: str, loopback: Loopback, tmp_path: Path, path: str) -> Pump:
    native = path == "native"
    for sock in [loopback.vip, loopback.backend, *loopback.backends, *loopback.clients]:
        drain(sock)
    backends = [loopback.address(sock) for sock in loopback.backends]
    config = forwarder_config(
        loopback.address(loopback.vip), loopback.address(loopback.backend), backends, None
    )
    pump = make_pump(
        direction,
        config,
        loopback.vip,
        loopback.backend,
        tmp_path,
        batch=path.startswith("python-batch"),
    )
    if native:
        pump.native = native_path.NativeRelay(
            uplink=direction == UPLINK,
            vip=loopback.vip,
            backend=loopback.backend,
            router=pump.router,
        )
    return pump


PATHS = [
    *LOOPS,
    pytest.param(
        "native",
        marks=pytest.mark.skipif(not native_path.AVAILABLE, reason=native_path.UNAVAILABLE),
    ),
]
#: Each client's ECN codepoint, and the sequence in which they send (interleaved).
ORDERS = st.lists(st.integers(0, 2), min_size=1, max_size=24)


@pytest.mark.parametrize("path", PATHS)
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(order=ORDERS, codepoints=st.lists(st.integers(0, 3), min_size=3, max_size=3))
def test_each_clients_ecn_bits_reach_the_backend_inside_the_encapsulation(
    loopback: Loopback, tmp_path: Path, path: str, order: list[int], codepoints: list[int]
) -> None:
    for client, codepoint in zip(loopback.clients, codepoints, strict=True):
        mark(client, codepoint, DSCP_EF)
    pump = pump_for(UPLINK, loopback, tmp_path, path)
    for tag, index in enumerate(order):
        loopback.clients[index].sendto(short_datagram(0, tag), loopback.address(loopback.vip))
    run(pump, path)
    by_client = {
        loopback.address(c): cp for c, cp in zip(loopback.clients, codepoints, strict=True)
    }
    got = receive_marked(loopback.backends[0], len(order))
    assert len(got) == len(order)
    for (data, tos), index in zip(got, order, strict=True):
        client, _ = unwrap(data)
        assert (client[0], client[1]) == loopback.address(loopback.clients[index])
        assert tos == by_client[(client[0], client[1])]  # its own bits; DSCP not copied


@pytest.mark.parametrize("path", PATHS)
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(order=ORDERS, codepoints=st.lists(st.integers(0, 3), min_size=3, max_size=3))
def test_the_backends_ecn_bits_reach_each_client_on_the_return_path(
    loopback: Loopback, tmp_path: Path, path: str, order: list[int], codepoints: list[int]
) -> None:
    pump = pump_for(DOWNLINK, loopback, tmp_path, path)
    backend = loopback.backends[1]
    to: Address = loopback.address(loopback.backend)
    for tag, index in enumerate(order):
        client = loopback.address(loopback.clients[index])
        payload = bytes([0x41, tag]) + bytes(30)
        control = [(socket.IPPROTO_IP, socket.IP_TOS, _INT.pack(DSCP_EF | codepoints[index]))]
        backend.sendmsg([wrap(client, payload)], control, 0, to)
    run(pump, path)
    for index, client in enumerate(loopback.clients):
        expected = [bytes([0x41, tag]) + bytes(30) for tag, i in enumerate(order) if i == index]
        got = receive_marked(client, len(expected))
        assert [data for data, _ in got] == expected
        assert all(tos == codepoints[index] for _, tos in got)


@pytest.mark.parametrize(
    ("sender_host", "receiver_host", "target_host"),
    [("::", "127.0.0.1", "::ffff:127.0.0.1"), ("::1", "::1", "::1"), ("127.0.0.1",) * 3],
    ids=["dual-stack-to-ipv4", "ipv6", "ipv4"],
)
def test_the_control_message_marks_datagrams_from_any_socket_family(
    sender_host: str, receiver_host: str, target_host: str
) -> None:
    family = socket.AF_INET6 if ":" in sender_host else socket.AF_INET
    receiver_family = socket.AF_INET6 if ":" in receiver_host else socket.AF_INET
    with (
        socket.socket(family, socket.SOCK_DGRAM) as sender,
        socket.socket(receiver_family, socket.SOCK_DGRAM) as receiver,
    ):
        sender.bind((sender_host, 0))
        receiver.bind((receiver_host, 0))
        receiver.settimeout(2.0)
        ecn.enable_tos_reporting(receiver)
        target = (target_host, receiver.getsockname()[1])
        for codepoint in (1, 3, 2):
            control = ecn.control_for(family == socket.AF_INET6, target_host, codepoint)
            sender.sendmsg([b"x"], control, 0, target)
            _, ancdata, _, _ = receiver.recvmsg(16, ecn.ANCILLARY_SIZE)
            assert ecn.ecn_of(ancdata) == codepoint


def test_one_file_sets_the_backends_ecn_and_the_forwarder_accepts_it() -> None:
    table = tomllib.loads('ecn = "classic"\n' + GOOD)
    assert len(ForwarderConfig.from_mapping(table).backends) == 2
    backend = BackendConfig.from_mapping(table, server_id=bytes.fromhex("0a000001"))
    assert backend.ecn is EcnMode.CLASSIC
