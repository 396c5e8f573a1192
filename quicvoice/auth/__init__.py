"""Who may call: bearer tokens (JWT, HS256/ES256) and the accept hook (specs/auth.md).

Sans-I/O: the verifier takes ``now``; the asyncio shell (``quicvoice.asyncio.server``) calls it
and runs the hook.
"""

from __future__ import annotations

from .caller import Caller, decode_caller, encode_caller
from .config import AuthConfig
from .hook import AcceptHook, CallRequest, HookDecision, Refuse, decide
from .issue import issue_token
from .jws import encode_token
from .keys import Algorithm, SigningKey, VerificationKey
from .refusal import CredentialRefused
from .verifier import TokenVerifier

__all__ = [
    "AcceptHook",
    "Algorithm",
    "AuthConfig",
    "CallRequest",
    "Caller",
    "CredentialRefused",
    "HookDecision",
    "Refuse",
    "SigningKey",
    "TokenVerifier",
    "VerificationKey",
    "decide",
    "decode_caller",
    "encode_caller",
    "encode_token",
    "issue_token",
]
