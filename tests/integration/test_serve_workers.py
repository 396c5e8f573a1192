"""``quicvoice serve --workers 2`` as real processes behind a real forwarder process.

The supervisor is given the forwarder's file and the base server ID; its two workers take
server IDs base and base+1 and the addresses of their own ``[[backends]]`` entries, so the
forwarder routes to them with no edit. Clients talk only to the VIP.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quicvoice.asyncio.client import VoiceClient, connect
from quicvoice.netlab.blackout import BlackoutRelay
from quicvoice.session.events import SessionResumed

from .deployment import LB_CONFIG, Deployment, finish, stream

pytestmark = pytest.mark.integration

WORKER_IDS = ["0a000001", "0a000002"]
START_LINES = 10


class Workers:
    """A running ``quicvoice serve --workers 2`` and what its processes said at start."""

    def __init__(self, process: subprocess.Popen[str], pids: list[int], listening: dict[str, str]):
        self.process = process
        self.pids = pids
        self.listening = listening


def start_workers(deployment: Deployment, *extra: str) -> Workers:
    command = [
        sys.executable, "-m", "quicvoice.cli", "serve", "--config", str(deployment.path),
        "--server-id", WORKER_IDS[0], "--workers", "2", *extra,
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    pids: list[int] = []
    listening: dict[str, str] = {}
    for _ in range(START_LINES):
        line = process.stdout.readline()
        if not line:
            break
        message: dict[str, Any] = json.loads(line)
        if "workers" in message:
            pids = [worker["pid"] for worker in message["workers"]]
        if "listening" in message:
            listening[message["server_id"]] = message["listening"]
        if pids and len(listening) == 2:
            return Workers(process, pids, listening)
    stop(process)
    raise AssertionError(f"the workers did not start: {pids}, {listening}")


def stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[Deployment, Workers]]:
    deployment = Deployment(tmp_path, server_ids=WORKER_IDS)
    deployment.start_forwarder()
    workers = start_workers(deployment)
    try:
        yield deployment, workers
    finally:
        stop(workers.process)
        deployment.stop()


def every_server_cid(client: VoiceClient) -> list[bytes]:
    """The CIDs the client may send to: the one in use and every one the server issued."""
    quic = client._link.quic
    return [quic._peer_cid.cid, *(cid.cid for cid in quic._peer_cid_available)]


def test_each_worker_listens_at_its_own_backends_entry(
    two_workers: tuple[Deployment, Workers],
) -> None:
    deployment, workers = two_workers
    for sid in WORKER_IDS:
        host, port = deployment.backends[sid]
        assert workers.listening[sid] == f"{host}:{port}"
    assert len(set(workers.pids)) == 2 and workers.process.pid not in workers.pids


def test_calls_through_the_forwarder_land_on_both_workers_and_every_cid_names_its_worker(
    two_workers: tuple[Deployment, Workers],
) -> None:
    deployment, _ = two_workers

    async def scenario() -> set[str]:
        homes = set()
        for index in range(8):
            async with connect(
                *deployment.vip, verify=False, local_address=f"127.0.0.{2 + index % 3}"
            ) as client:
                assert client.session is not None
                home = client.session.server_id
                cids = every_server_cid(client)
                assert len(cids) >= 2
                for cid in cids:
                    assert LB_CONFIG.decode(cid) == bytes.fromhex(home)
                await stream(client, 5, 0.005)
                assert await finish(client) == 5
                homes.add(home)
        return homes

    assert asyncio.run(scenario()) == set(WORKER_IDS)


def test_migration_through_the_forwarder_to_a_worker_loses_no_frame(
    two_workers: tuple[Deployment, Workers],
) -> None:
    deployment, _ = two_workers

    async def scenario() -> None:
        async with connect(*deployment.vip, verify=False, local_address="127.0.0.2") as client:
            assert client.session is not None
            home = client.session.server_id
            streaming = asyncio.get_running_loop().create_task(stream(client, 50))
            await asyncio.sleep(0.4)
            migration = await client.migrate("127.0.0.3")
            await streaming
            assert migration.to_address.startswith("127.0.0.3:")
            assert await finish(client) == 50  # the worker received every frame
            assert client.session.server_id == home
            for cid in every_server_cid(client):
                assert LB_CONFIG.decode(cid) == bytes.fromhex(home)

    asyncio.run(scenario())


def test_a_call_resumes_on_its_own_worker_after_a_blackout(
    two_workers: tuple[Deployment, Workers],
) -> None:
    deployment, _ = two_workers

    async def scenario() -> None:
        relay = BlackoutRelay(deployment.vip)
        entry = await relay.start()
        try:
            async with connect(*entry, verify=False, liveness_timeout=0.5) as client:
                assert client.session is not None
                home = client.session.server_id
                # Audio keeps flowing: the client notices the silent path by its liveness check.
                speaking = asyncio.get_running_loop().create_task(stream(client, 250))
                await asyncio.sleep(0.3)
                relay.black_out(2.0)
                resumed = await client.wait_resumed(timeout=12)
                await speaking
                assert isinstance(resumed, SessionResumed)
                # memory:// sessions: only the worker holding it can resume it.
                assert resumed.server_id == home
                assert client.resumptions[-1].to_server == home
                assert await finish(client) > 0
        finally:
            relay.close()

    asyncio.run(scenario())


def test_sigterm_to_the_supervisor_stops_every_worker(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, server_ids=WORKER_IDS)
    workers = start_workers(deployment)
    assert stop(workers.process) == 0
    for pid in workers.pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone, and reaped by the supervisor


def test_a_worker_that_dies_takes_the_others_down_with_its_status(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, server_ids=WORKER_IDS)
    workers = start_workers(deployment)
    os.kill(workers.pids[1], signal.SIGKILL)
    assert workers.process.wait(15) == 128 + signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(workers.pids[0], 0)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--workers", "2"], "--workers: give a --config"),
        (["--workers", "0"], "--workers: must be 1..64"),
        (["--workers", "2", "--config", "{config}", "--server-id", "ffffffff"], "does not fit"),
        (["--loop", "tokio"], "--loop: 'tokio' is not one of asyncio, uvloop"),
    ],
)
def test_bad_worker_and_loop_arguments_are_refused_at_start(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    deployment = Deployment(tmp_path, server_ids=["ffffffff"])
    arguments = [argument.replace("{config}", str(deployment.path)) for argument in arguments]
    result = subprocess.run(
        [sys.executable, "-m", "quicvoice.cli", "serve", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_workers_refuse_a_file_without_a_shared_reset_key(tmp_path: Path) -> None:
    path = tmp_path / "backend.toml"
    path.write_text(
        'listen = "127.0.0.1:4433"\nserver_id = "0a000001"\n'
        "[[configs]]\nid = 0\nserver_id_len = 4\nnonce_len = 12\n"
        'key = "8f95f09245765f80256934e50c66207f"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "quicvoice.cli", "serve", "--config", str(path), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--workers: the file must set reset_key" in result.stderr


def test_a_loop_whose_package_is_missing_names_the_package() -> None:
    # A real interpreter in which uvloop cannot be imported.
    program = (
        "import sys; sys.modules['uvloop'] = None; from quicvoice.cli import main; "
        "sys.exit(main(['serve', '--loop', 'uvloop', '--listen', '127.0.0.1:9']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "'uvloop' package, which is not installed" in result.stderr
    assert "quicvoice[fast]" in result.stderr
