"""``quicvoice token``: what ``issue`` prints verifies; keys from ``keygen``; clear errors."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quicvoice.auth import AuthConfig, TokenVerifier, VerificationKey
from quicvoice.cli import main

SECRET = bytes(range(100, 132))


def quicvoice(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command in a real process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "quicvoice.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.integration
def test_es256_keygen_issue_verify(tmp_path: Path) -> None:
    prefix = tmp_path / "jwt"
    made = quicvoice("token", "keygen", "--alg", "ES256", "--out", str(prefix))
    assert made.returncode == 0, made.stderr
    paths = json.loads(made.stdout)
    private, public = Path(paths["private_key"]), Path(paths["public_key"])
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    issued = quicvoice(
        "token", "issue", "--alg", "ES256", "--key", str(private), "--kid", "es-1",
        "--sub", "alice", "--aud", "voice.example.test", "--iss", "https://login.test/",
        "--ttl", "120", "--claim", "plan=pro", "--claim", 'roles=["agent"]',
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    verifier = TokenVerifier(
        AuthConfig(
            keys=(VerificationKey.es256_from_pem(public.read_bytes(), kid="es-1"),),
            issuers=("https://login.test/",),
            audiences=("voice.example.test",),
        )
    )
    caller = verifier.verify(token, time.time())
    assert (caller.subject, caller.key_id) == ("alice", "es-1")
    assert (caller.claims["plan"], caller.claims["roles"]) == ("pro", ("agent",))
    assert caller.claims["exp"] - caller.claims["iat"] == 120
    # The same check from the command line, against a backend file.
    config = tmp_path / "backend.toml"
    config.write_text(
        '[auth]\naudience = "voice.example.test"\n'
        f'[[auth.keys]]\nkid = "es-1"\nalg = "ES256"\npublic_key_file = "{public.name}"\n'
    )
    checked = quicvoice("token", "verify", "--config", str(config), token)
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["subject"] == "alice"


@pytest.mark.integration
def test_hs256_from_the_environment_and_verify_refusals(tmp_path: Path) -> None:
    env = {"QV_SECRET": SECRET.hex()}  # the variable's text is the secret, as issuers use it
    issued = quicvoice("token", "issue", "--key", "env:QV_SECRET", "--sub", "bob", env=env)
    assert issued.returncode == 0, issued.stderr
    config = tmp_path / "backend.toml"
    config.write_text('[[auth.keys]]\nkid = "k"\nalg = "HS256"\nsecret = "env:QV_SECRET"\n')
    token = issued.stdout.strip()
    checked = quicvoice("token", "verify", "--config", str(config), token, env=env)
    assert checked.returncode == 0 and json.loads(checked.stdout)["key_id"] == "k"
    early = quicvoice(
        "token", "issue", "--key", "env:QV_SECRET", "--sub", "bob", "--not-before", "600",
        env=env,
    )  # fmt: skip
    refused = quicvoice("token", "verify", "--config", str(config), early.stdout.strip(), env=env)
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["refused"] == "TOKEN_NOT_YET_VALID"


def test_hs256_keygen_prints_a_usable_secret(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "keygen", "--alg", "HS256"]) == 0
    secret = capsys.readouterr().out.strip()
    assert len(bytes.fromhex(secret)) == 32
    assert main(["token", "issue", "--key", secret, "--sub", "x"]) == 0
    assert capsys.readouterr().out.count(".") == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--key", "nothex", "--sub", "a"], "--key: not hex digits"),
        (["--key", "abcd", "--sub", "a"], "--key: an HS256 secret must be at least 32 octets"),
        (["--key", "env:QV_SURELY_UNSET", "--sub", "a"], "QV_SURELY_UNSET is not set"),
        (["--alg", "ES256", "--key", "/nonexistent/k.pem", "--sub", "a"], "--key: cannot read"),
        (["--key", SECRET.hex(), "--sub", ""], "--sub: must be 1 to 256 characters"),
        (["--key", SECRET.hex(), "--sub", "a", "--ttl", "-5"], "--ttl: must be 0 < seconds"),
        (["--key", SECRET.hex(), "--sub", "a", "--ttl", "nan"], "--ttl: must be 0 < seconds"),
        (["--key", SECRET.hex(), "--sub", "a", "--claim", "exp=1"], "--claim: claim 'exp'"),
        (["--key", SECRET.hex(), "--sub", "a", "--claim", "novalue"], "--claim: 'novalue'"),
        (["--key", SECRET.hex(), "--sub", "a", "--kid", ""], "--key: kid must be 1 to 128"),
        (["--key", SECRET.hex(), "--sub", "a", "--alg", "none"], "invalid choice: 'none'"),
        (["--key", SECRET.hex()], "the following arguments are required: --sub"),
    ],
)
def test_bad_issue_arguments(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        status = main(["token", "issue", *argv])
    except SystemExit as exit_:  # argparse's own errors exit from the parser
        status = int(exit_.code or 0)
    assert status == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err and captured.err.count("\n") == 1, captured.err
    assert SECRET.hex() not in captured.err


def test_an_es256_key_file_that_is_not_a_private_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "keygen", "--out", str(tmp_path / "k")]) == 0
    capsys.readouterr()
    public = str(tmp_path / "k.pub.pem")
    assert main(["token", "issue", "--alg", "ES256", "--key", public, "--sub", "a"]) == 2
    assert "--key:" in capsys.readouterr().err
    assert main(["token", "keygen", "--out", str(tmp_path / "k")]) == 2  # never overwrites
    assert "k.key.pem: File exists" in capsys.readouterr().err
