"""Verifying bearer tokens (JWT, RFC 7519) into a ``Caller``, or refusing with a code.

Pure: ``now`` (Unix seconds) is passed in. Checks run in this order, and the first failure
decides the code (``CredentialRefused.error_code``):

    check                                                        code
    no token, and one is required                                UNAUTHENTICATED
    not a compact JWS, oversize, bad header (quicvoice.auth.jws)  TOKEN_MALFORMED
    alg not HS256/ES256 ("none" included); kid unknown; the kid's
      key is of another algorithm; no key of a kid-less token's alg TOKEN_UNKNOWN_KEY
    the signature does not verify (under the kid's key, or under
      every key of the alg for a token without kid)              TOKEN_BAD_SIGNATURE
    -- only an authentic token's payload is read from here on --
    payload not a JSON object (or nested deeper than 32); no exp;
      exp/nbf/iat not finite numbers; sub not a string of
      1..256; iss/aud of the wrong type                          TOKEN_MALFORMED
    now >= exp + leeway                                          TOKEN_EXPIRED
    now + leeway < nbf, or now + leeway < iat                    TOKEN_NOT_YET_VALID
    issuers configured and iss missing or not one of them        TOKEN_WRONG_ISSUER
    aud present and none of its values is ours; or audiences
      configured and aud missing                                 TOKEN_WRONG_AUDIENCE

Signature before claims means a forger learns only "bad signature", and the claims of an
unauthenticated token are never parsed.
"""

from __future__ import annotations

import math
from typing import Any

from ..session.codes import ErrorCode
from ..session.messages import MAX_TOKEN_LEN
from .caller import MAX_ISSUER_LEN, MAX_SUBJECT_LEN, Caller
from .config import AuthConfig
from .jws import b64url_decode, parse_json_object, signature_valid, split_token
from .keys import Algorithm, VerificationKey
from .refusal import CredentialRefused


