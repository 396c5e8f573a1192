"""quicvoice-lb as a real process on loopback, with fake backends that unwrap and echo.

Each test starts the forwarder as a subprocess on free ports of 127.0.0.1; fake backends are
threads in this process; clients send from 127.0.0.2. Everything is bounded in time.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lb import mmsg, native_path
from quicvoice.encapsulation import unwrap, wrap
from quicvoice.quiclb import LoadBalancerConfig, QuicLbConnectionIdGenerator

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
CLIENT_HOST = "127.0.0.2"
KEY = "8f95f09245765f80256934e50c66207f"
CONFIG = LoadBalancerConfig(0, 4, 12, bytes.fromhex(KEY))
RESET_KEY = bytes(range(32))
START_TIMEOUT = 5.0
REPLY_TIMEOUT = 2.0


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class FakeBackend:
    """Unwraps what the forwarder sends and answers ``name|payload`` wrapped to the client."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(0.2)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.address: tuple[str, int] = self.sock.getsockname()
        self.server_id = bytes.fromhex(name)
        self.received = 0
        self.clients: set[tuple[str, int]] = set()
        self.sources: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def cid(self) -> bytes:
        return QuicLbConnectionIdGenerator(self.server_id, CONFIG, RESET_KEY).generate()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, source = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            client, payload = unwrap(data)
            self.received += 1
            self.clients.add(client)
            self.sources.add(source)
            self.sock.sendto(wrap(client, self.name + b"|" + payload), source)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class Forwarder:
    """A quicvoice-lb subprocess and its configuration file."""

    def __init__(
        self,
        directory: Path,
        backends: list[FakeBackend],
        workers: int = 1,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.directory = directory
        self.extra_args = extra_args
        self.listen = (HOST, free_port())
        self.backend_listen = (HOST, free_port())
        self.metrics = (HOST, free_port(socket.SOCK_STREAM))
        self.path = directory / "lb.toml"
        self.workers = workers
        self.write(backends)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "lb.log"

    def write(
        self,
        backends: list[FakeBackend],
        down: frozenset[str] = frozenset(),
        health_interval: float = 0.0,
    ) -> None:
        # Health probes are off by default here: these fake backends count every datagram.
        text = (
            f"health_interval = {health_interval}\n"
            "health_timeout = 0.5\n"
            f'listen = "{HOST}:{self.listen[1]}"\n'
            f'backend_listen = "{HOST}:{self.backend_listen[1]}"\n'
            f'metrics = "{HOST}:{self.metrics[1]}"\n'
            f'reset_key = "{RESET_KEY.hex()}"\n'
            'log_level = "debug"\n'
            f'[[configs]]\nid = 0\nserver_id_len = 4\nnonce_len = 12\nkey = "{KEY}"\n'
        )
        for backend in backends:
            text += (
                f'[[backends]]\nserver_id = "{backend.server_id.hex()}"\n'
                f'address = "{HOST}:{backend.address[1]}"\n'
                f"down = {'true' if backend.name.decode() in down else 'false'}\n"
            )
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(text)
        os.replace(temporary, self.path)

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lb",
                    "--config",
                    str(self.path),
                    "--workers",
                    str(self.workers),
                    *self.extra_args,
                ],
                stderr=log,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://{HOST}:{self.metrics[1]}/metrics", timeout=0.5)
                if len(self.pumps()) == 2 * self.workers:
                    return
            except OSError:
                pass
            assert self.process.poll() is None, self.log.read_text()
            time.sleep(0.05)
        raise AssertionError("the forwarder did not start:\n" + self.log.read_text())

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def pumps(self) -> list[int]:
        children: list[int] = []
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                text = Path(f"/proc/{self.pid}/task/{tid}/children").read_text()
            except OSError:
                continue
            children += [int(pid) for pid in text.split()]
        return children

    def metric(self, name: str, **labels: str) -> int:
        text = (
            urllib.request.urlopen(f"http://{HOST}:{self.metrics[1]}/metrics", timeout=2)
            .read()
            .decode()
        )
        total = 0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{key}="{value}"' in line for key, value in labels.items()):
                total += int(line.rsplit(" ", 1)[1])
        return total

    def wait_metric(self, name: str, at_least: int, **labels: str) -> int:
        deadline = time.monotonic() + 4.0
        value = self.metric(name, **labels)
        while value < at_least and time.monotonic() < deadline:
            time.sleep(0.1)
            value = self.metric(name, **labels)
        return value

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


