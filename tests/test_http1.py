"""The HTTP/1.1 request-head parser and response encoder (quicvoice.http1), in memory.

The cases here were the parser halves of the /metrics and browser-demo server tables; the
servers' own tests keep their routing, tests/test_http1_server.py the shell.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicvoice.http1 import (
    REASONS,
    VERSIONS,
    BadRequest,
    Request,
    Response,
    encode_response,
    parse_request_head,
)

from .http1_helpers import hostile_heads

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            Request(method="GET", target="/metrics", version="HTTP/1.1", headers=(("host", "x"),)),
        ),
        (
            b"HEAD /metrics?name[]=x HTTP/1.0\r\n\r\n",
            Request(method="HEAD", target="/metrics?name[]=x", version="HTTP/1.0"),
        ),
        # Methods are case-sensitive tokens (RFC 9110 §9.1): these parse, the shell answers 405.
        (b"get / HTTP/1.1\r\n\r\n", Request(method="get", target="/", version="HTTP/1.1")),
        (
            b"M-SEARCH / HTTP/1.1\r\n\r\n",
            Request(method="M-SEARCH", target="/", version="HTTP/1.1"),
        ),
        (
            b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            Request(
                method="GET",
                target="/",
                version="HTTP/1.1",
                headers=(("content-length", "5"),),
                content_length=5,
            ),
        ),
        (
            b"GET / HTTP/1.1\r\nX-A:\t spaced \t\r\nHOST: h:1\r\n\r\n",
            Request(
                method="GET",
                target="/",
                version="HTTP/1.1",
                headers=(("x-a", "spaced"), ("host", "h:1")),
            ),
        ),
        (b"GET / HTTP/2.0\r\n\r\n", BadRequest(status=505)),
        (b"GET / HTTP/9\r\n\r\n", BadRequest(status=505)),
        (b"GET / HTTP/x\r\n\r\n", BadRequest(status=400)),  # not HTTP-version syntax (§2.3)
        (b"GET /\r\n\r\n", BadRequest(status=400)),
        (b"GET / HTTP/1.1 x\r\n\r\n", BadRequest(status=400)),
        (b"GET metrics HTTP/1.1\r\n\r\n", BadRequest(status=400)),
        (b"GET http://x/ HTTP/1.1\r\n\r\n", BadRequest(status=400)),  # origin-form only
        (b"OPTIONS * HTTP/1.1\r\n\r\n", BadRequest(status=400)),
        (b"GET /m\xe9trics HTTP/1.1\r\n\r\n", BadRequest(status=400)),
        (b"GET /\xff HTTP/1.1\r\n\r\n", BadRequest(status=400)),
        (b"G(T / HTTP/1.1\r\n\r\n", BadRequest(status=400)),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", BadRequest(status=400)),  # TLS
        (b"GET / HTTP/1.1\r\nHost: x\r\n", BadRequest(status=400)),  # the head did not end
        (b"", BadRequest(status=400)),
        (b"\r\n\r\n", BadRequest(status=400)),
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", BadRequest(status=400)),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", BadRequest(status=400)),
        (
            b"GET / HTTP/1.1\r\nContent-Length: 0\r\ncontent-length: 0\r\n\r\n",
            BadRequest(status=400),
        ),
        (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", BadRequest(status=400)),
        (b"GET / HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n", BadRequest(status=400)),
        # Far past any integer a server would convert (Python refuses over 4300 digits).
        (b"GET / HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", BadRequest(status=413)),
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", BadRequest(status=400)),
        (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", BadRequest(status=400)),  # RFC 9112 §5.1
        (b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", BadRequest(status=400)),  # §5.2
        (b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", BadRequest(status=400)),
        (b"GET / HTTP/1.1\r\nX: a\nb\r\n\r\n", BadRequest(status=400)),
        (b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", BadRequest(status=400)),
        (b"GET / HTTP/1.1\r\nX: caf\xc3\xa9\r\n\r\n", BadRequest(status=400)),
    ],
)
def test_request_heads(head: bytes, expected: Request | BadRequest) -> None:
    assert parse_request_head(head) == expected


def test_a_request_knows_its_path_and_its_headers_by_any_case() -> None:
    request = parse_request_head(b"GET /a/b?c=d HTTP/1.1\r\nX-One: 1\r\nx-one: 2\r\n\r\n")
    assert isinstance(request, Request)
    assert request.path == "/a/b"
    assert request.header("X-ONE") == "2"
    assert request.header("host") is None


@settings(max_examples=2000, deadline=None)
@given(head=hostile_heads)
def test_any_bytes_give_a_request_or_a_bad_request_never_an_exception(head: bytes) -> None:
    result = parse_request_head(head)
    if isinstance(result, BadRequest):
        assert result.status in (400, 413, 505)
        return
    assert isinstance(result, Request)
    assert head.endswith(b"\r\n\r\n")
    assert result.target.startswith("/") and result.version in VERSIONS
    assert result.method and all(c in TOKEN_CHARS for c in result.method)
    assert all(name == name.lower() for name, _ in result.headers)
    assert result.content_length >= 0


tokens = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=12)
field_values = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20
).map(lambda value: value.replace(" ", ""))


@settings(max_examples=300, deadline=None)
@given(
    method=tokens,
    path=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30),
    version=st.sampled_from(VERSIONS),
    fields=st.lists(
        st.tuples(tokens, field_values).filter(
            lambda field: field[0].lower() not in ("host", "content-length", "transfer-encoding")
        ),
        max_size=6,
    ),
)
def test_well_formed_heads_parse_to_what_was_sent(
    method: str, path: str, version: str, fields: list[tuple[str, str]]
) -> None:
    head = f"{method} /{path} {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields)
    assert parse_request_head((head + "\r\n").encode()) == Request(
        method=method,
        target="/" + path,
        version=version,
        headers=tuple((name.lower(), value) for name, value in fields),
    )


def test_a_response_is_framed_and_closes_the_connection() -> None:
    wire = encode_response(
        Response(status=200, body=b"hello", content_type="text/html", cache_control="no-cache")
    )
    assert wire == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n"
        b"Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n"
        b"Connection: close\r\n\r\nhello"
    )


def test_head_only_keeps_the_length_of_the_body_it_leaves_out() -> None:
    wire = encode_response(Response(status=200, body=b"hello"), head_only=True)
    assert wire.endswith(b"\r\n\r\n") and b"Content-Length: 5\r\n" in wire
    assert not wire.endswith(b"hello")


@pytest.mark.parametrize("status", sorted(s for s in REASONS if s >= 400))
def test_an_empty_error_says_its_status(status: int) -> None:
    wire = encode_response(Response(status=status, headers=(("Allow", "GET, HEAD"),)))
    head, _, body = wire.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} {REASONS[status]}\r\n".encode())
    assert b"\r\nAllow: GET, HEAD\r\n" in head
    assert body == f"{status} {REASONS[status]}\n".encode()


@pytest.mark.parametrize(
    "make",
    [
        lambda: Response(status=299),
        lambda: Response(status=200, headers=(("X", "a\r\nSet-Cookie: b"),)),
        lambda: Response(status=200, headers=(("X Y", "a"),)),
        lambda: Response(status=200, content_type="text/plain\n"),
        lambda: BadRequest(status=200),
        lambda: BadRequest(status=418),
    ],
)
def test_misuse_is_a_value_error(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()
