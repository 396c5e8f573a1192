"""Voice URLs: ``quic://host:port`` (raw QUIC) and ``https://host:port/path`` (WebTransport).

A strict parser, not ``urllib.parse``: a URL that a client would dial in a surprising way
(credentials in it, a fragment, a path on raw QUIC, a port out of range) is refused with an
``InvalidURLError`` naming what is wrong, instead of being read loosely.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .errors import InvalidURLError

#: Raw QUIC with ALPN ``quicvoice/1``.
SCHEME_QUIC = "quic"
#: WebTransport over HTTP/3 (ALPN ``h3``), the session at the URL's path.
SCHEME_HTTPS = "https"
#: Port used when a URL names none: 443 for both schemes, as a forwarder's VIP listens there
#: (the ALPN, not the port, tells raw QUIC from HTTP/3).
DEFAULT_PORTS = {SCHEME_QUIC: 443, SCHEME_HTTPS: 443}
#: WebTransport path used when an ``https`` URL has none, or only "/" (the backend serves
#: sessions there; "/" itself is its HTTP/3 status page).
DEFAULT_WEBTRANSPORT_PATH = "/voice"
MAX_URL_LENGTH = 2048
#: RFC 1035 §2.3.4: 253 characters in the written form, 63 per label.
MAX_HOST_LENGTH = 253
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
#: RFC 3986 §3.3 pchar plus "/" and "?" (query): unreserved, sub-delims, ":", "@", "%".
_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*")
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


@dataclass(frozen=True, slots=True, kw_only=True)
class VoiceURL:
    """Where a client calls: a parsed ``quic://`` or ``https://`` URL."""

    #: ``"quic"`` or ``"https"`` (lower case).
    scheme: str
    #: A lower-case DNS name without a trailing dot, or an IP literal without brackets.
    host: str
    #: UDP port, 1-65535 (the scheme's default when the URL names none).
    port: int
    #: WebTransport request path with any query (``""`` for raw QUIC).
    path: str = ""

    @property
    def webtransport(self) -> bool:
        """Whether the session rides WebTransport over HTTP/3 rather than raw QUIC."""
        return self.scheme == SCHEME_HTTPS

    @property
    def host_is_address(self) -> bool:
        """Whether ``host`` is an IP literal (nothing to resolve, no SNI)."""
        return is_ip_literal(self.host)

    @property
    def authority(self) -> str:
        """``host:port`` as HTTP's ``:authority`` writes it (IPv6 in brackets)."""
        return format_authority(self.host, self.port)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority}{self.path}"


def is_ip_literal(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address literal (no brackets)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def format_authority(host: str, port: int) -> str:
    """``host:port``, with an IPv6 literal in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_url(text: str) -> VoiceURL:
    """Parse a ``quic://`` or ``https://`` URL; raise ``InvalidURLError`` naming the fault."""
    if not isinstance(text, str):
        raise InvalidURLError(f"URL must be a string, not {type(text).__name__}")
    if len(text) > MAX_URL_LENGTH:
        raise InvalidURLError(f"URL is longer than {MAX_URL_LENGTH} characters")
    if not text.isascii() or not text.isprintable() or " " in text:
        raise InvalidURLError(
            "URL contains spaces, control or non-ASCII characters (write an international "
            "host name in its xn-- form)"
        )
    scheme, separator, rest = text.partition("://")
    if not separator:
        raise InvalidURLError(f"{text!r} is not a URL: expected quic://HOST[:PORT] or https://...")
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidURLError(
            f"unknown scheme {scheme!r}: use quic:// (raw QUIC) or https:// (WebTransport)"
        )
    if "#" in rest:
        raise InvalidURLError("URL has a fragment (#...), which means nothing to a voice server")
    split = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:split], rest[split:]
    if "@" in authority:
        raise InvalidURLError("URL has userinfo (user@host): pass credentials as token= instead")
    host, port = _parse_authority(authority, scheme)
    return VoiceURL(scheme=scheme, host=host, port=port, path=_parse_path(path, scheme))


