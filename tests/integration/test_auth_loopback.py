"""Who may call, over real UDP sockets on loopback: every refusal reaches the client with its
code before the close; the accept hook sees the caller and the hello's metadata; a resumed
session keeps its caller although the token it started with has expired."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest

from quicvoice.asyncio.client import connect
from quicvoice.asyncio.config import BackendConfig
from quicvoice.asyncio.server import ServerSession, VoiceServer
from quicvoice.auth import (
    AcceptHook,
    AuthConfig,
    Caller,
    CallRequest,
    Refuse,
    SigningKey,
    issue_token,
)
from quicvoice.auth.refusal import REASONS
from quicvoice.errors import SessionRefusedError
from quicvoice.session.codes import ErrorCode
from quicvoice.session.events import SessionClosed
from quicvoice.session.messages import MAX_TOKEN_LEN, Hello

from .voice_harness import LB_CONFIG, SERVER_ID

pytestmark = pytest.mark.integration

ISSUER = "https://login.example.test/"
AUDIENCE = "voice.example.test"
HS_KEY = SigningKey.hs256(bytes(range(1, 33)), kid="hs-1")
ES_KEY = SigningKey.generate_es256(kid="es-1")
AUTH = AuthConfig(
    keys=(HS_KEY.verification_key(), ES_KEY.verification_key()),
    issuers=(ISSUER,),
    audiences=(AUDIENCE,),
    leeway=5.0,
)


def token(key: SigningKey = HS_KEY, **changes: Any) -> str:
    """A token valid now unless ``changes`` say otherwise (``sub``, ``ttl``, ``now``, ...)."""
    arguments: dict[str, Any] = {
        "subject": "alice",
        "now": time.time(),
        "ttl": 300,
        "issuer": ISSUER,
        "audience": AUDIENCE,
    }
    arguments.update(changes)
    return issue_token(key, **arguments)


class Seen:
    """What the handler and the hook saw."""

    def __init__(self) -> None:
        self.callers: list[Caller | None] = []
        self.requests: list[CallRequest] = []


def recording_handler(seen: Seen) -> Callable[[ServerSession], Any]:
    async def handler(session: ServerSession) -> None:
        seen.callers.append(session.caller)
        subject = session.caller.subject if session.caller is not None else None
        session.send_event("caller", {"sub": subject, "resumed": session.started.resumed})
        # Not ``async for``: on main, iteration repeats SessionClosed without end.
        while not isinstance(await session.receive(), SessionClosed):
            pass

    return handler


@asynccontextmanager
async def auth_server(
    seen: Seen, *, auth: AuthConfig = AUTH, accept: AcceptHook | None = None
) -> AsyncIterator[VoiceServer]:
    config = BackendConfig(
        listen=("127.0.0.1", 0), server_id=SERVER_ID, configs=(LB_CONFIG,), auth=auth
    )
    server = VoiceServer(config, recording_handler(seen), accept=accept)
    await server.start()
    try:
        yield server
    finally:
        await server.aclose()


async def refused_with(
    server: VoiceServer, hello: Hello, *, webtransport: bool = False
) -> SessionRefusedError:
    host, port = server.address
    with pytest.raises(SessionRefusedError) as refused:
        async with connect(
            host, port, verify=False, hello=hello, reconnect=False, webtransport=webtransport
        ):
            pass
    return refused.value


def oversize_hello() -> Hello:
    """A hello whose token is over the limit, as a hostile client would send it."""
    hello = Hello(token="x")
    object.__setattr__(hello, "token", "x" * (MAX_TOKEN_LEN + 1))
    return hello


REFUSALS: list[tuple[str, Callable[[], Hello], ErrorCode]] = [
    ("missing", lambda: Hello(), ErrorCode.UNAUTHENTICATED),
    ("garbled", lambda: Hello(token="not.a.token"), ErrorCode.TOKEN_MALFORMED),
    ("oversize", oversize_hello, ErrorCode.TOKEN_MALFORMED),
    ("expired", lambda: Hello(token=token(now=time.time() - 400)), ErrorCode.TOKEN_EXPIRED),
    (
        "not yet valid",
        lambda: Hello(token=token(not_before=time.time() + 60)),
        ErrorCode.TOKEN_NOT_YET_VALID,
    ),
    (
        "wrong audience",
        lambda: Hello(token=token(audience="other")),
        ErrorCode.TOKEN_WRONG_AUDIENCE,
    ),
    ("wrong issuer", lambda: Hello(token=token(issuer="https://x/")), ErrorCode.TOKEN_WRONG_ISSUER),
    (
        "bad signature",
        lambda: Hello(token=token(SigningKey.hs256(bytes(32), kid="hs-1"))),
        ErrorCode.TOKEN_BAD_SIGNATURE,
    ),
    (
        "unknown key",
        lambda: Hello(token=token(SigningKey.hs256(bytes(32), kid="retired"))),
        ErrorCode.TOKEN_UNKNOWN_KEY,
    ),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("case", "make_hello", "code"), REFUSALS, ids=[r[0] for r in REFUSALS])
async def test_each_refusal_reaches_the_client_with_its_code(
    case: str, make_hello: Callable[[], Hello], code: ErrorCode
) -> None:
    seen = Seen()
    async with auth_server(seen) as server:
        error = await refused_with(server, make_hello())
        assert error.error_code == code, error
        if code is not ErrorCode.TOKEN_MALFORMED or case != "oversize":
            assert error.reason == REASONS[code]
        assert seen.callers == []  # the handler never ran
        assert server.sessions() == []


@pytest.mark.asyncio
@pytest.mark.parametrize("webtransport", [False, True], ids=["raw", "webtransport"])
async def test_a_valid_token_reaches_the_handler_as_the_caller(webtransport: bool) -> None:
    seen = Seen()
    async with auth_server(seen) as server:
        host, port = server.address
        for key in (HS_KEY, ES_KEY):
            hello = Hello(token=token(key, subject=f"user-{key.kid}"))
            async with connect(
                host, port, verify=False, hello=hello, reconnect=False, webtransport=webtransport
            ) as call:
                event = await call.wait_event("caller")
                assert event.data == {"sub": f"user-{key.kid}", "resumed": False}
        assert [c.key_id for c in seen.callers if c is not None] == ["hs-1", "es-1"]
        error = await refused_with(server, Hello(), webtransport=webtransport)
        assert error.error_code == ErrorCode.UNAUTHENTICATED


@pytest.mark.asyncio
async def test_the_accept_hook_sees_caller_and_metadata_and_refuses_with_an_app_code() -> None:
    seen = Seen()

    async def hook(request: CallRequest) -> None:
        seen.requests.append(request)
        await asyncio.sleep(0)  # an async hook, as one asking a database would be
        if request.metadata.get("plan") == "free":
            raise Refuse(code=0x1001, reason="upgrade to call")

    async with auth_server(seen, accept=hook) as server:
        host, port = server.address
        refused = await refused_with(
            server, Hello(token=token(subject="bob"), metadata={"plan": "free", "lang": "fr"})
        )
        assert (refused.error_code, refused.reason) == (0x1001, "upgrade to call")
        hello = Hello(token=token(subject="carol"), metadata={"plan": "pro"})
        async with connect(host, port, verify=False, hello=hello, reconnect=False) as call:
            await call.wait_event("caller")
    first, second = seen.requests
    assert first.caller is not None and first.caller.subject == "bob"
    assert dict(first.metadata) == {"plan": "free", "lang": "fr"}
    assert first.peer_address is not None and first.peer_address[0] == "127.0.0.1"
    assert not first.resumed and first.codec == "L16/16000" and not first.webtransport
    assert second.caller is not None and second.caller.subject == "carol"
    assert [c.subject for c in seen.callers if c is not None] == ["carol"]


def _sync_refusing(request: CallRequest) -> Refuse:
    return Refuse(code=0x1FFF, reason="closed today")


def _sync_false(request: CallRequest) -> bool:
    return False


def _raising(request: CallRequest) -> None:
    raise KeyError("the app's bug")


async def _slow(request: CallRequest) -> None:
    await asyncio.sleep(30)


def _bad_code(request: CallRequest) -> None:
    raise Refuse(code=ErrorCode.TOKEN_EXPIRED, reason="pretending")


HOOKS: list[tuple[str, AcceptHook, int, str]] = [
    ("sync returns Refuse", _sync_refusing, 0x1FFF, "closed today"),
    ("sync returns False", _sync_false, ErrorCode.REFUSED, "refused"),
    ("raises", _raising, ErrorCode.INTERNAL_ERROR, "the accept hook failed"),
    ("too slow", _slow, ErrorCode.INTERNAL_ERROR, "took longer than"),
    ("code outside the app range", _bad_code, ErrorCode.REFUSED, "not REFUSED or in"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("case", "hook", "code", "logged"), HOOKS, ids=[h[0] for h in HOOKS])
async def test_hook_answers_and_failures(
    case: str, hook: AcceptHook, code: int, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    seen = Seen()
    async with auth_server(seen, auth=replace(AUTH, accept_timeout=0.3), accept=hook) as server:
        with caplog.at_level(logging.INFO, logger="quicvoice.server"):
            error = await refused_with(server, Hello(token=token()))
    assert error.error_code == code
    assert logged in caplog.text or logged in error.reason
    if case == "raises":
        assert "KeyError" in caplog.text  # the traceback is logged
    assert seen.callers == []


@pytest.mark.asyncio
async def test_a_resumed_session_keeps_its_caller_after_the_token_expired() -> None:
    seen = Seen()
    requests: list[CallRequest] = []
    async with auth_server(seen, accept=requests.append) as server:
        host, port = server.address
        started = time.time()
        async with connect(
            host, port, verify=False, hello=Hello(token=token(ttl=60)), reconnect=False
        ) as call:
            await call.wait_event("caller")
            assert call.session is not None and call.session.resume_token is not None
            resume_token = call.session.resume_token
        # The client library resends the credential it started with, long expired by now:
        # the resume token authorises the resume and the stored caller comes back.
        expired = token(now=started - 3600, ttl=60)
        for hello_token in (expired, None):
            hello = Hello(resume_token=resume_token, token=hello_token)
            async with connect(host, port, verify=False, hello=hello, reconnect=False) as call:
                event = await call.wait_event("caller")
                assert event.data == {"sub": "alice", "resumed": True}
                assert call.session is not None and call.session.resume_token is not None
                resume_token = call.session.resume_token
        other = Hello(resume_token=resume_token, token=token(subject="mallory"))
        error = await refused_with(server, other)
        assert error.error_code == ErrorCode.RESUME_REFUSED
        forged = Hello(resume_token=resume_token, token=token(SigningKey.hs256(bytes(32))))
        error = await refused_with(server, forged)
        assert error.error_code == ErrorCode.TOKEN_BAD_SIGNATURE
    assert [c.subject for c in seen.callers if c is not None] == ["alice"] * 3
    assert [r.resumed for r in requests] == [False, True, True]  # refusals stop before it
    assert all(r.caller is not None and r.caller.subject == "alice" for r in requests)


@pytest.mark.asyncio
async def test_an_open_backend_warns_loudly_and_lets_anyone_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen = Seen()
    with caplog.at_level(logging.WARNING, logger="quicvoice.server"):
        async with auth_server(seen, auth=AuthConfig()) as server:
            host, port = server.address
            # A token is not even looked at: there is nothing to verify it with.
            async with connect(
                host, port, verify=False, hello=Hello(token="x"), reconnect=False
            ) as call:
                assert (await call.wait_event("caller")).data["sub"] is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("ACCEPTS ANYONE" in r.getMessage() for r in warnings), caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="quicvoice.server"):
        async with auth_server(seen):
            pass
        assert "ACCEPTS ANYONE" not in caplog.text and "required" not in caplog.text
        async with auth_server(seen, auth=replace(AUTH, required=False)):
            pass
        assert "auth.required = false" in caplog.text
