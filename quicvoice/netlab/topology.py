"""The Wi-Fi/cellular topology of the demo and of the loss/delay tests (specs/netlab.md).

    client ns                      router ns                          server ns
    wifi0 198.18.1.2 ---veth--- wifi-r 198.18.1.1
                                               \\
    cell0 198.18.2.2 ---veth--- cell-r 198.18.2.1    srv-r 198.18.0.1 ---veth--- eth0 198.18.0.2
                                    |   ^                 |   ^           forwarder, backends
                            uplink  v   | (back in)       v   |  downlink
                                  dl-up  <-- delay line -->  dl-down     (TUN, one process)

The client picks its interface by source address (policy routing: ``from <wifi ip>`` uses a
table whose default route is wifi0, ``from <cell ip>`` one via cell0), so binding a socket to
the cell address is a real change of interface and route. In the router, everything that came
in on ``cell-r`` is routed into ``dl-up`` and everything from the server side to the cell
subnet into ``dl-down``; the delay line writes each packet back into the device it came from
after its delay, and the main table then forwards it on. Addresses are from 198.18.0.0/15
(RFC 2544, reserved for benchmarking) and exist only inside the lab's namespaces.
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from .delayline import LineConfig, LineStats
from .lab import Lab, Namespace, NetlabError

SERVER_NET, SERVER_IP, SERVER_GATEWAY = "198.18.0.0/24", "198.18.0.2", "198.18.0.1"
WIFI_NET, WIFI_IP, WIFI_GATEWAY = "198.18.1.0/24", "198.18.1.2", "198.18.1.1"
CELL_NET, CELL_IP, CELL_GATEWAY = "198.18.2.0/24", "198.18.2.2", "198.18.2.1"
#: Routing tables and rule priorities (below the main table's 32766).
WIFI_TABLE, CELL_TABLE, UPLINK_TABLE, DOWNLINK_TABLE = 101, 102, 201, 202
#: Device names (namespaces are separate, so they repeat across labs).
WIFI_DEVICE, CELL_DEVICE, SERVER_DEVICE = "wifi0", "cell0", "eth0"
UPLINK_TUN, DOWNLINK_TUN = "dl-up", "dl-down"
#: The cellular link of the demo by default: 50 ms each way (RTT 100 ms), 1 % loss each way.
DEFAULT_CELL = LineConfig(delay_ms=50.0, loss_percent=1.0)
READY_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class VoiceTopologyConfig:
    """The links of ``build_voice_topology``."""

    #: Client -> server over cell0 (the ``dl-up`` device).
    cell_uplink: LineConfig = DEFAULT_CELL
    #: Server -> client over cell0 (the ``dl-down`` device).
    cell_downlink: LineConfig = DEFAULT_CELL
    #: Seed of the delay line's loss and jitter draws.
    seed: int = 1
    #: Run the delay line under SCHED_FIFO: releases stay on time on busy cores.
    realtime: bool = False


class DelayLineProcess:
    """A ``python -m quicvoice.netlab.delayline`` child and its JSON line protocol."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.final: dict[str, LineStats] | None = None
        self.ready = self._read_event("ready", READY_TIMEOUT)

    def _read_event(self, event: str, timeout: float) -> dict[str, Any]:
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        buffer = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([stdout], [], [], remaining)[0]:
                raise NetlabError(f"the delay line sent no {event!r} within {timeout} s")
            chunk = stdout.read(1)
            if not chunk:
                raise NetlabError(f"the delay line exited ({self.process.poll()}) before {event!r}")
            buffer += chunk
            if chunk == b"\n":
                message: dict[str, Any] = json.loads(buffer)
                buffer = b""
                if message.get("event") == event:
                    return message

    @staticmethod
    def _lines(message: dict[str, Any]) -> dict[str, LineStats]:
        return {name: LineStats.from_dict(data) for name, data in message["lines"].items()}

    def stats(self, timeout: float = 2.0) -> dict[str, LineStats]:
        """Counters of every line now (or the final ones once stopped)."""
        if self.final is not None:
            return self.final
        self.process.send_signal(signal.SIGUSR1)
        return self._lines(self._read_event("stats", timeout))

    def stop(self, timeout: float = 3.0) -> dict[str, LineStats]:
        """Stop the process and return its final counters."""
        if self.final is None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            self.final = self._lines(self._read_event("stats", timeout))
            self.process.wait(timeout)
        return self.final


