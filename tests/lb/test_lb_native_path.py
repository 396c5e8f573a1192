"""The native path (lb/_native.c, lb/native_path.py) decides and sends exactly as the Router.

- the C QUIC-LB decoder against the Python codec, every algorithm and length;
- the C decisions (sans-I/O ``Tables.uplink`` / ``Tables.downlink``) against the Router: the
  fast path takes exactly the datagrams the Router forwards by server ID (uplink short headers
  from a client with a port) or relays from a configured backend (IPv4 headers, no probes);
- the real native loop on loopback sockets, with and without UDP GSO, on Hypothesis-generated
  mixes of every kind of datagram: the same datagrams reach the same sockets in the same
  order, and the counters are the Router's;
- the forwarder says so when the extension cannot be used, and routes on the Python path.
"""

from __future__ import annotations

import errno
import io
import math
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_lb_fast_path import (
    BACKEND_ADDRESSES,
    CLIENTS,
    CONFIGS,
    SERVER_IDS,
    Loopback,
    backend_datagrams,
    client_datagrams,
    drain,
    fast_packets,
    forwarder_config,
    loopback,
    samples,
    seeded,
    stop,
)

from lb import native_path
from lb.config import load_config
from lb.health import PROBE_CLIENT, PROBE_REPLY_HEADER
from lb.log import JsonLogger
from lb.pump import DOWNLINK, NATIVE, PYTHON, UPLINK, Pump, Stopped
from lb.python_path import port_and_address
from lb.router import DropReason, Forward, Reply, Router, Send
from lb.supervisor import NATIVE_PATH_METRIC, Supervisor
from quicvoice.encapsulation import wrap
from quicvoice.quiclb import LoadBalancerConfig, LoadBalancerDecoder
from quicvoice.settings import Address

needs_native = pytest.mark.skipif(not native_path.AVAILABLE, reason=native_path.UNAVAILABLE)
needs_aesni = pytest.mark.skipif(not native_path.AESNI, reason="no AES-NI on this CPU")
ROOT = Path(__file__).resolve().parents[2]


def test_the_extension_is_built_wherever_it_can_be() -> None:
    """A build that silently lost the native path would still pass everything else."""
    can_build = (
        sys.platform.startswith("linux")
        and shutil.which("gcc") is not None
        and Path(sysconfig.get_paths()["include"], "Python.h").exists()
    )
    if not can_build:
        pytest.skip("no C compiler or Python headers here: the Python path is the one")
    assert native_path.AVAILABLE, native_path.UNAVAILABLE


# The codec ------------------------------------------------------------------------------------


@st.composite
def lb_configs(draw: st.DrawFn) -> LoadBalancerConfig:
    server_id_len = draw(st.integers(1, 15))
    nonce_len = draw(st.integers(4, 19 - server_id_len))
    keyed = draw(st.booleans())
    return LoadBalancerConfig(
        draw(st.integers(0, 6)),
        server_id_len,
        nonce_len,
        draw(st.binary(min_size=16, max_size=16)) if keyed else None,
        encode_length=draw(st.booleans()),
    )


@needs_native
@needs_aesni
@settings(max_examples=300, deadline=None)
@given(
    configs=st.lists(lb_configs(), min_size=1, max_size=4, unique_by=lambda c: c.config_id),
    cids=st.lists(st.binary(max_size=24), max_size=10),
    server_id=st.binary(min_size=15, max_size=15),
    nonce=st.binary(min_size=18, max_size=18),
)
def test_the_native_decoder_reads_every_configuration_as_the_codec(
    configs: list[LoadBalancerConfig], cids: list[bytes], server_id: bytes, nonce: bytes
) -> None:
    for config in configs:  # real CIDs of each configuration, and the same cut short
        cid = config.encode(server_id[: config.server_id_len], nonce[: config.nonce_len])
        cids += [cid, cid[:-1], cid + b"\x00"]
    assert native_path.native is not None
    slots: list[LoadBalancerConfig | None] = [None] * 8
    for config in configs:
        slots[config.config_id] = config
    specs = [native_path.config_spec(config) for config in slots]
    tables = native_path.native.Tables(specs, [], [], bytes(6))
    decoder = LoadBalancerDecoder(configs)
    for cid in cids:
        expected = decoder.decode(cid)
        assert tables.decode(cid) == (expected if isinstance(expected, bytes) else None), cid