class Client:
    """A UDP client on 127.0.0.2 that sends short-header packets and collects replies."""

    def __init__(self, host: str = CLIENT_HOST) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(REPLY_TIMEOUT)

    def ask(
        self, vip: tuple[str, int], cid: bytes, body: bytes = b"hello"
    ) -> tuple[bytes, tuple[str, int]]:
        self.sock.sendto(packet(cid, body), vip)
        data, source = self.sock.recvfrom(65536)
        return data, source

    def close(self) -> None:
        self.sock.close()


def packet(cid: bytes, body: bytes) -> bytes:
    data = bytes([0x41]) + cid + body
    return data + bytes(max(0, 40 - len(data)))


@pytest.fixture
def backends() -> Iterator[list[FakeBackend]]:
    made = [FakeBackend(f"0a00000{n}") for n in (1, 2, 3)]
    yield made
    for backend in made:
        backend.close()


@pytest.fixture
def forwarder(tmp_path: Path, backends: list[FakeBackend]) -> Iterator[Forwarder]:
    made = Forwarder(tmp_path, backends)
    made.start()
    yield made
    made.stop()


#: The native path (the default where lb._native is built: batched, adaptively), and the
#: Python path per datagram and batched (recvmmsg/sendmmsg, --batch).
IO_MODES = {
    "native": (),
    "python": ("--python-path",),
    "python-batched": ("--python-path", "--batch"),
}


@pytest.fixture(params=list(IO_MODES))
def any_io_forwarder(
    request: pytest.FixtureRequest, tmp_path: Path, backends: list[FakeBackend]
) -> Iterator[Forwarder]:
    made = Forwarder(tmp_path, backends, extra_args=IO_MODES[request.param])
    made.start()
    try:
        native = request.param == "native" and native_path.AVAILABLE
        batched = native or (request.param == "python-batched" and mmsg.AVAILABLE)
        expected = f'"path":"{"native" if native else "python"}"'
        deadline = time.monotonic() + START_TIMEOUT
        while made.log.read_text().count('"event":"pump_started"') < 2:
            assert time.monotonic() < deadline, made.log.read_text()
            time.sleep(0.05)
        started = [line for line in made.log.read_text().splitlines() if "pump_started" in line]
        assert all(expected in line for line in started), started
        assert all(f'"batched":{str(batched).lower()}' in line for line in started), started
        yield made
    finally:
        made.stop()


def test_datagrams_land_where_the_cids_say_and_replies_leave_from_the_vip(
    any_io_forwarder: Forwarder, backends: list[FakeBackend]
) -> None:
    forwarder = any_io_forwarder
    client = Client()
    garbage = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    garbage.bind((CLIENT_HOST, 0))
    rng = random.Random(1)
    try:
        for round_ in range(20):
            for backend in backends:
                # Garbage between good datagrams: random bytes, truncated and huge ones.
                garbage.sendto(rng.randbytes(rng.randrange(1, 300)), forwarder.listen)
                garbage.sendto(b"\xc0\x00\x00\x00\x01\x08", forwarder.listen)
                if round_ == 0:
                    garbage.sendto(bytes([0x41]) + bytes(60000), forwarder.listen)
                body = f"{round_}".encode()
                data, source = client.ask(forwarder.listen, backend.cid(), body)
                assert source == forwarder.listen
                assert data.startswith(backend.name + b"|" + bytes([0x41]))
        for backend in backends:
            assert backend.received >= 20
            assert backend.clients >= {client.sock.getsockname()}
            assert backend.sources == {forwarder.backend_listen}
        assert (
            forwarder.wait_metric("quicvoice_lb_routed_packets_total", 60, rule="server_id") >= 60
        )
        dropped = forwarder.wait_metric(
            "quicvoice_lb_dropped_packets_total", 20, direction="uplink"
        )
        assert dropped >= 20
    finally:
        client.close()
        garbage.close()


