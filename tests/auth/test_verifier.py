"""The token verifier: every refusal has its own code, and nothing else ever escapes it."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt as pyjwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicvoice.auth import (
    AuthConfig,
    Caller,
    CredentialRefused,
    SigningKey,
    TokenVerifier,
    encode_token,
    issue_token,
)
from quicvoice.auth.jws import b64url_encode
from quicvoice.session.codes import ErrorCode
from quicvoice.session.messages import MAX_TOKEN_LEN

from .keys import AUDIENCE, ISSUER, NOW, SECRET_B, claims, es256, hs256, verifier


def refusal(verify: TokenVerifier, token: str, now: float = NOW) -> ErrorCode:
    with pytest.raises(CredentialRefused) as refused:
        verify.verify(token, now)
    return refused.value.error_code


def raw_token(header: object, payload: object, key: SigningKey | None = None) -> str:
    """A token with any header and payload (JSON-encoded here), signed with ``key``'s HMAC."""
    segments = [
        b64url_encode(part if isinstance(part, bytes) else json.dumps(part).encode())
        for part in (header, payload)
    ]
    signing_input = ".".join(segments).encode()
    signature = b""
    if key is not None and key.secret is not None:
        import hashlib
        import hmac

        signature = hmac.new(key.secret, signing_input, hashlib.sha256).digest()
    return ".".join([*segments, b64url_encode(signature)])


@pytest.mark.parametrize(
    "make_key", [lambda: hs256("k1"), lambda: es256("e1")], ids=["HS256", "ES256"]
)
def test_round_trip(make_key: Any) -> None:
    key = make_key()
    token = encode_token(claims(role="agent", tags=["a", "b"]), key)
    caller = verifier(key).verify(token, NOW)
    assert caller == Caller(
        subject="caller-1",
        issuer=ISSUER,
        key_id=key.kid,
        claims=claims(role="agent", tags=["a", "b"]),
    )
    assert caller.claims["tags"] == ("a", "b")
    with pytest.raises(TypeError):
        caller.claims["role"] = "admin"  # type: ignore[index]


def test_audience_may_be_a_list_and_several_are_accepted() -> None:
    key = hs256("k1")
    verify = verifier(key, audiences=("other", AUDIENCE))
    assert verify.verify(encode_token(claims(aud=["x", AUDIENCE]), key), NOW).subject == "caller-1"
    assert verify.verify(encode_token(claims(aud="other"), key), NOW).subject == "caller-1"


def test_issuer_and_audience_unchecked_when_not_configured_except_rfc_aud_rule() -> None:
    key = hs256("k1")
    verify = verifier(key, issuers=(), audiences=())
    assert verify.verify(encode_token(claims(iss="anyone", aud=None), key), NOW).issuer == "anyone"
    # RFC 7519 §4.1.3: a token with an aud we cannot be in is refused.
    assert refusal(verify, encode_token(claims(), key)) is ErrorCode.TOKEN_WRONG_AUDIENCE


ALL_KEYS = (hs256("k1"), es256("e1"))


def _hs(**overrides: object) -> str:
    return encode_token(claims(**overrides), hs256("k1"))


