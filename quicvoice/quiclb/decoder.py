"""Decoding a Destination Connection ID against every live configuration (draft-21 §3.1, §4)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import IntEnum

from .config import UNROUTABLE_CONFIG_ID, LoadBalancerConfig

CONFIG_SLOTS = 8


class Unroutable(IntEnum):
    """Why a DCID carries no server ID (draft-21 §4.1)."""

    #: Zero-length DCID.
    EMPTY = 1
    #: Config rotation bits 0b111: a server without a configuration issued it.
    RESERVED_CONFIG = 2
    #: Config rotation bits that name no live configuration (e.g. a client-chosen DCID).
    UNKNOWN_CONFIG = 3
    #: Too short for the configuration its first octet names.
    TOO_SHORT = 4


class LoadBalancerDecoder:
    """Maps a DCID to its server ID under up to seven live configurations (config rotation).

    ``decode`` is the forwarder's per-packet call: one list index by the config bits, one
    length check, then the configuration's algorithm. It never raises on bytes.
    """

    __slots__ = ("_slots", "_decoders", "_reasons", "_configs")

    def __init__(self, configs: Iterable[LoadBalancerConfig] = ()) -> None:
        slots: list[LoadBalancerConfig | None] = [None] * CONFIG_SLOTS
        kept: list[LoadBalancerConfig] = []
        for config in configs:
            if not isinstance(config, LoadBalancerConfig):
                raise TypeError(f"expected LoadBalancerConfig, not {type(config).__name__}")
            if slots[config.config_id] is not None:
                raise ValueError(f"config_id {config.config_id} is configured twice")
            slots[config.config_id] = config
            kept.append(config)
        self._slots = tuple(slots)
        self._configs = tuple(kept)
        # Per config-bits value: the configuration's decode, or why there is none.
        self._decoders: tuple[Callable[[bytes], bytes | None] | None, ...] = tuple(
            config.decode if config is not None else None for config in slots
        )
        self._reasons = tuple(
            Unroutable.RESERVED_CONFIG
            if bits == UNROUTABLE_CONFIG_ID
            else Unroutable.UNKNOWN_CONFIG
            for bits in range(CONFIG_SLOTS)
        )

    @property
    def configs(self) -> tuple[LoadBalancerConfig, ...]:
        """The live configurations, in the order given."""
        return self._configs

    def config_for(self, cid: bytes) -> LoadBalancerConfig | None:
        """Return the live configuration that ``cid``'s first octet names, if any."""
        return self._slots[cid[0] >> 5] if cid else None

    def decode(self, cid: bytes) -> bytes | Unroutable:
        """Return the server ID in ``cid``, or the reason it is unroutable."""
        if not cid:
            return Unroutable.EMPTY
        config_bits = cid[0] >> 5
        decode = self._decoders[config_bits]
        if decode is None:
            return self._reasons[config_bits]
        server_id = decode(cid)
        return Unroutable.TOO_SHORT if server_id is None else server_id
