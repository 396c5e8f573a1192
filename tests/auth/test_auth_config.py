"""The ``[auth]`` section: keys from hex, environment, files and PEM; every mistake named."""

from __future__ import annotations

import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from quicvoice.asyncio.config import BackendConfig
from quicvoice.auth import Algorithm, AuthConfig, TokenVerifier, encode_token
from quicvoice.auth.config import load_secret
from quicvoice.errors import ConfigurationError

from .keys import AUDIENCE, ISSUER, NOW, SECRET_A, claims, es256, hs256

SECRET_TEXT = "a-string-secret-of-at-least-32-octets!"


def write_keys(tmp_path: Path) -> None:
    (tmp_path / "es.pub.pem").write_bytes(es256("es-1").public_key_pem())
    (tmp_path / "hs.secret").write_text(SECRET_TEXT + "\n")


AUTH_TOML = f"""
[auth]
issuer = "{ISSUER}"
audience = ["{AUDIENCE}", "other.example.test"]
leeway = 10
accept_timeout = 2

[[auth.keys]]
kid = "hex"
alg = "HS256"
secret = "{SECRET_A.hex()}"

[[auth.keys]]
kid = "env"
alg = "HS256"
secret = "env:QV_TEST_JWT_SECRET"

[[auth.keys]]
kid = "file"
alg = "HS256"
secret = "file:hs.secret"

[[auth.keys]]
kid = "es-1"
alg = "ES256"
public_key_file = "es.pub.pem"
"""


def test_a_backend_file_with_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_keys(tmp_path)
    monkeypatch.setenv("QV_TEST_JWT_SECRET", SECRET_TEXT)
    path = tmp_path / "backend.toml"
    path.write_text('listen = "127.0.0.1:4433"\n' + AUTH_TOML)
    auth = BackendConfig.load(path).auth
    assert [key.kid for key in auth.keys] == ["hex", "env", "file", "es-1"]
    assert [key.alg for key in auth.keys] == [Algorithm.HS256] * 3 + [Algorithm.ES256]
    assert (auth.issuers, auth.audiences) == ((ISSUER,), (AUDIENCE, "other.example.test"))
    assert (auth.leeway, auth.accept_timeout, auth.effective_required) == (10.0, 2.0, True)
    verifier = TokenVerifier(auth)
    string_secret = SECRET_TEXT.encode()  # env and file give the octets as they are
    for key in (hs256("hex"), hs256("env", string_secret), hs256("file", string_secret)):
        assert verifier.verify(encode_token(claims(), key), NOW).key_id == key.kid
    assert verifier.verify(encode_token(claims(), es256("es-1")), NOW).key_id == "es-1"
    assert SECRET_A.hex() not in repr(auth) and SECRET_TEXT not in repr(auth)
    assert SECRET_TEXT not in repr(verifier)


def test_no_auth_section_means_an_open_backend() -> None:
    auth = BackendConfig.from_mapping({}).auth
    assert auth == AuthConfig() and not auth.effective_required


def test_required_can_be_turned_off_but_not_on_without_keys() -> None:
    key = {"kid": "k", "alg": "HS256", "secret": SECRET_A.hex()}
    assert not AuthConfig.from_mapping({"required": False, "keys": [key]}).effective_required
    with pytest.raises(ConfigurationError, match=r"^auth\.required"):
        AuthConfig.from_mapping({"required": True})


