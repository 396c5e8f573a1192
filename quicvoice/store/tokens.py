"""Resume tokens: an HMAC-SHA256 over a session ID and an expiry, under a rotating shared key.

Layout, version 1 (all integers big-endian, specs/store.md):

    offset  size  field
    0       1     version (1)
    1       2     key ID
    3       1     session ID length n (1..128)
    4       n     session ID, UTF-8
    4+n     8     expiry, milliseconds since the Unix epoch
    12+n    32    tag = HMAC-SHA256(key, DOMAIN || octets 0 .. 12+n)

Pure: no clock is read, ``now`` is passed in. ``verify`` checks, in order, the shape (MALFORMED),
the key ID (UNKNOWN_KEY), the tag in constant time (BAD_SIGNATURE) and only then the expiry
(EXPIRED), so a forger learns nothing beyond "bad signature".
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from collections.abc import Mapping
from enum import Enum
from types import MappingProxyType

from quicvoice.errors import QuicVoiceError

from .base import MAX_SESSION_ID_LEN, check_session_id

#: Format version written in the first octet.
TOKEN_VERSION = 1
#: Shortest shared key accepted, in octets.
MIN_KEY_LEN = 32
#: Largest key ID (it travels in two octets).
MAX_KEY_ID = 0xFFFF
#: Length of the HMAC-SHA256 tag, in octets.
TAG_LEN = 32
#: Domain separation: the tag can never be confused with another HMAC under the same key.
DOMAIN = b"quicvoice resume token v1\x00"
#: Fixed part of the header: version, key ID, session ID length.
_HEADER = struct.Struct("!BHB")
#: Expiry field.
_EXPIRY = struct.Struct("!Q")
#: Shortest and longest well-formed tokens.
MIN_TOKEN_LEN = _HEADER.size + 1 + _EXPIRY.size + TAG_LEN
MAX_TOKEN_LEN = _HEADER.size + MAX_SESSION_ID_LEN + _EXPIRY.size + TAG_LEN
#: The voice protocol's RESUME_REFUSED code (quicvoice.session.codes.ErrorCode), sent on refusal.
RESUME_REFUSED = 0x109
#: Longest accepted token lifetime, in seconds (a day).
MAX_TTL = 86_400.0


class RefusalReason(Enum):
    """Why a resume token was refused."""

    #: Not a token of this format: wrong type, length, version, or session ID encoding.
    MALFORMED = "malformed"
    #: Signed under a key ID this backend does not hold (retired, or never issued).
    UNKNOWN_KEY = "unknown key"
    #: The tag does not match: forged or altered.
    BAD_SIGNATURE = "bad signature"
    #: Authentic but past its expiry.
    EXPIRED = "expired"
    #: Authentic, but the session's state is gone (expired or deleted in the store).
    UNKNOWN_SESSION = "unknown session"
    #: Authentic, but the session store could not be read or held garbage.
    STATE_UNAVAILABLE = "state unavailable"
    #: The connection asking closed before the session was claimed for it.
    ABANDONED = "abandoned"


class ResumeRefused(QuicVoiceError):
    """A resume token was refused; close the session with ``error_code`` (RESUME_REFUSED)."""

    def __init__(self, reason: RefusalReason, detail: str = "") -> None:
        super().__init__(f"resume token refused: {reason.value}{': ' + detail if detail else ''}")
        #: Why the token was refused.
        self.reason = reason
        #: The voice protocol's error code for the close (0x109, RESUME_REFUSED).
        self.error_code = RESUME_REFUSED


class ResumeTokenIssuer:
    """Issues and verifies resume tokens under keys shared by every backend.

    ``keys`` maps key IDs (0..65535) to secrets of at least ``MIN_KEY_LEN`` octets; new tokens
    are signed with ``current_key_id``; every key in ``keys`` verifies. To rotate: deploy the new
    key everywhere, then make it current, then drop the old one after ``ttl``.
    """

    __slots__ = ("_current", "_keys", "_ttl")

    def __init__(self, keys: Mapping[int, bytes], current_key_id: int, ttl: float) -> None:
        checked: dict[int, bytes] = {}
        for key_id, key in keys.items():
            if isinstance(key_id, bool) or not isinstance(key_id, int):
                raise TypeError("key IDs must be integers")
            if not 0 <= key_id <= MAX_KEY_ID:
                raise ValueError(f"key ID {key_id} is not in 0..{MAX_KEY_ID}")
            if not isinstance(key, bytes):
                raise TypeError(f"key {key_id} must be bytes")
            if len(key) < MIN_KEY_LEN:
                raise ValueError(f"key {key_id} is shorter than {MIN_KEY_LEN} octets")
            checked[key_id] = bytes(key)
        if current_key_id not in checked:
            raise ValueError(f"current key ID {current_key_id} is not among the keys")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            raise TypeError("ttl must be a number of seconds")
        if not (math.isfinite(ttl) and 0 < ttl <= MAX_TTL):
            raise ValueError(f"ttl must be in (0, {MAX_TTL}] seconds")
        self._keys = MappingProxyType(checked)
        self._current = current_key_id
        self._ttl = float(ttl)

    def __repr__(self) -> str:
        return (
            f"ResumeTokenIssuer(key_ids={sorted(self._keys)}, current_key_id={self._current}, "
            f"ttl={self._ttl})"
        )

    @property
    def ttl(self) -> float:
        """Lifetime of the tokens issued, in seconds."""
        return self._ttl

    def issue(self, session_id: str, now: float) -> bytes:
        """A token for ``session_id`` that expires ``ttl`` seconds after ``now`` (Unix seconds)."""
        check_session_id(session_id)
        if not math.isfinite(now) or now < 0:
            raise ValueError("now must be a finite, non-negative Unix time in seconds")
        encoded = session_id.encode("utf-8")
        expiry_ms = math.floor((now + self._ttl) * 1000)
        body = (
            _HEADER.pack(TOKEN_VERSION, self._current, len(encoded))
            + encoded
            + _EXPIRY.pack(expiry_ms)
        )
        return body + _tag(self._keys[self._current], body)

    def verify(self, token: bytes, now: float) -> str:
        """The session ID ``token`` was issued for; ``ResumeRefused`` unless valid at ``now``."""
        if not isinstance(token, bytes | bytearray | memoryview):
            raise ResumeRefused(RefusalReason.MALFORMED, "not bytes")
        token = bytes(token)
        if not MIN_TOKEN_LEN <= len(token) <= MAX_TOKEN_LEN:
            raise ResumeRefused(RefusalReason.MALFORMED, f"length {len(token)}")
        version, key_id, id_len = _HEADER.unpack_from(token)
        if version != TOKEN_VERSION:
            raise ResumeRefused(RefusalReason.MALFORMED, f"version {version}")
        if len(token) != _HEADER.size + id_len + _EXPIRY.size + TAG_LEN or id_len == 0:
            raise ResumeRefused(RefusalReason.MALFORMED, "length does not match the session ID")
        key = self._keys.get(key_id)
        if key is None:
            raise ResumeRefused(RefusalReason.UNKNOWN_KEY, f"key ID {key_id}")
        body, tag = token[:-TAG_LEN], token[-TAG_LEN:]
        if not hmac.compare_digest(tag, _tag(key, body)):
            raise ResumeRefused(RefusalReason.BAD_SIGNATURE)
        # Authentic from here on: what follows was written by a backend holding the key.
        (expiry_ms,) = _EXPIRY.unpack_from(token, _HEADER.size + id_len)
        if not now * 1000 < expiry_ms:
            raise ResumeRefused(RefusalReason.EXPIRED)
        try:
            session_id = token[_HEADER.size : _HEADER.size + id_len].decode("utf-8")
            return check_session_id(session_id)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ResumeRefused(RefusalReason.MALFORMED, "session ID") from exc


def _tag(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, DOMAIN + body, hashlib.sha256).digest()
