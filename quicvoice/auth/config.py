"""The ``[auth]`` section of the backend's configuration: keys, issuer, audience, skew.

In ``backend.toml``::

    [auth]
    issuer = "https://login.example.com/"   # a string or a list; absent: iss not checked
    audience = "voice.example.com"           # a string or a list; absent: tokens with aud refused
    leeway = 30                              # seconds of clock skew allowed (0..300)
    required = true                          # default: true when a key is configured
    accept_timeout = 3                       # seconds the accept hook may take

    [[auth.keys]]
    kid = "2026-11"
    alg = "HS256"
    secret = "env:QUICVOICE_JWT_SECRET"      # hex digits, env:NAME or file:PATH

    [[auth.keys]]
    kid = "es-1"
    alg = "ES256"
    public_key_file = "jwt-es256.pub.pem"    # PEM PUBLIC KEY on P-256

An HS256 secret is the octets the issuer signs with: hex digits are decoded; ``env:NAME`` is
the variable's value and ``file:PATH`` the file's content (one trailing newline dropped), both
taken as they are (UTF-8 octets for text), as JWT libraries use a string secret.
Errors are ``ConfigurationError`` naming the key (``auth.keys[1].secret: ...``) and never
showing a secret.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm

from ..errors import ConfigurationError
from .keys import MAX_KID_LEN, Algorithm, VerificationKey

#: Default allowed clock skew, seconds.
DEFAULT_LEEWAY = 30.0
#: Largest allowed clock skew, seconds: more would let expired tokens live on noticeably.
MAX_LEEWAY = 300.0
#: Default bound on the accept hook, seconds.
DEFAULT_ACCEPT_TIMEOUT = 3.0
MAX_ACCEPT_TIMEOUT = 60.0
#: Most verification keys at once (a token without ``kid`` may be tried against each).
MAX_KEYS = 16
#: Most trusted issuers or accepted audiences.
MAX_NAMES = 16
AUTH_KEYS = frozenset({"issuer", "audience", "leeway", "required", "accept_timeout", "keys"})
KEY_KEYS = frozenset({"kid", "alg", "secret", "public_key_file"})


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    """Who may call a backend: token keys and the checks on their claims."""

    #: Keys that verify tokens; several at once for rotation (``kid`` picks one).
    keys: tuple[VerificationKey, ...] = ()
    #: Trusted ``iss`` values; empty: ``iss`` is not checked.
    issuers: tuple[str, ...] = ()
    #: This service's names; a token's ``aud`` must contain one. Empty: a token that has an
    #: ``aud`` is refused (RFC 7519 §4.1.3: we cannot be in it).
    audiences: tuple[str, ...] = ()
    #: Clock skew allowed on ``exp``, ``nbf`` and ``iat``, in seconds (0..300).
    leeway: float = DEFAULT_LEEWAY
    #: Whether a caller must present a token; ``None``: yes exactly when keys are configured.
    required: bool | None = None
    #: Seconds an accept hook may take before the call is refused.
    accept_timeout: float = DEFAULT_ACCEPT_TIMEOUT

    def __post_init__(self) -> None:
        if not isinstance(self.keys, tuple) or not all(
            isinstance(key, VerificationKey) for key in self.keys
        ):
            raise ConfigurationError("auth.keys: must be a tuple of VerificationKey")
        if len(self.keys) > MAX_KEYS:
            raise ConfigurationError(f"auth.keys: at most {MAX_KEYS} keys")
        kids = [key.kid for key in self.keys if key.kid is not None]
        if len(set(kids)) != len(kids):
            raise ConfigurationError("auth.keys: a kid is used twice")
        for name, values in (("issuer", self.issuers), ("audience", self.audiences)):
            if not isinstance(values, tuple) or len(values) > MAX_NAMES:
                raise ConfigurationError(f"auth.{name}: at most {MAX_NAMES} strings")
            if not all(isinstance(v, str) and 0 < len(v) <= 512 for v in values):
                raise ConfigurationError(f"auth.{name}: must be strings of 1 to 512 characters")
        _check_seconds("leeway", self.leeway, 0.0, MAX_LEEWAY, zero_ok=True)
        _check_seconds("accept_timeout", self.accept_timeout, 0.0, MAX_ACCEPT_TIMEOUT)
        if self.required is not None and not isinstance(self.required, bool):
            raise ConfigurationError("auth.required: must be true or false")
        if self.required and not self.keys:
            raise ConfigurationError("auth.required: true needs at least one key in [[auth.keys]]")

    @property
    def effective_required(self) -> bool:
        """Whether a caller without a token is refused (``UNAUTHENTICATED``)."""
        return bool(self.keys) if self.required is None else self.required

    @classmethod
    def from_mapping(
        cls,
        table: object,
        base: Path | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> AuthConfig:
        """Build from the parsed ``[auth]`` table; relative paths are under ``base``.

        ``environ`` (default ``os.environ``) resolves ``env:NAME`` secrets.
        """
        if not isinstance(table, Mapping):
            raise ConfigurationError("auth: must be a table [auth]")
        for name in table:
            if name not in AUTH_KEYS:
                expected = ", ".join(sorted(AUTH_KEYS))
                raise ConfigurationError(f"auth.{name}: unknown key (expected one of {expected})")
        arguments: dict[str, Any] = {}
        if "issuer" in table:
            arguments["issuers"] = _names(table["issuer"], "auth.issuer")
        if "audience" in table:
            arguments["audiences"] = _names(table["audience"], "auth.audience")
        for name in ("leeway", "accept_timeout"):
            if name in table:
                value = table[name]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ConfigurationError(f"auth.{name}: must be a number of seconds")
                arguments[name] = float(value)
        if "required" in table:
            if not isinstance(table["required"], bool):
                raise ConfigurationError("auth.required: must be true or false")
            arguments["required"] = table["required"]
        entries = table.get("keys", [])
        if not isinstance(entries, list):
            raise ConfigurationError("auth.keys: must be an array of tables [[auth.keys]]")
        environ = os.environ if environ is None else environ
        arguments["keys"] = tuple(
            _key(entry, f"auth.keys[{index}]", base, environ) for index, entry in enumerate(entries)
        )
        return cls(**arguments)


def _check_seconds(
    name: str, value: object, low: float, high: float, *, zero_ok: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"auth.{name}: must be a number of seconds")
    if not (low <= value <= high if zero_ok else low < value <= high):
        bound = f"0 <= seconds <= {high:g}" if zero_ok else f"0 < seconds <= {high:g}"
        raise ConfigurationError(f"auth.{name}: must be {bound}")


def _names(value: object, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise ConfigurationError(f"{name}: must be a string or a list of strings")


def _key(
    entry: object, name: str, base: Path | None, environ: Mapping[str, str]
) -> VerificationKey:
    if not isinstance(entry, Mapping):
        raise ConfigurationError(f"{name}: must be a table")
    for key in entry:
        if key not in KEY_KEYS:
            expected = ", ".join(sorted(KEY_KEYS))
            raise ConfigurationError(f"{name}.{key}: unknown key (expected one of {expected})")
    kid = entry.get("kid")
    if not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_LEN or not kid.isprintable():
        raise ConfigurationError(f"{name}.kid: must be 1 to {MAX_KID_LEN} printable characters")
    try:
        alg = Algorithm(entry.get("alg"))
    except ValueError:
        raise ConfigurationError(f'{name}.alg: must be "HS256" or "ES256"') from None
    if alg is Algorithm.HS256:
        if "public_key_file" in entry:
            raise ConfigurationError(f"{name}.public_key_file: an HS256 key takes secret")
        secret = load_secret(entry.get("secret"), f"{name}.secret", base, environ)
        try:
            return VerificationKey.hs256(secret, kid=kid)
        except ValueError as error:
            raise ConfigurationError(f"{name}.secret: {error}") from None
    if "secret" in entry:
        raise ConfigurationError(f"{name}.secret: an ES256 key takes public_key_file")
    path_text = entry.get("public_key_file")
    if not isinstance(path_text, str) or not path_text:
        raise ConfigurationError(f"{name}.public_key_file: must be a path to a PEM public key")
    pem = read_file(_path(path_text, base), f"{name}.public_key_file")
    try:
        return VerificationKey.es256_from_pem(pem, kid=kid)
    except (ValueError, UnsupportedAlgorithm) as error:
        # cryptography's messages name the format problem, never the key's content.
        raise ConfigurationError(
            f"{name}.public_key_file: not a P-256 PEM public key ({error})"
        ) from None


def _path(text: str, base: Path | None) -> Path:
    path = Path(text)
    return path if path.is_absolute() or base is None else base / path


def read_file(path: Path, name: str) -> bytes:
    """The file's octets; ``ConfigurationError`` naming ``name`` when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigurationError(f"{name}: cannot read {path}: {error.strerror}") from None


def load_secret(
    value: object, name: str, base: Path | None = None, environ: Mapping[str, str] | None = None
) -> bytes:
    """An HS256 secret from hex digits, ``env:NAME`` or ``file:PATH`` (see the module doc).

    ``ConfigurationError`` names ``name`` and never shows the value.
    """
    environ = os.environ if environ is None else environ
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{name}: must be hex digits, env:NAME or file:PATH")
    if value.startswith("env:"):
        variable = value[4:]
        if variable not in environ:
            raise ConfigurationError(f"{name}: environment variable {variable} is not set")
        return environ[variable].encode("utf-8")
    if value.startswith("file:"):
        data = read_file(_path(value[5:], base), name)
        if data.endswith(b"\r\n"):
            return data[:-2]
        return data[:-1] if data.endswith(b"\n") else data
    try:
        return bytes.fromhex(value)
    except ValueError:
        # The value may be a mistyped secret: do not echo it.
        raise ConfigurationError(
            f"{name}: not hex digits (give hex digits, env:NAME or file:PATH)"
        ) from None
