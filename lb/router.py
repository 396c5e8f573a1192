"""Routing decisions for one datagram at a time: sans-I/O, no clock, no per-connection state.

``Router.route_from_client(datagram, client)`` returns ``Forward`` (to a backend, wrapped with
the client's address), ``Reply`` (a stateless reset to the client) or ``Drop``;
``Router.route_from_backend(datagram, backend)`` returns ``Send`` (to the client the header
names) or ``Drop``. Rules, in order (draft-ietf-quic-load-balancers-21 §4, specs/forwarder.md):

=====================================  ==========================================================
datagram from a client                 decision
=====================================  ==========================================================
empty, > MAX_CLIENT_DATAGRAM octets    drop (``empty``, ``too_large``)
short header < 21 octets               drop (``short_packet_too_small``, RFC 9000 §10.3)
short header, DCID -> healthy server   forward to that backend (``server_id``)
short header, DCID -> down / unknown   stateless reset if ``reset_key`` and the packet is large
server ID                              enough, else drop (``backend_down``, ``unknown_server_id``)
short header, unroutable DCID          rendezvous hash of the client address (``fallback``)
long header, malformed                 drop (``truncated_long_header``, ``cid_too_long``)
long header, version 0                 drop (``version_negotiation``: clients never send it)
Initial in a datagram < 1200 octets    drop (``initial_too_small``, RFC 9000 §14.1)
long header, DCID config bits 0b111    rendezvous hash of the client address (``fallback``)
long header, DCID -> healthy server    forward to that backend (``server_id``)
any other long header                  rendezvous hash of the DCID (``first_flight``)
=====================================  ==========================================================

Long headers never get a stateless reset (RFC 9000 §10.3: it would look like a short header
to a client that is still in its handshake), and the first-flight hash reads no bit of the
first octet but the header form (draft-21 §4.2), so it works for any QUIC version.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import NamedTuple

from quicvoice.encapsulation import (
    IPV4_HEADER_LEN,
    IPV6_HEADER_LEN,
    EncapsulationError,
    unwrap,
    wrap,
)
from quicvoice.quiclb import (
    Algorithm,
    LoadBalancerConfig,
    LoadBalancerDecoder,
    Unroutable,
    stateless_reset_token,
)
from quicvoice.quiclb.algorithms import aes_ecb_decryptor
from quicvoice.settings import Address, format_address

from .config import Backend, ForwarderConfig
from .packet import (
    LONG_HEADER_BIT,
    MAX_CID_LEN_V1,
    MIN_INITIAL_DATAGRAM_LEN,
    MIN_SHORT_HEADER_LEN,
    VERSION_NEGOTIATION,
    Malformation,
    Malformed,
    parse_long_header,
)

#: The largest UDP payload over IPv4 (65535 - 20 - 8); a wrapped datagram must still fit.
MAX_UDP_PAYLOAD = 65507
MAX_CLIENT_DATAGRAM = MAX_UDP_PAYLOAD - IPV6_HEADER_LEN
#: RFC 9000 §10.3: 38 unpredictable bits (5 octets with the first) and the 16-octet token.
MIN_STATELESS_RESET_LEN = 21
#: RFC 9000 §10.3: answer a packet of up to 43 octets with a reset one octet shorter.
SHORT_TRIGGER_LEN = 43
#: Resets to larger packets take a random length up to this, never the trigger's length.
MAX_STATELESS_RESET_LEN = 64
STATELESS_RESET_TOKEN_LEN = 16
#: RFC 9000 §17.3: a short header has the fixed bit set; the rest is unpredictable.
FIXED_BIT = 0x40
UNPREDICTABLE_FIRST_BITS = 0x3F
CONFIG_BITS_SHIFT = 5
LENGTH_BITS_MASK = 0x1F
_MASK64 = (1 << 64) - 1
#: Personalisation of the rendezvous hashes: a fixed value, so that every forwarder instance,
#: on any host, ranks backends identically (never Python's per-process ``hash()``).
_KEY_PERSON = b"qvlb-key-v1"
_SEED_PERSON = b"qvlb-seed-v1"


class DropReason(StrEnum):
    """Why a datagram was not forwarded; the ``reason`` label of the drop counter."""

    EMPTY = "empty"
    TOO_LARGE = "too_large"
    SHORT_PACKET_TOO_SMALL = "short_packet_too_small"
    TRUNCATED_LONG_HEADER = "truncated_long_header"
    CID_TOO_LONG = "cid_too_long"
    VERSION_NEGOTIATION = "version_negotiation"
    INITIAL_TOO_SMALL = "initial_too_small"
    UNKNOWN_SERVER_ID = "unknown_server_id"
    BACKEND_DOWN = "backend_down"
    NO_HEALTHY_BACKEND = "no_healthy_backend"
    #: Downlink: an encapsulated datagram from an address that is no configured backend.
    NOT_A_BACKEND = "not_a_backend"
    #: Downlink: no valid encapsulation header.
    BAD_ENCAPSULATION = "bad_encapsulation"
    #: Counted by the I/O shell when ``sendto`` fails (e.g. wrong address family).
    SEND_ERROR = "send_error"


class RouteRule(StrEnum):
    """Which rule chose a backend; the ``rule`` label of the routing counter."""

    SERVER_ID = "server_id"
    FIRST_FLIGHT = "first_flight"
    FALLBACK = "fallback"
    STATELESS_RESET = "stateless_reset"


class Forward(NamedTuple):
    """Send ``datagram`` (already wrapped with the client's address) to backend ``address``."""

    #: The backend's address.
    address: Address
    #: Encapsulation header + the client's datagram.
    datagram: bytes


class Reply(NamedTuple):
    """Send ``datagram`` back to the client from the VIP (a stateless reset)."""

    #: The client's address.
    address: Address
    #: The datagram to send.
    datagram: bytes


class Send(NamedTuple):
    """Send ``datagram`` (header removed) to the client at ``address`` from the VIP."""

    #: The client's address, from the encapsulation header.
    address: Address
    #: The backend's QUIC datagram.
    datagram: bytes


class Drop(NamedTuple):
    """Do not forward the datagram; it has been counted under ``reason``."""

    #: Why.
    reason: DropReason


#: One instance per reason: dropping allocates nothing.
DROPS = {reason: Drop(reason) for reason in DropReason}
_NOT_A_BACKEND = DropReason.NOT_A_BACKEND
_BAD_ENCAPSULATION = DropReason.BAD_ENCAPSULATION
_MALFORMED = {
    Malformation.TRUNCATED_LONG_HEADER: DropReason.TRUNCATED_LONG_HEADER,
    Malformation.CID_TOO_LONG: DropReason.CID_TOO_LONG,
    Malformation.EMPTY: DropReason.EMPTY,
    Malformation.SHORT_PACKET_TOO_SMALL: DropReason.SHORT_PACKET_TOO_SMALL,
}


class BackendStats:
    """Packet and octet counts of one backend, both directions (plain ints, one process)."""

    __slots__ = ("uplink_packets", "uplink_bytes", "downlink_packets", "downlink_bytes")

    def __init__(self) -> None:
        #: Datagrams forwarded to the backend, and their octets before wrapping.
        self.uplink_packets = 0
        self.uplink_bytes = 0
        #: Datagrams from the backend sent on to clients, and their octets after unwrapping.
        self.downlink_packets = 0
        self.downlink_bytes = 0


MetricSample = tuple[str, tuple[tuple[str, str], ...], int]


class Counters:
    """Every decision of a router, counted; shared by the routers of one process across reloads."""

    __slots__ = (
        "uplink_packets",
        "uplink_bytes",
        "downlink_packets",
        "downlink_bytes",
        "routed_server_id",
        "routed_first_flight",
        "routed_fallback",
        "stateless_resets",
        "uplink_drops",
        "downlink_drops",
        "decode_failures",
        "backends",
    )

    def __init__(self) -> None:
        #: Datagrams (and octets) received from clients and from backends.
        self.uplink_packets = 0
        self.uplink_bytes = 0
        self.downlink_packets = 0
        self.downlink_bytes = 0
        #: Uplink datagrams by the rule that routed them (plain attributes: the hot path
        #: cannot afford an enum lookup, 0.2 µs each).
        self.routed_server_id = 0
        self.routed_first_flight = 0
        self.routed_fallback = 0
        self.stateless_resets = 0
        #: Drops by reason, per direction.
        self.uplink_drops: dict[DropReason, int] = dict.fromkeys(DropReason, 0)
        self.downlink_drops: dict[DropReason, int] = dict.fromkeys(DropReason, 0)
        #: DCIDs that decoded to no server ID, by the codec's reason.
        self.decode_failures: dict[Unroutable, int] = dict.fromkeys(Unroutable, 0)
        #: Per backend, keyed by (server ID, address): bounded by the backends ever configured.
        self.backends: dict[tuple[bytes, Address], BackendStats] = {}

    def backend_stats(self, backend: Backend) -> BackendStats:
        """Return the (possibly new) stats of ``backend``."""
        key = (backend.server_id, backend.address)
        stats = self.backends.get(key)
        if stats is None:
            stats = self.backends[key] = BackendStats()
        return stats

    def samples(self) -> list[MetricSample]:
        """Return every counter as (metric name, labels, value), the Prometheus names."""
        out: list[MetricSample] = []
        labels: tuple[tuple[str, str], ...]
        for direction, packets, octets in (
            ("uplink", self.uplink_packets, self.uplink_bytes),
            ("downlink", self.downlink_packets, self.downlink_bytes),
        ):
            labels = (("direction", direction),)
            out.append(("quicvoice_lb_received_packets_total", labels, packets))
            out.append(("quicvoice_lb_received_bytes_total", labels, octets))
        for rule, count in (
            (RouteRule.SERVER_ID, self.routed_server_id),
            (RouteRule.FIRST_FLIGHT, self.routed_first_flight),
            (RouteRule.FALLBACK, self.routed_fallback),
            (RouteRule.STATELESS_RESET, self.stateless_resets),
        ):
            out.append(("quicvoice_lb_routed_packets_total", (("rule", rule.value),), count))
        for direction, drops in (("uplink", self.uplink_drops), ("downlink", self.downlink_drops)):
            for reason, count in drops.items():
                labels = (("direction", direction), ("reason", reason.value))
                out.append(("quicvoice_lb_dropped_packets_total", labels, count))
        for unroutable, count in self.decode_failures.items():
            labels = (("reason", unroutable.name.lower()),)
            out.append(("quicvoice_lb_decode_failures_total", labels, count))
        for (server_id, address), stats in self.backends.items():
            for direction, packets, octets in (
                ("uplink", stats.uplink_packets, stats.uplink_bytes),
                ("downlink", stats.downlink_packets, stats.downlink_bytes),
            ):
                labels = (
                    ("backend", server_id.hex()),
                    ("address", format_address(address)),
                    ("direction", direction),
                )
                out.append(("quicvoice_lb_backend_packets_total", labels, packets))
                out.append(("quicvoice_lb_backend_bytes_total", labels, octets))
        return out


def _mix64(value: int) -> int:
    """SplitMix64's finaliser: a bijection on 64-bit integers that spreads every input bit."""
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


class Rendezvous:
    """Rendezvous (highest random weight) hashing of byte keys over a set of backends.

    Each backend's score for a key is ``mix64(blake2b(key) ^ seed)``, its seed a hash of its
    server ID; the highest score wins. The ranking of two backends for a key never depends
    on the others, so adding or removing one backend moves only the keys it wins or won:
    1/(n+1) of them on average when going from n to n+1 backends. Deterministic on every
    host and process: keyed with fixed constants, never with ``hash()``.
    """

    __slots__ = ("_choices",)

    def __init__(self, backends: Iterable[Backend]) -> None:
        self._choices = tuple(
            (
                int.from_bytes(
                    hashlib.blake2b(b.server_id, digest_size=8, person=_SEED_PERSON).digest(),
                    "big",
                ),
                b,
            )
            for b in backends
        )

    def __len__(self) -> int:
        return len(self._choices)

    def pick(self, key: bytes) -> Backend | None:
        """Return the backend that ``key`` lands on, or ``None`` when there is none."""
        base = int.from_bytes(
            hashlib.blake2b(key, digest_size=8, person=_KEY_PERSON).digest(), "big"
        )
        best: Backend | None = None
        best_score = -1
        for seed, backend in self._choices:
            score = _mix64(base ^ seed)
            if score > best_score:
                best, best_score = backend, score
        return best


class _Route(NamedTuple):
    address: Address
    stats: BackendStats
    up: bool


class UplinkCount:
    """A live backend as the pumps' fast path sees it, and what that path sent it since the
    last ``Router.fold`` (plain attributes: two increments per datagram, folded later)."""

    __slots__ = ("address", "stats", "packets", "octets")

    def __init__(self, address: Address, stats: BackendStats) -> None:
        #: Where its datagrams go.
        self.address = address
        #: Its counters, into which ``fold`` moves the counts below.
        self.stats = stats
        #: Client datagrams forwarded by the fast path, and their octets before wrapping.
        self.packets = 0
        self.octets = 0


class DownlinkCount:
    """A backend address as the downlink fast path sees it, and what it sent on from there."""

    __slots__ = ("stats", "packets", "octets")

    def __init__(self, stats: BackendStats) -> None:
        self.stats = stats
        #: Datagrams sent on to clients by the fast path, and their octets as received
        #: (IPv4 encapsulation header included: the fast path takes IPv4 headers only).
        self.packets = 0
        self.octets = 0


class Router:
    """Decides where each datagram goes, from the configuration alone (no per-client state).

    ``counters`` is shared across reloads: pass the previous router's ``counters`` to the new
    one. ``random`` supplies the unpredictable octets of stateless resets (inject it in tests).
    """

    __slots__ = (
        "config",
        "counters",
        "_decode",
        "_configs",
        "_routes",
        "_sources",
        "_healthy",
        "_reset_key",
        "_random",
        "fast_configs",
        "fast_decoders",
        "fast_single_pass",
        "fast_uplink",
        "fast_downlink",
    )

    def __init__(
        self,
        config: ForwarderConfig,
        counters: Counters | None = None,
        *,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        #: The configuration this router applies.
        self.config = config
        #: What it decided, counted.
        self.counters = counters if counters is not None else Counters()
        self._decode = LoadBalancerDecoder(config.configs).decode
        slots: list[LoadBalancerConfig | None] = [None] * 8
        for lb_config in config.configs:
            slots[lb_config.config_id] = lb_config
        self._configs = tuple(slots)
        self._routes: dict[bytes, _Route] = {}
        self._sources: dict[Address, BackendStats] = {}
        for backend in config.backends:
            stats = self.counters.backend_stats(backend)
            self._routes[backend.server_id] = _Route(backend.address, stats, not backend.down)
            self._sources[backend.address] = stats
        self._healthy = Rendezvous(b for b in config.backends if not b.down)
        self._reset_key = config.reset_key
        self._random = random
        # The pumps' fast paths (lb/python_path.py, lb/native_path.py), which must decide
        # exactly as the methods below (tests/lb/test_lb_fast_path.py,
        # tests/lb/test_lb_native_path.py): a short header's configuration and decoder by
        # config bits (what ``LoadBalancerDecoder.decode`` calls), live backends by server ID,
        # backends by source address. What they forward is counted in these objects until
        # ``fold``.
        #: The configuration that each config-bits value names (``None``: no configuration).
        self.fast_configs: tuple[LoadBalancerConfig | None, ...] = self._configs
        #: ``LoadBalancerConfig.decode`` of the configuration that each config-bits value names.
        self.fast_decoders: tuple[Callable[[bytes], bytes | None] | None, ...] = tuple(
            None if lb_config is None else lb_config.decode for lb_config in slots
        )
        #: For each config-bits value whose configuration is single-pass (one AES-128-ECB
        #: block, draft-21 §5.4.1): an ECB decryption of its own and the server ID length, so
        #: that a batch of CIDs is decrypted in one call: ``decode(cid)`` is then
        #: ``decrypt(cid[1:17])[:server_id_len]`` for any CID of 17 octets or more that names it.
        self.fast_single_pass: tuple[tuple[Callable[[bytes], bytes], int] | None, ...] = tuple(
            (aes_ecb_decryptor(lb_config.key).update, lb_config.server_id_len)
            if lb_config is not None
            and lb_config.algorithm is Algorithm.SINGLE_PASS
            and lb_config.key is not None
            else None
            for lb_config in slots
        )
        #: Backends that take traffic (not down), by server ID (looked up with what a decoder
        #: returned, ``None`` included, which is never a key).
        self.fast_uplink: dict[bytes | None, UplinkCount] = {
            server_id: UplinkCount(route.address, route.stats)
            for server_id, route in self._routes.items()
            if route.up
        }
        #: Every configured backend (down ones too), by address.
        self.fast_downlink = {
            address: DownlinkCount(stats) for address, stats in self._sources.items()
        }

    def fold(self) -> None:
        """Move what the fast path counted into ``counters``, as the slow path counts it."""
        counters = self.counters
        for up in self.fast_uplink.values():
            packets, octets = up.packets, up.octets
            if packets:
                up.packets = up.octets = 0
                counters.uplink_packets += packets
                counters.uplink_bytes += octets
                counters.routed_server_id += packets
                up.stats.uplink_packets += packets
                up.stats.uplink_bytes += octets
        for down in self.fast_downlink.values():
            packets, octets = down.packets, down.octets
            if packets:
                down.packets = down.octets = 0
                counters.downlink_packets += packets
                counters.downlink_bytes += octets
                down.stats.downlink_packets += packets
                down.stats.downlink_bytes += octets - IPV4_HEADER_LEN * packets

    @property
    def healthy_backends(self) -> int:
        """How many backends take new connections."""
        return len(self._healthy)

    def first_flight_backend(self, dcid: bytes) -> Backend | None:
        """The backend a first flight with this client-chosen DCID lands on."""
        return self._healthy.pick(dcid)

    def fallback_backend(self, client: Address) -> Backend | None:
        """The backend an unroutable packet from ``client`` (host, port) lands on."""
        return self._healthy.pick(f"{client[0]}|{client[1]}".encode())

    def route_from_client(self, datagram: bytes, client: Address) -> Forward | Reply | Drop:
        """Decide what to do with ``datagram`` received on the VIP from ``client``."""
        counters = self.counters
        length = len(datagram)
        counters.uplink_packets += 1
        counters.uplink_bytes += length
        if not length or length > MAX_CLIENT_DATAGRAM:
            return self._drop(DropReason.EMPTY if not length else DropReason.TOO_LARGE)
        if not datagram[0] & LONG_HEADER_BIT:
            if length < MIN_SHORT_HEADER_LEN:
                return self._drop(DropReason.SHORT_PACKET_TOO_SMALL)
            server_id = self._decode(datagram[1 : 1 + MAX_CID_LEN_V1])
            route = self._routes.get(server_id) if isinstance(server_id, bytes) else None
            if route is not None and route.up:
                stats = route.stats
                stats.uplink_packets += 1
                stats.uplink_bytes += length
                counters.routed_server_id += 1
                return Forward(route.address, wrap(client, datagram))
            if isinstance(server_id, bytes):
                return self._reset_or_drop(datagram, client, route is not None)
            counters.decode_failures[server_id] += 1
            return self._fallback(datagram, client)
        return self._route_long_header(datagram, client)

    def _route_long_header(self, datagram: bytes, client: Address) -> Forward | Drop:
        header = parse_long_header(datagram)
        if isinstance(header, Malformed):
            return self._drop(_MALFORMED[header.reason])
        if header.version == VERSION_NEGOTIATION:
            return self._drop(DropReason.VERSION_NEGOTIATION)
        if header.is_initial and len(datagram) < MIN_INITIAL_DATAGRAM_LEN:
            return self._drop(DropReason.INITIAL_TOO_SMALL)
        dcid = header.dcid
        server_id = self._decode(dcid)
        if isinstance(server_id, bytes):
            route = self._routes.get(server_id)
            if route is not None and route.up:
                route.stats.uplink_packets += 1
                route.stats.uplink_bytes += len(datagram)
                self.counters.routed_server_id += 1
                return Forward(route.address, wrap(client, datagram))
        else:
            self.counters.decode_failures[server_id] += 1
            if server_id is Unroutable.EMPTY or server_id is Unroutable.RESERVED_CONFIG:
                # draft-21 §3.1: 0b111 CIDs come from a server without a config; neither they
                # nor an empty DCID say anything the 4-tuple does not.
                return self._fallback(datagram, client)
        # A client-chosen DCID (first flight), or one naming a server that is down or gone.
        backend = self._healthy.pick(dcid)
        if backend is None:
            return self._drop(DropReason.NO_HEALTHY_BACKEND)
        self.counters.routed_first_flight += 1
        return self._forward(backend, datagram, client)

    def _fallback(self, datagram: bytes, client: Address) -> Forward | Drop:
        backend = self.fallback_backend(client)
        if backend is None:
            return self._drop(DropReason.NO_HEALTHY_BACKEND)
        self.counters.routed_fallback += 1
        return self._forward(backend, datagram, client)

    def _forward(self, backend: Backend, datagram: bytes, client: Address) -> Forward:
        stats = self._routes[backend.server_id].stats
        stats.uplink_packets += 1
        stats.uplink_bytes += len(datagram)
        return Forward(backend.address, wrap(client, datagram))

    def _drop(self, reason: DropReason) -> Drop:
        self.counters.uplink_drops[reason] += 1
        return DROPS[reason]

    def _reset_or_drop(self, datagram: bytes, client: Address, known: bool) -> Reply | Drop:
        reason = DropReason.BACKEND_DOWN if known else DropReason.UNKNOWN_SERVER_ID
        if self._reset_key is None:
            return self._drop(reason)
        reset = self.stateless_reset(datagram)
        if reset is None:
            return self._drop(reason)
        self.counters.stateless_resets += 1
        return Reply(client, reset)

    def stateless_reset(self, datagram: bytes) -> bytes | None:
        """Return a stateless reset for the short-header ``datagram``, or ``None``.

        RFC 9000 §10.3: ``0b01`` then unpredictable bits, then the token of the DCID, always
        shorter than the packet that triggered it (so resets never amplify and two endpoints
        cannot loop) and at least 21 octets. ``None`` without a reset key, for long headers,
        packets of 21 octets or less, or a DCID whose length cannot be known.
        """
        length = len(datagram)
        if self._reset_key is None or length <= MIN_STATELESS_RESET_LEN:
            return None
        first = datagram[0]
        if first & LONG_HEADER_BIT:
            return None
        config = self._configs[datagram[1] >> CONFIG_BITS_SHIFT] if length > 1 else None
        if config is None:
            return None
        # The token is bound to the whole CID, extra octets included (draft-21 §5.3): only a
        # self-encoded length tells how long it is; otherwise assume the config's length.
        cid_len = (datagram[1] & LENGTH_BITS_MASK) + 1 if config.encode_length else config.cid_len
        if cid_len < config.cid_len or cid_len > MAX_CID_LEN_V1 or 1 + cid_len > length:
            return None
        token = stateless_reset_token(self._reset_key, datagram[1 : 1 + cid_len])
        limit = min(length - 1, MAX_STATELESS_RESET_LEN)
        noise = self._random(MAX_STATELESS_RESET_LEN + 2)
        size = limit
        if limit > SHORT_TRIGGER_LEN:
            size = SHORT_TRIGGER_LEN + noise[0] % (limit - SHORT_TRIGGER_LEN + 1)
        unpredictable = noise[2 : 2 + size - 1 - STATELESS_RESET_TOKEN_LEN]
        return bytes(((noise[1] & UNPREDICTABLE_FIRST_BITS) | FIXED_BIT,)) + unpredictable + token

    def route_from_backend(self, datagram: bytes, backend: Address) -> Send | Drop:
        """Decide what to do with an encapsulated ``datagram`` from ``backend`` (host, port, ...).

        Only configured backends may use the forwarder: anything else is dropped, so the VIP
        can never be used to reflect traffic at a third party.
        """
        counters = self.counters
        counters.downlink_packets += 1
        counters.downlink_bytes += len(datagram)
        stats = self._sources.get(backend if len(backend) == 2 else backend[:2])
        if stats is None:
            counters.downlink_drops[_NOT_A_BACKEND] += 1
            return DROPS[_NOT_A_BACKEND]
        try:
            client, payload = unwrap(datagram)
        except EncapsulationError:
            counters.downlink_drops[_BAD_ENCAPSULATION] += 1
            return DROPS[_BAD_ENCAPSULATION]
        if not payload:
            counters.downlink_drops[DropReason.EMPTY] += 1
            return DROPS[DropReason.EMPTY]
        stats.downlink_packets += 1
        stats.downlink_bytes += len(payload)
        return Send(client, payload)
