"""The forwarder's configuration: a TOML file shared with the backends (``quicvoice serve``).

Example (``examples/lb.toml`` has a commented one)::

    listen = "0.0.0.0:4433"            # the client-facing VIP
    backend_listen = "10.0.0.1:4434"   # where backends send their (encapsulated) replies
    reset_key = "<32+ hex digits>"     # optional: shared stateless-reset key
    metrics = "127.0.0.1:9100"         # optional: Prometheus text on HTTP
    log_level = "info"                 # optional: debug, info, warning, error

    [[configs]]                        # QUIC-LB configs, read by the backends too
    id = 0
    server_id_len = 4
    nonce_len = 12
    key = "<32 hex digits>"

    [[backends]]
    server_id = "0a000001"
    address = "10.0.0.11:4433"
    down = false

Every error raises ``ConfigurationError`` whose message starts with the key path, e.g.
``backends[2].address: ...`` (array indexes count from 0).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quicvoice.errors import ConfigurationError
from quicvoice.quiclb import LoadBalancerConfig
from quicvoice.settings import (
    BACKEND_KEYS,
    FORWARDER_KEYS,
    Address,
    format_address,
    parse_address,
    parse_hex,
)

#: Probes per backend per second by default, and how long a silent backend stays "healthy".
DEFAULT_HEALTH_INTERVAL = 0.2
DEFAULT_HEALTH_TIMEOUT = 1.0
BACKEND_TABLE_KEYS = frozenset({"server_id", "address", "down"})
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LOG_LEVEL = "info"
#: The shared stateless-reset key: an HMAC-SHA256 key (quicvoice.quiclb.generator).
MIN_RESET_KEY_LEN = 16


def _family(address: Address) -> str:
    return "IPv6" if ":" in address[0] else "IPv4"


@dataclass(frozen=True, slots=True)
class Backend:
    """One backend server: the server ID its CIDs carry and where to send its packets."""

    #: The server ID encoded in this backend's CIDs (``server_id_len`` octets of every config).
    server_id: bytes
    #: The backend's UDP address (host literal, port); its replies must come from here.
    address: Address
    #: Marked down: no new connections (out of the first-flight hash), its packets dropped
    #: or answered with a stateless reset.
    down: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.server_id, bytes) or not self.server_id:
            raise ConfigurationError("server_id: must be non-empty bytes")
        if not isinstance(self.down, bool):
            raise ConfigurationError("down: must be true or false")


@dataclass(frozen=True, slots=True)
class ForwarderConfig:
    """Everything one forwarder process needs; every instance with the same file behaves alike."""

    #: The client-facing address (the VIP): clients send here, replies leave from here.
    listen: Address
    #: Where backends' encapsulated replies arrive; the backends' ``forwarder`` key.
    backend_listen: Address
    #: The live QUIC-LB configurations (at most one per config ID).
    configs: tuple[LoadBalancerConfig, ...]
    #: The backends, in file order (routing does not depend on the order).
    backends: tuple[Backend, ...]
    #: Shared stateless-reset key (at least 16 octets), or ``None``: no resets, drop instead.
    reset_key: bytes | None = field(default=None, repr=False)
    #: Address of the Prometheus text endpoint, or ``None`` for none.
    metrics: Address | None = None
    #: Lowest level of structured log lines written to stderr.
    log_level: str = DEFAULT_LOG_LEVEL
    #: Seconds between health probes to each backend (lb/health.py); 0 turns probing off.
    health_interval: float = DEFAULT_HEALTH_INTERVAL
    #: A backend that answered no probe for this long is treated as down.
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    #: Whether an ICMP port unreachable from a backend makes it a suspect, probed at once and
    #: down without an answer within 0.1 s (lb/errqueue.py); needs probes. Read at start-up.
    health_icmp: bool = True

    def __post_init__(self) -> None:
        if not self.configs:
            raise ConfigurationError("configs: at least one [[configs]] table is required")
        if not self.backends:
            raise ConfigurationError("backends: at least one [[backends]] table is required")
        seen_configs: set[int] = set()
        for index, config in enumerate(self.configs):
            if config.config_id in seen_configs:
                raise ConfigurationError(
                    f"configs[{index}].id: config {config.config_id} is defined twice"
                )
            seen_configs.add(config.config_id)
        seen_ids: dict[bytes, int] = {}
        seen_addresses: dict[Address, int] = {}
        for index, backend in enumerate(self.backends):
            where = f"backends[{index}]"
            for config in self.configs:
                if len(backend.server_id) != config.server_id_len:
                    raise ConfigurationError(
                        f"{where}.server_id: {len(backend.server_id)} octets, but config "
                        f"{config.config_id} has server_id_len = {config.server_id_len}"
                    )
            if backend.server_id in seen_ids:
                raise ConfigurationError(
                    f"{where}.server_id: {backend.server_id.hex()} is already "
                    f"backends[{seen_ids[backend.server_id]}]"
                )
            seen_ids[backend.server_id] = index
            if backend.address in seen_addresses:
                raise ConfigurationError(
                    f"{where}.address: {format_address(backend.address)} is already "
                    f"backends[{seen_addresses[backend.address]}]"
                )
            seen_addresses[backend.address] = index
            if backend.address in (self.listen, self.backend_listen):
                raise ConfigurationError(
                    f"{where}.address: is the forwarder's own address (a forwarding loop)"
                )
        backend_family = _family(self.backend_listen)
        for index, backend in enumerate(self.backends):
            if _family(backend.address) != backend_family:
                raise ConfigurationError(
                    f"backends[{index}].address: {backend_family} backends only, since "
                    f"backend_listen is {format_address(self.backend_listen)}"
                )
        if self.listen == self.backend_listen:
            raise ConfigurationError("backend_listen: must differ from listen")
        if self.reset_key is not None and len(self.reset_key) < MIN_RESET_KEY_LEN:
            raise ConfigurationError(
                f"reset_key: must be at least {MIN_RESET_KEY_LEN} octets "
                f"({2 * MIN_RESET_KEY_LEN} hex digits)"
            )
        if self.log_level not in LOG_LEVELS:
            raise ConfigurationError(f"log_level: must be one of {', '.join(LOG_LEVELS)}")

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> ForwarderConfig:
        """Build the configuration from a parsed TOML document; errors name the key path."""
        for name in table:
            if name not in FORWARDER_KEYS and name not in BACKEND_KEYS:
                raise ConfigurationError(
                    f"{name}: unknown key (forwarder keys: {', '.join(sorted(FORWARDER_KEYS))}; "
                    f"backend keys ignored here: {', '.join(sorted(BACKEND_KEYS))})"
                )
        for name in ("listen", "backend_listen", "configs", "backends"):
            if name not in table:
                raise ConfigurationError(f"{name}: missing")
        configs_table = table["configs"]
        if not isinstance(configs_table, list):
            raise ConfigurationError("configs: must be an array of tables [[configs]]")
        configs = []
        for index, entry in enumerate(configs_table):
            try:
                configs.append(LoadBalancerConfig.from_mapping(entry, f"configs[{index}]"))
            except ValueError as error:
                raise ConfigurationError(str(error)) from None
        backends_table = table["backends"]
        if not isinstance(backends_table, list):
            raise ConfigurationError("backends: must be an array of tables [[backends]]")
        backends = [
            _backend(entry, f"backends[{index}]") for index, entry in enumerate(backends_table)
        ]
        reset_key = None
        if "reset_key" in table:
            reset_key = parse_hex(table["reset_key"], "reset_key", secret=True)
        metrics = None
        if "metrics" in table:
            metrics = parse_address(table["metrics"], "metrics", allow_port_zero=True)
        log_level = table.get("log_level", DEFAULT_LOG_LEVEL)
        if not isinstance(log_level, str) or log_level not in LOG_LEVELS:
            raise ConfigurationError(f"log_level: must be one of {', '.join(LOG_LEVELS)}")
        health = {}
        for name, low, high in (("health_interval", 0.0, 60.0), ("health_timeout", 0.05, 600.0)):
            if name in table:
                value = table[name]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ConfigurationError(f"{name}: must be a number of seconds")
                if not low <= value <= high:
                    raise ConfigurationError(f"{name}: must be between {low} and {high} seconds")
                health[name] = float(value)
        health_icmp = table.get("health_icmp", True)
        if not isinstance(health_icmp, bool):
            raise ConfigurationError("health_icmp: must be true or false")
        return cls(
            listen=parse_address(table["listen"], "listen"),
            backend_listen=parse_address(table["backend_listen"], "backend_listen"),
            configs=tuple(configs),
            backends=tuple(backends),
            reset_key=reset_key,
            metrics=metrics,
            log_level=log_level,
            health_icmp=health_icmp,
            **health,
        )


def _backend(entry: object, where: str) -> Backend:
    if not isinstance(entry, Mapping):
        raise ConfigurationError(f"{where}: must be a table")
    for name in entry:
        if name not in BACKEND_TABLE_KEYS:
            raise ConfigurationError(
                f"{where}.{name}: unknown key (expected one of "
                f"{', '.join(sorted(BACKEND_TABLE_KEYS))})"
            )
    for name in ("server_id", "address"):
        if name not in entry:
            raise ConfigurationError(f"{where}.{name}: missing")
    server_id = parse_hex(entry["server_id"], f"{where}.server_id")
    if not server_id:
        raise ConfigurationError(f"{where}.server_id: must not be empty")
    down = entry.get("down", False)
    if not isinstance(down, bool):
        raise ConfigurationError(f"{where}.down: must be true or false")
    return Backend(server_id, parse_address(entry["address"], f"{where}.address"), down)


def parse_config(text: str) -> ForwarderConfig:
    """Parse the TOML ``text`` of a forwarder configuration."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"not valid TOML: {error}") from None
    return ForwarderConfig.from_mapping(table)


def load_config(path: str | Path) -> ForwarderConfig:
    """Read and parse the configuration file at ``path``; errors start with the file name."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigurationError(f"{path}: cannot read: {error}") from None
    try:
        return parse_config(text)
    except ConfigurationError as error:
        raise ConfigurationError(f"{path}: {error}") from None