def test_the_forwarder_is_no_open_reflector(forwarder: Forwarder) -> None:
    victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    victim.bind(("127.0.0.6", 0))
    victim.settimeout(0.5)
    spoofer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    spoofer.bind(("127.0.0.5", 0))
    try:
        for _ in range(5):
            spoofer.sendto(
                wrap(victim.getsockname(), b"\x41" + bytes(100)), forwarder.backend_listen
            )
        with pytest.raises(TimeoutError):
            victim.recvfrom(65536)
        assert (
            forwarder.wait_metric(
                "quicvoice_lb_dropped_packets_total",
                5,
                direction="downlink",
                reason="not_a_backend",
            )
            == 5
        )
    finally:
        victim.close()
        spoofer.close()


def test_replies_to_an_unreachable_client_are_counted_by_errno(
    any_io_forwarder: Forwarder, backends: list[FakeBackend]
) -> None:
    forwarder = any_io_forwarder
    client = Client()
    try:
        # An IPv6 client address cannot be reached from an IPv4 VIP: the send fails, the
        # datagram is counted, and the next reply in the same batch still goes out.
        backends[0].sock.sendto(
            wrap(("2001:db8::1", 4433), b"\x41" + bytes(30)), forwarder.backend_listen
        )
        data, _ = client.ask(forwarder.listen, backends[0].cid())
        assert data.startswith(backends[0].name)
        assert (
            forwarder.wait_metric(
                "quicvoice_lb_dropped_packets_total", 1, direction="downlink", reason="send_error"
            )
            == 1
        )
        assert (
            forwarder.wait_metric(
                "quicvoice_lb_send_errors_total", 1, direction="downlink", error="EAFNOSUPPORT"
            )
            == 1
        )
    finally:
        client.close()


def test_kill_9_and_restart_mid_call_remembers_nothing_and_loses_no_call(
    forwarder: Forwarder, backends: list[FakeBackend]
) -> None:
    client = Client()
    cids = [backend.cid() for backend in backends]
    try:
        for cid, backend in zip(cids, backends, strict=True):
            assert client.ask(forwarder.listen, cid)[0].startswith(backend.name)
        pumps = forwarder.pumps()
        os.kill(forwarder.pid, signal.SIGKILL)
        assert forwarder.process is not None
        forwarder.process.wait(5)
        deadline = time.monotonic() + 3
        while any(Path(f"/proc/{pid}").exists() for pid in pumps) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(Path(f"/proc/{pid}").exists() for pid in pumps), "orphaned pumps"
        forwarder.start()
        # Same client socket, same CIDs: the call carries on through a brand-new process.
        for cid, backend in zip(cids, backends, strict=True):
            assert client.ask(forwarder.listen, cid)[0].startswith(backend.name)
    finally:
        client.close()


def test_sighup_reload_while_traffic_flows_loses_no_datagram(
    forwarder: Forwarder, backends: list[FakeBackend]
) -> None:
    fourth = FakeBackend("0a000004")
    client = Client()
    client.sock.settimeout(0.05)
    cids = [backend.cid() for backend in backends[:2]]
    sent = received = 0
    window = 8
    try:
        deadline = time.monotonic() + 1.5
        reloaded_at = time.monotonic() + 0.5
        reloaded = False
        while time.monotonic() < deadline and sent < 50_000:
            while sent - received < window:
                client.sock.sendto(packet(cids[sent % 2], str(sent).encode()), forwarder.listen)
                sent += 1
            try:
                client.sock.recvfrom(65536)
                received += 1
            except TimeoutError:
                pass
            if not reloaded and time.monotonic() >= reloaded_at:
                forwarder.write([*backends, fourth], down=frozenset({"0a000003"}))
                os.kill(forwarder.pid, signal.SIGHUP)
                reloaded = True
        client.sock.settimeout(1.0)
        while received < sent:
            client.sock.recvfrom(65536)
            received += 1
        assert reloaded
        assert received == sent > 200
        assert forwarder.wait_metric("quicvoice_lb_config_reloads_total", 1, result="ok") == 1
        # The new backend is reachable; the one marked down gets a stateless reset.
        client.sock.settimeout(REPLY_TIMEOUT)
        assert client.ask(forwarder.listen, fourth.cid())[0].startswith(fourth.name)
        reset, source = client.ask(forwarder.listen, backends[2].cid(), b"x" * 60)
        assert source == forwarder.listen and reset[0] & 0xC0 == 0x40
        assert len(reset) < len(packet(b"x" * 17, b"x" * 60))
        assert backends[2].received == 0
    finally:
        client.close()
        fourth.close()


