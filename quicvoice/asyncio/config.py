"""The backend's configuration (``quicvoice serve --config backend.toml``).

The file may be the forwarder's own (``examples/lb.toml``): both read the same
``[[configs]]`` tables and ``reset_key``. In such a file (it has ``[[backends]]``) the top-level
``listen`` is the forwarder's VIP, so a backend finds its own address in the ``[[backends]]``
entry with its ``server_id`` (given with ``--server-id``), sends its replies to the
forwarder's ``backend_listen``, and ignores the other forwarder keys (``metrics`` there is the
forwarder's: give each backend its own with ``--metrics``). A backend-only file::

    listen = "127.0.0.1:4434"
    server_id = "0a000001"          # hex, server_id_len octets of every config
    reset_key = "<32+ hex digits>"  # shared by every backend (and the forwarder)
    forwarder = "127.0.0.1:4435"    # optional: the forwarder's backend_listen address
    certificate = "cert.pem"        # optional, with private_key; else self-signed P-256
    private_key = "key.pem"
    app = "mypackage.agent:app"     # optional: the application (default: the demo agent)
    metrics = "127.0.0.1:9101"      # optional: Prometheus text at http://HOST:PORT/metrics

    [[configs]]
    id = 0
    server_id_len = 4
    nonce_len = 12
    key = "<32 hex digits>"

    [auth]                          # optional: who may call (quicvoice.auth.config, specs/auth.md)
    audience = "voice.example.com"
    [[auth.keys]]
    kid = "2026-11"
    alg = "HS256"
    secret = "env:QUICVOICE_JWT_SECRET"
"""

from __future__ import annotations

import hashlib
import hmac
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..auth.config import AuthConfig
from ..ecn import EcnMode
from ..errors import ConfigurationError
from ..quiclb import LoadBalancerConfig
from ..settings import FORWARDER_KEYS, Address, format_address, parse_address, parse_hex
from ..store import StoreConfig

BACKEND_KEYS = frozenset(
    {
        "listen",
        "server_id",
        "configs",
        "reset_key",
        "forwarder",
        "certificate",
        "private_key",
        "session_store",
        "session",
        "app",
        "auth",
        "metrics",
        "ecn",
        "engine",
    }
)
#: The QUIC engines a backend can run on (specs/engine-ngtcp2.md): aioquic (the default:
#: raw QUIC and WebTransport) or ngtcp2 (raw QUIC only; needs the optional extension).
ENGINES = ("aioquic", "ngtcp2")
SESSION_KEYS = frozenset({"resume_key", "resume_key_id", "state_ttl", "token_ttl"})
#: Derives the resume-token key from the shared reset key when none is configured, so a
#: deployment that shares ``reset_key`` resumes across backends with no extra setting.
RESUME_KEY_LABEL = b"quicvoice resume-token key v1"
DEFAULT_STATE_TTL = 600.0
DEFAULT_TOKEN_TTL = 3600.0
#: Keys of the forwarder's that a shared file uses to place this backend.
SHARED_KEYS = frozenset({"backends", "backend_listen"})
#: Keys the forwarder reads that the backend ignores, so one file can serve both.
IGNORED_KEYS = FORWARDER_KEYS - BACKEND_KEYS
MIN_RESET_KEY_LEN = 16
DEFAULT_LISTEN: Address = ("127.0.0.1", 4433)

