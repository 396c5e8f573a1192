"""No token, token part, signing secret or private key reaches a log line, a refusal sent to
the client, or the ``repr`` of the objects that hold them.

A backend with HS256 and ES256 keys logs at DEBUG (every logger, aioquic's included) while
calls present valid, expired, forged, garbled and oversize tokens, an accept hook refuses one,
and a session resumes with its old token.
"""

from __future__ import annotations

import base64
import logging
import time

import pytest

from quicvoice.asyncio.client import connect
from quicvoice.asyncio.config import BackendConfig
from quicvoice.asyncio.server import ServerSession, VoiceServer
from quicvoice.auth import AuthConfig, CallRequest, Refuse, SigningKey, issue_token
from quicvoice.errors import SessionRefusedError
from quicvoice.session.events import SessionClosed
from quicvoice.session.messages import MAX_TOKEN_LEN, Hello

pytestmark = pytest.mark.integration
HS_SECRET = bytes(range(150, 182))
HS = SigningKey.hs256(HS_SECRET, kid="hs")
ES = SigningKey.generate_es256(kid="es")
AUDIENCE = "voice.example.test"


def _forms(secret: bytes) -> list[str]:
    forms = [secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode()]
    forms += [base64.urlsafe_b64encode(secret).decode().rstrip("="), repr(secret)[2:-1]]
    return [form for form in forms if len(form) >= 16]


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()} {record.args!r}")
        if record.exc_info:
            self.lines.append(logging.Formatter().formatException(record.exc_info))


async def _handler(session: ServerSession) -> None:
    session.send_event("hi", {"sub": session.caller.subject if session.caller else None})
    while not isinstance(await session.receive(), SessionClosed):
        pass


def _hook(request: CallRequest) -> None:
    if request.metadata.get("deny"):
        raise Refuse(code=0x1001, reason="denied")


@pytest.mark.asyncio
async def test_tokens_and_keys_stay_out_of_logs_and_refusals() -> None:
    now = time.time()
    tokens = {
        "valid": issue_token(HS, subject="alice-7f3a", now=now, ttl=60, audience=AUDIENCE),
        "es": issue_token(ES, subject="erin-7f3a", now=now, ttl=60, audience=AUDIENCE),
        "expired": issue_token(HS, subject="old-7f3a", now=now - 999, ttl=60, audience=AUDIENCE),
        "forged": issue_token(
            SigningKey.hs256(bytes(32), kid="hs"), subject="eve-7f3a", now=now, ttl=60
        ),
        "garbled": "eyJhbGciOiJIUzI1NiJ9.Z2FyYmFnZS1nYXJiYWdlLTdmM2E.c2lnbmF0dXJlLTdmM2E",
        "oversize": "Q" * (MAX_TOKEN_LEN + 1),
    }
    auth = AuthConfig(keys=(HS.verification_key(), ES.verification_key()), audiences=(AUDIENCE,))
    config = BackendConfig(listen=("127.0.0.1", 0), auth=auth)
    capture = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    sent_reasons: list[str] = []
    server = VoiceServer(config, _handler, accept=_hook)
    try:
        await server.start()
        host, port = server.address
        for name, text in tokens.items():
            hello = Hello(token="x", metadata={"deny": "1"} if name == "es" else {})
            object.__setattr__(hello, "token", text)  # the oversize one bypasses local checks
            try:
                async with connect(host, port, verify=False, hello=hello, reconnect=False) as call:
                    await call.wait_event("hi")
                    assert call.session is not None and call.session.resume_token is not None
                    resume = Hello(resume_token=call.session.resume_token, token=text)
                    async with connect(host, port, verify=False, hello=resume, reconnect=False):
                        pass
            except SessionRefusedError as refused:
                sent_reasons.append(f"{refused} {refused.reason}")
        assert len(sent_reasons) == 5  # every one but "valid" was refused
        held = repr(server.credentials) + repr(server.config) + repr(auth) + repr(HS) + repr(ES)
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)
        await server.aclose()
    assert capture.lines, "nothing was logged: the capture is broken"
    needles = [("HS256 secret", form) for form in _forms(HS_SECRET)]
    private = ES.private_key_pem().decode()
    needles += [("ES256 private key", line) for line in private.splitlines()[1:-1]]
    scalar = ES.private_key.private_numbers().private_value.to_bytes(32, "big")  # type: ignore[union-attr]
    needles += [("ES256 scalar", form) for form in _forms(scalar)]
    for name, text in tokens.items():
        needles += [(f"{name} token", part) for part in text.split(".") if len(part) >= 16]
        needles.append((f"{name} subject", name + "-7f3a"))
    needles.append(("a token's payload", "7f3a"))
    for where, text in [
        ("the backend's logs", "\n".join(capture.lines)),
        ("the refusals sent to clients", "\n".join(sent_reasons)),
        ("repr of configuration and keys", held),
    ]:
        for what, needle in needles:
            assert needle not in text, f"{what} found in {where}"