def _flip_last(token: str) -> str:
    head, _, signature = token.rpartition(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[-1] ^= 1
    return f"{head}.{b64url_encode(bytes(raw))}"


def _with_payload(token: str, payload: dict[str, object]) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{b64url_encode(json.dumps(payload).encode())}.{signature}"


MALFORMED, EXPIRED = ErrorCode.TOKEN_MALFORMED, ErrorCode.TOKEN_EXPIRED
NOT_YET, AUDIENCE_, ISSUER_ = (
    ErrorCode.TOKEN_NOT_YET_VALID, ErrorCode.TOKEN_WRONG_AUDIENCE, ErrorCode.TOKEN_WRONG_ISSUER
)  # fmt: skip
SIGNATURE, UNKNOWN = ErrorCode.TOKEN_BAD_SIGNATURE, ErrorCode.TOKEN_UNKNOWN_KEY
_ES = encode_token(claims(), es256("e1"))
_IMPOSTOR = SigningKey.es256(es256("other").private_key, kid="e1")  # type: ignore[arg-type]
_ES_FOR_HS_KID = SigningKey.es256(es256("x").private_key, kid="k1")  # type: ignore[arg-type]
_HS_HEADER = {"alg": "HS256"}


def _signature_replaced(token: str, signature: bytes) -> str:
    return token.rsplit(".", 1)[0] + "." + b64url_encode(signature)


def _signature_of(token: str) -> bytes:
    segment = token.rsplit(".", 1)[1]
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


# (case, token, code): every row is one refusal, at NOW, with leeway 30 s.
REFUSALS: list[tuple[str, str, ErrorCode]] = [
    ("not a JWS", "hello", MALFORMED),
    ("two segments", "a.b", MALFORMED),
    ("four segments", _hs() + ".x", MALFORMED),
    ("padding", _hs().replace(".", "=.", 1), MALFORMED),
    ("oversize", "a" * (MAX_TOKEN_LEN + 1), MALFORMED),
    ("non-ASCII", "é" + _hs(), MALFORMED),
    ("header not JSON", "bm90IGpzb24." + _hs().split(".", 1)[1], MALFORMED),
    ("header an array", raw_token(["HS256"], claims()), MALFORMED),
    ("header without alg", raw_token({"typ": "JWT"}, claims()), MALFORMED),
    ("duplicate header member", raw_token(b'{"alg":"HS256","alg":"none"}', claims()), MALFORMED),
    ("crit", raw_token({"alg": "HS256", "crit": ["b64"]}, claims(), hs256(None)), MALFORMED),
    ("kid not a string", raw_token({"alg": "HS256", "kid": 1}, claims()), MALFORMED),
    ("payload not JSON", raw_token(_HS_HEADER, b"{", hs256(None)), MALFORMED),
    ("payload an array", raw_token(_HS_HEADER, [1], hs256(None)), MALFORMED),
    ("payload NaN", raw_token(_HS_HEADER, b'{"sub":"a","exp":NaN}', hs256(None)), MALFORMED),
    (
        "payload nested too deep",
        raw_token(_HS_HEADER, claims(x=json.loads("[" * 40 + "]" * 40)), hs256(None)),
        MALFORMED,
    ),
    ("no sub", _hs(sub=None), MALFORMED),
    ("sub a number", _hs(sub=7), MALFORMED),
    ("no exp", _hs(exp=None), MALFORMED),
    ("exp a string", _hs(exp="soon"), MALFORMED),
    ("exp a bool", _hs(exp=True), MALFORMED),
    ("aud a number", _hs(aud=5), MALFORMED),
    ("aud a list with a number", _hs(aud=[AUDIENCE, 5]), MALFORMED),
    ("iss a list", _hs(iss=[ISSUER]), MALFORMED),
    ("expired beyond the leeway", _hs(exp=int(NOW) - 31), EXPIRED),
    ("expired exactly at exp + leeway", _hs(exp=int(NOW) - 30), EXPIRED),
    ("nbf beyond the leeway", _hs(nbf=int(NOW) + 31), NOT_YET),
    ("iat in the future", _hs(iat=int(NOW) + 60), NOT_YET),
    ("other audience", _hs(aud="someone-else"), AUDIENCE_),
    ("audience list without ours", _hs(aud=["a", "b"]), AUDIENCE_),
    ("no aud", _hs(aud=None), AUDIENCE_),
    ("other issuer", _hs(iss="https://evil.test/"), ISSUER_),
    ("no iss", _hs(iss=None), ISSUER_),
    ("altered payload", _with_payload(_hs(), claims(sub="admin")), SIGNATURE),
    ("altered HS signature", _flip_last(_hs()), SIGNATURE),
    ("HS signed with another secret", encode_token(claims(), hs256("k1", SECRET_B)), SIGNATURE),
    ("ES signed by another key", encode_token(claims(), _IMPOSTOR), SIGNATURE),
    ("altered ES signature", _flip_last(_ES), SIGNATURE),
    ("ES signature of zeros", _signature_replaced(_ES, bytes(64)), SIGNATURE),
    ("ES signature truncated", _signature_replaced(_ES, _signature_of(_ES)[:63]), SIGNATURE),
    ("ES signature DER-encoded", _signature_replaced(_ES, bytes(70)), SIGNATURE),
    ("empty signature", raw_token({"alg": "HS256", "kid": "k1"}, claims()), SIGNATURE),
    ("unknown kid", encode_token(claims(), hs256("k9")), UNKNOWN),
    ("alg none", raw_token({"alg": "none"}, claims()), UNKNOWN),
    ("alg none with a kid", raw_token({"alg": "none", "kid": "k1"}, claims()), UNKNOWN),
    ("alg RS256", raw_token({"alg": "RS256", "kid": "k1"}, claims()), UNKNOWN),
    ("lower-case alg", raw_token({"alg": "hs256", "kid": "k1"}, claims(), hs256("k1")), UNKNOWN),
    ("HS256 naming the ES key's kid", encode_token(claims(), hs256("e1")), UNKNOWN),
    ("ES256 naming the HS key's kid", encode_token(claims(), _ES_FOR_HS_KID), UNKNOWN),
]


@pytest.mark.parametrize(("case", "token", "code"), REFUSALS, ids=[row[0] for row in REFUSALS])
def test_each_refusal_has_its_code(case: str, token: str, code: ErrorCode) -> None:
    verify = verifier(*ALL_KEYS)
    with pytest.raises(CredentialRefused) as refused:
        verify.verify(token, NOW)
    assert refused.value.error_code is code, refused.value
    assert refused.value.reason  # a fixed phrase for the client


def test_a_refusal_does_not_echo_the_token() -> None:
    marker = "Zq7SecretSubjectZq7"
    key = hs256("k1")
    tokens = [
        encode_token(claims(sub=marker, exp=int(NOW) - 100), key),
        encode_token(claims(sub=marker, aud=marker), key),
        encode_token(claims(sub=marker, iss=marker), key),
        encode_token(claims(sub=marker), hs256(marker)),  # unknown kid
        encode_token(claims(sub=marker), hs256("k1", SECRET_B)),
        raw_token({"alg": marker}, claims(sub=marker)),
    ]
    for token in tokens:
        with pytest.raises(CredentialRefused) as refused:
            verifier(key).verify(token, NOW)
        text = f"{refused.value} {refused.value.reason} {refused.value.detail}"
        assert marker not in text and token[:20] not in text


def test_leeway_accepts_small_skew_and_is_configurable() -> None:
    key = hs256("k1")
    late = encode_token(claims(exp=int(NOW) - 29), key)
    early = encode_token(claims(nbf=int(NOW) + 29, iat=int(NOW) + 29), key)
    assert verifier(key).verify(late, NOW).subject == "caller-1"
    assert verifier(key).verify(early, NOW).subject == "caller-1"
    strict = verifier(key, leeway=0.0)
    assert refusal(strict, late) is ErrorCode.TOKEN_EXPIRED
    assert refusal(strict, early) is ErrorCode.TOKEN_NOT_YET_VALID


def test_algorithm_confusion_is_impossible() -> None:
    """The classic attack: an HS256 token keyed with the ES256 *public* key's PEM."""
    es = es256("e1")
    public_pem = es.public_key_pem()
    forged_key = SigningKey.hs256(public_pem)  # no kid: "try every key of its alg"
    forged = encode_token(claims(), forged_key)
    assert refusal(verifier(es), forged) is ErrorCode.TOKEN_UNKNOWN_KEY  # no HS256 key at all
    assert refusal(verifier(es, hs256("k1")), forged) is ErrorCode.TOKEN_BAD_SIGNATURE
    named = encode_token(claims(), SigningKey.hs256(public_pem, kid="e1"))
    assert refusal(verifier(es, hs256("k1")), named) is ErrorCode.TOKEN_UNKNOWN_KEY


def test_rotation_with_two_keys_by_kid() -> None:
    old, new = hs256("2026-10"), hs256("2026-11", SECRET_B)
    both = verifier(old, new)
    assert both.verify(encode_token(claims(), old), NOW).key_id == "2026-10"
    assert both.verify(encode_token(claims(), new), NOW).key_id == "2026-11"
    retired = verifier(new)
    assert refusal(retired, encode_token(claims(), old)) is ErrorCode.TOKEN_UNKNOWN_KEY
    assert retired.verify(encode_token(claims(), new), NOW).key_id == "2026-11"


def test_rotation_across_algorithms_and_tokens_without_kid() -> None:
    hs_old, es_new = hs256("old"), es256("new")
    both = verifier(hs_old, es_new, hs256("other", SECRET_B))
    # No kid: tried against every key of the token's algorithm; the one that verifies names it.
    assert both.verify(encode_token(claims(), hs256(None, SECRET_B)), NOW).key_id == "other"
    assert both.verify(encode_token(claims(), hs256(None)), NOW).key_id == "old"
    unnamed_es = SigningKey.es256(es_new.private_key, kid=None)  # type: ignore[arg-type]
    assert both.verify(encode_token(claims(), unnamed_es), NOW).key_id == "new"


def test_authenticate_applies_required_and_the_open_backend_rule() -> None:
    key = hs256("k1")
    with pytest.raises(CredentialRefused) as refused:
        verifier(key).authenticate(None, NOW)
    assert refused.value.error_code is ErrorCode.UNAUTHENTICATED
    optional = verifier(key, required=False)
    assert optional.authenticate(None, NOW) is None
    with pytest.raises(CredentialRefused):  # a token that is presented is still checked
        optional.authenticate("garbage", NOW)
    open_backend = TokenVerifier(AuthConfig())
    assert not open_backend.required and not open_backend.enabled
    assert open_backend.authenticate(None, NOW) is None
    assert open_backend.authenticate("anything at all", NOW) is None


def test_resume_keeps_the_stored_caller_and_checks_a_presented_token() -> None:
    key = hs256("k1")
    verify = verifier(key)
    stored = verify.verify(encode_token(claims(), key), NOW)
    later = NOW + 7200  # the original token expired an hour ago
    expired_same = encode_token(claims(), key)
    assert verify.authenticate_resume(None, later, stored) is stored
    assert verify.authenticate_resume(expired_same, later, stored) is stored
    with pytest.raises(CredentialRefused) as other:
        verify.authenticate_resume(encode_token(claims(sub="someone-else"), key), later, stored)
    assert other.value.error_code is ErrorCode.RESUME_REFUSED
    with pytest.raises(CredentialRefused) as forged:
        verify.authenticate_resume(encode_token(claims(), hs256("k1", SECRET_B)), later, stored)
    assert forged.value.error_code is ErrorCode.TOKEN_BAD_SIGNATURE
    # A session stored without a caller (auth was off) must authenticate like a new one.
    with pytest.raises(CredentialRefused) as anonymous:
        verify.authenticate_resume(None, later, None)
    assert anonymous.value.error_code is ErrorCode.UNAUTHENTICATED
    with pytest.raises(CredentialRefused) as stale:
        verify.authenticate_resume(expired_same, later, None)
    assert stale.value.error_code is ErrorCode.TOKEN_EXPIRED


def test_issue_token_output_verifies() -> None:
    key = es256("e1")
    token = issue_token(
        key, subject="alice", now=NOW, ttl=60, issuer=ISSUER, audience=AUDIENCE,
        extra={"plan": "pro"},
    )  # fmt: skip
    caller = verifier(key).verify(token, NOW + 59)
    assert (caller.subject, caller.claims["plan"]) == ("alice", "pro")
    assert refusal(verifier(key), token, NOW + 91) is ErrorCode.TOKEN_EXPIRED
    with pytest.raises(ValueError):
        issue_token(key, subject="", now=NOW, ttl=60)
    with pytest.raises(ValueError):
        issue_token(key, subject="a", now=NOW, ttl=60, extra={"exp": 1})


# --- interoperability with PyJWT, the most common issuer library --------------------------------


def test_pyjwt_tokens_verify_here() -> None:
    hs, es = hs256("k1"), es256("e1")
    from_pyjwt_hs = pyjwt.encode(claims(), hs.secret, algorithm="HS256", headers={"kid": "k1"})
    pem = es.private_key_pem()
    from_pyjwt_es = pyjwt.encode(claims(), pem, algorithm="ES256", headers={"kid": "e1"})
    verify = verifier(hs, es)
    assert verify.verify(from_pyjwt_hs, NOW).key_id == "k1"
    assert verify.verify(from_pyjwt_es, NOW).key_id == "e1"


def test_our_tokens_verify_with_pyjwt() -> None:
    hs, es = hs256("k1"), es256("e1")
    for key, material in ((hs, hs.secret), (es, es.public_key_pem())):
        token = encode_token(claims(), key)
        decoded = pyjwt.decode(
            token,
            material,
            algorithms=[key.alg.value],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"verify_exp": False, "verify_iat": False},
        )
        assert decoded["sub"] == "caller-1"
        assert pyjwt.get_unverified_header(token)["kid"] == key.kid


