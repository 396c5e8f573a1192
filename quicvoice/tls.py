"""Checking a server's certificate, sans-I/O: the certificates, the trust anchors and the time
come in; a ``CertificateVerificationError`` naming the failed check comes out.

A client either pins the certificate (``certificate_hashes``, like the browsers'
``serverCertificateHashes``: the leaf's SHA-256 must be one of them, its validity period must
hold, no CA and no name is needed) or verifies it: validity period, then the host among the
certificate's names (RFC 6125 §6.4: subjectAltName only, a wildcard only as the whole
left-most label, IP literals against iPAddress entries), then a chain to a trust anchor
(``cryptography``'s RFC 5280 / CA/Browser Forum path validation). A leaf that is itself one of
the trust anchors (a self-signed development certificate passed as ``ca_file``) is trusted
as it is, after the same validity and name checks.

The asyncio shell loads the trust anchors (the system store, or ``ca_file``) and installs
``verify_server_certificate`` into the TLS handshake (``quicvoice.quic``), where it runs when
the server's CertificateVerify has been checked, before the client's Finished: nothing of the
session (hello, audio) leaves before it passes.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import verification

from .errors import CertificateVerificationError

#: Check names carried by ``CertificateVerificationError.check``.
CHECK_HASH = "hash"
CHECK_VALIDITY = "validity"
CHECK_NAME = "name"
CHECK_TRUST = "trust"
CHECK_FORMAT = "format"
#: Length of a SHA-256 certificate hash, octets.
HASH_LENGTH = 32
#: Names listed in an error message at most.
MAX_NAMES_SHOWN = 8

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificatePolicy:
    """How a client accepts a server's certificate."""

    #: The name the certificate must carry: the host of the URL (DNS name or IP literal).
    server_name: str
    #: Certificates trusted as roots (the system store, or ``ca_file``'s).
    trust_anchors: tuple[x509.Certificate, ...] = ()
    #: SHA-256 hashes of accepted leaf certificates; when given, pinning replaces the CA chain
    #: and name checks.
    certificate_hashes: frozenset[bytes] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        for digest in self.certificate_hashes:
            if not isinstance(digest, bytes) or len(digest) != HASH_LENGTH:
                raise ValueError("certificate_hashes must be SHA-256 digests of 32 octets")
        if not self.certificate_hashes and not self.trust_anchors:
            raise ValueError("a certificate policy needs trust anchors or certificate hashes")


def certificate_sha256(certificate: x509.Certificate) -> bytes:
    """SHA-256 of the DER certificate (what ``certificate_hashes`` holds)."""
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).digest()


def parse_trust_anchors(pem: bytes, source: str) -> tuple[x509.Certificate, ...]:
    """The certificates of a PEM bundle; ``ValueError`` naming ``source`` if there are none."""
    with warnings.catch_warnings():
        # The system bundle holds an old root with a non-positive serial number; cryptography
        # warns about it but loads it, and so do we.
        warnings.simplefilter("ignore")
        try:
            certificates = x509.load_pem_x509_certificates(pem)
        except ValueError as error:
            raise ValueError(f"{source}: no PEM certificates could be read ({error})") from None
    return tuple(certificates)


def verify_server_certificate(
    policy: CertificatePolicy,
    leaf: x509.Certificate,
    chain: Sequence[x509.Certificate],
    now: datetime.datetime,
) -> None:
    """Accept the server's ``leaf`` (with the ``chain`` it sent) at ``now``, or raise
    ``CertificateVerificationError`` naming the check that failed."""
    if policy.certificate_hashes:
        digest = certificate_sha256(leaf)
        if digest not in policy.certificate_hashes:
            raise CertificateVerificationError(
                CHECK_HASH, f"SHA-256 {digest.hex()} is not one of the pinned certificate hashes"
            )
        _check_validity(leaf, now)
        return
    _check_validity(leaf, now)
    _check_name(leaf, policy.server_name)
    if any(leaf == anchor for anchor in policy.trust_anchors):
        return
    _check_chain(policy, leaf, chain, now)