# Decisions, sans-I/O ----------------------------------------------------------------------------


def _native_tables(down: int | None) -> tuple[Router, native_path.NativeTables]:
    config = forwarder_config(("127.0.0.1", 4433), ("127.0.0.1", 4434), BACKEND_ADDRESSES, down)
    router = Router(config, random=seeded(0))
    return router, native_path.NativeTables(router)


@needs_native
@needs_aesni
@settings(max_examples=500, deadline=None)
@given(
    traffic=st.lists(st.tuples(client_datagrams(), CLIENTS), max_size=20),
    down=st.sampled_from([None, 0, 2]),
)
def test_the_native_uplink_takes_exactly_what_the_router_forwards_by_server_id(
    traffic: list[tuple[bytes, Address]], down: int | None
) -> None:
    router, native = _native_tables(down)
    live = list(router.fast_uplink.values())
    for datagram, client in traffic:
        by_server_id = router.counters.routed_server_id
        try:
            decision = router.route_from_client(datagram, client)
        except ValueError:  # port 0: the Router cannot wrap it
            decision = None
        fast = (
            type(decision) is Forward
            and router.counters.routed_server_id > by_server_id
            and not datagram[0] & 0x80
        )
        index = native.tables.uplink(datagram, client[1])
        if fast:
            assert decision is not None
            assert index >= 0 and live[index].address == decision.address
        else:
            assert index == -1


@needs_native
@settings(max_examples=500, deadline=None)
@given(traffic=st.lists(backend_datagrams(), max_size=20), down=st.sampled_from([None, 1]))
def test_the_native_downlink_takes_exactly_the_routers_ipv4_sends(
    traffic: list[tuple[bytes, Address]], down: int | None
) -> None:
    router, native = _native_tables(down)
    sources = list(router.fast_downlink)
    for datagram, source in traffic:
        decision = router.route_from_backend(datagram, source)
        fast = type(decision) is Send and datagram[1] == 4 and datagram[:8] != PROBE_REPLY_HEADER
        index = native.tables.downlink(datagram, port_and_address(source))
        if fast:
            assert sources[index] == source
        else:
            assert index == -1


# The real loop on loopback ------------------------------------------------------------------------

__all__ = ["loopback"]  # the fixture, shared with test_lb_fast_path


def native_pump(
    direction: str,
    loopback: Loopback,
    tmp_path: Path,
    down: int | None,
    gso: bool,
    seed: int = 0,
    batch: int | None = None,
) -> Pump:
    backends = [loopback.address(sock) for sock in loopback.backends]
    config = forwarder_config(
        loopback.address(loopback.vip), loopback.address(loopback.backend), backends, down
    )
    pump = Pump(
        direction=direction,
        worker=0,
        config_path=tmp_path / "unused.toml",
        config=config,
        vip=loopback.vip,
        backend=loopback.backend,
        snapshot=tmp_path / f"{direction}.json",
        parent_pid=os.getppid(),
        logger=JsonLogger("error", io.StringIO()),
    )
    assert pump.path == NATIVE and pump.native is not None
    pump.native = native_path.NativeRelay(
        uplink=direction == UPLINK,
        vip=loopback.vip,
        backend=loopback.backend,
        router=pump.router,
        gso=gso,
        batch=batch,
    )
    pump.use(Router(config, pump.counters, random=seeded(seed)))
    return pump


