"""``quicvoice serve`` with ``[auth]`` in its file, as a real process: a call without a token
is refused with UNAUTHENTICATED, one with a token from ``quicvoice token issue`` gets in; without
``[auth]`` the process warns at start that it accepts anyone."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from quicvoice.asyncio.client import connect
from quicvoice.errors import SessionRefusedError
from quicvoice.session.codes import ErrorCode
from quicvoice.session.messages import Hello

pytestmark = pytest.mark.integration
SECRET = "serve-test-secret-of-more-than-32-octets"
AUTH = """
[auth]
audience = "voice.test"
[[auth.keys]]
kid = "k1"
alg = "HS256"
secret = "env:QV_SERVE_TEST_SECRET"
"""


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def listen_line() -> str:
    return f'listen = "127.0.0.1:{free_udp_port()}"\n'


@contextmanager
def serving(config: Path) -> Iterator[tuple[tuple[str, int], subprocess.Popen[str]]]:
    """``quicvoice serve`` on a free port; yields its address and the process."""
    env = {**os.environ, "QV_SERVE_TEST_SECRET": SECRET}
    process = subprocess.Popen(
        [sys.executable, "-m", "quicvoice.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the first line says where it listens
        assert line, process.stderr.read() if process.stderr else "no output"
        host, _, port = json.loads(line)["listening"].rpartition(":")
        yield (host, int(port)), process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)


def issue(*argv: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "quicvoice.cli", "token", "issue", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "QV_SERVE_TEST_SECRET": SECRET},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


async def _call(address: tuple[str, int], hello: Hello) -> None:
    async with connect(*address, verify=False, hello=hello, reconnect=False) as call:
        assert call.session is not None


def test_serve_with_auth_requires_a_token(tmp_path: Path) -> None:
    config = tmp_path / "backend.toml"
    config.write_text(listen_line() + AUTH)
    token = issue(
        "--key", "env:QV_SERVE_TEST_SECRET", "--kid", "k1", "--sub", "a", "--aud", "voice.test"
    )
    with serving(config) as (address, process):
        with pytest.raises(SessionRefusedError) as refused:
            asyncio.run(_call(address, Hello()))
        assert refused.value.error_code == ErrorCode.UNAUTHENTICATED
        asyncio.run(_call(address, Hello(token=token)))
        os.kill(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert "ACCEPTS ANYONE" not in stderr
    assert "session refused from 127.0.0.1:" in stderr and "UNAUTHENTICATED" in stderr
    assert token.split(".")[2] not in stderr and SECRET not in stderr


def test_serve_without_auth_warns_that_it_accepts_anyone(tmp_path: Path) -> None:
    config = tmp_path / "backend.toml"
    config.write_text(listen_line())
    with serving(config) as (address, process):
        asyncio.run(_call(address, Hello()))
        os.kill(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert "WARNING" in stderr and "ACCEPTS ANYONE" in stderr


def test_serve_names_a_bad_auth_key(tmp_path: Path) -> None:
    config = tmp_path / "backend.toml"
    config.write_text(listen_line() + AUTH.replace('"HS256"', '"none"'))
    result = subprocess.run(
        [sys.executable, "-m", "quicvoice.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("quicvoice serve: auth.keys[0].alg:")
    assert "Traceback" not in result.stderr