# --- hostile input: only CredentialRefused, ever ------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
around_now = st.integers(int(NOW) - 100, int(NOW) + 100)
claim_values = {
    "sub": st.none() | st.text(max_size=300) | st.integers(),
    "iss": st.none() | st.sampled_from([ISSUER, "x"]) | st.integers(),
    "aud": st.none()
    | st.sampled_from([AUDIENCE, "x"])
    | st.lists(st.sampled_from([AUDIENCE, "x", 3]), max_size=3),
    "exp": st.none()
    | around_now
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=5),
    "nbf": st.none() | around_now | st.floats() | st.booleans(),
    "iat": st.none() | around_now | st.just(float("inf")),
}


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_garbage_is_refused_with_a_code(token: str) -> None:
    verify = verifier(*ALL_KEYS)
    try:
        verify.verify(token, NOW)
    except CredentialRefused as refused:
        assert refused.error_code in set(ErrorCode)
    else:
        raise AssertionError("garbage was accepted")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=3, max_size=3), st.sampled_from(["", "e1", "k1"]))
def test_three_random_segments_are_refused(parts: list[bytes], kid: str) -> None:
    header = json.dumps({"alg": "ES256", "kid": kid}).encode() if kid else parts[0]
    token = ".".join(b64url_encode(part) for part in [header, *parts[1:]])
    with pytest.raises(CredentialRefused):
        verifier(*ALL_KEYS).verify(token, NOW)


