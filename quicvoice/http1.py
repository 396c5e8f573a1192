"""HTTP/1.1 request heads and responses as bytes, with no I/O (RFC 9112).

The small read-only servers of quicvoice (``/metrics``, the browser demo's files) parse one
request head per connection and answer once with ``Connection: close``. This module is their
protocol: ``parse_request_head`` turns any bytes into a ``Request`` or a ``BadRequest`` (never
an exception), ``encode_response`` turns a ``Response`` into bytes. The asyncio shell that reads
heads under a deadline and bounds connections is ``quicvoice.asyncio.http1``.

The parser is strict where lenience would make two readers of one message disagree (RFC 9112
§11.2): no body framing it does not understand, one ``Host``, one ``Content-Length``, no space
before a header's colon, no line folding, ASCII only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

#: The reason phrase written after each status code this module may be asked to send.
REASONS: Mapping[int, str] = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
#: The versions served; another ``HTTP/<digit>...`` gets 505, anything else 400.
VERSIONS = ("HTTP/1.1", "HTTP/1.0")
#: The media type of the plain-text answers (errors, and whatever a route sends as text).
TEXT_PLAIN = "text/plain; charset=utf-8"
#: The end of a request head: the empty line after the header fields (RFC 9112 §2.1).
HEAD_END = b"\r\n\r\n"

#: More digits than this in ``Content-Length`` is a body no server here would take: it is
#: refused without converting it (RFC 9110 §8.6 asks to guard against overflow).
_MAX_LENGTH_DIGITS = 18
#: A token: visible ASCII but the delimiters (RFC 9110 §5.6.2).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Visible ASCII, no blank (the target of a request line).
_VISIBLE = re.compile(r"[!-~]*")
#: What a field value may not hold, even after the head is split into lines (RFC 9110 §5.5).
_FORBIDDEN_IN_VALUE = re.compile(r"[\r\n\0]")
#: Header fields that must not appear twice: two would make the target or framing ambiguous
#: (RFC 9112 §3.2, §6.3).
_SINGLE_FIELDS = frozenset({"host", "content-length"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """A request head that parsed: what a route needs to answer it."""

    #: The method token, as sent (methods are case-sensitive, RFC 9110 §9.1).
    method: str
    #: The origin-form target (starts with ``/``), query included.
    target: str
    #: ``HTTP/1.1`` or ``HTTP/1.0``.
    version: str
    #: The header fields in order: lower-case name, value without surrounding blanks.
    headers: tuple[tuple[str, str], ...] = ()
    #: Octets of body the client announced with ``Content-Length`` (0 when absent).
    content_length: int = 0

    @property
    def path(self) -> str:
        """The target without its query."""
        return self.target.partition("?")[0]

    def header(self, name: str) -> str | None:
        """The value of header field ``name`` (any case), the last if repeated, else ``None``."""
        key = name.lower()
        found = None
        for field, value in self.headers:
            if field == key:
                found = value
        return found


@dataclass(frozen=True, slots=True, kw_only=True)
class BadRequest:
    """A request head that cannot be served; ``status`` is the answer (400, 413, 431, 505)."""

    #: The status code to answer with.
    status: int

    def __post_init__(self) -> None:
        if self.status not in REASONS or self.status < 400:
            raise ValueError(f"not an error status this module knows: {self.status}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """One answer; ``encode_response`` adds the framing (length, ``Connection: close``)."""

    #: The status code (one of ``REASONS``).
    status: int
    #: The body; an empty error body is replaced by ``"<status> <reason>\\n"``.
    body: bytes = b""
    #: The ``Content-Type`` of the body.
    content_type: str = TEXT_PLAIN
    #: The ``Cache-Control`` directive.
    cache_control: str = "no-store"
    #: More header fields, in order (for example ``("Allow", "GET, HEAD")``).
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.status not in REASONS:
            raise ValueError(f"no reason phrase for status {self.status}")
        fields = [("Content-Type", self.content_type), ("Cache-Control", self.cache_control)]
        for name, value in [*fields, *self.headers]:
            if not _is_token(name) or not value.isascii() or _FORBIDDEN_IN_VALUE.search(value):
                raise ValueError(f"header field {name!r} cannot be sent as it is")


def parse_request_head(head: bytes) -> Request | BadRequest:
    """Parse one request head (request line, header fields, the empty line ending it).

    Any bytes give a result: a ``Request`` when the head is well formed, one of the versions
    served and announces no body this server would have to frame, else a ``BadRequest``.
    """
    if not head.endswith(HEAD_END):
        return BadRequest(status=400)
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return BadRequest(status=400)
    request_line, *field_lines = text[: -len(HEAD_END)].split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not _is_token(parts[0]):
        return BadRequest(status=400)
    method, target, version = parts
    if not target.startswith("/") or not _VISIBLE.fullmatch(target):
        return BadRequest(status=400)  # only origin-form is served (RFC 9112 §3.2.1)
    if version not in VERSIONS:
        known_syntax = version.startswith("HTTP/") and version[5:6].isdigit()
        return BadRequest(status=505 if known_syntax else 400)
    headers = _parse_fields(field_lines)
    if isinstance(headers, BadRequest):
        return headers
    names = [name for name, _ in headers]
    if "transfer-encoding" in names:
        return BadRequest(status=400)  # no chunked bodies here: refuse rather than misframe
    if any(names.count(name) > 1 for name in _SINGLE_FIELDS):
        return BadRequest(status=400)
    length = _content_length(dict(headers).get("content-length"))
    if isinstance(length, BadRequest):
        return length
    return Request(
        method=method, target=target, version=version, headers=headers, content_length=length
    )


def encode_response(response: Response, *, head_only: bool = False) -> bytes:
    """The bytes of ``response``; with ``head_only`` (a ``HEAD`` request) the head alone."""
    reason = REASONS[response.status]
    body = response.body
    if response.status >= 400 and not body:
        body = f"{response.status} {reason}\n".encode()
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(body)}",
        f"Cache-Control: {response.cache_control}",
        "X-Content-Type-Options: nosniff",
        *(f"{name}: {value}" for name, value in response.headers),
        "Connection: close",
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + body


def _parse_fields(lines: list[str]) -> tuple[tuple[str, str], ...] | BadRequest:
    fields = []
    for line in lines:
        name, colon, value = line.partition(":")
        # A blank before the colon or a folded line starts with a non-token (RFC 9112 §5.1, §5.2).
        if not colon or not _is_token(name) or _FORBIDDEN_IN_VALUE.search(value):
            return BadRequest(status=400)
        fields.append((name.lower(), value.strip(" \t")))
    return tuple(fields)


def _content_length(value: str | None) -> int | BadRequest:
    if value is None:
        return 0
    if not value.isdigit():
        return BadRequest(status=400)
    if len(value.lstrip("0")) > _MAX_LENGTH_DIGITS:
        return BadRequest(status=413)
    return int(value)


def _is_token(text: str) -> bool:
    return _TOKEN.fullmatch(text) is not None
