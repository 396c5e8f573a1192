"""The pumps' native path: the common datagram received, decided and sent in C (lb/_native.c).

``NativeRelay`` runs one pump's loop in the extension module ``lb._native``: ``recvmmsg``
with ``MSG_WAITFORONE`` (a batch is whatever is queued: one datagram at light load, up to
``MAX_BATCH`` under load, never a wait for more; after a batch of one, ``recvfrom`` with a
``recvmmsg`` every ``PROBE_EVERY``-th time; after a batch of more, one ``sched_yield``), the
fast path's decision for each datagram, and ``sendmmsg`` in arrival order (``sendto`` for a
lone datagram), runs of equal-sized datagrams to one address sent as one UDP GSO message.
The loop holds no GIL and returns to Python only when

- a batch holds a datagram the fast path does not take: Python routes those with the Router
  (``Router.route_from_client`` / ``route_from_backend``, probe answers to the pump) and the
  whole batch is then sent, fast and routed datagrams in their order;
- the pump's next tick is due (counters, health, reloads: every 50 ms under load);
- a signal interrupted the wait (the pump's idle alarm, SIGHUP, SIGTERM) or, where the
  socket has a receive timeout (the tests'), it stayed empty that long;
- the receive failed: ``run`` raises the ``OSError``; ``ECONNREFUSED`` on the backend socket
  is how the kernel says an ICMP error was queued (lb/errqueue.py), and the pump reads the
  error queue in Python, as on the Python path. Sends retry that error in C.

The C tables (``lb._native.Tables``) are built from the Router: its configurations by config
bits (``Router.fast_configs``), its live backends by server ID (``Router.fast_uplink``), its
backends by source address (``Router.fast_downlink``), so the Router stays the one source of
routing truth; what the fast path forwards is counted per backend in C and folded into the
Router's ``UplinkCount`` / ``DownlinkCount`` objects, then ``Router.fold`` does the rest.
tests/lb/test_lb_native_path.py sends the same traffic through this path and the Router.

``AVAILABLE`` says whether the extension was built and matches this code; ``UNAVAILABLE``
says why not (the forwarder logs it and routes on lb/python_path.py).
"""

from __future__ import annotations

import errno
import socket
import sys
import time
from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple

from quicvoice.quiclb import Algorithm, LoadBalancerConfig

from .health import PROBE_CLIENT, PROBE_REPLY_HEADER
from .python_path import port_and_address
from .router import DownlinkCount, DropReason, Forward, Reply, Router, Send, UplinkCount

if TYPE_CHECKING:
    from . import _native
    from .pump import Pump

#: The ``lb._native`` this code was written for (its ``ABI_VERSION``).
ABI_VERSION = 3
PROBE_HEADER_LEN = len(PROBE_REPLY_HEADER)


def _load() -> tuple[ModuleType | None, str]:
    """The extension module, or why it cannot be used."""
    if not sys.platform.startswith("linux"):
        return None, f"not Linux ({sys.platform}): no recvmmsg/sendmmsg"
    try:
        from . import _native
    except ImportError as error:
        return None, f"the extension lb._native was not built ({error})"
    if _native.ABI_VERSION != ABI_VERSION:
        return None, (
            f"lb._native is stale (ABI {_native.ABI_VERSION}, not {ABI_VERSION}): reinstall"
        )
    return _native, ""


native, UNAVAILABLE = _load()
#: Whether the native path can run here.
AVAILABLE = native is not None
#: Whether the AES configurations are decoded natively (AES-NI); if not, their datagrams go
#: through the Router, which decides the same.
AESNI = bool(native is not None and native.AESNI)
_ALGORITHMS = {Algorithm.PLAINTEXT: 1, Algorithm.SINGLE_PASS: 2, Algorithm.FOUR_PASS: 3}


def config_spec(
    config: LoadBalancerConfig | None,
) -> tuple[int, int, int, bytes | None] | None:
    """A configuration as ``lb._native.Tables`` takes it: algorithm, lengths, key."""
    if config is None:
        return None
    return (_ALGORITHMS[config.algorithm], config.server_id_len, config.nonce_len, config.key)


class RelayStatistics(NamedTuple):
    """What a native loop did since it started."""

    #: ``recvmmsg`` calls that returned datagrams, and the datagrams they returned.
    batches: int
    datagrams: int
    #: Messages sent with UDP GSO (several datagrams each).
    gso_messages: int
    #: Whether GSO is still used (a socket whose GSO sends keep failing stops using it).
    gso: bool
    #: Of the ``batches``, those received by ``recvfrom`` (one datagram, after a batch of one).
    single_receives: int
    #: Times the loop gave the CPU away after a batch of more than one (``sched_yield``).
    yields: int


