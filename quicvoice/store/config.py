"""The ``session_store`` setting: parsing its URL (``open_store`` in ``opening`` opens it).

    memory://                                    in-process (default)
    redis://[[USER]:PASSWORD@]HOST[:PORT][/DB][?OPTIONS]
    redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB][?OPTIONS]

OPTIONS: ``timeout`` (seconds), ``prefix``, ``replicas`` and ``wait_ms`` (confirm each checkpoint
on that many replicas, waiting at most that long); for Sentinel also ``sentinel_username`` and
``sentinel_password`` (the sentinels' own credentials; USER and PASSWORD are the data nodes').
``redis`` is imported only when a Redis store is opened, so a backend without the ``redis``
extra runs with ``memory://``.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from quicvoice.errors import ConfigurationError

#: The configuration key (and flag) this module parses; every error names it.
SETTING = "session_store"
#: The store used when nothing is configured.
DEFAULT_URL = "memory://"
#: Redis's port when the URL names none.
DEFAULT_REDIS_PORT = 6379
#: A sentinel's port when the URL names none.
DEFAULT_SENTINEL_PORT = 26379
#: Bound on every Redis call, in seconds, unless the URL sets ``timeout``.
DEFAULT_TIMEOUT = 0.5
#: Longest wait for replicas to confirm a checkpoint, in ms, unless the URL sets ``wait_ms``.
DEFAULT_WAIT_MS = 100
#: Prefix of every Redis key, unless the URL sets ``prefix``.
DEFAULT_PREFIX = "quicvoice:"
#: Longest key prefix.
MAX_PREFIX_LEN = 64
#: Highest Redis database number accepted.
MAX_DB = 1023
#: Most sentinels one URL may name.
MAX_SENTINELS = 16
#: Most replicas a checkpoint may wait for.
MAX_REPLICAS = 16

_OPTIONS = {"timeout", "prefix", "replicas", "wait_ms"}
_SENTINEL_OPTIONS = _OPTIONS | {"sentinel_username", "sentinel_password"}
_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252})")
_SERVICE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SCHEMES = "memory://, redis://HOST:PORT/DB or redis+sentinel://HOST:PORT,.../SERVICE/DB"

StoreKind = Literal["memory", "redis", "sentinel"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    """Where session state lives, as parsed from the ``session_store`` URL."""

    #: ``"memory"``, ``"redis"`` (one node) or ``"sentinel"`` (the primary Sentinel names).
    kind: StoreKind = "memory"
    #: Redis host name or address (redis only).
    host: str = ""
    #: Redis TCP port (redis only).
    port: int = DEFAULT_REDIS_PORT
    #: The sentinels asked for the primary, ``(host, port)`` each (sentinel only).
    sentinels: tuple[tuple[str, int], ...] = ()
    #: The name the sentinels monitor the primary under (sentinel only).
    service: str = ""
    #: Redis database number (redis and sentinel).
    db: int = 0
    #: Redis ACL user name of the data nodes, if any.
    username: str | None = None
    #: Password of the data nodes, if any (never shown by ``repr``).
    password: str | None = None
    #: ACL user name of the sentinels, if any (sentinel only).
    sentinel_username: str | None = None
    #: Password of the sentinels, if any (sentinel only; never shown by ``repr``).
    sentinel_password: str | None = None
    #: Bound on each Redis call, seconds; a slower Redis gives ``StoreUnavailableError``.
    timeout: float = DEFAULT_TIMEOUT
    #: Prefix of every Redis key, so several deployments can share one Redis.
    prefix: str = DEFAULT_PREFIX
    #: Replicas that must confirm a session record before ``save`` returns (0: don't wait).
    replicas: int = 0
    #: Longest wait for that confirmation, milliseconds; below ``timeout``.
    wait_ms: int = DEFAULT_WAIT_MS

    def __post_init__(self) -> None:
        if self.kind not in ("memory", "redis", "sentinel"):
            raise ConfigurationError(f"{SETTING}: unknown kind {self.kind!r}")
        if self.kind == "redis" and not self.host:
            raise ConfigurationError(f"{SETTING}: a redis:// URL needs a host")
        if self.kind == "sentinel":
            if not 0 < len(self.sentinels) <= MAX_SENTINELS:
                raise ConfigurationError(
                    f"{SETTING}: a redis+sentinel:// URL needs 1 to {MAX_SENTINELS} sentinels"
                )
            if len(set(self.sentinels)) != len(self.sentinels):
                raise ConfigurationError(f"{SETTING}: a sentinel is named twice")
            if not _SERVICE_NAME.fullmatch(self.service):
                raise ConfigurationError(
                    f"{SETTING}: the service name must be 1 to 64 of A-Z a-z 0-9 . _ -"
                )
        elif self.sentinels or self.service or self.sentinel_password or self.sentinel_username:
            raise ConfigurationError(f"{SETTING}: sentinels belong to redis+sentinel:// only")
        for port in (self.port, *(port for _, port in self.sentinels)):
            if not 0 < port < 65536:
                raise ConfigurationError(f"{SETTING}: port must be 1 to 65535, not {port}")
        if not 0 <= self.db <= MAX_DB:
            raise ConfigurationError(f"{SETTING}: database must be 0 to {MAX_DB}, not {self.db}")
        if not (math.isfinite(self.timeout) and 0 < self.timeout <= 60):
            raise ConfigurationError(f"{SETTING}: timeout must be in (0, 60] seconds")
        if not 0 < len(self.prefix) <= MAX_PREFIX_LEN or not self.prefix.isprintable():
            raise ConfigurationError(
                f"{SETTING}: prefix must be 1 to {MAX_PREFIX_LEN} printable characters"
            )
        if not 0 <= self.replicas <= MAX_REPLICAS:
            raise ConfigurationError(f"{SETTING}: replicas must be 0 to {MAX_REPLICAS}")
        if not 0 < self.wait_ms < self.timeout * 1000 and (self.replicas or self.wait_ms <= 0):
            raise ConfigurationError(
                f"{SETTING}: wait_ms ({self.wait_ms}) must be at least 1 and below the timeout "
                f"({self.timeout * 1000:g} ms)"
            )

    def __repr__(self) -> str:
        def secret(value: str | None) -> str | None:
            return "***" if value is not None else None

        return (
            f"StoreConfig(kind={self.kind!r}, host={self.host!r}, port={self.port}, "
            f"sentinels={self.sentinels!r}, service={self.service!r}, db={self.db}, "
            f"username={self.username!r}, password={secret(self.password)!r}, "
            f"sentinel_username={self.sentinel_username!r}, "
            f"sentinel_password={secret(self.sentinel_password)!r}, timeout={self.timeout}, "
            f"prefix={self.prefix!r}, replicas={self.replicas}, wait_ms={self.wait_ms})"
        )

    @property
    def location(self) -> str:
        """Where the store is, for messages (no credentials)."""
        if self.kind == "sentinel":
            hosts = ",".join(_join_host(host, port) for host, port in self.sentinels)
            return f"redis service {self.service!r} via sentinels {hosts}"
        if self.kind == "redis":
            return f"redis at {_join_host(self.host, self.port)}"
        return "memory"

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
            if scheme not in ("redis", "redis+sentinel"):
                named = f"scheme {scheme!r}" if scheme else "a URL without a scheme"
                raise ConfigurationError(f"{SETTING}: unsupported {named}; use {_SCHEMES}")
            if parts.fragment:
                raise ConfigurationError(f"{SETTING}: a {scheme}:// URL takes no fragment")
            pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False)
            options = dict(pairs)
            if len(options) != len(pairs):
                raise ConfigurationError(f"{SETTING}: an option is given twice")
            allowed = _SENTINEL_OPTIONS if scheme == "redis+sentinel" else _OPTIONS
            unknown = set(options) - allowed
            if unknown:
                raise ConfigurationError(f"{SETTING}: unknown option(s) {sorted(unknown)}")
            if scheme == "redis":
                return cls._redis(parts.netloc, parts.path, parts.port, parts.hostname, options)
            return cls._sentinel(parts.netloc, parts.path, options)
        except ConfigurationError:
            raise
        except ValueError as exc:  # bad port, timeout or database number; unparsable URL
            detail = _without_secrets(str(exc), url)
            raise ConfigurationError(f"{SETTING}: invalid URL {_safe(url)!r}: {detail}") from exc

    @classmethod
    def _redis(
        cls,
        netloc: str,
        path: str,
        port: int | None,
        hostname: str | None,
        options: dict[str, str],
    ) -> StoreConfig:
        username, password, _ = _credentials(netloc)
        if hostname and not _valid_host(hostname):
            raise ConfigurationError(f"{SETTING}: bad host {_printable(hostname)!r}")
        timeout, prefix, replicas, wait_ms = _common_options(options)
        return cls(
            kind="redis",
            host=hostname or "",
            port=port if port is not None else DEFAULT_REDIS_PORT,
            db=_database(path.strip("/")),
            username=username,
            password=password,
            timeout=timeout,
            prefix=prefix,
            replicas=replicas,
            wait_ms=wait_ms,
        )

    @classmethod
    def _sentinel(cls, netloc: str, path: str, options: dict[str, str]) -> StoreConfig:
        username, password, hosts = _credentials(netloc)
        if not hosts:
            raise ConfigurationError(f"{SETTING}: a redis+sentinel:// URL needs a sentinel")
        sentinels = tuple(_sentinel_address(item) for item in hosts.split(","))
        segments = path.split("/")[1:] if path.startswith("/") else []
        if not 1 <= len(segments) <= 2 or not segments[0]:
            raise ConfigurationError(
                f"{SETTING}: a redis+sentinel:// URL's path is /SERVICE or /SERVICE/DB"
            )
        timeout, prefix, replicas, wait_ms = _common_options(options)
        return cls(
            kind="sentinel",
            sentinels=sentinels,
            service=segments[0],
            db=_database(segments[1]) if len(segments) == 2 else 0,
            username=username,
            password=password,
            sentinel_username=options.get("sentinel_username") or None,
            sentinel_password=options.get("sentinel_password"),
            timeout=timeout,
            prefix=prefix,
            replicas=replicas,
            wait_ms=wait_ms,
        )


def _common_options(options: dict[str, str]) -> tuple[float, str, int, int]:
    """``(timeout, prefix, replicas, wait_ms)`` from a URL's options, defaults filled in."""
    timeout = float(options.get("timeout", DEFAULT_TIMEOUT))
    replicas = _number("replicas", options["replicas"]) if "replicas" in options else 0
    if "wait_ms" in options and not replicas:
        raise ConfigurationError(f"{SETTING}: wait_ms needs replicas=1 or more")
    wait_ms = _number("wait_ms", options["wait_ms"]) if "wait_ms" in options else DEFAULT_WAIT_MS
    return timeout, options.get("prefix", DEFAULT_PREFIX), replicas, wait_ms


