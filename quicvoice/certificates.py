"""Self-signed development certificates: ECDSA P-256, short-lived, as WebTransport requires.

Chromium accepts a certificate by hash (``serverCertificateHashes``) only when it is ECDSA
P-256 and valid for at most 14 days; these are made to fit.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DEFAULT_VALIDITY = datetime.timedelta(days=10)


@dataclass(frozen=True, slots=True)
class DevelopmentCertificate:
    """A certificate and its key, with the SHA-256 hash browsers pin."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @property
    def sha256(self) -> bytes:
        """SHA-256 of the DER certificate (WebTransport ``serverCertificateHashes``)."""
        return self.certificate.fingerprint(hashes.SHA256())

    def certificate_pem(self) -> bytes:
        """The certificate in PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def private_key_pem(self) -> bytes:
        """The private key in unencrypted PKCS#8 PEM."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def generate_certificate(
    names: tuple[str, ...] = ("localhost", "127.0.0.1", "::1"),
    validity: datetime.timedelta = DEFAULT_VALIDITY,
    now: datetime.datetime | None = None,
) -> DevelopmentCertificate:
    """Return a new self-signed ECDSA P-256 certificate for ``names`` (DNS names or IPs)."""
    if validity > datetime.timedelta(days=14):
        raise ValueError("WebTransport accepts pinned certificates valid for at most 14 days")
    key = ec.generate_private_key(ec.SECP256R1())
    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(minutes=5)
    alternative_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alternative_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternative_names.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + validity)
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .sign(key, hashes.SHA256())
    )
    return DevelopmentCertificate(certificate, key)
