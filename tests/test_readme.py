"""The README's examples run: its agent behind ``quicvoice serve --app`` with tokens required,
and its client, by URL with a token and a CA, speaking 16 kHz PCM."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .pki import make_ca, make_leaf

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
KEY = "readme-test-secret-of-more-than-32-octets"


def example(name: str) -> str:
    """The Python block that follows ``<!-- readme-example: name -->`` in the README."""
    found = re.search(rf"<!-- readme-example: {name} -->\n```python\n(.*?)```", README, re.S)
    assert found, f"the README has no example {name!r}"
    return found.group(1)


def test_the_readme_agent_is_the_example_file() -> None:
    assert example("agent") == (ROOT / "examples" / "my_agent.py").read_text()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def quicvoice(*argv: str) -> list[str]:
    return [sys.executable, "-m", "quicvoice.cli", *argv]


def test_the_readme_agent_and_client_talk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = make_ca()
    ca.write(tmp_path, "ca")  # ca.pem, as the client example names it
    certificate, private_key = make_leaf(ca).write(tmp_path, "leaf")
    port = free_port()
    config = tmp_path / "backend.toml"
    config.write_text(
        f'listen = "127.0.0.1:{port}"\n'
        f'certificate = "{certificate}"\nprivate_key = "{private_key}"\n'
        '[auth]\naudience = "voice"\n'
        '[[auth.keys]]\nkid = "k1"\nalg = "HS256"\nsecret = "env:VOICE_KEY"\n'
    )
    environment = {**os.environ, "VOICE_KEY": KEY.encode().hex()}
    token = subprocess.run(
        quicvoice("token", "issue", "--key", "env:VOICE_KEY", "--kid", "k1", "--sub", "alice",
                  "--aud", "voice"),
        capture_output=True, text=True, check=True, env=environment, timeout=30,
    ).stdout.strip()
    server = subprocess.Popen(
        quicvoice("serve", "--app", "examples.my_agent:app", "--config", str(config)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=environment,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line, server.stderr.read() if server.stderr else ""
        assert json.loads(line)["app"] == "examples.my_agent:app"
        namespace: dict[str, Any] = {}
        exec(compile(example("client"), "README.md:client", "exec"), namespace)
        t = np.arange(16000) / 16000
        tone = np.rint(8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
        microphone = [tone[start : start + 1000] for start in range(0, len(tone), 1000)]
        monkeypatch.chdir(tmp_path)
        heard = asyncio.run(
            asyncio.wait_for(namespace["talk"](f"quic://localhost:{port}", token, microphone), 30)
        )
    finally:
        os.kill(server.pid, signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait(5)
    assert heard["caller"] == "alice"
    assert heard["seconds"] == pytest.approx(1.0, abs=0.05)
