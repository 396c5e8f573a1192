"""A real backend's ``/metrics`` after real calls on loopback, parsed by Prometheus' parser."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio

from quicvoice.agent import demo_agent
from quicvoice.asyncio.client import VoiceClient, connect
from quicvoice.asyncio.config import BackendConfig
from quicvoice.asyncio.server import ServerSession, SessionHandler, VoiceServer
from quicvoice.audio import encode_stream, make_codec
from quicvoice.errors import ConfigurationError, SessionRefusedError
from quicvoice.session.codes import ErrorCode
from quicvoice.session.events import EventReceived, SessionClosed, TurnEnded
from quicvoice.session.messages import Hello, UplinkMode

from ..conftest import RedisServer
from .metrics_scrape import Samples, parse, scrape, scrape_until, value
from .voice_harness import FRAME, LB_CONFIG, SERVER_ID, running_server

pytestmark = pytest.mark.integration
B = "quicvoice_backend_"
FRAMES = 50


def make_server(handler: SessionHandler = demo_agent) -> VoiceServer:
    config = BackendConfig(
        listen=("127.0.0.1", 0),
        server_id=SERVER_ID,
        configs=(LB_CONFIG,),
        metrics=("127.0.0.1", 0),
    )
    return VoiceServer(config, handler)


@pytest_asyncio.fixture
async def server() -> AsyncIterator[VoiceServer]:
    server = make_server()
    await server.start()
    try:
        yield server
    finally:
        await server.aclose()


def metrics_address(server: VoiceServer) -> tuple[str, int]:
    address = server.telemetry.metrics_address
    assert address is not None
    return address


async def talk(client: VoiceClient, frames: int) -> None:
    """Speak ``frames`` frames, let the demo agent echo them as a turn, say bye."""
    for _ in range(frames):
        client.send_audio(FRAME)
        await asyncio.sleep(0.002)
    client.end_audio()

    async def turn_ended() -> None:
        while not isinstance(await client.receive(), TurnEnded):
            pass

    await asyncio.wait_for(turn_ended(), 5.0)
    assert await client.bye() == frames


def sessions_closed(expected: int) -> object:
    def condition(samples: Samples) -> bool:
        closed = sum(v for (n, _), v in samples.items() if n == f"{B}sessions_closed_total")
        return closed >= expected and value(samples, f"{B}sessions_open") == 0

    return condition


@pytest.mark.asyncio
async def test_calls_and_a_refusal_are_counted(server: VoiceServer) -> None:
    host, port = server.address
    address = metrics_address(server)
    async with connect(host, port, verify=False) as client:
        await talk(client, 25)
        during = await scrape(address)
        assert value(during, f"{B}sessions_open") == 1
        # Counted while the session is open: read from its statistics at scrape time.
        assert value(during, f"{B}uplink_frames_received_total") == 25
    async with connect(host, port, webtransport=True, verify=False) as client:
        await talk(client, 10)
    with pytest.raises(SessionRefusedError) as refused:
        async with connect(host, port, hello=Hello(codecs=("G729/8000",)), verify=False):
            pass
    assert refused.value.error_code == ErrorCode.UNSUPPORTED
    with pytest.raises(SessionRefusedError):
        async with connect(host, port, hello=Hello(resume_token=b"not a token"), verify=False):
            pass

    samples = await scrape_until(address, sessions_closed(2))  # type: ignore[arg-type]
    assert value(samples, f"{B}sessions_accepted_total", resumed="false") == 2
    assert value(samples, f"{B}sessions_accepted_total", resumed="true") == 0
    assert value(samples, f"{B}sessions_refused_total", reason="UNSUPPORTED") == 1
    assert value(samples, f"{B}sessions_refused_total", reason="RESUME_REFUSED") == 1
    assert value(samples, f"{B}resumptions_total", result="malformed") == 1
    assert value(samples, f"{B}sessions_closed_total", code="NO_ERROR") == 2
    # Folded into the totals when the sessions closed: nothing lost, nothing counted twice.
    assert value(samples, f"{B}uplink_frames_received_total") == 35
    assert value(samples, f"{B}downlink_frames_sent_total") == 35
    assert value(samples, f"{B}turns_started_total") == 2
    assert value(samples, f"{B}handler_errors_total") == 0
    assert value(samples, f"{B}session_rtt_milliseconds_count") >= 2
    assert value(samples, f"{B}session_rtt_milliseconds_bucket", le="+Inf") >= 2
    assert 0 < value(samples, f"{B}session_rtt_milliseconds_sum") < 2 * 1000
    assert value(samples, f"{B}session_jitter_milliseconds_count") >= 2
    assert value(samples, f"{B}connections_total") == 4
    assert value(samples, f"{B}received_datagrams_total") == server.counters["datagrams"]
    assert value(samples, f"{B}dropped_datagrams_total", reason="unknown_cid") >= 0
    info = {"server_id": SERVER_ID.hex(), "version": "0.1.0", "engine": "aioquic"}
    assert value(samples, f"{B}info", **info) == 1


@pytest.mark.asyncio
async def test_a_migration_and_a_failing_handler_are_counted() -> None:
    async def failing(session: ServerSession) -> None:
        await session.receive()
        raise ValueError("the application broke")

    failing_server = make_server(failing)
    await failing_server.start()
    try:
        host, port = failing_server.address
        address = metrics_address(failing_server)
        async with connect(host, port, local_address="127.0.0.2", verify=False) as client:
            await client.migrate("127.0.0.3")
            client.send_audio(FRAME)

            async def closed_by_server() -> SessionClosed:
                while True:
                    event = await client.receive()
                    if isinstance(event, SessionClosed):
                        return event

            closed = await asyncio.wait_for(closed_by_server(), 5.0)
            assert closed.error_code == ErrorCode.INTERNAL_ERROR
        samples = await scrape_until(address, sessions_closed(1))  # type: ignore[arg-type]
        assert value(samples, f"{B}migrations_total") == 1
        assert value(samples, f"{B}handler_errors_total") == 1
        assert value(samples, f"{B}sessions_closed_total", code="INTERNAL_ERROR") == 1
    finally:
        await failing_server.aclose()


@pytest.mark.asyncio
async def test_hostile_http_on_the_metrics_port_does_not_disturb_a_call(
    server: VoiceServer,
) -> None:
    host, port = server.address
    metrics_host, metrics_port = metrics_address(server)
    hostile = [
        b"\x00" * 5000,
        b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
        b"GET /../../etc/passwd HTTP/1.1\r\n\r\n",
        b"DELETE /metrics HTTP/1.1\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\n",  # never finished: held until the deadline
        b"",  # connects and says nothing
    ]
    writers = []
    async with connect(host, port, verify=False) as client:
        for request in hostile * 3:
            reader, writer = await asyncio.open_connection(metrics_host, metrics_port)
            writer.write(request)
            writers.append(writer)
        await talk(client, 50)  # every frame arrives and is echoed while they hang on
        for writer in writers:
            writer.close()
    samples = await scrape_until((metrics_host, metrics_port), sessions_closed(1))
    assert value(samples, f"{B}uplink_frames_received_total") == 50


def test_a_bad_metrics_address_is_a_configuration_error_naming_it() -> None:
    for bad in ("localhost:9100", "127.0.0.1", "127.0.0.1:70000", "[::1", 9100):
        with pytest.raises(ConfigurationError, match="^metrics: "):
            BackendConfig.from_mapping({"metrics": bad})
    assert BackendConfig.from_mapping({"metrics": "[::1]:0"}).metrics == ("::1", 0)
    # In the forwarder's file the top-level key is the forwarder's own.
    shared = {
        "metrics": "127.0.0.1:9100",
        "backends": [{"server_id": "0a000001", "address": "127.0.0.1:4501"}],
    }
    assert BackendConfig.from_mapping(shared, server_id=b"\x0a\x00\x00\x01").metrics is None


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_with_metrics_from_the_command_line() -> None:
    process = subprocess.Popen(
        [
            sys.executable, "-m", "quicvoice.cli", "serve",
            "--listen", f"127.0.0.1:{free_udp_port()}", "--metrics", "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        listening = json.loads(process.stdout.readline())
        url = json.loads(process.stdout.readline())["metrics"]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        with urllib.request.urlopen(url, timeout=5) as response:
            samples = parse(response.read().decode())
        assert value(samples, f"{B}sessions_open") == 0
        info = {"server_id": listening["server_id"], "version": "0.1.0", "engine": "aioquic"}
        assert value(samples, f"{B}info", **info) == 1
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_serve_refuses_a_bad_metrics_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "quicvoice.cli", "serve", "--metrics", "localhost:9100"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--metrics" in result.stderr and "not an IPv4 address" in result.stderr


NO_OPENTELEMETRY = """
import asyncio, sys
sys.modules["opentelemetry"] = None  # as if opentelemetry-api were not installed
from quicvoice.asyncio.config import BackendConfig
from quicvoice.asyncio.server import VoiceServer
from quicvoice.agent import demo_agent
from quicvoice.audio import encode_stream, make_codec
from quicvoice.asyncio.client import connect