class NativeTables:
    """``lb._native.Tables`` of one Router, and the Router's count objects in the same order."""

    __slots__ = ("router", "tables", "_uplink", "_downlink")

    def __init__(self, router: Router) -> None:
        if native is None:
            raise OSError(errno.ENOSYS, f"the native path is not available: {UNAVAILABLE}")
        #: The Router these tables come from.
        self.router = router
        self._uplink: tuple[UplinkCount, ...] = tuple(router.fast_uplink.values())
        self._downlink: tuple[DownlinkCount, ...] = tuple(router.fast_downlink.values())
        #: The C tables (raises ValueError for an address that is not IPv4).
        self.tables: _native.Tables = native.Tables(
            [config_spec(config) for config in router.fast_configs],
            [
                (server_id, port_and_address(count.address))
                for server_id, count in router.fast_uplink.items()
            ],
            [port_and_address(address) for address in router.fast_downlink],
            port_and_address(PROBE_CLIENT),
        )

    def fold(self) -> None:
        """Move what C counted into the Router's count objects (then ``Router.fold``)."""
        uplink, downlink = self.tables.fold()
        for count, (packets, octets) in zip(self._uplink, uplink, strict=True):
            if packets:
                count.packets += packets
                count.octets += octets
        for source, (packets, octets) in zip(self._downlink, downlink, strict=True):
            if packets:
                source.packets += packets
                source.octets += octets


class NativeRelay:
    """One pump's native loop (IPv4 sockets): ``run(pump)`` until the pump stops."""

    def __init__(
        self,
        *,
        uplink: bool,
        vip: socket.socket,
        backend: socket.socket,
        router: Router,
        gso: bool = True,
        batch: int | None = None,
    ) -> None:
        if native is None:
            raise OSError(errno.ENOSYS, f"the native path is not available: {UNAVAILABLE}")
        if vip.family != socket.AF_INET or backend.family != socket.AF_INET:
            raise ValueError("the native path takes IPv4 sockets")
        #: Which direction: client -> backend (True) or backend -> client.
        self.uplink = uplink
        self._tables = NativeTables(router)
        receive, send = (vip, backend) if uplink else (backend, vip)
        self._sockets = (vip, backend)  # kept open by this reference
        #: The loop in C; ``batch`` caps the datagrams of one receive (``MAX_BATCH``).
        self.relay: _native.Relay = native.Relay(
            receive.fileno(),
            send.fileno(),
            vip.fileno(),
            self._tables.tables,
            uplink,
            batch=native.MAX_BATCH if batch is None else batch,
            gso=gso,
        )

    def use(self, router: Router) -> None:
        """Decide with ``router``'s tables from the next batch on (counts folded first)."""
        tables = NativeTables(router)
        self._tables.fold()
        self.relay.use(tables.tables)
        self._tables = tables

    def fold(self, drops: dict[DropReason, int]) -> None:
        """Move the native counts into the Router's objects, and send failures into ``drops``."""
        self._tables.fold()
        dropped = self.relay.take_dropped()
        if dropped:
            drops[DropReason.SEND_ERROR] += dropped

    @property
    def errors(self) -> dict[str, int]:
        """Datagrams not sent, by errno name."""
        return {
            errno.errorcode.get(code, f"errno_{code}"): count
            for code, count in self.relay.errors().items()
        }

    def statistics(self) -> RelayStatistics:
        """What the loop did so far."""
        batches, datagrams, gso_messages, gso, single_receives, yields = self.relay.statistics()
        return RelayStatistics(
            batches=batches,
            datagrams=datagrams,
            gso_messages=gso_messages,
            gso=bool(gso),
            single_receives=single_receives,
            yields=yields,
        )

    def run(self, pump: Pump) -> None:
        """Relay until the pump stops (``_Stopped`` from a signal handler, or its ``idle``)."""
        assert native is not None
        relay = self.relay
        run = relay.run
        slow, tick = native.SLOW, native.TICK
        monotonic = time.monotonic
        while True:
            try:
                status = run(pump.next_tick)
            except OSError as error:  # the receive failed: an ICMP error queued, or worse
                pump.receive_failed(error)
                continue
            if status == slow:
                self._route_pending(pump)
            elif status != tick:  # woken without a datagram: idle, or a signal
                pump.idle()
                continue
            if monotonic() >= pump.next_tick:
                pump.tick()

    def _route_pending(self, pump: Pump) -> None:
        """Route the held batch's other datagrams with the Router, then send the batch."""
        relay = self.relay
        resolve = relay.resolve
        router = pump.router
        if self.uplink:
            route_from_client = router.route_from_client
            for index, datagram, client in relay.pending():
                try:
                    decision = route_from_client(datagram, client)
                    if type(decision) is Forward:
                        resolve(index, decision[0], decision[1], False)
                    elif type(decision) is Reply:
                        resolve(index, decision[0], decision[1], True)
                except Exception as error:  # a bug must cost one datagram, never the forwarder
                    pump.unexpected("route_failed", error)
        else:
            route_from_backend = router.route_from_backend
            for index, datagram, source in relay.pending():
                try:
                    if datagram[:PROBE_HEADER_LEN] == PROBE_REPLY_HEADER:
                        pump.probe_answered(source)
                        continue
                    outcome = route_from_backend(datagram, source)
                    if type(outcome) is Send:
                        resolve(index, outcome[0], outcome[1], False)
                except Exception as error:  # a bug must cost one datagram, never the forwarder
                    pump.unexpected("route_failed", error)
        relay.flush()