def _number(name: str, text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 9):
        raise ConfigurationError(f"{SETTING}: {name} must be a whole number, not {text!r}")
    return int(text)


def _database(text: str) -> int:
    if not text:
        return 0
    if not (text.isascii() and text.isdigit() and len(text) <= 9):
        raise ConfigurationError(f"{SETTING}: database must be a number, not {text!r}")
    return int(text)


def _credentials(netloc: str) -> tuple[str | None, str | None, str]:
    """``(user, password, hosts)`` of a URL's authority, percent-decoded."""
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return None, None, netloc
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None), hosts


def _sentinel_address(item: str) -> tuple[str, int]:
    """``HOST[:PORT]`` or ``[IPV6][:PORT]`` of one sentinel."""
    if item.startswith("["):
        literal, bracket, rest = item[1:].partition("]")
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            bracket = ""
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigurationError(f"{SETTING}: bad sentinel address {_printable(item)!r}")
        host, port_text = literal, rest[1:] if rest else None
    else:
        host, colon, port_text_or_empty = item.partition(":")
        port_text = port_text_or_empty if colon else None
        if not _valid_host(host):
            raise ConfigurationError(f"{SETTING}: bad sentinel host {_printable(item)!r}")
    if port_text is None:
        return host, DEFAULT_SENTINEL_PORT
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        raise ConfigurationError(f"{SETTING}: bad sentinel port {_printable(port_text)!r}")
    return host, int(port_text)


def _valid_host(host: str) -> bool:
    """A DNS name, an IPv4 address, or (without brackets) an IPv6 address."""
    if _HOST_NAME.fullmatch(host):
        return True
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _join_host(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _printable(text: str) -> str:
    return text[:80] if text.isprintable() else repr(text[:80])


def _without_secrets(text: str, url: str) -> str:
    """``text`` (an error about ``url``) with every password of ``url`` replaced by ``***``:
    a value parser's message may quote an option that swallowed one (``?timeout=1?...``)."""
    secrets = set(re.findall(r"sentinel_password=([^&;]*)", url))
    try:
        secrets.add(urlsplit(url).password or "")
    except ValueError:
        pass
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _safe(url: str) -> str:
    """``url`` without passwords (userinfo, ``sentinel_password``), for error messages."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        userinfo, at, hosts = netloc.rpartition("@")
        if at and ":" in userinfo:
            netloc = f"{userinfo.partition(':')[0]}:***@{hosts}"
        query = re.sub(r"(sentinel_password=)[^&;]*", r"\1***", parts.query)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparsable URL>"
