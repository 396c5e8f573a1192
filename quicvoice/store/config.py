"""The ``session_store`` setting: parsing its URL (``open_store`` in ``opening`` opens it).

    memory://                                    in-process (default)
    redis://[[USER]:PASSWORD@]HOST[:PORT][/DB][?timeout=SECONDS&prefix=TEXT]

``redis`` is imported only when a ``redis://`` URL is opened, so a backend without the
``redis`` extra runs with ``memory://``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from quicvoice.errors import ConfigurationError

#: The configuration key (and flag) this module parses; every error names it.
SETTING = "session_store"
#: The store used when nothing is configured.
DEFAULT_URL = "memory://"
#: Redis's port when the URL names none.
DEFAULT_REDIS_PORT = 6379
#: Bound on every Redis call, in seconds, unless the URL sets ``timeout``.
DEFAULT_TIMEOUT = 0.5
#: Prefix of every Redis key, unless the URL sets ``prefix``.
DEFAULT_PREFIX = "quicvoice:"
#: Longest key prefix.
MAX_PREFIX_LEN = 64
#: Highest Redis database number accepted.
MAX_DB = 1023


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    """Where session state lives, as parsed from the ``session_store`` URL."""

    #: ``"memory"`` or ``"redis"``.
    kind: Literal["memory", "redis"] = "memory"
    #: Redis host name or address (redis only).
    host: str = ""
    #: Redis TCP port (redis only).
    port: int = DEFAULT_REDIS_PORT
    #: Redis database number (redis only).
    db: int = 0
    #: Redis ACL user name, if any (redis only).
    username: str | None = None
    #: Redis password, if any (redis only; never shown by ``repr``).
    password: str | None = None
    #: Bound on each Redis call, seconds; a slower Redis gives ``StoreUnavailableError``.
    timeout: float = DEFAULT_TIMEOUT
    #: Prefix of every Redis key, so several deployments can share one Redis.
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if self.kind not in ("memory", "redis"):
            raise ConfigurationError(f"{SETTING}: unknown kind {self.kind!r}")
        if self.kind == "redis" and not self.host:
            raise ConfigurationError(f"{SETTING}: a redis:// URL needs a host")
        if not 0 < self.port < 65536:
            raise ConfigurationError(f"{SETTING}: port must be 1 to 65535, not {self.port}")
        if not 0 <= self.db <= MAX_DB:
            raise ConfigurationError(f"{SETTING}: database must be 0 to {MAX_DB}, not {self.db}")
        if not (math.isfinite(self.timeout) and 0 < self.timeout <= 60):
            raise ConfigurationError(f"{SETTING}: timeout must be in (0, 60] seconds")
        if not 0 < len(self.prefix) <= MAX_PREFIX_LEN or not self.prefix.isprintable():
            raise ConfigurationError(
                f"{SETTING}: prefix must be 1 to {MAX_PREFIX_LEN} printable characters"
            )

    def __repr__(self) -> str:
        secret = "***" if self.password is not None else None
        return (
            f"StoreConfig(kind={self.kind!r}, host={self.host!r}, port={self.port}, "
            f"db={self.db}, username={self.username!r}, password={secret!r}, "
            f"timeout={self.timeout}, prefix={self.prefix!r})"
        )

    @classmethod
    def from_url(cls, url: str) -> StoreConfig:
        """Parse a ``session_store`` URL; ``ConfigurationError`` names the setting and the fault."""
        if not isinstance(url, str):
            raise ConfigurationError(f"{SETTING} must be a string URL")
        try:
            parts = urlsplit(url.strip())
            scheme = parts.scheme.lower()
            if scheme == "memory":
                if parts.netloc or parts.path or parts.query or parts.fragment:
                    raise ConfigurationError(f"{SETTING}: memory:// takes no host, path or query")
                return cls(kind="memory")
            if scheme != "redis":
                raise ConfigurationError(
                    f"{SETTING}: unsupported URL {_safe(url)!r}; use memory:// or "
                    "redis://HOST:PORT/DB"
                )
            if parts.fragment:
                raise ConfigurationError(f"{SETTING}: a redis:// URL takes no fragment")
            port = parts.port if parts.port is not None else DEFAULT_REDIS_PORT
            path = parts.path.strip("/")
            if path and not path.isdigit():
                raise ConfigurationError(f"{SETTING}: database must be a number, not {path!r}")
            options = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
            unknown = set(options) - {"timeout", "prefix"}
            if unknown:
                raise ConfigurationError(f"{SETTING}: unknown option(s) {sorted(unknown)}")
            timeout = float(options.get("timeout", DEFAULT_TIMEOUT))
            return cls(
                kind="redis",
                host=parts.hostname or "",
                port=port,
                db=int(path) if path else 0,
                username=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password is not None else None,
                timeout=timeout,
                prefix=options.get("prefix", DEFAULT_PREFIX),
            )
        except ConfigurationError:
            raise
        except ValueError as exc:  # bad port, timeout or database number
            raise ConfigurationError(f"{SETTING}: invalid URL {_safe(url)!r}: {exc}") from exc


def _safe(url: str) -> str:
    """``url`` without its password, for error messages."""
    try:
        parts = urlsplit(url)
        if not parts.password:
            return url
        return url.replace(f":{parts.password}@", ":***@", 1)
    except ValueError:
        return "<unparsable URL>"