HS = {"kid": "k", "alg": "HS256", "secret": SECRET_A.hex()}
BAD: list[tuple[dict[str, Any], str]] = [
    ({"issuer": 5}, "auth.issuer"),
    ({"audience": ["a", 1]}, "auth.audience"),
    ({"leeway": 301}, "auth.leeway"),
    ({"leeway": -1}, "auth.leeway"),
    ({"leeway": "30"}, "auth.leeway"),
    ({"accept_timeout": 0}, "auth.accept_timeout"),
    ({"accept_timeout": 61}, "auth.accept_timeout"),
    ({"required": "yes"}, "auth.required"),
    ({"colour": "blue"}, "auth.colour"),
    ({"keys": {"kid": "k"}}, "auth.keys"),
    ({"keys": ["k"]}, "auth.keys[0]"),
    ({"keys": [{**HS, "extra": 1}]}, "auth.keys[0].extra"),
    ({"keys": [{**HS, "kid": ""}]}, "auth.keys[0].kid"),
    ({"keys": [{"alg": "HS256", "secret": SECRET_A.hex()}]}, "auth.keys[0].kid"),
    ({"keys": [{**HS, "alg": "RS256"}]}, "auth.keys[0].alg"),
    ({"keys": [{**HS, "alg": "none"}]}, "auth.keys[0].alg"),
    ({"keys": [{**HS, "secret": "abcd"}]}, "auth.keys[0].secret"),
    ({"keys": [{**HS, "secret": 5}]}, "auth.keys[0].secret"),
    ({"keys": [{**HS, "secret": "env:QV_SURELY_UNSET_VARIABLE"}]}, "auth.keys[0].secret"),
    ({"keys": [{**HS, "secret": "file:/nonexistent/secret"}]}, "auth.keys[0].secret"),
    ({"keys": [{**HS, "public_key_file": "x.pem"}]}, "auth.keys[0].public_key_file"),
    ({"keys": [{"kid": "e", "alg": "ES256"}]}, "auth.keys[0].public_key_file"),
    ({"keys": [{"kid": "e", "alg": "ES256", "secret": "00"}]}, "auth.keys[0].secret"),
    ({"keys": [HS, HS]}, "auth.keys"),
    ({"keys": [{**HS, "kid": f"k{i}"} for i in range(17)]}, "auth.keys"),
]


@pytest.mark.parametrize(("table", "named"), BAD, ids=[name for _, name in BAD])
def test_each_mistake_is_named(table: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        BackendConfig.from_mapping({"auth": table})
    assert str(refused.value).startswith(named + ":"), refused.value
    assert SECRET_A.hex() not in str(refused.value)


@pytest.mark.parametrize(
    "content",
    [
        b"not a pem",
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        rsa.generate_private_key(65537, 2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    ],
    ids=["garbage", "a private key", "P-384", "RSA"],
)
def test_a_public_key_file_must_be_a_p256_public_key(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "key.pem").write_bytes(content)
    table = {"keys": [{"kid": "e", "alg": "ES256", "public_key_file": "key.pem"}]}
    with pytest.raises(ConfigurationError) as refused:
        AuthConfig.from_mapping(table, tmp_path)
    assert str(refused.value).startswith("auth.keys[0].public_key_file:")
    for line in content.decode("latin-1").splitlines()[1:-1]:
        assert line not in str(refused.value)


def test_a_malformed_secret_is_not_echoed() -> None:
    almost = SECRET_A.hex()[:-1] + "g"
    with pytest.raises(ConfigurationError) as refused:
        load_secret(almost, "auth.keys[0].secret")
    assert almost[:16] not in str(refused.value)


def test_a_file_secret_loses_one_trailing_newline_only(tmp_path: Path) -> None:
    (tmp_path / "crlf").write_bytes(b"x" * 32 + b"\r\n")
    (tmp_path / "two").write_bytes(b"x" * 32 + b"\n\n")
    assert load_secret("file:crlf", "s", tmp_path) == b"x" * 32
    assert load_secret("file:two", "s", tmp_path) == b"x" * 32 + b"\n"


toml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 400) | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)
auth_tables = st.dictionaries(
    st.sampled_from(["issuer", "audience", "leeway", "required", "accept_timeout", "keys", "x"]),
    toml_values
    | st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "kid": st.text(max_size=5),
                "alg": st.sampled_from(["HS256", "ES256", "none"]),
                "secret": st.sampled_from([SECRET_A.hex(), "env:X", "file:x", "zz"]),
                "public_key_file": st.text(max_size=5),
            },
        ),
        max_size=3,
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(auth_tables)
def test_any_auth_table_is_a_config_or_a_named_error(table: dict[str, Any]) -> None:
    try:
        AuthConfig.from_mapping(table, Path("/nonexistent"), environ={})
    except ConfigurationError as error:
        assert str(error).startswith("auth")


def test_the_example_in_the_module_docstring_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    from quicvoice.auth import config as module

    assert module.__doc__ is not None
    example = module.__doc__.split("::\n", 1)[1].split("\nAn HS256", 1)[0]
    document = tomllib.loads(textwrap.dedent(example))
    monkeypatch.setenv("QUICVOICE_JWT_SECRET", SECRET_TEXT)
    with pytest.raises(ConfigurationError, match="public_key_file: cannot read"):
        AuthConfig.from_mapping(document["auth"], Path("/nonexistent"))