#: Receive limits of the loop: 1 keeps it on one-by-one receives (recvfrom, a recvmmsg every
#: PROBE_EVERY-th time), 2 alternates, 64 (MAX_BATCH) takes whatever is queued.
BATCHES = st.sampled_from([1, 2, 64])


def run_native(pump: Pump) -> int:
    """Run the native loop until its socket stays empty; return how many took the fast path."""
    pump.idle = stop  # type: ignore[method-assign]
    pump.next_tick = math.inf
    assert pump.native is not None
    with pytest.raises(Stopped):
        pump.native.run(pump)
    drops = pump.counters.uplink_drops if pump.direction == UPLINK else pump.counters.downlink_drops
    pump.native.fold(drops)
    fast = fast_packets(pump)
    pump.flush()
    return fast


@needs_native
@needs_aesni
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    traffic=st.lists(st.tuples(client_datagrams(), st.integers(0, 2)), max_size=60),
    bursts=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(21, 300))),
    down=st.sampled_from([None, 0]),
    seed=st.integers(0, 100),
    gso=st.booleans(),
    batch=BATCHES,
)
def test_the_native_uplink_sends_and_counts_as_the_router(
    loopback: Loopback,
    tmp_path: Path,
    traffic: list[tuple[bytes, int]],
    bursts: list[tuple[int, int, int]],
    down: int | None,
    seed: int,
    gso: bool,
    batch: int,
) -> None:
    for sock in [loopback.vip, *loopback.backends, *loopback.clients]:
        drain(sock)
    pump = native_pump(UPLINK, loopback, tmp_path, down, gso, seed, batch)
    # Runs of equal-sized datagrams to one backend (what GSO sends as one message), mixed in.
    for client_index, backend_index, size in bursts:
        cid = bytes([0x41]) + CONFIGS[0].encode(SERVER_IDS[backend_index], bytes(12))
        for n in range(5):
            traffic.append((cid + bytes([n]) * (size - len(cid)), client_index))
    items = []
    for datagram, client_index in traffic:
        sender = loopback.clients[client_index]
        sender.sendto(datagram, loopback.address(loopback.vip))
        items.append((datagram, loopback.address(sender)))
    fast = run_native(pump)

    reference = Router(pump.router.config, random=seeded(seed))
    to_backend: dict[Address, list[bytes]] = {loopback.address(s): [] for s in loopback.backends}
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
        assert {source for _, source in got} <= {loopback.address(loopback.vip)}
    assert samples(pump.counters) == samples(reference.counters)
    assert fast == expected_fast
    assert pump.send_error_samples() == []


