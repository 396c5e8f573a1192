"""``/metrics`` and spans are the same whichever QUIC engine serves: each test runs the same
calls against an aioquic and an ngtcp2 backend and asserts the same series (the ngtcp2 cases
skip, with the reason, where its extension was not built).

Real parts throughout: ``quicvoice serve`` processes or servers in this process on loopback
UDP, the project's client, real HTTP scrapes parsed by Prometheus' parser, redis-server.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from quicvoice.asyncio.client import VoiceClient, connect
from quicvoice.asyncio.config import BackendConfig
from quicvoice.asyncio.server import ServerSession, SessionHandler, VoiceServer
from quicvoice.auth import SigningKey, issue_token
from quicvoice.engine_ngtcp2 import AVAILABLE, UNAVAILABLE
from quicvoice.errors import ConfigurationError, SessionRefusedError
from quicvoice.observability.telemetry import BackendTelemetry
from quicvoice.quiclb import QuicLbConnectionIdGenerator
from quicvoice.session.codes import ErrorCode
from quicvoice.session.events import (
    AudioReceived,
    EventReceived,
    SessionClosed,
    TurnCancelled,
    TurnEnded,
    TurnStarted,
)
from quicvoice.session.messages import Hello
from quicvoice.version import __version__

from ..conftest import RedisServer
from ..engine_ngtcp2.harness import UdpRelay
from .metrics_scrape import Samples, parse, scrape, scrape_until, value
from .voice_harness import FRAME, LB_CONFIG, SERVER_ID

pytestmark = pytest.mark.integration
B = "quicvoice_backend_"
ROOT = Path(__file__).resolve().parents[2]
ENGINES = [
    "aioquic",
    pytest.param(
        "ngtcp2",
        marks=pytest.mark.skipif(not AVAILABLE, reason=f"ngtcp2 engine not built: {UNAVAILABLE}"),
    ),
]
SECRET = "metrics-engines-test-secret-of-32-octets-or-more"
AUDIENCE = "voice.test"
START_TIMEOUT = 20.0
Address = tuple[str, int]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def token(secret: str = SECRET) -> str:
    key = SigningKey.hs256(secret.encode(), kid="k1")
    return issue_token(key, subject="caller-1", now=time.time(), ttl=600, audience=AUDIENCE)


def backend_file(tmp_path: Path, engine: str, top: str = "") -> Path:
    """A backend's file: the engine, a QUIC-LB configuration and required tokens (``top``:
    more top-level lines)."""
    path = tmp_path / "backend.toml"
    path.write_text(
        top + f'engine = "{engine}"\nserver_id = "{SERVER_ID.hex()}"\n'
        '[[configs]]\nid = 0\nserver_id_len = 4\nnonce_len = 12\nkey = "' + "00" * 16 + '"\n'
        f'[auth]\naudience = "{AUDIENCE}"\n'
        '[[auth.keys]]\nkid = "k1"\nalg = "HS256"\nsecret = "env:QV_METRICS_TEST_SECRET"\n'
    )
    return path


def serve(*arguments: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "quicvoice.cli", "serve", *arguments],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "QV_METRICS_TEST_SECRET": SECRET},
    )


def stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM, then the exit status and stderr (SIGKILL after 10 s)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    return process.returncode, stderr


async def refused(address: Address, hello: Hello) -> int:
    """The code a ``hello`` is refused with."""
    with pytest.raises(SessionRefusedError) as error:
        async with connect(*address, hello=hello, verify=False, reconnect=False):
            pass
    return error.value.error_code


async def say_and_hear(client: VoiceClient, frames: int) -> None:
    """Say ``frames`` frames; the echo app says them back in one turn; ``bye``."""
    for index in range(frames):
        client.send_audio(FRAME, index * 320)
    client.end_audio()

    async def turn_ended() -> None:
        while not isinstance(await client.receive(), TurnEnded):
            pass

    await asyncio.wait_for(turn_ended(), 10)
    assert await client.bye(timeout=10) == frames


def closed(count: int, code: str = "NO_ERROR") -> object:
    def condition(samples: Samples) -> bool:
        done = samples.get((f"{B}sessions_closed_total", frozenset({("code", code)})), 0)
        return done >= count and value(samples, f"{B}sessions_open") == 0

    return condition


@pytest.mark.asyncio
@pytest.mark.parametrize("engine", ENGINES)
async def test_serve_exports_the_same_series_on_either_engine(tmp_path: Path, engine: str) -> None:
    """A call, four refusals (no token, a forged token, an unknown protocol version, a
    malformed resume token): the same counts on both engines."""
    process = serve(
        "--config", str(backend_file(tmp_path, engine)),
        "--listen", f"127.0.0.1:{free_udp_port()}",
        "--metrics", "127.0.0.1:0",
        "--app", "tests.app.apps:app",
    )  # fmt: skip
    try:
        assert process.stdout is not None
        read = asyncio.to_thread(process.stdout.readline)
        listening = json.loads(await asyncio.wait_for(read, START_TIMEOUT))
        read = asyncio.to_thread(process.stdout.readline)
        url = json.loads(await asyncio.wait_for(read, START_TIMEOUT))["metrics"]
        host, _, port = listening["listening"].rpartition(":")
        address = (host, int(port))
        metrics_host, _, metrics_port = url.removeprefix("http://").rpartition(":")
        metrics = (metrics_host, int(metrics_port.removesuffix("/metrics")))
        assert url == f"http://127.0.0.1:{metrics[1]}/metrics"

        good = token()
        async with connect(*address, hello=Hello(token=good), verify=False) as client:
            await say_and_hear(client, 10)
            during = await scrape(metrics)
            assert value(during, f"{B}sessions_open") == 1
            assert value(during, f"{B}uplink_frames_received_total") == 10
        assert await refused(address, Hello()) == ErrorCode.UNAUTHENTICATED
        forged = token("another-secret-of-at-least-thirty-two-octets")
        assert await refused(address, Hello(token=forged)) == ErrorCode.TOKEN_BAD_SIGNATURE
        assert await refused(address, Hello(version=99, token=good)) == (
            ErrorCode.VERSION_UNSUPPORTED
        )
        resume = Hello(resume_token=b"not a token", token=good)
        assert await refused(address, resume) == ErrorCode.RESUME_REFUSED

        samples = await scrape_until(metrics, closed(1))  # type: ignore[arg-type]
    finally:
        status, stderr = stop(process)
    assert status == 0 and "Traceback" not in stderr, stderr
    assert stderr.count("session refused from 127.0.0.1:") == 4, stderr

    info = {"server_id": SERVER_ID.hex(), "version": __version__, "engine": engine}
    assert value(samples, f"{B}info", **info) == 1
    expected = {
        ("sessions_accepted_total", ("resumed", "false")): 1,
        ("sessions_accepted_total", ("resumed", "true")): 0,
        ("sessions_refused_total", ("reason", "UNAUTHENTICATED")): 1,
        ("sessions_refused_total", ("reason", "TOKEN_BAD_SIGNATURE")): 1,
        ("sessions_refused_total", ("reason", "VERSION_UNSUPPORTED")): 1,
        ("sessions_refused_total", ("reason", "RESUME_REFUSED")): 1,
        ("resumptions_total", ("result", "malformed")): 1,
        ("sessions_closed_total", ("code", "NO_ERROR")): 1,
        ("uplink_frames_received_total", None): 10,
        ("downlink_frames_sent_total", None): 10,
        ("turns_started_total", None): 1,
        ("turns_cancelled_total", None): 0,
        ("handler_errors_total", None): 0,
        ("migrations_total", None): 0,
        ("connections_total", None): 5,
        ("version_negotiations_total", None): 0,
        ("dropped_datagrams_total", ("reason", "bad_encapsulation")): 0,
        ("dropped_datagrams_total", ("reason", "unparsable")): 0,
        ("session_rtt_milliseconds_count", None): 1,
        ("session_jitter_milliseconds_count", None): 1,
    }
    found = {
        (name, label): value(samples, B + name, **dict([label] if label else []))
        for name, label in expected
    }
    assert found == expected
    assert value(samples, f"{B}received_datagrams_total") > 20
    # Every family either engine exports is there (the endpoint's own events aside).
    names = {name for name, _ in samples if name.startswith(B)}
    assert {f"{B}stateless_resets_total", f"{B}endpoint_events_total"} <= names
    assert {f"{B}session_rtt_milliseconds_bucket", f"{B}sessions_ecn_total"} <= names


@asynccontextmanager
async def backend(
    engine: str,
    handler: SessionHandler,
    *,
    idle_timeout: float = 30.0,
    metrics: Address = ("127.0.0.1", 0),
    session_store: str = "memory://",
) -> AsyncIterator[tuple[Address, BackendTelemetry]]:
    """A backend on ``engine`` in this process, with ``/metrics``: its address and telemetry."""
    config = BackendConfig(
        listen=("127.0.0.1", 0),
        server_id=SERVER_ID,
        configs=(LB_CONFIG,),
        metrics=metrics,
        engine=engine,
        session_store=session_store,
    )
    if engine == "aioquic":
        server = VoiceServer(config, handler, idle_timeout=idle_timeout)
        try:
            await server.start()
            yield server.address, server.telemetry
        finally:
            await server.aclose()
        return
    from quicvoice.engine_ngtcp2.backend import engine_config
    from quicvoice.engine_ngtcp2.voice_server import Ngtcp2VoiceServer

    engine_settings, _ = engine_config(config)
    services = VoiceServer(config, handler)
    ngtcp2 = Ngtcp2VoiceServer(
        replace(engine_settings, idle_timeout=idle_timeout),
        handler,
        services=services,
        metrics=config.metrics,
    )
    try:
        address = await ngtcp2.start()
        yield address, ngtcp2.telemetry
    finally:
        ngtcp2.close()
        await services.aclose()
        await ngtcp2.wait_closed()


def metrics_of(telemetry: BackendTelemetry) -> Address:
    address = telemetry.metrics_address
    assert address is not None
    return address


async def turn_then_failure(session: ServerSession) -> None:
    """Open a turn at the first frame; when the client cancels it, fail."""
    async for event in session:
        if isinstance(event, AudioReceived) and session.stats().turns == 0:
            turn = session.start_turn()
            session.send_turn_audio(turn, FRAME, 0)
        elif isinstance(event, TurnCancelled):
            raise ValueError("the application broke")


@pytest.mark.asyncio
@pytest.mark.parametrize("engine", ENGINES)
async def test_a_migration_a_client_cancel_and_a_failing_handler(
    engine: str, spans: InMemorySpanExporter
) -> None:
    async with backend(engine, turn_then_failure) as (address, telemetry):
        async with connect(*address, local_address="127.0.0.2", verify=False) as client:
            await client.migrate("127.0.0.3")
            client.send_audio(FRAME)
            ended: SessionClosed | None = None
            while ended is None:
                event = await asyncio.wait_for(client.receive(), 10)
                if isinstance(event, TurnStarted):
                    client.cancel_turn(event.turn_id)
                elif isinstance(event, SessionClosed):
                    ended = event
            assert ended.error_code == ErrorCode.INTERNAL_ERROR
        samples = await scrape_until(
            metrics_of(telemetry),
            closed(1, "INTERNAL_ERROR"),  # type: ignore[arg-type]
        )
        deadline = asyncio.get_running_loop().time() + 5
        while not any(s.name == "quicvoice.session" for s in spans.get_finished_spans()):
            assert asyncio.get_running_loop().time() < deadline, "the session span never ended"
            await asyncio.sleep(0.02)
    assert value(samples, f"{B}migrations_total") == 1
    assert value(samples, f"{B}handler_errors_total") == 1
    assert value(samples, f"{B}turns_started_total") == 1
    assert value(samples, f"{B}turns_cancelled_total") == 1

    (session,) = [s for s in spans.get_finished_spans() if s.name == "quicvoice.session"]
    attributes = dict(session.attributes or {})
    assert attributes["quicvoice.close.name"] == "INTERNAL_ERROR"
    assert attributes["quicvoice.migrations"] == 1
    assert attributes["quicvoice.server_id"] == SERVER_ID.hex()
    assert session.status.status_code is StatusCode.ERROR
    (migration,) = [e for e in session.events if e.name == "quicvoice.migration"]
    assert str((migration.attributes or {})["quicvoice.migration.from"]).startswith("127.0.0.2:")
    assert str((migration.attributes or {})["quicvoice.migration.to"]).startswith("127.0.0.3:")
    (exception,) = [e for e in session.events if e.name == "exception"]
    assert (exception.attributes or {})["exception.type"] == "ValueError"
    (turn,) = [s for s in spans.get_finished_spans() if s.name == "quicvoice.turn"]
    assert turn.parent is not None and turn.parent.span_id == session.context.span_id
    assert (turn.attributes or {})["quicvoice.turn.cancelled_by"] == "client"


@pytest.mark.asyncio
@pytest.mark.parametrize("engine", ENGINES)
async def test_strangers_datagrams_are_counted_alike(engine: str) -> None:
    """Short headers for CIDs of this backend that no connection holds get a stateless reset
    and count as unknown CIDs; those of a configuration not in use are dropped and counted."""
    ours = QuicLbConnectionIdGenerator(SERVER_ID, LB_CONFIG, bytes(32))
    strangers = [b"\x40" + ours.generate() + os.urandom(40) for _ in range(5)]
    # (Config 1 is not configured. Unroutable 0b111 CIDs are not used: the ngtcp2 endpoint
    # resets those of its length, the aioquic backend does not.)
    unknown = [b"\x40" + bytes([1 << 5 | 16]) + os.urandom(16 + 40) for _ in range(3)]
    async with backend(engine, listen_forever) as (address, telemetry):
        loop = asyncio.get_running_loop()
        resets: asyncio.Queue[bytes] = asyncio.Queue()

        class Stranger(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, _: object) -> None:
                resets.put_nowait(data)

        transport, _ = await loop.create_datagram_endpoint(Stranger, local_addr=("127.0.0.1", 0))
        try:
            for datagram in strangers + unknown:
                transport.sendto(datagram, address)
            samples = await scrape_until(
                metrics_of(telemetry),
                lambda s: value(s, f"{B}received_datagrams_total") == 8,
            )
            answers = [await asyncio.wait_for(resets.get(), 5) for _ in strangers]
        finally:
            transport.close()
    assert all(len(answer) < 46 and answer[0] & 0xC0 == 0x40 for answer in answers)
    assert value(samples, f"{B}stateless_resets_total") == 5
    assert value(samples, f"{B}dropped_datagrams_total", reason="unknown_cid") == 8
    assert value(samples, f"{B}dropped_datagrams_total", reason="unparsable") == 0
    assert value(samples, f"{B}connections_total") == 0
    assert value(samples, f"{B}endpoint_events_total", event="probes_answered") == 0


async def listen_forever(session: ServerSession) -> None:
    async for event in session:
        if isinstance(event, SessionClosed):
            return


@pytest.mark.asyncio
@pytest.mark.parametrize("engine", ENGINES)
async def test_a_client_that_vanishes_is_closed_by_the_idle_timeout(engine: str) -> None:
    async with backend(engine, listen_forever, idle_timeout=1.0) as (address, telemetry):
        relay = UdpRelay(address)
        front = await relay.start()
        async with connect(*front, verify=False, reconnect=False) as client:
            client.send_audio(FRAME)
            metrics = metrics_of(telemetry)
            await scrape_until(metrics, lambda s: value(s, f"{B}uplink_frames_received_total") == 1)
            relay.close()  # the client's network is gone: nothing reaches the backend
            samples = await scrape_until(
                metrics,
                closed(1, "IDLE_TIMEOUT"),
                timeout=10,  # type: ignore[arg-type]
            )
    assert sum(v for (n, _), v in samples.items() if n == f"{B}sessions_closed_total") == 1


async def saving(session: ServerSession) -> None:
    async for event in session:
        if isinstance(event, EventReceived):
            session.state["saved"] = event.data
            session.checkpoint()
            session.send_event("saving")
        elif isinstance(event, SessionClosed):
            return


@pytest.mark.asyncio
@pytest.mark.parametrize("engine", ENGINES)
async def test_store_failures_are_counted(engine: str, own_redis_server: RedisServer) -> None:
    store = own_redis_server.unique_url(timeout="0.2")
    async with backend(engine, saving, session_store=store) as (address, telemetry):
        metrics = metrics_of(telemetry)
        async with connect(*address, verify=False, reconnect=False) as client:
            assert client.session is not None and client.session.resume_token is not None
            resume_token = client.session.resume_token
            own_redis_server.stop()
            client.send_event("order", "taro milk tea")
            await client.wait_event("saving")
            await scrape_until(
                metrics, lambda s: value(s, f"{B}store_errors_total", operation="checkpoint") >= 1
            )
        code = await refused(address, Hello(resume_token=resume_token))
        assert code == ErrorCode.STATE_UNAVAILABLE
        samples = await scrape(metrics)
    assert value(samples, f"{B}store_errors_total", operation="resume") == 1
    assert value(samples, f"{B}resumptions_total", result="state_unavailable") == 1
    assert value(samples, f"{B}sessions_refused_total", reason="STATE_UNAVAILABLE") == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("engine", ENGINES)
async def test_a_metrics_address_in_use_stops_the_start(engine: str) -> None:
    async with backend(engine, listen_forever) as (_, telemetry):
        taken = metrics_of(telemetry)
        port = free_udp_port()
        config = BackendConfig(
            listen=("127.0.0.1", port), configs=(LB_CONFIG,), metrics=taken, engine=engine
        )
        with pytest.raises(ConfigurationError, match="^metrics: cannot listen on 127.0.0.1:"):
            if engine == "aioquic":
                other = VoiceServer(config, listen_forever)
                try:
                    await other.start()
                finally:
                    await other.aclose()
            else:
                from quicvoice.engine_ngtcp2.backend import voice_server

                ngtcp2, _ = voice_server(config, listen_forever)
                try:
                    await ngtcp2.start()
                finally:
                    ngtcp2.close()
                    assert ngtcp2.services is not None
                    await ngtcp2.services.aclose()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))  # the failed start left no socket behind


@pytest.mark.skipif(not AVAILABLE, reason=f"ngtcp2 engine not built: {UNAVAILABLE}")
def test_serve_engine_ngtcp2_names_a_metrics_address_in_use(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        host, port = taken.getsockname()[:2]
        result = subprocess.run(
            [
                sys.executable, "-m", "quicvoice.cli", "serve",
                "--config", str(backend_file(tmp_path, "ngtcp2")),
                "--listen", f"127.0.0.1:{free_udp_port()}",
                "--metrics", f"{host}:{port}",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "QV_METRICS_TEST_SECRET": SECRET},
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"quicvoice serve: metrics: cannot listen on {host}:{port}")
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("engine", ENGINES)
def test_each_worker_serves_its_own_metrics(tmp_path: Path, engine: str) -> None:
    """``serve --workers 2 --metrics 127.0.0.1:0``: each worker prints its own metrics line
    and its ``info`` names its own server ID and the engine."""
    config = backend_file(tmp_path, engine, top=f'reset_key = "{"11" * 32}"\n')
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    process = subprocess.Popen(
        [
            sys.executable, "-m", "quicvoice.cli", "serve", "--config", str(config),
            "--listen", f"127.0.0.1:{free_udp_port()}", "--metrics", "127.0.0.1:0",
            "--workers", "2",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**environment, "QV_METRICS_TEST_SECRET": SECRET},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        lines = [json.loads(process.stdout.readline()) for _ in range(5)]
        servers = {line["server_id"] for line in lines if "listening" in line}
        (workers,) = [line["workers"] for line in lines if "workers" in line]
        assert servers == {worker["server_id"] for worker in workers} and len(servers) == 2
        seen = set()
        for line in lines:
            if "metrics" in line:
                with urllib.request.urlopen(line["metrics"], timeout=5) as response:
                    samples = parse(response.read().decode())
                (info,) = [dict(labels) for name, labels in samples if name == f"{B}info"]
                assert info["engine"] == engine
                seen.add(info["server_id"])
        assert seen == servers
    finally:
        status, stderr = stop(process)
    assert status == 0 and "Traceback" not in stderr, stderr
