"""The accept hook's answers: what each means, and how the runner bounds and contains a hook."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from quicvoice.asyncio.accept import run_accept_hook
from quicvoice.auth import Caller, CallRequest, Refuse, decide
from quicvoice.auth.hook import MAX_REASON_LEN
from quicvoice.session.codes import ErrorCode

REQUEST = CallRequest(
    caller=Caller(subject="alice", issuer=None),
    metadata={"plan": "pro"},
    peer_address=("127.0.0.1", 5000),
    session_id="0123456789abcdef",
    codec="L16/16000",
)


@pytest.mark.parametrize(
    ("answer", "code", "reason", "problem"),
    [
        (None, None, "", False),
        (True, None, "", False),
        (False, ErrorCode.REFUSED, "refused", False),
        (Refuse(), ErrorCode.REFUSED, "refused", False),
        (Refuse(code=0x1000, reason="a"), 0x1000, "a", False),
        (Refuse(code=0x1FFF, reason="b"), 0x1FFF, "b", False),
        (Refuse(code=0x2000, reason="c"), ErrorCode.REFUSED, "c", True),
        (Refuse(code=ErrorCode.TOKEN_EXPIRED), ErrorCode.REFUSED, "refused", True),
        (Refuse(code=0, reason="d"), ErrorCode.REFUSED, "d", True),
        (Refuse(reason="r" * 1000), ErrorCode.REFUSED, "r" * MAX_REASON_LEN, False),
        ("yes", ErrorCode.INTERNAL_ERROR, "the server application failed", True),
        (1, ErrorCode.INTERNAL_ERROR, "the server application failed", True),
    ],
)
def test_decide(answer: object, code: int | None, reason: str, problem: bool) -> None:
    decision = decide(answer)
    assert (decision.refusal_code, decision.reason) == (code, reason)
    assert decision.accepted is (code is None)
    assert bool(decision.problem) is problem


def test_the_request_is_read_only() -> None:
    with pytest.raises(TypeError):
        REQUEST.metadata["plan"] = "free"  # type: ignore[index]
    with pytest.raises(AttributeError):
        REQUEST.resumed = True  # type: ignore[misc]


async def _async_refuse(request: CallRequest) -> Refuse:
    await asyncio.sleep(0)
    return Refuse(code=0x1234, reason="async no")


async def _async_raise(request: CallRequest) -> None:
    await asyncio.sleep(0)
    raise Refuse(code=0x1235, reason="raised no")


async def _async_accept(request: CallRequest) -> bool:
    await asyncio.sleep(0)
    return request.metadata["plan"] == "pro"


async def _async_bug(request: CallRequest) -> None:
    await asyncio.sleep(0)
    raise ZeroDivisionError("bug in the hook")


async def _async_hang(request: CallRequest) -> None:
    await asyncio.Event().wait()


def _sync_bug(request: CallRequest) -> None:
    raise RuntimeError("sync bug")


def _sync_bad_code(request: CallRequest) -> Refuse:
    return Refuse(code=0x10A, reason="pretend")


HOOKS: list[tuple[str, Any, int | None, str]] = [
    ("sync accepts", lambda request: None, None, ""),
    ("sync refuses by raising", lambda request: (_ for _ in ()).throw(Refuse()), 0x112, ""),
    ("async returns Refuse", _async_refuse, 0x1234, ""),
    ("async raises Refuse", _async_raise, 0x1235, ""),
    ("async accepts", _async_accept, None, ""),
    ("async fails", _async_bug, ErrorCode.INTERNAL_ERROR, "ZeroDivisionError"),
    ("sync fails", _sync_bug, ErrorCode.INTERNAL_ERROR, "RuntimeError: sync bug"),
    ("hangs", _async_hang, ErrorCode.INTERNAL_ERROR, "took longer than 0.1 s"),
    ("bad code", _sync_bad_code, ErrorCode.REFUSED, "not REFUSED or in 0x1000..0x1FFF"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("case", "hook", "code", "logged"), HOOKS, ids=[h[0] for h in HOOKS])
async def test_run_accept_hook(
    case: str, hook: Any, code: int | None, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="quicvoice.server"):
        decision = await asyncio.wait_for(run_accept_hook(hook, REQUEST, 0.1), 5)
    assert decision.refusal_code == code
    if logged:
        assert logged in caplog.text
        assert REQUEST.session_id in caplog.text
    else:
        assert not caplog.records