@needs_native
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    traffic=st.lists(
        st.tuples(
            st.sampled_from(["reply", "reply", "reply", "probe", "raw", "edge", "ipv6", "bcast"]),
            st.integers(0, 3),  # which backend sends it (3: a stranger)
            st.integers(0, 2),  # which client it names
            st.binary(max_size=60),
        ),
        max_size=60,
    ),
    burst=st.integers(0, 40),
    down=st.sampled_from([None, 1]),
    damage=st.sampled_from([(0, 0x70), (0, 0), (1, 0), (1, 6), (2, 0)]),
    gso=st.booleans(),
    batch=BATCHES,
)
def test_the_native_downlink_sends_and_counts_as_the_router(
    loopback: Loopback,
    tmp_path: Path,
    traffic: list[tuple[str, int, int, bytes]],
    burst: int,
    down: int | None,
    damage: tuple[int, int],
    gso: bool,
    batch: int,
) -> None:
    """Broadcast destinations fail with EACCES (no SO_BROADCAST): that datagram alone is lost,
    counted by errno, GSO run or not; IPv6 clients cannot be reached from an IPv4 VIP."""
    for sock in [loopback.backend, *loopback.clients]:
        drain(sock)
    pump = native_pump(DOWNLINK, loopback, tmp_path, down, gso, batch=batch)
    heard: list[object] = []
    pump.probe_answered = heard.append  # type: ignore[method-assign,assignment]
    senders = [*loopback.backends, loopback.stranger]
    traffic = traffic + [("reply", 0, 1, bytes(100))] * burst + [("bcast", 0, 0, bytes(50))] * 3
    items = []
    for kind, sender_index, client_index, payload in traffic:
        client = loopback.address(loopback.clients[client_index])
        if kind == "reply":
            data = wrap(client, payload)
        elif kind == "probe":
            data = wrap(PROBE_CLIENT, payload)
        elif kind == "ipv6":
            data = wrap(("::1", client[1]), payload)
        elif kind == "bcast":
            data = wrap(("255.255.255.255", client[1]), payload)
        elif kind == "edge":
            header = bytearray(wrap(client, b""))
            header[damage[0]] = damage[1]
            if damage[0] == 2:
                header[3] = 0
            data = bytes(header) + payload
        else:
            data = bytes([0x40]) + payload
        senders[sender_index].sendto(data, loopback.address(loopback.backend))
        items.append((data, loopback.address(senders[sender_index])))
    fast = run_native(pump)

    reference = Router(pump.router.config)
    expected: dict[Address, list[bytes]] = {loopback.address(c): [] for c in loopback.clients}
    probes = []
    expected_fast = 0
    errors: dict[str, int] = {}
    for data, source in items:
        if data[:8] == PROBE_REPLY_HEADER:
            probes.append(source)
            continue
        decision = reference.route_from_backend(data, source)
        if type(decision) is not Send:
            continue
        expected_fast += data[1] == 4
        name = (
            "EAFNOSUPPORT"
            if ":" in decision.address[0]
            else "EACCES"
            if decision.address[0] == "255.255.255.255"
            else None
        )
        if name is not None:
            reference.counters.downlink_drops[DropReason.SEND_ERROR] += 1
            errors[name] = errors.get(name, 0) + 1
            continue
        expected[decision.address].append(decision.datagram)
    for sock in loopback.clients:
        got = drain(sock, len(expected[loopback.address(sock)]))
        assert [data for data, _ in got] == expected[loopback.address(sock)]
        assert {source for _, source in got} <= {loopback.address(loopback.vip)}
    assert heard == probes
    assert samples(pump.counters) == samples(reference.counters)
    assert fast == expected_fast
    assert {labels[1][1]: count for _, labels, count in pump.send_error_samples()} == errors


@needs_native
def test_gso_runs_arrive_as_separate_datagrams_in_order(loopback: Loopback, tmp_path: Path) -> None:
    """64 equal datagrams and a shorter last one, to one backend, all queued before the relay
    runs: sent as GSO messages, received as 65 datagrams in order."""
    pump = native_pump(UPLINK, loopback, tmp_path, None, True)
    cid = bytes([0x41]) + CONFIGS[1].encode(SERVER_IDS[0], bytes(8))
    sent = [cid + bytes([n]) * 180 for n in range(64)] + [cid + b"last" * 10]
    for datagram in sent:
        loopback.clients[0].sendto(datagram, loopback.address(loopback.vip))
    assert run_native(pump) == len(sent)
    got = drain(loopback.backends[0], len(sent))
    client = loopback.address(loopback.clients[0])
    assert [data for data, _ in got] == [wrap(client, datagram) for datagram in sent]
    assert pump.native is not None
    statistics = pump.native.statistics()
    assert statistics.datagrams == len(sent) and statistics.gso
    assert statistics.gso_messages >= 1 and statistics.batches < len(sent)


