"""Minting tokens quicvoice accepts: for ``quicvoice token issue``, tests and small issuers."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .caller import MAX_ISSUER_LEN, MAX_SUBJECT_LEN
from .jws import encode_token
from .keys import SigningKey

#: Longest lifetime ``issue_token`` mints, in seconds (30 days); bearer tokens should be short.
MAX_TTL = 30 * 86400.0
#: Claims ``issue_token`` writes itself; ``extra`` may not set them.
REGISTERED = frozenset({"sub", "iss", "aud", "exp", "nbf", "iat"})


def issue_token(
    key: SigningKey,
    *,
    subject: str,
    now: float,
    ttl: float,
    issuer: str | None = None,
    audience: str | Sequence[str] | None = None,
    not_before: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """A JWT for ``subject``, issued at ``now`` (Unix seconds), valid ``ttl`` seconds.

    ``extra`` adds claims (JSON values) beside the registered ones. Raises ``ValueError``,
    whose message starts with the argument's name, for arguments the verifier would refuse.
    """
    if not isinstance(subject, str) or not 0 < len(subject) <= MAX_SUBJECT_LEN:
        raise ValueError(f"subject: must be 1 to {MAX_SUBJECT_LEN} characters")
    if issuer is not None and (
        not isinstance(issuer, str) or not 0 < len(issuer) <= MAX_ISSUER_LEN
    ):
        raise ValueError(f"issuer: must be 1 to {MAX_ISSUER_LEN} characters")
    if not (isinstance(ttl, int | float) and math.isfinite(ttl) and 0 < ttl <= MAX_TTL):
        raise ValueError(f"ttl: must be 0 < seconds <= {MAX_TTL:.0f} (30 days)")
    if not (isinstance(now, int | float) and math.isfinite(now) and now >= 0):
        raise ValueError("now: must be a non-negative Unix time")
    claims: dict[str, Any] = {"sub": subject, "iat": int(now), "exp": int(now + ttl)}
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        audiences = [audience] if isinstance(audience, str) else list(audience)
        if not audiences or not all(isinstance(a, str) and a for a in audiences):
            raise ValueError("audience: must be a non-empty string or list of them")
        claims["aud"] = audiences[0] if len(audiences) == 1 else audiences
    if not_before is not None:
        if not math.isfinite(not_before):
            raise ValueError("not_before: must be finite")
        claims["nbf"] = int(not_before)
    for name, value in (extra or {}).items():
        if name in REGISTERED:
            raise ValueError(f"extra: claim {name!r} is set by issue_token itself")
        claims[name] = value
    return encode_token(claims, key)