def _parse_authority(authority: str, scheme: str) -> tuple[str, int]:
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise InvalidURLError("URL has an IPv6 host without its closing ']'")
        host_text, after = authority[1:end], authority[end + 1 :]
        if after and not after.startswith(":"):
            raise InvalidURLError(f"unexpected {after!r} after the IPv6 host")
        port_text = after[1:] if after else None
        host = _parse_ipv6(host_text)
    else:
        host_text, colon, port_text_or_empty = authority.partition(":")
        port_text = port_text_or_empty if colon else None
        host = _parse_host(host_text)
    if port_text is None:
        return host, DEFAULT_PORTS[scheme]
    return host, _parse_port(port_text)


def _parse_ipv6(text: str) -> str:
    if "%" in text:
        raise InvalidURLError("IPv6 zone identifiers (%...) are not supported in URLs")
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        raise InvalidURLError(f"{text!r} in brackets is not an IPv6 address") from None
    return str(address)


def _parse_host(text: str) -> str:
    if not text:
        raise InvalidURLError("URL has no host")
    if "%" in text:
        raise InvalidURLError("percent-encoded host names are not supported")
    if text.replace(".", "").isdigit():
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            raise InvalidURLError(f"{text!r} is not a valid IPv4 address") from None
    return parse_host_name(text)


def parse_host_name(text: str) -> str:
    """Validate a DNS host name (RFC 1123 labels); return it in lower case, no trailing dot."""
    name = text.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > MAX_HOST_LENGTH:
        raise InvalidURLError(f"host name {text!r} is empty or longer than {MAX_HOST_LENGTH}")
    for label in name.split("."):
        if not _LABEL.fullmatch(label):
            raise InvalidURLError(
                f"host name {text!r} has an invalid label {label!r} (letters, digits and "
                "inner hyphens, 1 to 63 characters)"
            )
    if name.rsplit(".", 1)[-1].isdigit():
        raise InvalidURLError(f"host name {text!r} ends in a numeric label")
    return name


def _parse_port(text: str) -> int:
    if not text:
        raise InvalidURLError("URL has ':' but no port")
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise InvalidURLError(f"port {text!r} is not a number from 1 to 65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise InvalidURLError(f"port {port} is out of range (1 to 65535)")
    return port


def _parse_path(path: str, scheme: str) -> str:
    if scheme == SCHEME_QUIC:
        if path not in ("", "/"):
            raise InvalidURLError("quic:// URLs have no path or query (raw QUIC has no requests)")
        return ""
    if not _PATH.fullmatch(path) or _PERCENT.search(path):
        raise InvalidURLError(f"path {path!r} has characters a URL path cannot hold")
    if not path or path.startswith(("?", "/?")) or path == "/":
        # No path (browsers write it "/"): the backend's default WebTransport path.
        return DEFAULT_WEBTRANSPORT_PATH + path.removeprefix("/")
    return path


def dial_target(target: str, port: int | None, webtransport: bool | None) -> VoiceURL:
    """What ``connect(target, port, webtransport=...)`` dials: a URL alone, or a host (DNS
    name or IP literal) and a port, raw QUIC unless ``webtransport``."""
    if port is None:
        url = parse_url(target)
        if webtransport is not None and webtransport != url.webtransport:
            raise InvalidURLError(
                f"webtransport={webtransport} contradicts the URL's scheme {url.scheme!r}"
            )
        return url
    if not isinstance(target, str):
        raise InvalidURLError(f"host must be a string, not {type(target).__name__}")
    if "://" in target:
        raise InvalidURLError("give a URL alone, or a host and a port, not a URL and a port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidURLError(f"port {port!r} is not a number from 1 to 65535")
    host = target[1:-1] if target.startswith("[") and target.endswith("]") else target
    if not is_ip_literal(host):
        if not host.isascii():
            raise InvalidURLError(f"host {target!r} is not ASCII (use its xn-- form)")
        host = parse_host_name(host)
    scheme = SCHEME_HTTPS if webtransport else SCHEME_QUIC
    path = DEFAULT_WEBTRANSPORT_PATH if webtransport else ""
    return VoiceURL(scheme=scheme, host=host, port=port, path=path)
