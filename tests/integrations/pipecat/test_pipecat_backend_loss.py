"""The example bot survives the loss of its backend: SIGKILL, resume on another, same talk.

Real processes: redis-server, the forwarder, and two ``quicvoice serve --app
examples.pipecat_bot:app`` backends sharing Redis. The caller speaks twice on backend A,
A is killed, the call resumes on B, and B's pipeline (started from the checkpoint, no
greeting) remembers both earlier utterances in its next reply.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from examples.pipecat_bot import GREETING
from quicvoice.asyncio.client import connect

from ...conftest import RedisServer
from ...integration.deployment import Deployment
from .caller import SILENCE, Caller

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
A, B = "0a000001", "0a000002"
APP = "examples.pipecat_bot:app"


@contextmanager
def backend(config: Path, server_id: str) -> Iterator[subprocess.Popen[str]]:
    """``quicvoice serve`` running the example bot, until it exits or is killed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "quicvoice.cli", "serve", "--config", str(config),
         "--server-id", server_id, "--app", APP],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, f"backend {server_id} did not start"
        assert json.loads(line)["app"] == APP
        yield process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)


@pytest.mark.asyncio
async def test_the_bot_on_another_backend_continues_the_conversation(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    deployment = Deployment(
        tmp_path, server_ids=[A, B], session_store=redis_server.unique_url(), down={B}
    )
    deployment.start_forwarder()
    try:
        with ExitStack() as stack:
            first = stack.enter_context(backend(deployment.path, A))
            stack.enter_context(backend(deployment.path, B))
            async with connect(*deployment.vip, verify=False, liveness_timeout=0.5) as call:
                assert call.session is not None and call.session.server_id == A
                caller = Caller(call)
                try:
                    assert await caller.wait_said(1) == GREETING
                    await caller.quiet()
                    await caller.speak(0.6)
                    assert await caller.wait_said(2) == "you said utterance 1"
                    await caller.quiet()
                    await caller.speak(0.6)
                    said = await caller.wait_said(3)
                    assert said == "you said utterance 2; before that: utterance 1"
                    await caller.quiet()

                    os.kill(first.pid, signal.SIGKILL)  # backend A dies, telling nobody
                    first.wait(5)
                    deployment.write(down={A})  # the orchestrator notices
                    deployment.reload()
                    # The caller keeps talking (silence): it notices and resumes on B.
                    while not caller.resumed:
                        await caller.send([SILENCE] * 5)
                        assert len(caller.said) == 3
                    assert caller.resumed[0].server_id == B

                    await caller.speak(0.6)
                    said = await caller.wait_said(4, timeout=15)
                    assert said == "you said utterance 3; before that: utterance 1, utterance 2"
                    assert caller.said.count(GREETING) == 1  # B did not greet again
                finally:
                    caller.close()
    finally:
        deployment.stop()
