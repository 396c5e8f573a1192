"""ECN validation of real quicvoice calls across the network lab (issue 17, "Done when").

A backend (the demo agent) runs in the lab's server namespace and a client in its client
namespace, each in a thread of this process that entered its namespace, so both sides'
``stats().ecn`` can be read directly. The cellular path crosses the delay line, whose ECN mode
per direction is the path's behaviour: ``keep``, ``bleach`` (marks cleared) or ``mangle``
(ECT(1) rewritten to ECT(0)); the Wi-Fi path is a plain veth pair and keeps the marks. The
line's per-codepoint arrival counters (read before its rewrite) show what each side really
sent on the path.

Why these assertions fail on a broken stack (each checked by breaking the stack locally and
running this file): a client whose socket kept marking after a failure (``_ClientSocket.mark``
a no-op) or a backend sending every datagram with its socket's marking fail the line's
counters in the bleach, mangle and migration tests (marked arrivals after the outcome);
``EcnTracker.send_codepoint`` ignoring failures fails them on ``sent_unmarked``; one
validation record per connection instead of per path fails both migration tests, and so does
a new path inheriting the previous path's outcome instead of being tested afresh.
A forwarder that bleaches (its Python path's ``ecn_of`` returning 0) fails every
``forwarder`` variant.
"""

from __future__ import annotations

import asyncio
import json
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Literal

import pytest

from quicvoice.agent import demo_agent
from quicvoice.asyncio.client import VoiceClient, connect
from quicvoice.asyncio.config import BackendConfig
from quicvoice.asyncio.server import VoiceServer
from quicvoice.ecn import PathEcnStats, Validation
from quicvoice.netlab import Lab, LineConfig, VoiceTopology, VoiceTopologyConfig
from quicvoice.netlab import build_voice_topology as build
from quicvoice.netlab.delayline import LineStats
from quicvoice.netlab.lab import Namespace
from quicvoice.quiclb import LoadBalancerConfig

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("root"), pytest.mark.timeout(60)]

PORT = 4433
LB_KEY = bytes(range(16))
LB_CONFIG = LoadBalancerConfig(0, 4, 12, LB_KEY)
SERVER_ID = bytes.fromhex("0a0b0c0d")
FRAME = bytes(640)  # 20 ms of L16/16000
#: Frames streamed at most while waiting for a validation outcome (50 per second).
MAX_FRAMES = 200
#: Frames sent once an outcome is known, to see what the path carries afterwards.
FRAMES_AFTER = 25
STARTUP_TIMEOUT = 10.0
EcnLineMode = Literal["keep", "bleach", "mangle"]
Via = Literal["direct", "forwarder"]
#: Behind the forwarder (server namespace loopback): the backend, and where it sends replies.
BEHIND_FORWARDER = ("127.0.0.1", 4501)
FORWARDER_BACKEND_SIDE = ("127.0.0.1", 4434)
#: Every call directly to the backend and through the QUIC-LB forwarder, which must keep the
#: ECN bits both ways (the backend's per-path marking rides on its encapsulated replies).
VIA = pytest.mark.parametrize("via", ["direct", "forwarder"])


