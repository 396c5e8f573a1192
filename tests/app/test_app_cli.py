"""``quicvoice serve --app`` as a real process: an app of the tests' own, and bad import strings."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from quicvoice.app import App, load_app
from quicvoice.asyncio.client import connect
from quicvoice.asyncio.config import BackendConfig
from quicvoice.errors import ConfigurationError
from quicvoice.session.events import EventReceived, TurnEnded
from quicvoice.session.messages import Hello

from ..integration.deployment import free_port
from .apps import tone
from .test_app_server import next_of, speak

ROOT = Path(__file__).resolve().parents[2]
#: The console script, as users run it: its sys.path does not hold the working directory.
QUICVOICE = [str(Path(sys.executable).parent / "quicvoice")]
START_TIMEOUT = 20.0


def serve(*arguments: str, cwd: Path = ROOT) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*QUICVOICE, "serve", "--listen", f"127.0.0.1:{free_port()}", *arguments],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": ""},
    )


def stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    return stderr


@pytest.mark.integration
@pytest.mark.asyncio
async def test_serve_runs_an_app_of_the_tests_own() -> None:
    process = serve("--app", "tests.app.apps:app")
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), START_TIMEOUT)
        started = json.loads(line)
        assert started["app"] == "tests.app.apps:app"
        host, port = started["listening"].rsplit(":", 1)
        hello = Hello(codecs=("opus/48000",))
        async with connect(host, int(port), hello=hello, verify=False) as client:
            await speak(client, "opus/48000", tone(440.0, 48000, 0.5), 48000)
            client.end_audio()
            heard = await next_of(client, EventReceived)
            assert isinstance(heard, EventReceived)
            assert heard.data == {"frames": 25, "rate": 16000}  # 0.5 s + the flushed tail
            await next_of(client, TurnEnded)
            assert client.stats().downlink_frames_received >= 25
    finally:
        stderr = stop(process)
    assert "Traceback" not in stderr


@pytest.mark.integration
def test_the_app_key_of_the_backend_file_names_the_app(tmp_path: Path) -> None:
    config = tmp_path / "backend.toml"
    config.write_text(f'listen = "127.0.0.1:{free_port()}"\napp = "tests.app.apps:missing"\n')
    result = subprocess.run(
        [*QUICVOICE, "serve", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "app: 'tests.app.apps:missing' not found" in result.stderr
    assert "Traceback" not in result.stderr


BAD_APPS = [
    ("no.such.module:app", "cannot import 'no.such.module'"),
    ("tests.app.apps:missing", "not found (no attribute 'missing')"),
    ("tests.app.apps:CONSTANT", "not an application: the handler must be callable"),
    ("tests.app.apps:not_async", "must be an async function"),
    ("tests.app.apps:two_arguments", "must take exactly one argument"),
    ("tests.app.broken:app", "failed: RuntimeError: this module cannot be imported"),
    ("tests.app.apps", "is not 'package.module:attribute'"),
    ("tests/app/apps.py:app", "is not 'package.module:attribute'"),
]


@pytest.mark.integration
@pytest.mark.parametrize(("spec", "message"), BAD_APPS[:3])
def test_a_bad_app_stops_serve_with_a_message_that_names_it(spec: str, message: str) -> None:
    result = subprocess.run(
        [*QUICVOICE, "serve", "--listen", f"127.0.0.1:{free_port()}", "--app", spec],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("quicvoice serve: --app: ")
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""  # it never started listening


@pytest.mark.parametrize(("spec", "message"), BAD_APPS)
def test_load_app_refuses_what_is_not_an_app(spec: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        load_app(spec, app_dir=ROOT)
    assert message in str(refused.value)


def test_load_app_takes_an_app_or_a_bare_handler() -> None:
    loaded = load_app("tests.app.apps:app", app_dir=ROOT)
    assert isinstance(loaded, App) and loaded.sample_rate == 16000
    bare = load_app("tests.app.apps:echo", app_dir=ROOT)
    assert bare.sample_rate == 16000 and bare.handler.__name__ == "echo"
    assert load_app("quicvoice.agent:demo").handler.__name__ == "demo_app"


def test_the_backend_file_checks_the_app_key() -> None:
    assert BackendConfig.from_mapping({"app": "a.b:c"}).app == "a.b:c"
    for bad in (42, "a.b", "a b:c", ":c"):
        with pytest.raises(ConfigurationError, match="^app: "):
            BackendConfig.from_mapping({"app": bad})


def test_app_checks_its_settings() -> None:
    async def handler(session: object) -> None:
        pass

    with pytest.raises(ValueError, match="sample_rate"):
        App(handler, sample_rate=22050)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="turn_buffer_ms"):
        App(handler, turn_buffer_ms=0)  # type: ignore[arg-type]
    assert App(handler, sample_rate=44100).sample_rate == 44100  # type: ignore[arg-type]


@pytest.mark.integration
@pytest.mark.asyncio
async def test_the_default_app_is_still_the_demo_agent() -> None:
    process = serve()
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), START_TIMEOUT)
        started = json.loads(line)
        assert started["app"] == "quicvoice.agent:demo"
        host, port = started["listening"].rsplit(":", 1)
        async with connect(host, int(port), verify=False) as client:
            client.send_event("order.add", {"item": "taro milk tea"})
            cart = await client.wait_event("order.cart")
            assert cart.data == {"items": [{"item": "taro milk tea"}]}
    finally:
        stderr = stop(process)
    assert "Traceback" not in stderr
