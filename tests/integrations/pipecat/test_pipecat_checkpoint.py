"""The conversation checkpoint in a real session: over the store's 256 KiB a clear error by
default, or a documented strategy (trim the oldest messages, or an offload hook); never a
silent truncation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import pytest
from pipecat.processors.aggregators.llm_context import LLMContext, LLMSpecificMessage

import quicvoice
from quicvoice.app import session_handler
from quicvoice.asyncio.client import connect
from quicvoice.integrations.pipecat import STATE_KEY, ContextCheckpoint, ContextTooLargeError
from quicvoice.store import MAX_STATE_LEN

from ...integration.voice_harness import running_server

pytestmark = pytest.mark.integration

SYSTEM = {"role": "system", "content": "be brief"}


def conversation(turns: int, size: int) -> list[Any]:
    messages: list[Any] = [SYSTEM]
    for n in range(turns):
        messages.append({"role": "user", "content": f"{n}:" + "u" * size})
        messages.append({"role": "assistant", "content": f"{n}:" + "a" * size})
    return messages


async def in_a_session(check: Callable[[quicvoice.Session], Awaitable[None]]) -> None:
    """Run ``check`` in the handler of a real call; re-raise what it raised."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    release = asyncio.Event()

    async def handler(session: quicvoice.Session) -> None:
        try:
            await check(session)
        except BaseException as error:
            done.set_exception(error)
        else:
            done.set_result(None)
        await release.wait()  # the call stays up until the test has its answer

    async with running_server(session_handler(quicvoice.App(handler))) as server:
        async with connect(*server.address, verify=False):
            try:
                await asyncio.wait_for(asyncio.shield(done), 20)
            finally:
                release.set()


@pytest.mark.asyncio
async def test_a_conversation_over_the_limit_is_an_error_and_the_last_checkpoint_stays() -> None:
    async def check(session: quicvoice.Session) -> None:
        context = LLMContext(conversation(2, 100))
        checkpoint = ContextCheckpoint(session, context, app_state={"cart": ["tea"]})
        assert checkpoint.save() < MAX_STATE_LEN
        saved = session.state[STATE_KEY]
        assert len(saved["messages"]) == 5 and saved["app"] == {"cart": ["tea"]}
        context.add_messages(conversation(100, 3000)[1:])  # about 600 KB
        with pytest.raises(ContextTooLargeError, match="over the session store's 262144") as e:
            checkpoint.save()
        assert "over_limit='trim'" in str(e.value)
        assert session.state[STATE_KEY] is saved  # untouched: the store keeps the last one
        assert checkpoint.trimmed_messages == 0

    await in_a_session(check)


@pytest.mark.asyncio
async def test_trim_keeps_the_first_messages_and_the_newest_that_fit() -> None:
    async def check(session: quicvoice.Session) -> None:
        messages = conversation(150, 2000)
        # A tool result right where the cut falls must not open the stored list alone.
        messages.insert(3, {"role": "tool", "tool_call_id": "x", "content": "r"})
        messages.append(LLMSpecificMessage(llm="google", message={"parts": ["hi"]}))
        context = LLMContext(messages)
        checkpoint = ContextCheckpoint(session, context, over_limit="trim", keep_first=1)
        size = checkpoint.save()
        assert size <= MAX_STATE_LEN
        assert len(msgpack.packb(session.state, use_bin_type=True)) <= MAX_STATE_LEN
        stored = session.state[STATE_KEY]["messages"]
        assert stored[0] == SYSTEM and stored[1]["role"] != "tool"
        assert stored[-1] == {"__llm_specific__": "google", "message": {"parts": ["hi"]}}
        dropped = len(messages) - len(stored)
        assert dropped > 0 and session.state[STATE_KEY]["trimmed"] == dropped
        assert checkpoint.trimmed_messages == dropped
        assert stored[1:-1] == messages[-len(stored) + 1 : -1]  # the newest, in order
        assert len(context.get_messages()) == len(messages)  # the live context is whole

    await in_a_session(check)


@pytest.mark.asyncio
async def test_an_offload_hook_decides_what_is_kept() -> None:
    offloaded: list[Any] = []

    def offload(messages: list[Any], limit: int) -> list[Any]:
        offloaded.extend(messages[1:-2])
        summary = {"role": "system", "content": f"{len(messages) - 3} earlier messages offloaded"}
        return [messages[0], summary, *messages[-2:]]

    async def check(session: quicvoice.Session) -> None:
        context = LLMContext(conversation(100, 3000))
        ContextCheckpoint(session, context, over_limit=offload).save()
        stored = session.state[STATE_KEY]["messages"]
        assert [m["role"] for m in stored] == ["system", "system", "user", "assistant"]
        assert len(offloaded) == 198

    await in_a_session(check)

    async def greedy(session: quicvoice.Session) -> None:
        context = LLMContext(conversation(100, 3000))
        checkpoint = ContextCheckpoint(session, context, over_limit=lambda m, limit: m)
        with pytest.raises(ContextTooLargeError, match="after the offload hook"):
            checkpoint.save()

    await in_a_session(greedy)


def test_a_bad_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="over_limit"):
        ContextCheckpoint(None, LLMContext(), over_limit="shrink")  # type: ignore[arg-type]
