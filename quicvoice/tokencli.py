"""``quicvoice token``: mint a bearer token, make keys, check a token against a backend file.

    quicvoice token issue --alg HS256 --key env:SECRET --kid 2026-11 --sub alice \\
        --aud voice.example.com --iss https://login.example.com/ --ttl 3600
    quicvoice token keygen --alg ES256 [--out PREFIX]   # PEM private + public key
    quicvoice token verify --config backend.toml TOKEN  # the caller, or the refusal code

Errors are ``ConfigurationError`` (the ``quicvoice`` command prints them, exit status 2).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from .auth import Algorithm, CredentialRefused, SigningKey, TokenVerifier, issue_token
from .auth.caller import thaw
from .auth.config import load_secret, read_file
from .errors import ConfigurationError

#: Default lifetime of an issued token, in seconds.
DEFAULT_TTL = 3600.0
#: ``issue_token``'s argument names and the flags that give them.
_FLAGS = {
    "subject": "--sub",
    "issuer": "--iss",
    "audience": "--aud",
    "ttl": "--ttl",
    "not_before": "--not-before",
    "extra": "--claim",
}


def add_token_parser(commands: Any) -> None:
    """Add ``token`` and its subcommands to the ``quicvoice`` command's subparsers."""
    token = commands.add_parser("token", help="issue bearer tokens (JWT) and make their keys")
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")

    issue = actions.add_parser("issue", help="print a signed JWT")
    issue.add_argument("--alg", choices=[a.value for a in Algorithm], default="HS256")
    issue.add_argument(
        "--key",
        required=True,
        help="HS256: the secret (hex digits, env:NAME or file:PATH); ES256: a PEM private key file",
    )
    issue.add_argument("--kid", help="key ID written into the header")
    issue.add_argument("--sub", required=True, help="the caller's identity")
    issue.add_argument("--aud", action="append", help="audience (repeat for several)")
    issue.add_argument("--iss", help="issuer")
    issue.add_argument(
        "--ttl", type=float, default=DEFAULT_TTL, help="lifetime in seconds (default 3600)"
    )
    issue.add_argument("--not-before", type=float, metavar="S", help="valid from S seconds on")
    issue.add_argument(
        "--claim", action="append", metavar="NAME=JSON", help="an extra claim (repeatable)"
    )

    keygen = actions.add_parser("keygen", help="make a signing key")
    keygen.add_argument("--alg", choices=[a.value for a in Algorithm], default="ES256")
    keygen.add_argument(
        "--out",
        metavar="PREFIX",
        help="ES256: write PREFIX.key.pem (mode 0600) and PREFIX.pub.pem instead of printing",
    )

    verify = actions.add_parser("verify", help="check a token as a backend would")
    verify.add_argument("--config", required=True, help="backend TOML file with [auth]")
    verify.add_argument("token", nargs="?", default="-", help="the token ('-': stdin)")


def run_token(args: argparse.Namespace) -> int:
    """Run ``quicvoice token ACTION``; return the exit status."""
    if args.token_command == "issue":
        print(_issue(args))
        return 0
    if args.token_command == "keygen":
        return _keygen(args)
    return _verify(args)


def _issue(args: argparse.Namespace) -> str:
    alg = Algorithm(args.alg)
    try:
        if alg is Algorithm.HS256:
            key = SigningKey.hs256(load_secret(args.key, "--key"), kid=args.kid)
        else:
            path = args.key.removeprefix("file:")
            key = SigningKey.es256_from_pem(read_file(Path(path), "--key"), kid=args.kid)
    except (ValueError, TypeError) as error:
        if isinstance(error, ConfigurationError):
            raise
        raise ConfigurationError(f"--key: {error}") from None
    extra: dict[str, Any] = {}
    for text in args.claim or []:
        name, separator, value = text.partition("=")
        if not separator or not name:
            raise ConfigurationError(f"--claim: {text!r} is not NAME=JSON")
        try:
            extra[name] = json.loads(value)
        except ValueError:
            extra[name] = value  # a bare word is a string claim
    now = time.time()
    try:
        return issue_token(
            key,
            subject=args.sub,
            now=now,
            ttl=args.ttl,
            issuer=args.iss,
            audience=args.aud,
            not_before=None if args.not_before is None else now + args.not_before,
            extra=extra,
        )
    except ValueError as error:
        name, _, message = str(error).partition(": ")
        raise ConfigurationError(f"{_FLAGS.get(name, name)}: {message}") from None


def _keygen(args: argparse.Namespace) -> int:
    if Algorithm(args.alg) is Algorithm.HS256:
        if args.out:
            raise ConfigurationError("--out: only for ES256 (an HS256 secret is printed)")
        print(secrets.token_hex(32))
        return 0
    key = SigningKey.generate_es256()
    if not args.out:
        sys.stdout.write((key.private_key_pem() + key.public_key_pem()).decode("ascii"))
        return 0
    private_path, public_path = Path(f"{args.out}.key.pem"), Path(f"{args.out}.pub.pem")
    try:
        descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as private_file:
            private_file.write(key.private_key_pem())
        public_path.write_bytes(key.public_key_pem())
    except OSError as error:
        raise ConfigurationError(f"--out: {error.filename}: {error.strerror}") from None
    print(json.dumps({"private_key": str(private_path), "public_key": str(public_path)}))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .asyncio.config import BackendConfig

    config = BackendConfig.load(args.config)
    token = sys.stdin.read().strip() if args.token == "-" else args.token
    verifier = TokenVerifier(config.auth)
    if not verifier.enabled:
        raise ConfigurationError(f"{args.config}: no [[auth.keys]]: nothing verifies tokens")
    try:
        caller = verifier.verify(token, time.time())
    except CredentialRefused as refusal:
        print(json.dumps({"refused": refusal.error_code.name, "reason": refusal.reason}))
        return 1
    print(
        json.dumps(
            {
                "subject": caller.subject,
                "issuer": caller.issuer,
                "key_id": caller.key_id,
                "claims": thaw(caller.claims),
            }
        )
    )
    return 0