async def main():
    server = VoiceServer(BackendConfig(listen=("127.0.0.1", 0)), demo_agent)
    await server.start()
    async with connect(*server.address, verify=False) as client:
        client.send_audio(bytes(640))
        start = server.sessions()[0].start_turn()
        server.sessions()[0].end_turn(start)
    await server.aclose()
    loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry") and sys.modules[m])
    print(server.telemetry.tracing, loaded)

asyncio.run(main())
"""


def test_without_opentelemetry_nothing_is_imported_and_calls_work() -> None:
    result = subprocess.run(
        [sys.executable, "-c", NO_OPENTELEMETRY], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "[]"]


@pytest.mark.asyncio
async def test_store_failures_are_counted(own_redis_server: RedisServer) -> None:
    async def saving(session: ServerSession) -> None:
        async for event in session:
            if isinstance(event, EventReceived):
                session.state["saved"] = event.data
                session.checkpoint()
                session.send_event("saving")
            elif isinstance(event, SessionClosed):
                return  # (iterating on would see SessionClosed again and again)

    config = BackendConfig(
        listen=("127.0.0.1", 0),
        configs=(LB_CONFIG,),
        metrics=("127.0.0.1", 0),
        session_store=own_redis_server.unique_url(timeout="0.2"),
    )
    server = VoiceServer(config, saving)
    await server.start()
    try:
        host, port = server.address
        address = metrics_address(server)
        async with connect(host, port, verify=False, reconnect=False) as client:
            assert client.session is not None and client.session.resume_token is not None
            token = client.session.resume_token
            own_redis_server.stop()
            client.send_event("order", "taro milk tea")
            await client.wait_event("saving")
            await scrape_until(
                address, lambda s: value(s, f"{B}store_errors_total", operation="checkpoint") >= 1
            )
        with pytest.raises(SessionRefusedError) as refused:
            async with connect(
                host, port, hello=Hello(resume_token=token), verify=False, reconnect=False
            ):
                pass
        # A store that cannot answer is no verdict on the session: a retryable refusal.
        assert refused.value.error_code == ErrorCode.STATE_UNAVAILABLE
        samples = await scrape(address)
        assert value(samples, f"{B}store_errors_total", operation="resume") == 1
        assert value(samples, f"{B}resumptions_total", result="state_unavailable") == 1
        assert value(samples, f"{B}sessions_refused_total", reason="STATE_UNAVAILABLE") == 1
    finally:
        await server.aclose()


@pytest.mark.asyncio
async def test_a_metrics_address_in_use_is_a_configuration_error(server: VoiceServer) -> None:
    taken = metrics_address(server)
    config = BackendConfig(listen=("127.0.0.1", 0), metrics=taken)
    other = VoiceServer(config, demo_agent)
    with pytest.raises(ConfigurationError, match="^metrics: cannot listen on 127.0.0.1:"):
        await other.start()
    await other.aclose()


@pytest.mark.asyncio
async def test_realtime_concealment_is_counted_from_the_jitter_buffer() -> None:
    t = np.arange(FRAMES * 320) / 16000
    payloads = encode_stream(
        (5000 * np.sin(2 * np.pi * 200 * t)).astype(np.int16), 16000, make_codec("opus/48000")
    )
    arrived = 0

    def lossy(data: bytes, address: tuple[str, int]) -> bool:
        nonlocal arrived
        arrived += 1
        return arrived < 20 or arrived % 6 != 0  # a sixth of the call's packets, after setup

    async with running_server(accept_datagram=lossy) as server:
        host, port = server.address
        hello = Hello(codecs=("opus/48000",), uplink=UplinkMode.REALTIME)
        async with connect(host, port, hello=hello, verify=False) as client:
            loop = asyncio.get_running_loop()
            begin = loop.time()
            for index, payload in enumerate(payloads):
                await asyncio.sleep(max(0.0, begin + index * 0.02 - loop.time()))
                client.send_audio(payload)
            client.send_event("utterance.end", {"frames": FRAMES})
            client.send_event("session.playout")
            playout = (await client.wait_event("session.playout", 5.0)).data
            samples = parse(server.telemetry.render())
    concealed = playout["fec_frames"] + playout["plc_frames"] + playout["expand_frames"]
    assert concealed > 0
    assert value(samples, f"{B}uplink_frames_concealed_total") == concealed
    assert value(samples, f"{B}uplink_frames_too_late_total") == playout["packets_late"]
    assert value(samples, f"{B}uplink_frames_received_total") == playout["packets_received"]