@dataclass
class VoiceTopology:
    """The namespaces, addresses and delay line of one built topology."""

    lab: Lab
    client: Namespace
    router: Namespace
    server: Namespace
    config: VoiceTopologyConfig
    delay_line: DelayLineProcess
    setup_seconds: float
    wifi_ip: str = WIFI_IP
    cell_ip: str = CELL_IP
    server_ip: str = SERVER_IP
    events: list[str] = field(default_factory=list)

    @property
    def has_wifi(self) -> bool:
        return WIFI_DEVICE in self.client.links()

    def drop_wifi(self) -> bool:
        """Delete wifi0 (and its router end) without warning; False if it was already gone."""
        return self.client.delete_link(WIFI_DEVICE, missing_ok=True)

    def restore_wifi(self) -> None:
        """Bring Wi-Fi back as it was built (after ``drop_wifi``); nothing if it is there."""
        if not self.has_wifi:
            _connect_wifi(self.lab, self.client, self.router)


def _connect_wifi(lab: Lab, client: Namespace, router: Namespace) -> None:
    lab.veth(client, WIFI_DEVICE, router, "wifi-r")
    client.add_address(WIFI_DEVICE, f"{WIFI_IP}/24")
    router.add_address("wifi-r", f"{WIFI_GATEWAY}/24")
    client.add_route("default", via=WIFI_GATEWAY, device=WIFI_DEVICE, table=WIFI_TABLE)
    # Sockets bound to no address prefer Wi-Fi while it exists (lower metric).
    client.add_route("default", via=WIFI_GATEWAY, device=WIFI_DEVICE, metric=100)


def build_voice_topology(
    lab: Lab, config: VoiceTopologyConfig | None = None, *, python: str = sys.executable
) -> VoiceTopology:
    """Build client, router and server namespaces with Wi-Fi and a delayed cellular link."""
    config = config or VoiceTopologyConfig()
    started = time.monotonic()
    client = lab.namespace("client")
    router = lab.namespace("router")
    server = lab.namespace("server")
    router.sysctl({"net.ipv4.ip_forward": 1})

    # server <-> router
    lab.veth(server, SERVER_DEVICE, router, "srv-r")
    server.add_address(SERVER_DEVICE, f"{SERVER_IP}/24")
    router.add_address("srv-r", f"{SERVER_GATEWAY}/24")
    server.add_route("default", via=SERVER_GATEWAY)

    # client: Wi-Fi, then cellular; each source address routes out of its own interface.
    _connect_wifi(lab, client, router)
    lab.veth(client, CELL_DEVICE, router, "cell-r")
    client.add_address(CELL_DEVICE, f"{CELL_IP}/24")
    router.add_address("cell-r", f"{CELL_GATEWAY}/24")
    client.add_route("default", via=CELL_GATEWAY, device=CELL_DEVICE, table=CELL_TABLE)
    client.add_route("default", via=CELL_GATEWAY, device=CELL_DEVICE, metric=200)
    client.add_rule(source=WIFI_IP, table=WIFI_TABLE, priority=1001)
    client.add_rule(source=CELL_IP, table=CELL_TABLE, priority=1002)

    # router: the cellular path goes through the delay line, both ways.
    lab.tun(router, UPLINK_TUN)
    lab.tun(router, DOWNLINK_TUN)
    router.add_route("default", device=UPLINK_TUN, table=UPLINK_TABLE)
    router.add_route(CELL_NET, device=DOWNLINK_TUN, table=DOWNLINK_TABLE)
    router.add_rule(input_device="cell-r", table=UPLINK_TABLE, priority=1001)
    router.add_rule(input_device="srv-r", destination=CELL_NET, table=DOWNLINK_TABLE, priority=1002)

    process = lab.spawn(
        router,
        [
            python, "-m", "quicvoice.netlab.delayline", "--seed", str(config.seed),
            "--line", f"{UPLINK_TUN}:{config.cell_uplink.spec()}",
            "--line", f"{DOWNLINK_TUN}:{config.cell_downlink.spec()}",
            *(["--realtime"] if config.realtime else []),
        ],
        stdout=subprocess.PIPE,
        bufsize=0,
    )  # fmt: skip
    delay_line = DelayLineProcess(process)
    return VoiceTopology(
        lab=lab,
        client=client,
        router=router,
        server=server,
        config=config,
        delay_line=delay_line,
        setup_seconds=time.monotonic() - started,
    )
