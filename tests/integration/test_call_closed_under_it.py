"""``quicvoice call`` whose call is closed under it: a one-line error, the JSON report, exit 1.

A real ``quicvoice call`` process against a real backend on loopback (in the test's event
loop) whose handler ends the session mid-call, or that shuts down mid-call.
"""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from quicvoice.asyncio.config import BackendConfig
from quicvoice.asyncio.server import ServerSession, VoiceServer
from quicvoice.session.codes import ErrorCode
from quicvoice.session.events import AudioReceived

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

FRAMES_BEFORE_CLOSE = 10


async def quicvoice_call(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "quicvoice.cli",
        "call",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def assert_clean_failure(code: int, out: str, err: str) -> dict[str, object]:
    assert code == 1, (out, err)
    assert "Traceback" not in err and "Error:" not in err.replace("quicvoice call:", ""), err
    lines = [line for line in err.splitlines() if line and "not verified" not in line]
    assert len(lines) == 1 and lines[0].startswith("quicvoice call: "), err
    report = json.loads(out)
    assert isinstance(report, dict)
    return report


@pytest.mark.asyncio
@pytest.mark.parametrize("webtransport", [False, True], ids=["raw", "webtransport"])
async def test_a_call_the_server_ends_mid_stream(webtransport: bool) -> None:
    async def handler(session: ServerSession) -> None:
        frames = 0
        async for event in session:
            if isinstance(event, AudioReceived):
                frames += 1
                if frames == FRAMES_BEFORE_CLOSE:
                    session.close(ErrorCode.LIMIT_EXCEEDED, "the backend is draining")

    server = VoiceServer(BackendConfig(listen=("127.0.0.1", 0)), handler)
    await server.start()
    try:
        host, port = server.address
        code, out, err = await quicvoice_call(
            f"{host}:{port}",
            *(["--webtransport"] if webtransport else []),
            "--seconds",
            "2",
            "--json",
        )
    finally:
        await server.aclose()
    report = assert_clean_failure(code, out, err)
    assert "the backend is draining" in err and "LIMIT_EXCEEDED" in err, err
    assert report["closed"] == {
        "code": int(ErrorCode.LIMIT_EXCEEDED),
        "name": "LIMIT_EXCEEDED",
        "reason": "the backend is draining",
    }
    assert report["server_id"] == server.config.server_id.hex()
    sent = report["uplink_frames_sent"]
    assert isinstance(sent, int) and FRAMES_BEFORE_CLOSE <= sent < 100
    assert report["uplink_frames_delivered"] is None  # no bye came back


@pytest.mark.asyncio
async def test_a_call_whose_backend_shuts_down_mid_stream() -> None:
    started = asyncio.Event()

    async def handler(session: ServerSession) -> None:
        async for event in session:
            if isinstance(event, AudioReceived):
                started.set()

    server = VoiceServer(BackendConfig(listen=("127.0.0.1", 0)), handler)
    await server.start()
    host, port = server.address
    call = asyncio.create_task(quicvoice_call(f"{host}:{port}", "--seconds", "3", "--json"))
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.sleep(0.3)  # mid-stream: the call streams for 3 s
    await server.aclose()
    code, out, err = await call
    report = assert_clean_failure(code, out, err)
    closed = report["closed"]
    assert isinstance(closed, dict) and closed["reason"] == "server shutdown", report
    assert "server shutdown" in err