class LabBackend:
    """A ``VoiceServer`` with the demo agent, on its own event loop in a thread inside the
    server namespace (its socket is made there); ``paths()`` reads its session from that loop."""

    def __init__(self, namespace: Namespace, config: BackendConfig) -> None:
        self.namespace = namespace
        self.config = config
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: VoiceServer | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lab-backend", daemon=True)

    def _run(self) -> None:
        try:
            self.namespace.run(lambda: asyncio.run(self._serve()))
        except BaseException as error:  # raised again by __enter__ or __exit__
            self._error = error
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        server = VoiceServer(self.config, demo_agent)
        await server.start()
        self.loop, self.server, self._stop = asyncio.get_running_loop(), server, asyncio.Event()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await server.aclose()

    def __enter__(self) -> LabBackend:
        self._thread.start()
        if not self._ready.wait(STARTUP_TIMEOUT) or self.loop is None:
            raise AssertionError(f"the lab backend did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(STARTUP_TIMEOUT)
        assert not self._thread.is_alive(), "the lab backend did not stop"
        if self._error is not None:
            raise self._error

    async def paths(self) -> list[PathEcnStats]:
        """The ECN records of the backend's one session (empty before it exists)."""
        assert self.loop is not None and self.server is not None
        server = self.server

        async def read() -> list[PathEcnStats]:
            sessions = server.sessions()
            return list(sessions[0].stats().ecn) if sessions else []

        future: Future[list[PathEcnStats]] = asyncio.run_coroutine_threadsafe(read(), self.loop)
        return await asyncio.wrap_future(future)


@dataclass
class Stream:
    """The uplink frames a call has sent so far."""

    client: VoiceClient
    sent: int = 0

    async def frames(self, count: int) -> None:
        for _ in range(count):
            self.client.send_audio(FRAME)
            self.sent += 1
            await asyncio.sleep(0.02)  # pacing a voice uplink, not synchronising

    async def until(self, done: Callable[[], Awaitable[bool]], what: str) -> None:
        """Send a frame every 20 ms until ``done()`` (at most ``MAX_FRAMES``)."""
        for _ in range(MAX_FRAMES):
            if await done():
                return
            await self.frames(1)
        raise AssertionError(f"no {what} after {MAX_FRAMES} frames: {self.client.stats().ecn}")


def by_host(paths: Sequence[PathEcnStats]) -> dict[str, PathEcnStats]:
    """Records keyed by the path's IP address (the port is the socket's or the client's)."""
    return {path.path.rpartition(":")[0]: path for path in paths}


def marked(line: LineStats) -> int:
    """Packets that arrived at the line carrying any ECN codepoint (before its rewrite)."""
    return line.arrived_ect1 + line.arrived_ect0 + line.arrived_ce


def start_forwarder(lab: Lab, topology: VoiceTopology, directory: Path) -> None:
    """``python -m lb`` in the server namespace, its VIP on the server's address; returns once
    it logged that it forwards."""
    config = directory / "lb.toml"
    config.write_text(
        "\n".join(
            [
                f'listen = "{topology.server_ip}:{PORT}"',
                f'backend_listen = "{FORWARDER_BACKEND_SIDE[0]}:{FORWARDER_BACKEND_SIDE[1]}"',
                'log_level = "info"',
                "[[configs]]",
                f"id = {LB_CONFIG.config_id}",
                f"server_id_len = {LB_CONFIG.server_id_len}",
                f"nonce_len = {LB_CONFIG.nonce_len}",
                f'key = "{LB_KEY.hex()}"',
                "[[backends]]",
                f'server_id = "{SERVER_ID.hex()}"',
                f'address = "{BEHIND_FORWARDER[0]}:{BEHIND_FORWARDER[1]}"',
            ]
        )
        + "\n"
    )
    # Unbuffered (bufsize=0): a line read is a line select() saw, none waits in a buffer.
    process = lab.spawn(
        topology.server, [sys.executable, "-m", "lb", "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, bufsize=0,
    )  # fmt: skip
    stderr = process.stderr
    assert stderr is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while (remaining := deadline - time.monotonic()) > 0:
        if not select.select([stderr], [], [], remaining)[0]:
            break
        line = stderr.readline()
        if not line:
            break
        if json.loads(line).get("event") == "forwarding":
            # Keep its log pipe drained for the rest of the test (the lab stops it).
            threading.Thread(target=stderr.read, daemon=True).start()
            return
    raise AssertionError(f"the forwarder did not start (exit status {process.poll()})")


@contextmanager
def lab_call(
    lab: Lab, up: EcnLineMode, down: EcnLineMode, via: Via
) -> Iterator[tuple[VoiceTopology, LabBackend]]:
    """The lab with the cellular line's ECN modes per direction and a backend reached
    directly on the server's address or through the QUIC-LB forwarder there."""
    config = VoiceTopologyConfig(
        cell_uplink=LineConfig(delay_ms=5.0, ecn=up),
        cell_downlink=LineConfig(delay_ms=5.0, ecn=down),
    )
    topology = build(lab, config)
    backend_config = BackendConfig(
        listen=(topology.server_ip, PORT), server_id=SERVER_ID, configs=(LB_CONFIG,)
    )
    with tempfile.TemporaryDirectory() as directory:
        if via == "forwarder":
            start_forwarder(lab, topology, Path(directory))
            backend_config = replace(
                backend_config, listen=BEHIND_FORWARDER, forwarder=FORWARDER_BACKEND_SIDE
            )
        with LabBackend(topology.server, backend_config) as backend:
            yield topology, backend


def in_client(topology: VoiceTopology, scenario: Callable[[], Awaitable[None]]) -> None:
    """Run ``scenario`` on an event loop in a thread inside the client namespace (every
    socket the client library opens, migrations included, is made there)."""
    topology.client.run(lambda: asyncio.run(asyncio.wait_for(scenario(), 45.0)))


@dataclass
class Outcome:
    client: dict[str, PathEcnStats]
    backend: dict[str, PathEcnStats]
    before: dict[str, LineStats]  # the line's counters once both sides decided
    after: dict[str, LineStats]  # ... and once FRAMES_AFTER more frames were delivered
    sent: int
    delivered: int


#: Frames sent on a path once validated, before the call moves on (the migration tests).
FRAMES_BEFORE_MOVE = 10


def call_until(
    topology: VoiceTopology, backend: LabBackend, legs: Sequence[tuple[str, Validation]]
) -> Outcome:
    """A call over ``legs``: from the first (local address, outcome), streaming until both
    sides' records of that address reach its outcome, then (``FRAMES_BEFORE_MOVE`` frames
    later) migrated to the next, and so on; after the last, ``FRAMES_AFTER`` more frames and
    the goodbye."""
    result: list[Outcome] = []

    async def scenario() -> None:
        first = legs[0][0]
        async with connect(topology.server_ip, PORT, local_address=first, verify=False) as client:
            stream = Stream(client)

            async def both(host: str, validation: Validation) -> bool:
                mine = client.stats().ecn
                theirs = by_host(await backend.paths())
                return (
                    bool(mine)
                    and mine[-1].path.startswith(f"{host}:")
                    and mine[-1].validation is validation
                    and host in theirs
                    and theirs[host].validation is validation
                )

            for index, (host, validation) in enumerate(legs):
                if index:
                    await stream.frames(FRAMES_BEFORE_MOVE)
                    await client.migrate(host)
                await stream.until(partial(both, host, validation), f"{host} {validation.value}")
            before = await asyncio.to_thread(topology.delay_line.stats)
            await stream.frames(FRAMES_AFTER)
            delivered = await client.bye()
            after = await asyncio.to_thread(topology.delay_line.stats)
            result.append(
                Outcome(
                    client=by_host(client.stats().ecn),
                    backend=by_host(await backend.paths()),
                    before=before,
                    after=after,
                    sent=stream.sent,
                    delivered=delivered,
                )
            )

    in_client(topology, scenario)
    [found] = result
    print(f"\nclient {found.client}\nbackend {found.backend}\nline {found.after}")
    return found


def assert_marking_stopped(outcome: Outcome, device: str) -> None:
    """After both sides' outcome, nothing marked entered the line on ``device`` any more,
    while the frames sent afterwards did go through it (unmarked)."""
    before, after = outcome.before[device], outcome.after[device]
    assert marked(before) > 0  # marked before the outcome: the path was tested
    assert marked(after) == marked(before)
    assert after.arrived_not_ect - before.arrived_not_ect >= FRAMES_AFTER


@VIA
def test_a_call_over_a_keeping_path_validates_capable_both_ways(lab: Lab, via: Via) -> None:
    with lab_call(lab, "keep", "keep", via) as (topology, backend):
        outcome = call_until(topology, backend, [(topology.cell_ip, Validation.CAPABLE)])
    mine, theirs = outcome.client[topology.cell_ip], outcome.backend[topology.cell_ip]
    assert outcome.delivered == outcome.sent
    # ECT(1) both ways, arriving as sent, and nobody stopped marking.
    assert mine.received_ect1 > 0 and mine.received_not_ect == mine.received_unknown == 0
    assert theirs.received_ect1 > 0 and theirs.received_not_ect == theirs.received_unknown == 0
    assert mine.sent_unmarked == 0 and theirs.sent_unmarked == 0
    for device in ("dl-up", "dl-down"):
        line = outcome.after[device]
        assert line.arrived_ect1 > 0 and line.arrived_not_ect == line.arrived_ect0 == 0
        assert line.ecn_rewritten == 0
    assert outcome.after["dl-up"].arrived_ect1 >= outcome.sent


@VIA
def test_a_bleaching_path_is_detected_and_then_sent_unmarked_without_loss(
    lab: Lab, via: Via
) -> None:
    with lab_call(lab, "bleach", "bleach", via) as (topology, backend):
        outcome = call_until(topology, backend, [(topology.cell_ip, Validation.BLEACHED)])
    mine, theirs = outcome.client[topology.cell_ip], outcome.backend[topology.cell_ip]
    assert outcome.delivered == outcome.sent
    assert mine.sent_marked > 0 and mine.sent_unmarked >= FRAMES_AFTER
    assert theirs.sent_marked > 0 and theirs.sent_unmarked > 0
    # Everything arrived bleached, each side reads not-ECT only.
    assert mine.received_marked == 0 and theirs.received_marked == 0
    assert_marking_stopped(outcome, "dl-up")  # the client's marking off
    assert_marking_stopped(outcome, "dl-down")  # the backend's marking off


@VIA
def test_a_mangling_path_is_detected_and_marking_turned_off(lab: Lab, via: Via) -> None:
    with lab_call(lab, "mangle", "mangle", via) as (topology, backend):
        outcome = call_until(topology, backend, [(topology.cell_ip, Validation.MANGLED)])
    mine, theirs = outcome.client[topology.cell_ip], outcome.backend[topology.cell_ip]
    assert outcome.delivered == outcome.sent
    assert mine.sent_unmarked >= FRAMES_AFTER and theirs.sent_unmarked > 0
    # What each side received marked came as ECT(0): the line rewrote the ECT(1) marks.
    assert mine.received_ect0 > 0 and mine.received_ect1 == 0
    assert theirs.received_ect0 > 0 and theirs.received_ect1 == 0
    assert outcome.before["dl-up"].arrived_ect1 > 0  # the client did mark ECT(1) at first
    assert_marking_stopped(outcome, "dl-up")
    assert_marking_stopped(outcome, "dl-down")


@VIA
def test_a_migration_onto_a_bleaching_path_revalidates_there_only(lab: Lab, via: Via) -> None:
    with lab_call(lab, "bleach", "bleach", via) as (topology, backend):
        wifi, cell = topology.wifi_ip, topology.cell_ip
        legs = [(wifi, Validation.CAPABLE), (cell, Validation.BLEACHED)]
        outcome = call_until(topology, backend, legs)
    assert outcome.delivered == outcome.sent  # no frame lost across the migration
    # The client's records: Wi-Fi stays capable and was never sent unmarked; the cellular
    # path was tested afresh (marked first), failed, and is sent unmarked.
    assert outcome.client[wifi].validation is Validation.CAPABLE
    assert outcome.client[wifi].sent_unmarked == 0 and outcome.client[wifi].received_ect1 > 0
    assert outcome.client[cell].validation is Validation.BLEACHED
    assert outcome.client[cell].sent_unmarked >= FRAMES_AFTER
    # The backend's records of the client's two addresses, the same.
    assert outcome.backend[wifi].validation is Validation.CAPABLE
    assert outcome.backend[wifi].sent_unmarked == 0
    assert outcome.backend[cell].validation is Validation.BLEACHED
    # Only the cellular path crosses the line: marked there until the outcome, then never.
    assert_marking_stopped(outcome, "dl-up")
    assert_marking_stopped(outcome, "dl-down")


@VIA
def test_a_migration_off_a_bleaching_path_marks_again_on_the_new_one(lab: Lab, via: Via) -> None:
    """The other way round: a failure is final for its path only, so the Wi-Fi path the call
    moves to is tested afresh and found capable (marking back on), both ways."""
    with lab_call(lab, "bleach", "bleach", via) as (topology, backend):
        wifi, cell = topology.wifi_ip, topology.cell_ip
        legs = [(cell, Validation.BLEACHED), (wifi, Validation.CAPABLE)]
        outcome = call_until(topology, backend, legs)
    assert outcome.delivered == outcome.sent
    assert outcome.client[cell].validation is Validation.BLEACHED
    assert outcome.backend[cell].validation is Validation.BLEACHED
    for side in (outcome.client, outcome.backend):
        assert side[wifi].validation is Validation.CAPABLE
        assert side[wifi].sent_marked > 0 and side[wifi].sent_unmarked == 0
        assert side[wifi].received_ect1 > 0 and side[wifi].received_not_ect == 0
    # The frames after the move went over Wi-Fi: the line saw none of them.
    assert outcome.after["dl-up"].received == outcome.before["dl-up"].received