_DELETE = object()


def _claim_sets() -> st.SearchStrategy[dict[str, Any]]:
    """Valid claims, each kept (mostly), deleted or replaced by a random value, plus extras."""
    valid = claims()

    def mostly_kept(name: str, strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        choice = st.sampled_from(["keep"] * 6 + ["delete", "random"])
        return choice.flatmap(
            lambda how: (
                strategy if how == "random" else st.just(valid[name] if how == "keep" else _DELETE)
            )
        )

    per_claim = {
        name: mostly_kept(name, strategy)
        for name, strategy in claim_values.items()
        if name in valid
    }
    per_claim["nbf"] = st.just(_DELETE) | claim_values["nbf"]
    return st.builds(
        lambda fixed, extra: {
            **extra,
            **{name: value for name, value in fixed.items() if value is not _DELETE},
        },
        st.fixed_dictionaries(per_claim),
        st.dictionaries(st.text(max_size=6), json_values, max_size=3),
    )


@settings(max_examples=300, deadline=None)
@given(_claim_sets())
def test_random_claim_sets_give_a_caller_or_a_code(body: dict[str, Any]) -> None:
    key = hs256("k1")
    try:
        token = encode_token(body, key)
    except ValueError:
        return  # infinite floats cannot be JSON: nothing to send
    try:
        caller = verifier(key).verify(token, NOW)
    except CredentialRefused as refused:
        assert refused.error_code in set(ErrorCode)
    else:
        assert caller.subject == body["sub"] and body["exp"] + 30 > NOW
        assert body.get("iss") == ISSUER


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_one_character_change_is_refused(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(ALL_KEYS))
    token = encode_token(claims(), key)
    index = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.sampled_from("ABCDEFabcdef0123456789-_.=+/ "))
    mutated = token[:index] + replacement + token[index + 1 :]
    if mutated == token:
        return
    with pytest.raises(CredentialRefused):
        verifier(key).verify(mutated, NOW)
