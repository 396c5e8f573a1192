"""``quicvoice call`` by URL, a real process against a backend in the test's event loop."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from ..pki import make_ca, make_leaf
from .tls_harness import tls_server
from .voice_harness import SERVER_ID

pytestmark = pytest.mark.integration

CA = make_ca()
LEAF = make_leaf(CA)


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


@pytest.mark.asyncio
async def test_call_by_url_with_a_ca_file_a_token_and_metadata(tmp_path: Path) -> None:
    ca_file = CA.write(tmp_path, "ca")[0]
    async with tls_server(tmp_path, LEAF) as (server, seen):
        code, out, err = await quicvoice_call(
            f"quic://localhost:{server.address[1]}",
            "--ca-file",
            str(ca_file),
            "--token",
            "bearer-token",
            "--metadata",
            "room=7",
            "--metadata",
            "who=a=b",
            "--seconds",
            "0.3",
            "--json",
        )
        assert code == 0, err
        report = json.loads(out)
        assert report["server_id"] == SERVER_ID.hex()
        assert report["uplink_frames_delivered"] == report["uplink_frames_sent"] == 15
        assert "not verified" not in err
    assert seen.hellos[0].token == "bearer-token"
    assert dict(seen.hellos[0].metadata) == {"room": "7", "who": "a=b"}


@pytest.mark.asyncio
async def test_call_webtransport_url_with_a_pinned_hash(tmp_path: Path) -> None:
    async with tls_server(tmp_path, LEAF) as (server, seen):
        code, out, err = await quicvoice_call(
            f"https://localhost:{server.address[1]}/voice",
            "--certificate-hash",
            LEAF.sha256().hex(),
            "--seconds",
            "0.2",
            "--json",
        )
        assert code == 0, err
        assert json.loads(out)["uplink_frames_delivered"] == 10


@pytest.mark.asyncio
async def test_a_certificate_that_fails_exits_1_naming_the_check(tmp_path: Path) -> None:
    other_ca = make_ca("another CA").write(tmp_path, "other")[0]
    async with tls_server(tmp_path, LEAF) as (server, seen):
        code, _, err = await quicvoice_call(
            f"quic://localhost:{server.address[1]}", "--ca-file", str(other_ca), "--seconds", "0.2"
        )
        assert code == 1
        assert "trust check" in err
        # By default, the system store: it does not know the test CA.
        code, _, err = await quicvoice_call(f"quic://localhost:{server.address[1]}")
        assert code == 1 and "trust check" in err
    assert seen.hellos == []


@pytest.mark.asyncio
@pytest.mark.parametrize("webtransport", [False, True])
async def test_the_older_ip_port_form_still_works_unverified(
    tmp_path: Path, webtransport: bool
) -> None:
    async with tls_server(tmp_path, make_leaf(make_ca("unknown"))) as (server, _):
        host, port = server.address
        code, out, err = await quicvoice_call(
            f"{host}:{port}",
            *(["--webtransport"] if webtransport else []),
            "--seconds",
            "0.2",
            "--json",
        )
        assert code == 0, err
        assert "not verified" in err
        assert json.loads(out)["uplink_frames_delivered"] == 10


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ftp://localhost:21"], "unknown scheme 'ftp'"),
        (["quic://user@localhost:4433"], "userinfo"),
        (["quic://localhost:4433/voice"], "no path"),
        (["localhost:4433"], "quic://NAME:PORT"),
        (["quic://localhost:4433", "--metadata", "novalue"], "KEY=VALUE"),
        (["quic://localhost:4433", "--token", "x" * 100_000], "--token"),
        (["quic://localhost:4433", "--insecure", "--ca-file", "x.pem"], "contradicts"),
        (["quic://localhost:4433", "--ca-file", "/nonexistent/ca.pem"], "ca.pem"),
        (["quic://localhost:4433", "--certificate-hash", "abc"], "certificate hash"),
        (["quic://localhost:4433", "--webtransport"], "--webtransport"),
    ],
)
async def test_bad_arguments_exit_2_naming_the_fault(args: list[str], message: str) -> None:
    code, _, err = await quicvoice_call(*args)
    assert code == 2, err
    assert message in err
