"""Resume tokens: round trip, rotation, and every wrong shape refused with a reason."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicvoice.errors import QuicVoiceError
from quicvoice.session.codes import ErrorCode
from quicvoice.store import RefusalReason, ResumeRefused, ResumeTokenIssuer
from quicvoice.store.tokens import MAX_TOKEN_LEN, TAG_LEN

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 140))
NOW = 1_700_000_000.0
TTL = 300.0

ISSUER = ResumeTokenIssuer({1: KEY_A}, current_key_id=1, ttl=TTL)
session_ids = st.text(
    st.characters(codec="utf-8", categories=("L", "N", "P", "S")), min_size=1, max_size=40
)


def refused(issuer: ResumeTokenIssuer, token: object, now: float = NOW) -> RefusalReason:
    with pytest.raises(ResumeRefused) as info:
        issuer.verify(token, now)  # type: ignore[arg-type]
    assert info.value.error_code == ErrorCode.RESUME_REFUSED
    assert isinstance(info.value, QuicVoiceError)
    return info.value.reason


@given(session_id=session_ids)
def test_round_trip_binds_the_session(session_id: str) -> None:
    token = ISSUER.issue(session_id, NOW)
    assert len(token) <= MAX_TOKEN_LEN
    assert ISSUER.verify(token, NOW + TTL - 0.01) == session_id


def test_expiry() -> None:
    token = ISSUER.issue("s", NOW)
    assert ISSUER.verify(token, NOW + TTL - 0.001) == "s"
    assert refused(ISSUER, token, NOW + TTL) is RefusalReason.EXPIRED
    assert refused(ISSUER, token, NOW + 10 * TTL) is RefusalReason.EXPIRED


def test_rotation_and_unknown_keys() -> None:
    old = ISSUER.issue("s", NOW)
    both = ResumeTokenIssuer({1: KEY_A, 2: KEY_B}, current_key_id=2, ttl=TTL)
    new = both.issue("s", NOW)
    assert new[1:3] == b"\x00\x02"
    assert both.verify(old, NOW) == both.verify(new, NOW) == "s"
    assert refused(ISSUER, new) is RefusalReason.UNKNOWN_KEY  # not deployed here yet
    retired = ResumeTokenIssuer({2: KEY_B}, current_key_id=2, ttl=TTL)
    assert refused(retired, old) is RefusalReason.UNKNOWN_KEY


def test_same_key_id_other_secret_is_a_bad_signature() -> None:
    forger = ResumeTokenIssuer({1: KEY_B}, current_key_id=1, ttl=TTL)
    assert refused(ISSUER, forger.issue("s", NOW)) is RefusalReason.BAD_SIGNATURE


def test_other_session_cannot_be_claimed() -> None:
    token = bytearray(ISSUER.issue("aaaa", NOW))
    token[4:8] = b"bbbb"  # same length, another session
    assert refused(ISSUER, bytes(token)) is RefusalReason.BAD_SIGNATURE


def test_expiry_cannot_be_extended() -> None:
    token = bytearray(ISSUER.issue("s", NOW))
    token[5:13] = (2**63).to_bytes(8, "big")
    assert refused(ISSUER, bytes(token)) is RefusalReason.BAD_SIGNATURE


@settings(max_examples=300)
@given(session_id=session_ids, data=st.data())
def test_any_bit_flip_is_refused(session_id: str, data: st.DataObject) -> None:
    token = bytearray(ISSUER.issue(session_id, NOW))
    bit = data.draw(st.integers(0, len(token) * 8 - 1))
    token[bit // 8] ^= 1 << (bit % 8)
    refused(ISSUER, bytes(token))


@given(session_id=session_ids, data=st.data())
def test_truncation_and_extension_are_refused(session_id: str, data: st.DataObject) -> None:
    token = ISSUER.issue(session_id, NOW)
    cut = data.draw(st.integers(0, len(token) - 1))
    assert refused(ISSUER, token[:cut]) is RefusalReason.MALFORMED
    extra = data.draw(st.binary(min_size=1, max_size=8))
    assert refused(ISSUER, token + extra) in (RefusalReason.MALFORMED, RefusalReason.BAD_SIGNATURE)


@settings(max_examples=500)
@given(blob=st.binary(max_size=200))
def test_random_bytes_are_refused(blob: bytes) -> None:
    refused(ISSUER, blob)


@pytest.mark.parametrize("token", [None, "text", 12, [1, 2], b"", b"\x01"])
def test_tokens_of_the_wrong_type_are_malformed(token: object) -> None:
    assert refused(ISSUER, token) is RefusalReason.MALFORMED


def test_wrong_version_octet_is_malformed() -> None:
    token = bytearray(ISSUER.issue("s", NOW))
    token[0] = 2
    assert refused(ISSUER, bytes(token)) is RefusalReason.MALFORMED
    assert len(token) - TAG_LEN - 4 - 8 == 1


def test_invalid_utf8_inside_a_validly_signed_token_is_malformed() -> None:
    """Defence in depth: even a key holder cannot make verify return a non-ID."""
    import hashlib
    import hmac

    from quicvoice.store.tokens import DOMAIN

    body = b"\x01\x00\x01\x02\xff\xfe" + int((NOW + 60) * 1000).to_bytes(8, "big")
    token = body + hmac.new(KEY_A, DOMAIN + body, hashlib.sha256).digest()
    assert refused(ISSUER, token) is RefusalReason.MALFORMED


def test_issuer_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        ResumeTokenIssuer({1: b"short"}, current_key_id=1, ttl=TTL)
    with pytest.raises(ValueError):
        ResumeTokenIssuer({1: KEY_A}, current_key_id=2, ttl=TTL)
    with pytest.raises(ValueError):
        ResumeTokenIssuer({70000: KEY_A}, current_key_id=70000, ttl=TTL)
    with pytest.raises(ValueError):
        ResumeTokenIssuer({1: KEY_A}, current_key_id=1, ttl=0)
    with pytest.raises(ValueError):
        ISSUER.issue("", NOW)
    with pytest.raises(ValueError):
        ISSUER.issue("x" * 129, NOW)
    assert "KEY" not in repr(ISSUER) and KEY_A.hex() not in repr(ISSUER)
