"""Running an application's accept hook: sync or async, bounded in time, never raising.

The pure reading of the answer is ``quicvoice.auth.hook.decide``; this module adds what needs
the event loop: awaiting a coroutine under a timeout and catching what the hook raises.
A sync hook runs inline on the event loop, so it must not block (make it ``async def`` when it
does I/O).
"""

from __future__ import annotations

import asyncio
import inspect
import logging

from ..auth.hook import AcceptHook, CallRequest, HookDecision, Refuse, decide
from ..session.codes import ErrorCode

logger = logging.getLogger("quicvoice.server")

FAILED = HookDecision(refusal_code=ErrorCode.INTERNAL_ERROR, reason="the server application failed")
TIMED_OUT = HookDecision(
    refusal_code=ErrorCode.INTERNAL_ERROR, reason="the server application did not answer in time"
)


async def run_accept_hook(hook: AcceptHook, request: CallRequest, timeout: float) -> HookDecision:
    """Call ``hook(request)`` and read its answer; refusals and failures are decisions too."""
    try:
        answer: object = hook(request)
        if inspect.isawaitable(answer):
            answer = await asyncio.wait_for(answer, timeout)
    except Refuse as refusal:
        answer = refusal
    except TimeoutError:
        logger.warning(
            "session %s: the accept hook took longer than %.1f s: refused",
            request.session_id,
            timeout,
        )
        return TIMED_OUT
    except Exception:
        logger.exception("session %s: the accept hook failed: refused", request.session_id)
        return FAILED
    decision = decide(answer)
    if decision.problem:
        logger.error("session %s: %s", request.session_id, decision.problem)
    return decision
