"""Shared by the tests of the HTTP/1.1 parser, its shell and /metrics: hostile request heads
(Hypothesis strategies) and a client on real loopback sockets."""

from __future__ import annotations

import asyncio

from hypothesis import strategies as st

from quicvoice.settings import Address

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


async def exchange(
    address: Address | None, request: bytes, *, half_close: bool = True, timeout: float = 10.0
) -> bytes:
    """Send ``request`` (then half-close unless told not to) and read the whole answer."""
    assert address is not None, "the server is not started"
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(request)
        if half_close:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def status_of(answer: bytes) -> bytes:
    """The status code of an answer, checking that it is one."""
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    return answer[9:12]


async def wait_for_status(
    address: Address | None, request: bytes, status: bytes, timeout: float = 5.0
) -> None:
    """Ask again until the answer is ``status``: the server takes connections in its own time."""
    async with asyncio.timeout(timeout):
        while status_of(await exchange(address, request)) != status:
            await asyncio.sleep(0.01)
