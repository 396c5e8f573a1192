"""Why a credential was refused: the ``CredentialRefused`` error and its fixed reason texts.

A reason is sent to the client in the ``error`` message and may be logged, so it is one of the
fixed phrases below and never echoes anything taken from the token (RFC 8725 §3.11 style
hygiene: a refusal tells which check failed, not what the token held).
"""

from __future__ import annotations

from ..errors import QuicVoiceError
from ..session.codes import ErrorCode

#: The reason sent with each refusal code of a credential.
REASONS: dict[ErrorCode, str] = {
    ErrorCode.UNAUTHENTICATED: "a credential is required",
    ErrorCode.TOKEN_MALFORMED: "the credential is not a well-formed token",
    ErrorCode.TOKEN_EXPIRED: "the token has expired",
    ErrorCode.TOKEN_NOT_YET_VALID: "the token is not valid yet",
    ErrorCode.TOKEN_WRONG_AUDIENCE: "the token is not meant for this service",
    ErrorCode.TOKEN_WRONG_ISSUER: "the token's issuer is not trusted",
    ErrorCode.TOKEN_BAD_SIGNATURE: "the token's signature does not verify",
    ErrorCode.TOKEN_UNKNOWN_KEY: "the token's key or algorithm is not accepted",
    ErrorCode.RESUME_REFUSED: "the credential names another caller than the session's",
}


class CredentialRefused(QuicVoiceError):
    """A caller's credential was refused; the session is refused with ``error_code``.

    ``detail`` says more for the server's own debugging (never token contents either); the
    client gets only ``reason``.
    """

    def __init__(self, error_code: ErrorCode, detail: str = "") -> None:
        reason = REASONS[error_code]
        super().__init__(f"{reason} ({error_code.name}{': ' + detail if detail else ''})")
        #: The voice protocol's code for the refusal.
        self.error_code = error_code
        #: The fixed phrase sent to the client.
        self.reason = reason
        #: What exactly failed, for the server's logs.
        self.detail = detail