def _refuse(code: ErrorCode, detail: str = "") -> CredentialRefused:
    return CredentialRefused(code, detail)


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    # RFC 7519 §2: a NumericDate is a JSON number (bool is not one).
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse(ErrorCode.TOKEN_MALFORMED, f"{name} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise _refuse(ErrorCode.TOKEN_MALFORMED, f"{name} is not finite")
    return float(value) if abs(value) < 2**62 else math.copysign(2.0**62, value)


class TokenVerifier:
    """Turns a ``hello``'s token into a ``Caller`` under an ``AuthConfig``.

    Keys with a ``kid`` are found by it; a token without ``kid`` is tried against every key of
    its algorithm (at most ``MAX_KEYS``), so a single-key deployment needs no ``kid`` in tokens.
    """

    __slots__ = ("_by_alg", "_by_kid", "config")

    def __init__(self, config: AuthConfig) -> None:
        if not isinstance(config, AuthConfig):
            raise TypeError("config must be an AuthConfig")
        #: The configuration in force.
        self.config = config
        self._by_kid: dict[str, VerificationKey] = {
            key.kid: key for key in config.keys if key.kid is not None
        }
        self._by_alg: dict[Algorithm, tuple[VerificationKey, ...]] = {
            alg: tuple(key for key in config.keys if key.alg is alg) for alg in Algorithm
        }

    def __repr__(self) -> str:
        kids = [key.kid for key in self.config.keys]
        return f"TokenVerifier(kids={kids!r}, required={self.required})"

    @property
    def required(self) -> bool:
        """Whether a caller must present a token."""
        return self.config.effective_required

    @property
    def enabled(self) -> bool:
        """Whether any key is configured (tokens can be verified at all)."""
        return bool(self.config.keys)

    def authenticate(self, token: str | None, now: float) -> Caller | None:
        """The caller of a new session: ``None`` when no token came and none is required.

        Without keys, a token is not looked at (the backend is open). Raises
        ``CredentialRefused`` for a missing required token or any token that fails a check.
        """
        if token is None:
            if self.required:
                raise _refuse(ErrorCode.UNAUTHENTICATED)
            return None
        if not self.enabled:
            return None
        return self.verify(token, now)

    def authenticate_resume(
        self, token: str | None, now: float, stored: Caller | None
    ) -> Caller | None:
        """The caller of a resumed session whose record holds ``stored``.

        The resume token (checked elsewhere) authorises a resume; the caller is the stored one,
        so a short-lived token does not break the resume of a long call. A token in the
        ``hello`` is still verified, without its time checks (the client library resends the
        one it started with), and must name the same ``sub`` and ``iss`` (else
        ``RESUME_REFUSED``). A session stored without a caller is authenticated like a new one.
        """
        if stored is None:
            return self.authenticate(token, now)
        if token is None or not self.enabled:
            return stored
        presented = self.verify(token, now, check_times=False)
        if (presented.subject, presented.issuer) != (stored.subject, stored.issuer):
            raise _refuse(ErrorCode.RESUME_REFUSED)
        return stored

    def verify(self, token: str, now: float, *, check_times: bool = True) -> Caller:
        """Verify ``token`` completely; the ``Caller`` it names, or ``CredentialRefused``."""
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_LEN:
            raise _refuse(ErrorCode.TOKEN_MALFORMED, "empty or longer than the limit")
        parsed = split_token(token)
        try:
            alg = Algorithm(parsed.alg)
        except ValueError:
            raise _refuse(ErrorCode.TOKEN_UNKNOWN_KEY, "algorithm not accepted") from None
        if parsed.kid is not None:
            key = self._by_kid.get(parsed.kid)
            if key is None:
                raise _refuse(ErrorCode.TOKEN_UNKNOWN_KEY, "no key with this kid")
            if key.alg is not alg:
                raise _refuse(ErrorCode.TOKEN_UNKNOWN_KEY, "the kid's key is of another alg")
            candidates: tuple[VerificationKey, ...] = (key,)
        else:
            candidates = self._by_alg[alg]
            if not candidates:
                raise _refuse(ErrorCode.TOKEN_UNKNOWN_KEY, "no key of this algorithm")
        verified_by = next(
            (
                key
                for key in candidates
                if signature_valid(key, parsed.signing_input, parsed.signature)
            ),
            None,
        )
        if verified_by is None:
            raise _refuse(ErrorCode.TOKEN_BAD_SIGNATURE)
        claims = parse_json_object(b64url_decode(parsed.payload_segment, "payload"), "payload")
        return self._check_claims(claims, verified_by, now, check_times)

    def _check_claims(
        self, claims: dict[str, Any], key: VerificationKey, now: float, check_times: bool
    ) -> Caller:
        leeway = self.config.leeway
        exp = _numeric_date(claims, "exp")
        nbf = _numeric_date(claims, "nbf")
        iat = _numeric_date(claims, "iat")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not 0 < len(subject) <= MAX_SUBJECT_LEN:
            raise _refuse(ErrorCode.TOKEN_MALFORMED, "sub is not a string of 1..256")
        issuer = claims.get("iss")
        if issuer is not None and (
            not isinstance(issuer, str) or not 0 < len(issuer) <= MAX_ISSUER_LEN
        ):
            raise _refuse(ErrorCode.TOKEN_MALFORMED, "iss is not a string")
        audience = claims.get("aud")
        if isinstance(audience, str):
            audiences: list[Any] = [audience]
        elif isinstance(audience, list) and audience and all(isinstance(a, str) for a in audience):
            audiences = audience
        elif audience is None:
            audiences = []
        else:
            raise _refuse(ErrorCode.TOKEN_MALFORMED, "aud is not a string or list of strings")
        if check_times:
            if exp is None:
                raise _refuse(ErrorCode.TOKEN_MALFORMED, "no exp: tokens must expire")
            if now >= exp + leeway:
                raise _refuse(ErrorCode.TOKEN_EXPIRED)
            if nbf is not None and now + leeway < nbf:
                raise _refuse(ErrorCode.TOKEN_NOT_YET_VALID)
            if iat is not None and now + leeway < iat:
                raise _refuse(ErrorCode.TOKEN_NOT_YET_VALID, "iat in the future")
        if self.config.issuers and issuer not in self.config.issuers:
            raise _refuse(ErrorCode.TOKEN_WRONG_ISSUER)
        if audiences and not set(audiences) & set(self.config.audiences):
            raise _refuse(ErrorCode.TOKEN_WRONG_AUDIENCE)
        if self.config.audiences and not audiences:
            raise _refuse(ErrorCode.TOKEN_WRONG_AUDIENCE, "no aud")
        return Caller(subject=subject, issuer=issuer, key_id=key.kid, claims=claims)
