"""Keys shared by the auth tests: fixed HS256 secrets and ES256 key pairs made once."""

from __future__ import annotations

from functools import cache

from quicvoice.auth import AuthConfig, SigningKey, TokenVerifier

NOW = 1_800_000_000.0
SECRET_A = bytes(range(32, 64))
SECRET_B = bytes(range(64, 112))
ISSUER = "https://login.example.test/"
AUDIENCE = "voice.example.test"


@cache
def es256(kid: str | None) -> SigningKey:
    """A P-256 signing key, the same for the same ``kid`` within a test run."""
    return SigningKey.generate_es256(kid=kid)


def hs256(kid: str | None, secret: bytes = SECRET_A) -> SigningKey:
    return SigningKey.hs256(secret, kid=kid)


def verifier(*keys: SigningKey, **options: object) -> TokenVerifier:
    """A verifier trusting ``keys``, ISSUER and AUDIENCE unless ``options`` say otherwise."""
    settings: dict[str, object] = {"issuers": (ISSUER,), "audiences": (AUDIENCE,)}
    settings.update(options)
    config = AuthConfig(keys=tuple(key.verification_key() for key in keys), **settings)  # type: ignore[arg-type]
    return TokenVerifier(config)


def claims(**overrides: object) -> dict[str, object]:
    """A valid claim set at NOW, with ``overrides`` (None deletes a claim)."""
    body: dict[str, object] = {
        "sub": "caller-1",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": int(NOW) - 10,
        "exp": int(NOW) + 600,
    }
    for name, value in overrides.items():
        if value is None:
            body.pop(name, None)
        else:
            body[name] = value
    return body
