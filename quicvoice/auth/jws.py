"""JWS compact serialization (RFC 7515 §7.1) for JWTs (RFC 7519): split, verify, sign.

Pure functions on strings and bytes. Parsing is strict, since a token comes from outside: three
base64url segments without padding, each in its canonical form; a UTF-8 JSON object header
with no duplicate member names (RFC 7515 §5.2 allows refusing them), a string ``alg``, an
optional ``kid``, and no ``crit`` (we implement no extension, RFC 7515 §4.1.11). Header members
that point at keys (``jwk``, ``jku``, ``x5u``, ``x5c``) are ignored: keys come from the
configuration only. Every failure here is ``CredentialRefused(TOKEN_MALFORMED)``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from ..session.codes import ErrorCode
from .keys import Algorithm, SigningKey, VerificationKey, check_kid
from .refusal import CredentialRefused

#: A base64url segment without padding (RFC 7515 §2, "Base64url Encoding").
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*\Z")
#: ES256 signatures are R || S, 32 octets each (RFC 7518 §3.4).
ES256_SIGNATURE_LEN = 64
#: Length of one ES256 coordinate.
_HALF = 32
#: Deepest nesting of arrays and objects accepted in a header or payload.
MAX_JSON_DEPTH = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class CompactToken:
    """A token split into its parts; nothing about it is verified yet."""

    #: The header's ``alg``.
    alg: str
    #: The header's ``kid``, if any.
    kid: str | None
    #: ``BASE64URL(header) || '.' || BASE64URL(payload)``, the octets the signature covers.
    signing_input: bytes
    #: The payload segment, decoded only once the signature verified.
    payload_segment: str
    #: The signature octets.
    signature: bytes


def _malformed(detail: str) -> CredentialRefused:
    return CredentialRefused(ErrorCode.TOKEN_MALFORMED, detail)


def b64url_encode(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str, what: str) -> bytes:
    """Decode a canonical base64url segment without padding; ``CredentialRefused`` otherwise."""
    if not _SEGMENT.match(segment) or len(segment) % 4 == 1:
        raise _malformed(f"{what} is not base64url")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise _malformed(f"{what} is not base64url") from None
    if b64url_encode(data) != segment:
        # Unused trailing bits set: another spelling of the same octets.
        raise _malformed(f"{what} is not in canonical base64url")
    return data


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise ValueError("duplicate member name")
        result[name] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    """A UTF-8 JSON object, unique member names, no NaN/Infinity; else ``CredentialRefused``."""
    try:
        text = data.decode("utf-8")
        value = json.loads(
            text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        # ValueError covers JSONDecodeError, duplicates, and ints too long to convert.
        raise _malformed(f"{what} is not a JSON object") from None
    if not isinstance(value, dict):
        raise _malformed(f"{what} is not a JSON object")
    if _depth_exceeds(value, MAX_JSON_DEPTH):
        raise _malformed(f"{what} nests deeper than {MAX_JSON_DEPTH}")
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def split_token(token: str) -> CompactToken:
    """Split and check a compact JWS; ``CredentialRefused(TOKEN_MALFORMED)`` when it is not one."""
    if not isinstance(token, str) or not token.isascii():
        raise _malformed("not an ASCII string")
    parts = token.split(".")
    if len(parts) != 3:
        raise _malformed("not three dot-separated segments")
    header_segment, payload_segment, signature_segment = parts
    if not header_segment or not payload_segment:
        raise _malformed("empty header or payload")
    header = parse_json_object(b64url_decode(header_segment, "header"), "header")
    b64url_decode(payload_segment, "payload")  # shape only; decoded after the signature
    signature = b64url_decode(signature_segment, "signature")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise _malformed("header has no string alg")
    if "crit" in header:
        raise _malformed("header lists critical extensions")
    kid = header.get("kid")
    if kid is not None:
        try:
            check_kid(kid)
        except (TypeError, ValueError):
            raise _malformed("header kid is not a short printable string") from None
    return CompactToken(
        alg=alg,
        kid=kid,
        signing_input=f"{header_segment}.{payload_segment}".encode("ascii"),
        payload_segment=payload_segment,
        signature=signature,
    )


def signature_valid(key: VerificationKey, signing_input: bytes, signature: bytes) -> bool:
    """Whether ``signature`` over ``signing_input`` verifies under ``key`` (its own algorithm)."""
    if key.alg is Algorithm.HS256:
        if key.secret is None:
            return False
        expected = hmac.new(key.secret, signing_input, hashlib.sha256).digest()
        return hmac.compare_digest(expected, signature)
    if key.public_key is None or len(signature) != ES256_SIGNATURE_LEN:
        return False
    r = int.from_bytes(signature[:_HALF], "big")
    s = int.from_bytes(signature[_HALF:], "big")
    try:
        key.public_key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def encode_token(claims: Mapping[str, Any], key: SigningKey) -> str:
    """A compact JWS of ``claims`` (a JSON object) signed with ``key``.

    The header is ``{"alg", "typ": "JWT"}`` plus ``kid`` when the key has one.
    """
    header: dict[str, Any] = {"alg": key.alg.value, "typ": "JWT"}
    if key.kid is not None:
        header["kid"] = key.kid
    segments = [
        b64url_encode(json.dumps(part, separators=(",", ":"), allow_nan=False).encode("utf-8"))
        for part in (header, dict(claims))
    ]
    signing_input = ".".join(segments).encode("ascii")
    if key.alg is Algorithm.HS256:
        if key.secret is None:
            raise ValueError("an HS256 key without a secret")
        signature = hmac.new(key.secret, signing_input, hashlib.sha256).digest()
    else:
        if key.private_key is None:
            raise ValueError("an ES256 key without a private key")
        der = key.private_key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(_HALF, "big") + s.to_bytes(_HALF, "big")
    return ".".join([*segments, b64url_encode(signature)])
