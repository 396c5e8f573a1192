"""Keys for bearer tokens: what verifies (``VerificationKey``) and what signs (``SigningKey``).

The key decides the algorithm (RFC 8725 §3.1): each key is bound to exactly one of HS256
(HMAC-SHA256, a shared secret of at least 32 octets, RFC 7518 §3.2) or ES256 (ECDSA on P-256
with SHA-256, RFC 7518 §3.4). A token's ``alg`` only selects among the keys of that algorithm;
it can never make an HMAC secret verify an ES256 token or the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

#: RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
MIN_SECRET_LEN = 32
#: Longest key ID accepted, in characters.
MAX_KID_LEN = 128


class Algorithm(Enum):
    """The JWS algorithms quicvoice accepts (``alg`` header values)."""

    #: HMAC with SHA-256 under a shared secret.
    HS256 = "HS256"
    #: ECDSA on P-256 with SHA-256.
    ES256 = "ES256"


def check_kid(kid: str | None) -> str | None:
    """Return ``kid`` if it is None or 1..``MAX_KID_LEN`` printable characters; else ValueError."""
    if kid is None:
        return None
    if not isinstance(kid, str):
        raise TypeError("kid must be a str")
    if not 0 < len(kid) <= MAX_KID_LEN or not kid.isprintable():
        raise ValueError(f"kid must be 1 to {MAX_KID_LEN} printable characters")
    return kid


def _check_secret(secret: bytes) -> bytes:
    if not isinstance(secret, bytes):
        raise TypeError("an HS256 secret must be bytes")
    if len(secret) < MIN_SECRET_LEN:
        raise ValueError(f"an HS256 secret must be at least {MIN_SECRET_LEN} octets")
    return secret


def _is_p256(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> bool:
    return isinstance(key.curve, ec.SECP256R1)


@dataclass(frozen=True, slots=True, kw_only=True)
class VerificationKey:
    """A key that verifies tokens: an HS256 secret or an ES256 public key, with its ``kid``."""

    #: The key ID tokens name in their ``kid`` header; ``None``: only tokens without ``kid``
    #: are tried against it.
    kid: str | None
    #: The one algorithm this key verifies.
    alg: Algorithm
    #: HS256 only: the shared secret.
    secret: bytes | None = field(default=None, repr=False)
    #: ES256 only: the P-256 public key.
    public_key: ec.EllipticCurvePublicKey | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_kid(self.kid)
        if not isinstance(self.alg, Algorithm):
            raise TypeError("alg must be an Algorithm")
        if self.alg is Algorithm.HS256:
            if self.secret is None or self.public_key is not None:
                raise ValueError("an HS256 key has a secret and no public key")
            _check_secret(self.secret)
        else:
            if self.public_key is None or self.secret is not None:
                raise ValueError("an ES256 key has a public key and no secret")
            if not isinstance(self.public_key, ec.EllipticCurvePublicKey):
                raise TypeError("an ES256 public key must be an EllipticCurvePublicKey")
            if not _is_p256(self.public_key):
                raise ValueError("an ES256 public key must be on the P-256 curve")

    @classmethod
    def hs256(cls, secret: bytes, *, kid: str | None = None) -> VerificationKey:
        """An HS256 key (``secret``: at least 32 octets)."""
        return cls(kid=kid, alg=Algorithm.HS256, secret=secret)

    @classmethod
    def es256(
        cls, public_key: ec.EllipticCurvePublicKey, *, kid: str | None = None
    ) -> VerificationKey:
        """An ES256 key from a P-256 public key."""
        return cls(kid=kid, alg=Algorithm.ES256, public_key=public_key)

    @classmethod
    def es256_from_pem(cls, pem: bytes, *, kid: str | None = None) -> VerificationKey:
        """An ES256 key from a PEM ``PUBLIC KEY``; ``ValueError`` when it is not P-256."""
        key = serialization.load_pem_public_key(pem)
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError("not an elliptic-curve public key")
        return cls.es256(key, kid=kid)


@dataclass(frozen=True, slots=True, kw_only=True)
class SigningKey:
    """A key that signs tokens (``quicvoice token issue``, tests, an issuer of your own)."""

    #: The ``kid`` written into the token's header (``None``: no ``kid``).
    kid: str | None
    #: The algorithm used.
    alg: Algorithm
    #: HS256 only: the shared secret.
    secret: bytes | None = field(default=None, repr=False)
    #: ES256 only: the P-256 private key.
    private_key: ec.EllipticCurvePrivateKey | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_kid(self.kid)
        if not isinstance(self.alg, Algorithm):
            raise TypeError("alg must be an Algorithm")
        if self.alg is Algorithm.HS256:
            if self.secret is None or self.private_key is not None:
                raise ValueError("an HS256 key has a secret and no private key")
            _check_secret(self.secret)
        else:
            if self.private_key is None or self.secret is not None:
                raise ValueError("an ES256 key has a private key and no secret")
            if not isinstance(self.private_key, ec.EllipticCurvePrivateKey):
                raise TypeError("an ES256 private key must be an EllipticCurvePrivateKey")
            if not _is_p256(self.private_key):
                raise ValueError("an ES256 private key must be on the P-256 curve")

    @classmethod
    def hs256(cls, secret: bytes, *, kid: str | None = None) -> SigningKey:
        """An HS256 signing key (``secret``: at least 32 octets)."""
        return cls(kid=kid, alg=Algorithm.HS256, secret=secret)

    @classmethod
    def es256(
        cls, private_key: ec.EllipticCurvePrivateKey, *, kid: str | None = None
    ) -> SigningKey:
        """An ES256 signing key from a P-256 private key."""
        return cls(kid=kid, alg=Algorithm.ES256, private_key=private_key)

    @classmethod
    def es256_from_pem(cls, pem: bytes, *, kid: str | None = None) -> SigningKey:
        """An ES256 signing key from an unencrypted PEM private key; ``ValueError`` otherwise."""
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except TypeError:
            raise ValueError("the private key is encrypted (give an unencrypted PEM)") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("not an elliptic-curve private key")
        return cls.es256(key, kid=kid)

    @classmethod
    def generate_es256(cls, *, kid: str | None = None) -> SigningKey:
        """A fresh P-256 key pair's signing half."""
        return cls.es256(ec.generate_private_key(ec.SECP256R1()), kid=kid)

    def verification_key(self) -> VerificationKey:
        """The key that verifies what this key signs (same ``kid``)."""
        if self.private_key is not None:
            return VerificationKey.es256(self.private_key.public_key(), kid=self.kid)
        if self.secret is None:  # unreachable: __post_init__ checked the pair
            raise ValueError("an HS256 key without a secret")
        return VerificationKey.hs256(self.secret, kid=self.kid)

    def private_key_pem(self) -> bytes:
        """ES256: the private key as unencrypted PKCS#8 PEM; ``ValueError`` for HS256."""
        if self.private_key is None:
            raise ValueError("an HS256 key has no PEM form")
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_key_pem(self) -> bytes:
        """ES256: the public key as ``PUBLIC KEY`` PEM; ``ValueError`` for HS256."""
        if self.private_key is None:
            raise ValueError("an HS256 key has no public key")
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