def test_a_bad_config_on_sighup_is_refused_and_forwarding_goes_on(
    forwarder: Forwarder, backends: list[FakeBackend]
) -> None:
    client = Client()
    try:
        forwarder.path.write_text("listen = nonsense")
        os.kill(forwarder.pid, signal.SIGHUP)
        assert forwarder.wait_metric("quicvoice_lb_config_reloads_total", 1, result="error") == 1
        assert client.ask(forwarder.listen, backends[0].cid())[0].startswith(backends[0].name)
        assert "reload_refused" in forwarder.log.read_text()
    finally:
        client.close()


def test_two_workers_share_the_ports(tmp_path: Path, backends: list[FakeBackend]) -> None:
    forwarder = Forwarder(tmp_path, backends, workers=2)
    forwarder.start()
    clients = [Client() for _ in range(16)]
    try:
        assert len(forwarder.pumps()) == 4
        for index, client in enumerate(clients):
            backend = backends[index % 3]
            assert client.ask(forwarder.listen, backend.cid())[0].startswith(backend.name)
        assert forwarder.wait_metric("quicvoice_lb_workers", 2) == 2
        assert (
            forwarder.wait_metric("quicvoice_lb_received_packets_total", 16, direction="uplink")
            == 16
        )
    finally:
        for client in clients:
            client.close()
        forwarder.stop()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_memory_stays_flat_over_1e5_distinct_cids(
    forwarder: Forwarder, backends: list[FakeBackend]
) -> None:
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind((CLIENT_HOST, 0))
    rng = random.Random(5)
    initial_tail = bytes(1200 - 6 - 8 - 1)

    def flood(count: int) -> None:
        for n in range(count):
            if n % 2:
                datagram = bytes([0x41]) + rng.randbytes(17) + bytes(40)  # unknown CIDs
            else:  # first flights: client-chosen DCIDs, each new
                datagram = b"\xc3\x00\x00\x00\x01\x08" + rng.randbytes(8) + initial_tail
            sender.sendto(datagram, forwarder.listen)
            if not n % 100:
                time.sleep(0.003)  # pace below the forwarder's rate: count, not kernel drops

    try:
        flood(10_000)
        forwarder.wait_metric("quicvoice_lb_received_packets_total", 10_000, direction="uplink")
        before = {pid: rss_kib(pid) for pid in forwarder.pumps()}
        flood(100_000)
        received = forwarder.wait_metric(
            "quicvoice_lb_received_packets_total", 110_000, direction="uplink"
        )
        after = {pid: rss_kib(pid) for pid in forwarder.pumps()}
        assert received >= 100_000
        grown = {pid: after[pid] - before[pid] for pid in before}
        print(f"RSS before {before} KiB, growth {grown} KiB over 10^5 distinct CIDs")
        assert all(growth < 1024 for growth in grown.values()), grown
    finally:
        sender.close()


def test_a_backend_that_stops_answering_probes_is_treated_as_down(
    tmp_path: Path, backends: list[FakeBackend]
) -> None:
    """Probes (lb/health.py) find a dead backend with no operator: its packets get resets."""
    forwarder = Forwarder(tmp_path, backends)
    forwarder.write(backends, health_interval=0.1)
    forwarder.start()
    client = Client()
    try:
        time.sleep(0.8)  # several probe rounds: every backend answers (the fakes echo them)
        reply, _ = client.ask(forwarder.listen, backends[2].cid(), b"x" * 60)
        assert reply.startswith(b"0a000003|")
        backends[2].close()  # the backend dies: no probe answered from now on
        deadline = time.monotonic() + 5
        client.sock.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                reply, source = client.ask(forwarder.listen, backends[2].cid(), b"x" * 60)
            except TimeoutError:
                continue  # still routed to the dead backend: nothing comes back
            if reply[0] & 0xC0 == 0x40 and not reply.startswith(b"0a0000"):
                break
        else:
            pytest.fail("the dead backend was never treated as down")
        assert source == forwarder.listen and len(reply) < len(packet(b"x" * 17, b"x" * 60))
        # The live backends are untouched.
        reply, _ = client.ask(forwarder.listen, backends[0].cid())
        assert reply.startswith(b"0a000001|")
        assert "backend_unhealthy" in forwarder.log.read_text()
    finally:
        client.close()
        forwarder.stop()