@needs_native
def test_lone_datagrams_are_received_one_by_one_and_a_queue_brings_batches_back(
    loopback: Loopback, tmp_path: Path
) -> None:
    """One datagram in flight at a time: after the first (a batch of one) the loop receives
    with recvfrom, with a recvmmsg every PROBE_EVERY-th receive; then 40 queued datagrams: the
    next probe finds them and the loop takes them in batches again (and yields the CPU after a
    batch of more than one). Every datagram arrives, in order, as the Router would send it."""
    assert native_path.native is not None
    probe_every = native_path.native.PROBE_EVERY
    pump = native_pump(UPLINK, loopback, tmp_path, None, True)
    assert pump.native is not None
    cid = bytes([0x41]) + CONFIGS[1].encode(SERVER_IDS[0], bytes(8))
    client, vip = loopback.clients[0], loopback.address(loopback.vip)
    wrapped = loopback.address(client)
    lone = 2 * probe_every + 3
    for n in range(lone):
        client.sendto(cid + n.to_bytes(30, "big"), vip)
        assert run_native(pump) == 1
        assert [data for data, _ in drain(loopback.backends[0], 1)] == [
            wrap(wrapped, cid + n.to_bytes(30, "big"))
        ]
    alone = pump.native.statistics()
    # Receives 1, PROBE_EVERY + 1, 2 * PROBE_EVERY + 1 are recvmmsg (a batch of one each).
    assert (alone.batches, alone.datagrams, alone.single_receives) == (lone, lone, lone - 3)
    assert alone.yields == 0  # batches of one never yield the CPU
    burst = [cid + bytes([n]) * 100 for n in range(40)]
    for datagram in burst:
        client.sendto(datagram, vip)
    assert run_native(pump) == len(burst)
    got = drain(loopback.backends[0], len(burst))
    assert [data for data, _ in got] == [wrap(wrapped, datagram) for datagram in burst]
    after = pump.native.statistics()
    singles = after.single_receives - alone.single_receives
    assert singles == probe_every - 3  # until the next probe, which takes the rest at once
    assert after.batches - alone.batches == singles + 1
    assert after.datagrams - alone.datagrams == len(burst)
    assert after.yields - alone.yields == 1  # before the receive after the batch


# When the native path cannot run ------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """UDP ports of 127.0.0.1 that nobody uses right now."""
    probes = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def test_the_supervisor_says_when_it_routes_on_the_python_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(native_path, "AVAILABLE", False)
    monkeypatch.setattr(native_path, "UNAVAILABLE", "the extension lb._native was not built")
    ports = free_ports(2)
    path = tmp_path / "lb.toml"
    path.write_text(
        f'listen = "127.0.0.1:{ports[0]}"\nbackend_listen = "127.0.0.1:{ports[1]}"\n'
        "[[configs]]\nid = 0\nserver_id_len = 4\nnonce_len = 12\n"
        '[[backends]]\nserver_id = "0a000001"\naddress = "127.0.0.1:4501"\n'
    )
    supervisor = Supervisor(path, load_config(path), 1, JsonLogger("error", io.StringIO()))
    try:
        supervisor._bind()
        assert supervisor.python_reason == "the extension lb._native was not built"
        assert (NATIVE_PATH_METRIC, (), 0) in supervisor.collect()
        vip, backend = supervisor._sockets[0]
        pump = Pump(
            direction=UPLINK,
            worker=0,
            config_path=path,
            config=supervisor.config,
            vip=vip,
            backend=backend,
            snapshot=tmp_path / "s.json",
            parent_pid=os.getppid(),
            logger=JsonLogger("error", io.StringIO()),
        )
        assert pump.path == PYTHON and pump.native is None
    finally:
        supervisor._shutdown()


