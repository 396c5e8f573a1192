"""Choosing the engine per backend: ``engine = "..."`` in the backend TOML and ``quicvoice serve
--engine``; what the ngtcp2 engine cannot serve is a clear ``ConfigurationError``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicvoice.asyncio.client import connect
from quicvoice.asyncio.config import BackendConfig
from quicvoice.engine_ngtcp2 import AVAILABLE, UNAVAILABLE
from quicvoice.errors import ConfigurationError
from quicvoice.quiclb import LoadBalancerConfig
from quicvoice.session.events import EventReceived, TurnEnded

from ..app.test_app_cli import QUICVOICE, ROOT, START_TIMEOUT, serve, stop
from ..integration.deployment import free_port
from ..security.raw import FRAME

needs_ngtcp2 = pytest.mark.skipif(not AVAILABLE, reason=f"ngtcp2 engine not built: {UNAVAILABLE}")
LB = {"id": 0, "server_id_len": 4, "nonce_len": 12, "key": "00" * 16}


def _backend(**keys: object) -> BackendConfig:
    return BackendConfig.from_mapping(
        {"server_id": "0a0b0c0d", "configs": [LB], "reset_key": "11" * 32, **keys}
    )


def test_the_engine_key_selects_the_engine() -> None:
    assert _backend().engine == "aioquic"
    assert _backend(engine="aioquic").engine == "aioquic"
    assert _backend(engine="ngtcp2").engine == "ngtcp2"


@given(value=st.one_of(st.text(max_size=20), st.integers(), st.none(), st.lists(st.text())))
def test_any_other_engine_value_is_a_clear_error(value: object) -> None:
    if value in ("aioquic", "ngtcp2"):
        assert _backend(engine=value).engine == value
        return
    with pytest.raises(ConfigurationError, match="engine: must be one of 'aioquic', 'ngtcp2'"):
        _backend(engine=value)


def test_without_the_extension_the_error_names_the_debian_packages() -> None:
    """A real interpreter in which ``quicvoice._ngtcp2`` cannot be imported (as where it was
    never built)."""
    script = (
        "import sys; sys.modules['quicvoice._ngtcp2'] = None\n"
        "from quicvoice.asyncio.config import BackendConfig\n"
        "from quicvoice.engine_ngtcp2.backend import engine_config\n"
        "from quicvoice.errors import ConfigurationError\n"
        "from quicvoice.quiclb import LoadBalancerConfig\n"
        "config = BackendConfig(engine='ngtcp2', configs=(LoadBalancerConfig(0, 4, 12, "
        "bytes(16)),))\n"
        "try:\n"
        "    engine_config(config)\n"
        "except ConfigurationError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert "engine 'ngtcp2' is not available" in result.stdout
    assert "libngtcp2-dev" in result.stdout and "libngtcp2-crypto-gnutls-dev" in result.stdout


@needs_ngtcp2
def test_what_the_ngtcp2_engine_cannot_serve_is_refused_at_start_and_a_forwarder_is_taken() -> None:
    from quicvoice.engine_ngtcp2.backend import check_webtransport, engine_config

    with pytest.raises(ConfigurationError, match=r"WebTransport .* engine = \"aioquic\""):
        check_webtransport(True)
    check_webtransport(False)
    behind, _ = engine_config(_backend(engine="ngtcp2", forwarder="127.0.0.1:4000"))
    assert behind.forwarder == ("127.0.0.1", 4000)
    with pytest.raises(ConfigurationError, match=r"needs a \[\[configs\]\]"):
        engine_config(BackendConfig(engine="ngtcp2", configs=()))
    engine, fingerprint = engine_config(_backend(engine="ngtcp2"))
    assert engine.server_id == bytes.fromhex("0a0b0c0d") and fingerprint is not None
    assert engine.lb_config == LoadBalancerConfig(0, 4, 12, bytes(16))


@needs_ngtcp2
@pytest.mark.integration
def test_serve_with_web_on_ngtcp2_stops_with_a_message() -> None:
    result = subprocess.run(
        [
            *QUICVOICE,
            "serve",
            "--engine",
            "ngtcp2",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--web",
            f"127.0.0.1:{free_port()}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert result.returncode == 2
    assert "WebTransport" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


@needs_ngtcp2
@pytest.mark.integration
@pytest.mark.asyncio
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_serve_engine_ngtcp2_runs_the_app(tmp_path: Path, loop: str) -> None:
    config = tmp_path / "backend.toml"
    config.write_text(
        'engine = "ngtcp2"\nserver_id = "0a0b0c0d"\n'
        '[[configs]]\nid = 0\nserver_id_len = 4\nnonce_len = 12\nkey = "' + "00" * 16 + '"\n'
    )
    process = serve("--config", str(config), "--app", "tests.app.apps:app", "--loop", loop)
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), START_TIMEOUT)
        started = json.loads(line)
        assert started["engine"] == "ngtcp2" and started["server_id"] == "0a0b0c0d"
        assert started["loop"] == loop
        host, port = started["listening"].rsplit(":", 1)
        async with connect(host, int(port), verify=False, reconnect=False) as client:
            for index in range(10):
                client.send_audio(FRAME, index * 320)
            client.end_audio()
            kinds: list[type] = []
            while TurnEnded not in kinds:
                kinds.append(type(await asyncio.wait_for(client.receive(), 10)))
            assert EventReceived in kinds
            assert await client.bye(timeout=10) == 10
    finally:
        stderr = stop(process)
    assert "Traceback" not in stderr, stderr
