"""The verified caller: who opened a session, as the token said (``sub``, ``iss``, claims).

A ``Caller`` is made only from a token whose signature, key, issuer, audience and times all
checked out (or restored from the session store for a resumed session). Its ``claims`` are
read-only all the way down (objects as ``MappingProxyType``, arrays as tuples), so an
application cannot change what another part of the server sees.

``encode_caller``/``decode_caller`` give the compact JSON kept with the session record, so a
resumed session knows its caller without the original (perhaps expired) token.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .keys import check_kid

#: Largest encoded caller kept with a session record, in octets (a token is at most 8192
#: characters, so its claims always fit).
MAX_CALLER_LEN = 16 * 1024
#: Longest subject and issuer accepted, in characters.
MAX_SUBJECT_LEN = 256
MAX_ISSUER_LEN = 512
#: Version of the stored form.
CALLER_FORMAT = 1


def freeze(value: Any) -> Any:
    """A read-only copy of a JSON value: objects become mapping proxies, arrays tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(item) for item in value)
    return value


def thaw(value: Any) -> Any:
    """The plain JSON value (dicts and lists) of a frozen one."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(item) for item in value]
    return value


def _check_text(value: object, name: str, limit: int) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str")
    if not 0 < len(value) <= limit:
        raise ValueError(f"{name} must be 1 to {limit} characters")


@dataclass(frozen=True, slots=True, kw_only=True)
class Caller:
    """Who is calling, as a verified credential says."""

    #: The token's ``sub``: the caller's identity at the issuer.
    subject: str
    #: The token's ``iss``, or ``None`` when it had none.
    issuer: str | None
    #: The ID of the key that verified the token (``None``: a key configured without ``kid``).
    key_id: str | None = None
    #: Every claim of the token, read-only (``exp``, ``aud``, custom claims such as roles).
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        _check_text(self.subject, "subject", MAX_SUBJECT_LEN)
        if self.issuer is not None:
            _check_text(self.issuer, "issuer", MAX_ISSUER_LEN)
        check_kid(self.key_id)
        if not isinstance(self.claims, Mapping):
            raise TypeError("claims must be a mapping")
        object.__setattr__(self, "claims", freeze(self.claims))

    def __hash__(self) -> int:
        return hash((self.subject, self.issuer, self.key_id))


def encode_caller(caller: Caller) -> bytes:
    """The stored form of ``caller`` (compact JSON); ``ValueError`` above ``MAX_CALLER_LEN``."""
    body = {
        "v": CALLER_FORMAT,
        "sub": caller.subject,
        "iss": caller.issuer,
        "kid": caller.key_id,
        "claims": thaw(caller.claims),
    }
    blob = json.dumps(body, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode(
        "utf-8"
    )
    if len(blob) > MAX_CALLER_LEN:
        raise ValueError(f"caller of {len(blob)} octets exceeds {MAX_CALLER_LEN}")
    return blob


def decode_caller(blob: bytes) -> Caller:
    """The caller in a stored form; ``ValueError`` for anything that is not one."""
    if not isinstance(blob, bytes) or len(blob) > MAX_CALLER_LEN:
        raise ValueError("stored caller is not a bounded byte string")
    try:
        body = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("stored caller is not JSON") from None
    if not isinstance(body, dict) or body.get("v") != CALLER_FORMAT:
        raise ValueError("stored caller has an unknown format")
    claims = body.get("claims")
    if not isinstance(claims, dict):
        raise ValueError("stored caller has no claims object")
    try:
        return Caller(
            subject=body.get("sub"),  # type: ignore[arg-type]  # checked by Caller
            issuer=body.get("iss"),
            key_id=body.get("kid"),
            claims=claims,
        )
    except TypeError as error:
        raise ValueError(f"stored caller: {error}") from None