@pytest.mark.integration
@pytest.mark.parametrize("how", ["not built", "--python-path"])
def test_a_forwarder_without_the_native_path_logs_why_and_exports_the_gauge(
    tmp_path: Path, how: str
) -> None:
    """A real quicvoice-lb process: lb._native made unimportable (as on a machine without a
    compiler), or the Python path asked for; it says so, and forwards all the same."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        metrics = probe.getsockname()[1]
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.settimeout(2)
    ports = free_ports(2)
    path = tmp_path / "lb.toml"
    path.write_text(
        f'listen = "127.0.0.1:{ports[0]}"\nbackend_listen = "127.0.0.1:{ports[1]}"\n'
        f'metrics = "127.0.0.1:{metrics}"\nhealth_interval = 0\n'
        "[[configs]]\nid = 1\nserver_id_len = 4\nnonce_len = 8\n"
        f'[[backends]]\nserver_id = "0a000001"\naddress = "127.0.0.1:{echo.getsockname()[1]}"\n'
    )
    code = (
        "import sys\n"
        + ("sys.modules['lb._native'] = None\n" if how == "not built" else "")
        + "from lb.__main__ import main\n"
        + f"sys.exit(main(['--config', {str(path)!r}] + sys.argv[1:]))\n"
    )
    args = ["--python-path"] if how == "--python-path" else []
    log = tmp_path / "log"
    with log.open("wb") as stderr:
        process = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stderr=stderr)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    try:
        deadline = time.monotonic() + 10
        while '"event":"forwarding"' not in log.read_text():
            assert time.monotonic() < deadline and process.poll() is None, log.read_text()
            time.sleep(0.05)
        text = log.read_text()
        assert '"event":"python_path"' in text and '"path":"python"' in text
        reason = "lb._native was not built" if how == "not built" else "--python-path"
        assert reason in text
        datagram = bytes([0x41, 0x20]) + bytes.fromhex("0a000001") + bytes(40)
        client.sendto(datagram, ("127.0.0.1", ports[0]))
        data, _ = echo.recvfrom(65536)
        assert data == wrap(client.getsockname(), datagram)
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=2) as reply:
            assert f"{NATIVE_PATH_METRIC} 0" in reply.read().decode()
    finally:
        process.terminate()
        process.wait(10)
        client.close()
        echo.close()


def test_a_stale_extension_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    if not native_path.AVAILABLE:
        pytest.skip(native_path.UNAVAILABLE)
    monkeypatch.setattr(native_path, "ABI_VERSION", native_path.ABI_VERSION + 1)
    module, reason = native_path._load()
    assert module is None and "stale" in reason


@needs_native
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    address=st.one_of(
        st.tuples(st.text(max_size=20), st.integers(-5, 70000)),
        st.tuples(st.sampled_from(["127.0.0.1", "::1", "1.2.3", "256.0.0.1"]), st.integers()),
        st.tuples(st.integers(), st.integers()),
        st.tuples(st.just("127.0.0.1")),
        st.none(),
    ),
    index=st.integers(-1, 70),
)
def test_resolve_sends_counts_or_refuses_whatever_python_hands_it(
    loopback: Loopback, tmp_path: Path, address: object, index: int
) -> None:
    """The one entry point that takes Python objects: an address an IPv4 socket cannot reach
    is one datagram lost and counted (EAFNOSUPPORT); misuse (an index that waits for nothing)
    is a ValueError or TypeError; nothing else happens."""
    drain(loopback.vip)
    pump = native_pump(UPLINK, loopback, tmp_path, None, True)
    assert pump.native is not None
    relay = pump.native.relay
    initial = bytes([0xC3]) + (1).to_bytes(4, "big") + bytes([8]) + bytes(8) + bytes(1200)
    loopback.clients[0].sendto(initial, loopback.address(loopback.vip))
    assert native_path.native is not None
    assert relay.run(math.inf) == native_path.native.SLOW
    [(waiting, datagram, _)] = relay.pending()
    assert datagram == initial
    try:
        relay.resolve(index, address, b"reply", False)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        assert index != waiting
        relay.flush()
        return
    relay.flush()
    errors = relay.errors()
    dropped = relay.take_dropped()
    reachable = (
        isinstance(address, tuple)
        and len(address) >= 2
        and address[0] == "127.0.0.1"
        and isinstance(address[1], int)
        and 0 <= address[1] <= 0xFFFF
    )
    if not reachable:
        assert errors.get(errno.EAFNOSUPPORT) == 1 and dropped == 1
