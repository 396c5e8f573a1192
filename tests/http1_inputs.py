"""Hypothesis strategies of hostile HTTP/1.1 request heads, shared by the parser and shell tests."""

from __future__ import annotations

from hypothesis import strategies as st

#: A request line with a method, target and version chosen to hit each check, then arbitrary
#: header lines and an ending that may or may not close the head.
request_lines = st.builds(
    lambda method, target, version, headers, tail: (
        f"{method} {target} {version}\r\n".encode("utf-8", "surrogatepass")
        + b"".join(headers)
        + tail
    ),
    st.sampled_from(["GET", "HEAD", "POST", "get", "M-SEARCH", "", "G ET", "\x00"]),
    st.text(max_size=40),
    st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/9", "HTTP/x", "", "HTTP/1.1 x"]),
    st.lists(st.binary(max_size=60).map(lambda b: b + b"\r\n"), max_size=5),
    st.sampled_from([b"\r\n", b"", b"\r\n\r\n", b"\n\n"]),
)
#: Anything a client may send: raw bytes, text, or a request line gone wrong.
hostile_heads = st.one_of(
    st.binary(max_size=3000),
    st.text(max_size=300).map(lambda text: text.encode("utf-8", "surrogatepass")),
    request_lines,
)