def _check_validity(leaf: x509.Certificate, now: datetime.datetime) -> None:
    if now < leaf.not_valid_before_utc:
        raise CertificateVerificationError(
            CHECK_VALIDITY, f"not valid before {leaf.not_valid_before_utc.isoformat()}"
        )
    if now > leaf.not_valid_after_utc:
        raise CertificateVerificationError(
            CHECK_VALIDITY, f"expired at {leaf.not_valid_after_utc.isoformat()}"
        )


def certificate_names(leaf: x509.Certificate) -> tuple[list[str], list[IPAddress]]:
    """The DNS names and IP addresses of the leaf's subjectAltName (empty without one)."""
    try:
        extension = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return [], []
    except ValueError as error:  # extensions are parsed lazily, here
        raise CertificateVerificationError(
            CHECK_FORMAT, f"unreadable extensions: {error}"
        ) from None
    names = extension.value.get_values_for_type(x509.DNSName)
    addresses = extension.value.get_values_for_type(x509.IPAddress)
    return names, [a for a in addresses if isinstance(a, IPAddress)]


def _check_name(leaf: x509.Certificate, server_name: str) -> None:
    names, addresses = certificate_names(leaf)
    try:
        wanted: IPAddress | None = ipaddress.ip_address(server_name)
    except ValueError:
        wanted = None
    if wanted is not None:
        if wanted in addresses:
            return
    elif any(name_matches(pattern, server_name) for pattern in names):
        return
    shown = [*names, *map(str, addresses)]
    listed = ", ".join(shown[:MAX_NAMES_SHOWN]) + (" ..." if len(shown) > MAX_NAMES_SHOWN else "")
    raise CertificateVerificationError(
        CHECK_NAME,
        f"{server_name!r} is not among the certificate's names ({listed or 'none'})",
    )


def name_matches(pattern: str, host: str) -> bool:
    """RFC 6125 §6.4.3: case-insensitive; ``*`` only as the whole left-most label, matching
    exactly one label, never in a name of fewer than three labels."""
    pattern = pattern.lower().rstrip(".")
    host = host.lower().rstrip(".")
    if not pattern.startswith("*."):
        return "*" not in pattern and pattern == host
    suffix = pattern[2:]
    if "*" in suffix or suffix.count(".") < 1:
        return False
    label, dot, rest = host.partition(".")
    return bool(label) and bool(dot) and rest == suffix


def _check_chain(
    policy: CertificatePolicy,
    leaf: x509.Certificate,
    chain: Sequence[x509.Certificate],
    now: datetime.datetime,
) -> None:
    try:
        subject: x509.DNSName | x509.IPAddress = x509.IPAddress(
            ipaddress.ip_address(policy.server_name)
        )
    except ValueError:
        subject = x509.DNSName(policy.server_name)
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(list(policy.trust_anchors)))
        .time(now)
        .build_server_verifier(subject)
    )
    try:
        verifier.verify(leaf, list(chain))
    except verification.VerificationError as error:
        raise CertificateVerificationError(
            CHECK_TRUST, f"no valid chain to a trusted certificate authority: {error}"
        ) from None


def hashes_from(values: Iterable[bytes | str]) -> frozenset[bytes]:
    """Certificate hashes given as 32 octets or 64 hex digits (colons allowed)."""
    digests = set()
    for value in values:
        if isinstance(value, str):
            try:
                value = bytes.fromhex(value.replace(":", ""))
            except ValueError:
                raise ValueError(f"certificate hash {value!r} is not hexadecimal") from None
        if not isinstance(value, bytes) or len(value) != HASH_LENGTH:
            raise ValueError("a certificate hash is a SHA-256 digest: 32 octets, 64 hex digits")
        digests.add(value)
    return frozenset(digests)
