"""The server-certificate policy, sans-I/O: each failed check named, pinning without a CA."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from quicvoice.certificates import generate_certificate
from quicvoice.errors import CertificateVerificationError
from quicvoice.tls import (
    CertificatePolicy,
    certificate_sha256,
    hashes_from,
    name_matches,
    parse_trust_anchors,
    verify_server_certificate,
)

from .pki import DAY, NOW, make_ca, make_leaf

CA = make_ca()
OTHER_CA = make_ca("another CA")
LEAF = make_leaf(CA)


def policy(
    name: str = "localhost", *anchors: object, hashes: frozenset[bytes] = frozenset()
) -> CertificatePolicy:
    return CertificatePolicy(
        server_name=name,
        trust_anchors=tuple(anchors) or (CA.certificate,),  # type: ignore[arg-type]
        certificate_hashes=hashes,
    )


def rejected(policy: CertificatePolicy, leaf: object, now: datetime.datetime = NOW) -> str:
    with pytest.raises(CertificateVerificationError) as caught:
        verify_server_certificate(policy, leaf, [], now)  # type: ignore[arg-type]
    assert isinstance(caught.value, ConnectionError)
    return caught.value.check


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "::1"])
def test_a_leaf_of_the_trusted_ca_passes_for_each_of_its_names(name: str) -> None:
    verify_server_certificate(policy(name), LEAF.certificate, [], NOW)


def test_another_ca_fails_the_trust_check() -> None:
    assert rejected(policy("localhost", OTHER_CA.certificate), LEAF.certificate) == "trust"


def test_another_name_fails_the_name_check() -> None:
    assert rejected(policy("voice.example"), LEAF.certificate) == "name"
    assert rejected(policy("127.0.0.2"), LEAF.certificate) == "name"
    # The common name is never a fallback (RFC 6125 §6.4.4 as browsers apply it).
    assert rejected(policy("localhost"), make_leaf(CA, ("other.test",)).certificate) == "name"


def test_the_name_message_lists_the_certificates_names() -> None:
    with pytest.raises(
        CertificateVerificationError,
        match="'voice.example' is not among.*localhost, 127.0.0.1, ::1",
    ):
        verify_server_certificate(policy("voice.example"), LEAF.certificate, [], NOW)


def test_dates_fail_the_validity_check() -> None:
    expired = make_leaf(CA, not_before=NOW - 3 * DAY, not_after=NOW - 2 * DAY)
    future = make_leaf(CA, not_before=NOW + 2 * DAY, not_after=NOW + 3 * DAY)
    assert rejected(policy(), expired.certificate) == "validity"
    assert rejected(policy(), future.certificate) == "validity"
    assert rejected(policy(), LEAF.certificate, NOW + 2 * DAY) == "validity"


def test_a_trusted_self_signed_leaf_passes_as_it_is() -> None:
    development = generate_certificate(("localhost",), now=NOW)  # NOW: fixed at collection
    trusted = policy("localhost", development.certificate)
    verify_server_certificate(trusted, development.certificate, [], NOW)
    assert rejected(policy("localhost"), development.certificate) == "trust"
    assert rejected(policy("other", development.certificate), development.certificate) == "name"


def test_pinning_needs_no_ca_and_no_name() -> None:
    pinned = CertificatePolicy(
        server_name="anything", certificate_hashes=frozenset({LEAF.sha256()})
    )
    verify_server_certificate(pinned, LEAF.certificate, [], NOW)
    other = make_leaf(OTHER_CA)
    assert rejected(pinned, other.certificate) == "hash"
    # A pinned certificate must still be within its validity period.
    assert rejected(pinned, LEAF.certificate, NOW + 2 * DAY) == "validity"


def test_hash_formats() -> None:
    digest = certificate_sha256(LEAF.certificate)
    assert digest == LEAF.sha256()
    colons = ":".join(f"{octet:02X}" for octet in digest)
    assert hashes_from([digest, digest.hex(), colons]) == {digest}
    for bad in ["zz" * 32, digest.hex()[:-2], b"short"]:
        with pytest.raises(ValueError):
            hashes_from([bad])


def test_a_policy_needs_something_to_trust() -> None:
    with pytest.raises(ValueError):
        CertificatePolicy(server_name="localhost")
    with pytest.raises(ValueError):
        CertificatePolicy(server_name="localhost", certificate_hashes=frozenset({b"x"}))


def test_trust_anchors_from_pem() -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    pem = CA.certificate.public_bytes(Encoding.PEM) + OTHER_CA.certificate.public_bytes(
        Encoding.PEM
    )
    assert parse_trust_anchors(pem, "bundle") == (CA.certificate, OTHER_CA.certificate)
    with pytest.raises(ValueError, match="bundle"):
        parse_trust_anchors(b"not a certificate", "bundle")


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("voice.example", "voice.example", True),
        ("Voice.Example.", "voice.example", True),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "A.Example.Com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "a.b.example.com", False),
        ("*.com", "example.com", False),
        ("a*.example.com", "ab.example.com", False),
        ("*.*.example", "a.b.example", False),
        ("voice.example", "voice.example.evil", False),
    ],
)
def test_name_matching(pattern: str, host: str, matches: bool) -> None:
    assert name_matches(pattern, host) is matches


@given(st.text(max_size=40), st.text(max_size=40))
def test_name_matching_never_raises(pattern: str, host: str) -> None:
    name_matches(pattern, host)


@given(st.binary(max_size=2000))
def test_garbage_pem_raises_value_error_only(data: bytes) -> None:
    try:
        parse_trust_anchors(data, "garbage")
    except ValueError:
        pass


@given(st.lists(st.one_of(st.text(max_size=80), st.binary(max_size=40)), max_size=3))
def test_any_certificate_hash_argument_parses_or_raises_value_error(values: list[object]) -> None:
    try:
        digests = hashes_from(values)  # type: ignore[arg-type]
    except ValueError:
        return
    assert all(len(digest) == 32 for digest in digests)


def test_an_unreadable_subject_alt_name_fails_the_format_check() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtensionOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "garbled")])
    garbled = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(5)
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .add_extension(
            x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x03\xff\x00"),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    assert rejected(policy("garbled", garbled), garbled) == "format"
