"""Voice URLs: what dials where, and every bad URL refused with an error naming the fault."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicvoice.errors import InvalidURLError
from quicvoice.session.transport import WEBTRANSPORT_PATH
from quicvoice.urls import DEFAULT_WEBTRANSPORT_PATH, VoiceURL, dial_target, parse_url


def test_default_webtransport_path_is_the_servers() -> None:
    assert DEFAULT_WEBTRANSPORT_PATH == WEBTRANSPORT_PATH


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("quic://localhost:4433", VoiceURL(scheme="quic", host="localhost", port=4433)),
        ("QUIC://LocalHost.:4433/", VoiceURL(scheme="quic", host="localhost", port=4433)),
        ("quic://127.0.0.1", VoiceURL(scheme="quic", host="127.0.0.1", port=443)),
        ("quic://[::1]:9", VoiceURL(scheme="quic", host="::1", port=9)),
        ("quic://[0:0::1]:9", VoiceURL(scheme="quic", host="::1", port=9)),
        (
            "https://voice.example.com/voice",
            VoiceURL(scheme="https", host="voice.example.com", port=443, path="/voice"),
        ),
        (
            "https://[::1]:4433/agents/a1?room=7",
            VoiceURL(scheme="https", host="::1", port=4433, path="/agents/a1?room=7"),
        ),
        ("https://h:1", VoiceURL(scheme="https", host="h", port=1, path="/voice")),
        ("https://h:1/", VoiceURL(scheme="https", host="h", port=1, path="/voice")),
        ("https://h:1?x=1", VoiceURL(scheme="https", host="h", port=1, path="/voice?x=1")),
        (
            "https://xn--bcher-kva.example",
            VoiceURL(scheme="https", host="xn--bcher-kva.example", port=443, path="/voice"),
        ),
    ],
)
def test_good_urls(text: str, expected: VoiceURL) -> None:
    url = parse_url(text)
    assert url == expected
    assert url.webtransport is (expected.scheme == "https")
    assert parse_url(str(url)) == url


def test_authority_brackets_ipv6() -> None:
    assert parse_url("quic://[::1]:4433").authority == "[::1]:4433"
    assert parse_url("quic://a.b:4433").authority == "a.b:4433"


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("ftp://localhost:21", "unknown scheme 'ftp'"),
        ("wss://localhost", "unknown scheme"),
        ("localhost:4433", "not a URL"),
        ("quic://", "no host"),
        ("quic://:4433", "no host"),
        ("https:///voice", "no host"),
        ("quic://localhost:", "no port"),
        ("quic://localhost:0", "out of range"),
        ("quic://localhost:65536", "out of range"),
        ("quic://localhost:99999999", "not a number"),
        ("quic://localhost:44a", "not a number"),
        ("quic://localhost:-1", "not a number"),
        ("quic://user:secret@localhost:4433", "userinfo"),
        ("https://user@localhost/voice", "userinfo"),
        ("https://localhost/voice#top", "fragment"),
        ("quic://localhost:4433/voice", "no path"),
        ("quic://localhost:4433?x", "no path"),
        ("quic://[::1:4433", "closing ']'"),
        ("quic://[::1]x", "after the IPv6 host"),
        ("quic://[fe80::1%25eth0]:1", "zone"),
        ("quic://[127.0.0.1]:1", "not an IPv6 address"),
        ("quic://999.1.1.1:1", "not a valid IPv4"),
        ("quic://-bad.example:1", "invalid label"),
        ("quic://a..b:1", "invalid label"),
        ("quic://under_score.example:1", "invalid label"),
        ("quic://" + "a" * 64 + ".example", "invalid label"),
        ("quic://example.123:1", "numeric label"),
        ("quic://bücher.example", "non-ASCII"),
        ("quic://local host", "spaces"),
        ("quic://localhost\n", "control"),
        ("https://localhost/a b", "spaces"),
        ("https://localhost/%zz", "path"),
        ("https://localhost/\\", "path"),
        ("https://" + "a" * 3000, "longer than"),
    ],
)
def test_bad_urls_name_the_fault(text: str, fault: str) -> None:
    with pytest.raises(
        InvalidURLError, match="(?i)" + fault.replace("(", r"\(").replace("[", r"\[")
    ):
        parse_url(text)


def test_an_invalid_url_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_url("gopher://x")


@given(st.text(max_size=300))
def test_any_text_parses_or_raises_invalid_url(text: str) -> None:
    try:
        url = parse_url(text)
    except InvalidURLError:
        return
    assert 1 <= url.port <= 65535
    assert parse_url(str(url)) == url


URL_ALPHABET = st.sampled_from(list("aZ09.-_:/[]@#?%!$&'()*+,;=~ \t\x00é") + ["::", "::1"])


@given(
    st.sampled_from(["quic://", "https://", "QUIC://", "http://", ""]),
    st.lists(URL_ALPHABET, max_size=40).map("".join),
)
def test_url_like_text_parses_or_raises_invalid_url(prefix: str, rest: str) -> None:
    try:
        url = parse_url(prefix + rest)
    except InvalidURLError:
        return
    assert url.scheme in ("quic", "https")
    assert url.host and "@" not in url.host and "#" not in url.path


def test_host_and_port_form() -> None:
    assert dial_target("127.0.0.1", 4433, None) == VoiceURL(
        scheme="quic", host="127.0.0.1", port=4433
    )
    assert dial_target("[::1]", 4433, False).host == "::1"
    assert dial_target("Voice.Example", 4433, True) == VoiceURL(
        scheme="https", host="voice.example", port=4433, path="/voice"
    )


@pytest.mark.parametrize(
    ("target", "port", "webtransport", "fault"),
    [
        ("quic://h:1", 4433, None, "not a URL and a port"),
        ("quic://h:1", None, True, "contradicts"),
        ("https://h:1", None, False, "contradicts"),
        ("h", 0, None, "port 0"),
        ("h", 70000, None, "port 70000"),
        ("h", True, None, "port True"),
        ("bad host", 1, None, "invalid label"),
        ("", 1, None, "empty"),
    ],
)
def test_bad_host_and_port(
    target: str, port: int | None, webtransport: bool | None, fault: str
) -> None:
    with pytest.raises(InvalidURLError, match=fault):
        dial_target(target, port, webtransport)


@given(st.text(max_size=80), st.integers(min_value=-5, max_value=70000))
def test_any_host_and_port_parses_or_raises_invalid_url(host: str, port: int) -> None:
    try:
        dial_target(host, port, None)
    except InvalidURLError:
        pass
