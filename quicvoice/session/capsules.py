"""Capsules on a WebTransport session's CONNECT stream (RFC 9297 §3.2), sans-I/O.

The one that matters here is CLOSE_WEBTRANSPORT_SESSION (draft-ietf-webtrans-http3 §5):
the session's end with an application error code (32 bits) and a reason (at most 1024
octets of UTF-8). It travels in the body (HTTP/3 DATA frames) of the CONNECT stream, which
is where Chromium's WebTransport reads capsules in draft-02 and later drafts alike, and it is
what makes ``WebTransport.closed`` resolve with ``closeCode`` and ``reason`` in a browser.
Every other capsule type is skipped without being buffered.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from aioquic.buffer import encode_uint_var

from .wire import read_varint

#: draft-ietf-webtrans-http3 §9.6 (the same code point since draft-02).
CLOSE_WEBTRANSPORT_SESSION = 0x2843
#: draft-ietf-webtrans-http3 §5: the reason is at most 1024 octets.
MAX_CLOSE_REASON = 1024
#: Largest CLOSE_WEBTRANSPORT_SESSION capsule buffered; a longer one ends the session as
#: malformed (its reason is dropped).
MAX_CLOSE_CAPSULE = 4 + MAX_CLOSE_REASON
_CODE = struct.Struct("!I")


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionCloseCapsule:
    """A CLOSE_WEBTRANSPORT_SESSION capsule: the peer ended the session."""

    #: The application error code (0 .. 2**32 - 1).
    code: int
    #: Why, as the peer said it (decoded leniently: bad UTF-8 becomes U+FFFD).
    reason: str


def encode_close_capsule(code: int, reason: str) -> bytes:
    """A CLOSE_WEBTRANSPORT_SESSION capsule; ``reason`` is cut to 1024 octets of UTF-8
    (on a character boundary)."""
    if not 0 <= code < 1 << 32:
        raise ValueError(f"a session close code is 32 bits, not {code:#x}")
    data = reason.encode()[:MAX_CLOSE_REASON].decode(errors="ignore").encode()
    body = _CODE.pack(code) + data
    return encode_uint_var(CLOSE_WEBTRANSPORT_SESSION) + encode_uint_var(len(body)) + body


class CapsuleReader:
    """Reassembles capsules from CONNECT stream data in any chunking; reports the close.

    ``feed`` never raises: a malformed or oversized close capsule is reported as a close
    with code 0 and an empty reason (the session is over either way).
    """

    def __init__(self) -> None:
        self._buffer = b""
        #: Octets of a skipped capsule still to come.
        self._skip = 0
        self.closed = False

    def feed(self, data: bytes) -> SessionCloseCapsule | None:
        """Take the next chunk; return the close capsule once it is complete."""
        if self.closed:
            return None
        if self._skip:
            skipped = min(self._skip, len(data))
            self._skip -= skipped
            data = data[skipped:]
        buffer = self._buffer + data
        while buffer:
            kind = read_varint(buffer, 0)
            length = read_varint(buffer, kind[1]) if kind is not None else None
            if kind is None or length is None:
                break
            start = length[1]
            if kind[0] != CLOSE_WEBTRANSPORT_SESSION:
                if start + length[0] > len(buffer):
                    self._skip = start + length[0] - len(buffer)
                    buffer = b""
                    break
                buffer = buffer[start + length[0] :]
                continue
            if length[0] > MAX_CLOSE_CAPSULE or length[0] < _CODE.size:
                return self._close(0, "")
            if start + length[0] > len(buffer):
                break
            body = buffer[start : start + length[0]]
            return self._close(_CODE.unpack_from(body)[0], body[4:].decode(errors="replace"))
        self._buffer = buffer
        return None

    def _close(self, code: int, reason: str) -> SessionCloseCapsule:
        self.closed = True
        self._buffer = b""
        return SessionCloseCapsule(code=code, reason=reason)
