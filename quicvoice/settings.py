"""What every configuration file of a deployment shares: the forwarder's (``quicvoice-lb``) and
the backends' (``quicvoice serve``) read one TOML file, so both parse its addresses and hex
values alike and each knows which top-level keys are the other's.

Standard library only: the forwarder imports it beside the QUIC-LB codec.
"""

from __future__ import annotations

import ipaddress

from .errors import ConfigurationError

#: A UDP or TCP address: an IP literal (IPv6 without brackets) and a port.
Address = tuple[str, int]
MAX_PORT = 0xFFFF

#: Top-level keys and tables that belong to the backend (``quicvoice serve``) and that the
#: forwarder ignores, so that one file can configure both. ``configs`` and ``reset_key`` are
#: read by both.
BACKEND_KEYS = frozenset(
    {
        "server_id",
        "forwarder",
        "certificate",
        "private_key",
        "session_store",
        "serve",
        "session",
        "store",
        "app",
        "auth",
        "ecn",
    }
)
FORWARDER_KEYS = frozenset(
    {
        "listen",
        "backend_listen",
        "configs",
        "backends",
        "reset_key",
        "metrics",
        "log_level",
        "health_interval",
        "health_timeout",
        "health_icmp",
    }
)


def parse_address(value: object, where: str, *, allow_port_zero: bool = False) -> Address:
    """Parse ``"HOST:PORT"`` (IPv4 literal, or IPv6 literal in brackets) into (host, port).

    The host comes back in canonical form (``[0:0::1]`` gives ``::1``), as ``recvfrom``
    reports it. Raises ``ConfigurationError`` naming ``where``.
    """
    if not isinstance(value, str):
        raise ConfigurationError(f'{where}: must be a string "HOST:PORT"')
    host, colon, port_text = value.rpartition(":")
    if not colon or not host:
        raise ConfigurationError(f'{where}: {value!r} is not "HOST:PORT"')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ConfigurationError(f"{where}: {host!r} is not an IPv6 address") from None
    else:
        if ":" in host:
            raise ConfigurationError(f"{where}: write IPv6 addresses in brackets: [{host}]:PORT")
        try:
            host = str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ConfigurationError(
                f"{where}: {host!r} is not an IPv4 address (use an IP literal, not a name)"
            ) from None
    if not port_text.isdigit() or not port_text.isascii():
        raise ConfigurationError(f"{where}: port {port_text!r} is not a number")
    port = int(port_text)
    if not (0 if allow_port_zero else 1) <= port <= MAX_PORT:
        raise ConfigurationError(f"{where}: port {port} is out of range 1..{MAX_PORT}")
    return host, port


def format_address(address: Address) -> str:
    """Return ``"HOST:PORT"`` with IPv6 hosts in brackets (the inverse of ``parse_address``)."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_hex(value: object, where: str, *, secret: bool = False) -> bytes:
    """Parse a string of hex digits; ``ConfigurationError`` naming ``where`` otherwise.

    For a ``secret`` (a key) the message never repeats the value, which would put most of a
    real key with one typo into logs: it gives the length and the first bad position only.
    """
    if not isinstance(value, str):
        raise ConfigurationError(f"{where}: must be a string of hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        if not secret:
            raise ConfigurationError(f"{where}: {value!r} is not hex") from None
        bad = next(
            (i for i, c in enumerate(value) if c not in "0123456789abcdefABCDEF"), len(value)
        )
        detail = (
            f"invalid character at position {bad}" if bad < len(value) else "odd number of digits"
        )
        raise ConfigurationError(f"{where}: not hex ({len(value)} characters; {detail})") from None
