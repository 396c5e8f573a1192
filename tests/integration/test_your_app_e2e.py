"""Issue 12's whole path, as a voice team would run it: their own app behind
``quicvoice serve --app`` (not the demo agent), a certificate from their CA, tokens required,
the forwarder in front; a caller dials ``quic://localhost:PORT`` (a name that resolves to
``::1`` and ``127.0.0.1``), verifies the certificate against the CA, presents a token and
metadata, speaks Opus, and moves to another address mid-utterance; the app hears PCM at
16 kHz and knows who called.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from quicvoice.auth import SigningKey, issue_token

from ..pki import make_ca, make_leaf
from .deployment import Deployment
from .private_hosts import ROOT, needs_private_hosts, with_private_hosts
from .your_app import WRONG_ROOM

pytestmark = [pytest.mark.integration, needs_private_hosts]

SERVER_ID = "0a000001"
SECRET = "e2e-test-secret-of-more-than-32-octets!"
AUDIENCE = "voice.test"
ISSUER = "https://issuer.test"


def write_config(deployment: Deployment, certificate: Path, private_key: Path) -> None:
    """The forwarder's shared file, plus the backend's certificate, app and ``[auth]``."""
    top = [
        f'certificate = "{certificate}"',
        f'private_key = "{private_key}"',
        'app = "tests.integration.your_app:app"',
    ]
    auth = [
        "[auth]",
        f'audience = "{AUDIENCE}"',
        f'issuer = "{ISSUER}"',
        "[[auth.keys]]",
        'kid = "k1"',
        'alg = "HS256"',
        'secret = "env:QV_E2E_SECRET"',
    ]
    text = deployment.path.read_text()
    deployment.path.write_text("\n".join(top) + "\n" + text + "\n".join(auth) + "\n")


@contextmanager
def backend(config: Path) -> Iterator[subprocess.Popen[str]]:
    """``quicvoice serve`` for ``SERVER_ID`` from ``config``, its app from the file."""
    process = subprocess.Popen(
        [
            sys.executable, "-m", "quicvoice.cli", "serve",
            "--config", str(config), "--server-id", SERVER_ID,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "QV_E2E_SECRET": SECRET},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, process.stderr.read() if process.stderr else "no output"
        assert json.loads(line)["app"] == "tests.integration.your_app:app"
        yield process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)


def token(subject: str) -> str:
    return issue_token(
        SigningKey.hs256(SECRET.encode(), kid="k1"),
        subject=subject,
        now=time.time(),
        ttl=300,
        issuer=ISSUER,
        audience=AUDIENCE,
    )


@pytest.mark.asyncio
async def test_your_app_by_name_through_the_forwarder_with_tls_a_token_and_a_move(
    tmp_path: Path,
) -> None:
    ca = make_ca()
    ca_file, _ = ca.write(tmp_path, "ca")
    certificate, private_key = make_leaf(ca).write(tmp_path, "leaf")
    deployment = Deployment(tmp_path, server_ids=[SERVER_ID])
    write_config(deployment, certificate, private_key)
    url = f"quic://localhost:{deployment.vip[1]}"
    deployment.start_forwarder()
    try:
        with backend(deployment.path):
            args = ("--ca-file", str(ca_file), "--token", token("caller-42"))
            async with with_private_hosts(
                tmp_path, "tests.integration.your_caller", url, *args
            ) as caller:
                report = await caller.report(timeout=30)
            assert report["ok"], report
            assert report["codec"] == "opus/48000"  # the wire carries Opus ...
            heard = report["heard"]
            assert isinstance(heard, dict)
            assert heard["rates"] == [16000]  # ... and the app hears 16 kHz PCM
            assert heard["samples_per_frame"] == [320]
            assert abs(heard["dominant_hz"] - 440.0) < 10
            assert heard["frames"] >= report["frames_sent"]
            assert heard["codec"] == "opus/48000"
            assert heard["caller"] == "caller-42"
            assert heard["metadata"] == {"room": "7"}
            assert report["server_id"] == SERVER_ID
            # The forwarder listens on IPv4 only: the name's ::1 was tried first, in vain, and
            # the IPv4 attempt (its socket bound to 0.0.0.0, an IPv6 one binds ::) won.
            assert report["first_local"] == "0.0.0.0"
            migration = report["migration"]
            assert isinstance(migration, dict) and migration["to"].startswith("127.0.0.3:")
            assert report["last_local"] == "127.0.0.3"

            async with with_private_hosts(
                tmp_path, "tests.integration.your_caller", url, *args, "--room", "8"
            ) as caller:
                refused = await caller.report(timeout=30)
            assert not refused["ok"]
            assert refused["error"] == "SessionRefusedError"
            assert refused["code"] == WRONG_ROOM
    finally:
        deployment.stop()