__all__ = ["BackendConfig", "format_address"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendConfig:
    """Everything one backend needs to serve voice sessions behind QUIC-LB."""

    #: UDP address to listen on.
    listen: Address = DEFAULT_LISTEN
    #: This backend's QUIC-LB server ID (``server_id_len`` octets of every config).
    server_id: bytes = b"\x00\x00\x00\x01"
    #: QUIC-LB configurations; the last one issues new CIDs, all of them validate.
    configs: tuple[LoadBalancerConfig, ...] = ()
    #: Shared stateless-reset key (>= 16 octets); random per process when not configured,
    #: which means no other backend can reset this one's connections.
    reset_key: bytes = field(default_factory=lambda: os.urandom(32), repr=False)
    #: The forwarder's backend-facing address, for encapsulated traffic; ``None``: direct only.
    forwarder: Address | None = None
    #: PEM certificate and key paths; ``None``: a self-signed ECDSA P-256 certificate.
    certificate: Path | None = None
    private_key: Path | None = None
    #: Where session state lives: ``memory://`` (this process) or ``redis://HOST:PORT/DB``.
    session_store: str = "memory://"
    #: Key (>= 32 octets) signing resume tokens, shared by every backend; ``None``: derived
    #: from ``reset_key``.
    resume_key: bytes | None = field(default=None, repr=False)
    #: The key's ID, carried in tokens so keys can rotate.
    resume_key_id: int = 1
    #: Seconds a session's state outlives its last checkpoint.
    state_ttl: float = DEFAULT_STATE_TTL
    #: Seconds a resume token stays valid.
    token_ttl: float = DEFAULT_TOKEN_TTL
    #: The application, ``"package.module:attribute"`` (an ``App`` or an async handler),
    #: imported at start relative to the working directory; ``None``: the demo agent.
    app: str | None = None
    #: Who may call: token keys, issuer, audience, clock skew (``[auth]``); no keys: anyone.
    auth: AuthConfig = field(default_factory=AuthConfig)
    #: TCP address serving Prometheus text metrics at ``/metrics`` (port 0: any free port);
    #: ``None``: no metrics endpoint.
    metrics: Address | None = None
    #: ECN marking of what the backend sends (specs/ecn.md): ``l4s`` ECT(1), ``classic``
    #: ECT(0), ``off`` not-ECT; a path whose validation fails gets not-ECT anyway.
    ecn: EcnMode = EcnMode.L4S
    #: The QUIC engine, one of ``ENGINES``.
    engine: str = "aioquic"

    @property
    def effective_resume_key(self) -> bytes:
        """The resume-token key in force."""
        if self.resume_key is not None:
            return self.resume_key
        return hmac.new(self.reset_key, RESUME_KEY_LABEL, hashlib.sha256).digest()

    def __post_init__(self) -> None:
        for index, config in enumerate(self.configs):
            if len(self.server_id) != config.server_id_len:
                raise ConfigurationError(
                    f"server_id: {len(self.server_id)} octets, but configs[{index}] has "
                    f"server_id_len = {config.server_id_len}"
                )
        ids = [config.config_id for config in self.configs]
        if len(set(ids)) != len(ids):
            raise ConfigurationError("configs: a config id is defined twice")
        if len(self.reset_key) < MIN_RESET_KEY_LEN:
            raise ConfigurationError(f"reset_key: must be at least {MIN_RESET_KEY_LEN} octets")
        StoreConfig.from_url(self.session_store)  # a bad URL is refused here, naming the key
        if self.resume_key is not None and len(self.resume_key) < 32:
            raise ConfigurationError("session.resume_key: must be at least 32 octets")
        key_id = self.resume_key_id
        if isinstance(key_id, bool) or not isinstance(key_id, int) or not 0 <= key_id <= 0xFFFF:
            raise ConfigurationError("session.resume_key_id: must be 0..65535")
        for name in ("state_ttl", "token_ttl"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value <= 30 * 86400):
                raise ConfigurationError(f"session.{name}: must be 0 < seconds <= 30 days")
        if self.app is not None:
            check_import_string(self.app)
        if not isinstance(self.auth, AuthConfig):
            raise ConfigurationError("auth: must be an AuthConfig")
        if not isinstance(self.ecn, EcnMode):
            raise ConfigurationError("ecn: must be an EcnMode ('l4s', 'classic' or 'off')")
        if self.engine not in ENGINES:
            raise ConfigurationError(
                f"engine: must be one of {', '.join(map(repr, ENGINES))}, not {self.engine!r}"
            )
        if (self.certificate is None) != (self.private_key is None):
            raise ConfigurationError(
                "certificate: give both certificate and private_key, or neither"
            )

    @classmethod
    def from_mapping(
        cls,
        table: Mapping[str, Any],
        base: Path | None = None,
        *,
        server_id: bytes | None = None,
        listen: Address | None = None,
    ) -> BackendConfig:
        """Build a configuration from a parsed TOML document; errors name the key.

        ``server_id`` and ``listen`` (the command line's) win over the file's.
        """
        for name in table:
            if name not in BACKEND_KEYS and name not in IGNORED_KEYS:
                raise ConfigurationError(
                    f"{name}: unknown key (backend keys: {', '.join(sorted(BACKEND_KEYS))})"
                )
        arguments: dict[str, Any] = {}
        if server_id is None and "server_id" in table:
            server_id = parse_hex(table["server_id"], "server_id")
        if server_id is not None:
            if not server_id:
                raise ConfigurationError("server_id: must not be empty")
            arguments["server_id"] = server_id
        shared = "backends" in table
        if listen is not None:
            arguments["listen"] = listen
        elif shared:
            arguments["listen"] = _own_address(table, server_id)
        elif "listen" in table:
            arguments["listen"] = parse_address(table["listen"], "listen")
        if shared and "forwarder" not in table and "backend_listen" in table:
            arguments["forwarder"] = parse_address(table["backend_listen"], "backend_listen")
        configs = table.get("configs", [])
        if not isinstance(configs, list):
            raise ConfigurationError("configs: must be an array of tables [[configs]]")
        try:
            arguments["configs"] = tuple(
                LoadBalancerConfig.from_mapping(entry, f"configs[{index}]")
                for index, entry in enumerate(configs)
            )
        except ValueError as error:
            raise ConfigurationError(str(error)) from None
        if "reset_key" in table:
            arguments["reset_key"] = parse_hex(table["reset_key"], "reset_key", secret=True)
        if "forwarder" in table:
            arguments["forwarder"] = parse_address(table["forwarder"], "forwarder")
        if "app" in table:
            arguments["app"] = check_import_string(table["app"])
        if "engine" in table:
            arguments["engine"] = table["engine"]
        if "metrics" in table and not shared:  # a shared file's ``metrics`` is the forwarder's
            arguments["metrics"] = parse_address(table["metrics"], "metrics", allow_port_zero=True)
        if "session_store" in table:
            if not isinstance(table["session_store"], str):
                raise ConfigurationError("session_store: must be a URL string")
            arguments["session_store"] = table["session_store"]
        session = table.get("session", {})
        if not isinstance(session, Mapping):
            raise ConfigurationError("session: must be a table [session]")
        for name in session:
            if name not in SESSION_KEYS:
                expected = ", ".join(sorted(SESSION_KEYS))
                raise ConfigurationError(
                    f"session.{name}: unknown key (expected one of {expected})"
                )
        if "resume_key" in session:
            arguments["resume_key"] = parse_hex(
                session["resume_key"], "session.resume_key", secret=True
            )
        for name in ("resume_key_id", "state_ttl", "token_ttl"):
            if name in session:
                value = session[name]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ConfigurationError(f"session.{name}: must be a number")
                arguments[name] = value
        if "auth" in table:
            arguments["auth"] = AuthConfig.from_mapping(table["auth"], base)
        if "ecn" in table:
            try:
                arguments["ecn"] = EcnMode.parse(table["ecn"])
            except ValueError as error:
                raise ConfigurationError(str(error)) from None
        for name in ("certificate", "private_key"):
            if name in table:
                if not isinstance(table[name], str):
                    raise ConfigurationError(f"{name}: must be a path string")
                path = Path(table[name])
                arguments[name] = path if path.is_absolute() or base is None else base / path
        return cls(**arguments)

    @classmethod
    def load(
        cls, path: str | Path, *, server_id: bytes | None = None, listen: Address | None = None
    ) -> BackendConfig:
        """Read and validate a TOML file; ``server_id`` and ``listen`` override it."""
        path = Path(path)
        try:
            document = tomllib.loads(path.read_text())
        except OSError as error:
            raise ConfigurationError(f"{path}: cannot read: {error.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ConfigurationError(f"{path}: not valid TOML: {error}") from None
        return cls.from_mapping(document, base=path.parent, server_id=server_id, listen=listen)


def check_import_string(spec: object, what: str = "app") -> str:
    """Return ``spec`` if it looks like ``module:attribute``; else a ``ConfigurationError``."""
    if not isinstance(spec, str):
        raise ConfigurationError(f"{what}: must be a string 'package.module:attribute'")
    module, colon, attribute = spec.partition(":")
    parts = module.split(".") + attribute.split(".")
    if not colon or not all(part.isidentifier() for part in parts):
        raise ConfigurationError(f"{what}: {spec!r:.200} is not 'package.module:attribute'")
    return spec


def _own_address(table: Mapping[str, Any], server_id: bytes | None) -> Address:
    """This backend's address from the ``[[backends]]`` entry with its server ID."""
    if server_id is None:
        raise ConfigurationError(
            "server_id: this is a forwarder file ([[backends]]); say which backend this is "
            "with --server-id"
        )
    backends = table["backends"]
    if not isinstance(backends, list):
        raise ConfigurationError("backends: must be an array of tables [[backends]]")
    for index, entry in enumerate(backends):
        if not isinstance(entry, Mapping):
            raise ConfigurationError(f"backends[{index}]: must be a table")
        if (
            isinstance(entry.get("server_id"), str)
            and parse_hex(entry["server_id"], f"backends[{index}].server_id") == server_id
        ):
            return parse_address(entry.get("address"), f"backends[{index}].address")
    raise ConfigurationError(f"server_id: {server_id.hex()} is not in [[backends]]")
