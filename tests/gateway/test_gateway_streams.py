"""The gateway in the test's event loop (``Gateway``), a backend behind the real forwarder:
a stream that breaks the Twilio protocol is closed with a logged reason that never quotes
it, while another call on the same gateway goes on; the L16 path transcodes through the
library's µ-law and resampler; the endpoint's bounds and health page."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from quicvoice.app import session_handler
from quicvoice.gateway.bridge import CallOutcome, CarrierSocket
from quicvoice.gateway.config import GatewayConfig
from quicvoice.gateway.server import Gateway
from quicvoice.gateway.twilio import CarrierLimits

from ..integration.deployment import Deployment, backends, free_port
from . import twilio_wire as wire
from .audio import dominant_hz, tone
from .phone_app import make_app
from .twilio_caller import TwilioCaller

pytestmark = pytest.mark.integration

SECRET = "Zq9SECRETxK"


class Records(list[dict[str, Any]]):
    """What the app noted, awaitable."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Event()

    def note(self, record: dict[str, Any]) -> None:
        self.append(record)
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


@asynccontextmanager
async def gateway_for(
    deployment: Deployment, records: Records, **options: Any
) -> AsyncIterator[Gateway]:
    async with backends(deployment, session_handler(make_app(records.note))) as servers:
        (server,) = servers.values()
        assert server.certificate_sha256 is not None
        config = GatewayConfig(
            backend=f"quic://127.0.0.1:{deployment.vip[1]}",
            listen=("127.0.0.1", 0),
            certificate_hashes=(server.certificate_sha256.hex(),),
            **options,
        )
        gateway = Gateway(config)
        await gateway.start()
        try:
            yield gateway
        finally:
            await gateway.aclose()


async def bad_stream(url: str, messages: list[str | bytes]) -> tuple[int | None, str]:
    """Send ``messages``; return how the gateway closed the WebSocket."""
    async with connect(url, compression=None, max_size=2**16) as ws:
        try:
            for message in messages:
                await ws.send(message)
            async with asyncio.timeout(10):
                async for _ in ws:
                    pass  # whatever the gateway sends until it closes
        except ConnectionClosed:
            pass
        return ws.close_code, ws.close_reason or ""


def started(sid: str) -> list[str | bytes]:
    return [wire.text(wire.connected()), wire.text(wire.start(1, sid))]


@pytest.mark.asyncio
async def test_a_broken_stream_is_closed_with_a_logged_reason_and_another_call_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quicvoice.gateway")
    deployment = Deployment(tmp_path, server_ids=["0a000001"])
    deployment.start_forwarder()
    records = Records()
    try:
        async with gateway_for(
            deployment, records, codecs=("L16/16000",), start_timeout=1.0
        ) as gateway:
            host, port = gateway.address
            url = f"ws://{host}:{port}/twilio"
            async with TwilioCaller.dial(url) as good:
                sids = [wire.sid("MZ") for _ in range(8)]
                bad_media = wire.media(2, sids[0], 1, 0, b"")
                bad_media["media"]["payload"] = SECRET + "%%"
                oversized = wire.media(2, sids[2], 1, 0, bytes(160))
                oversized["media"]["padding"] = SECRET * 1000
                attempts: dict[str, list[str | bytes]] = {
                    "not base64": [*started(sids[0]), wire.text(bad_media)],
                    "'media' before 'start'": [
                        wire.text(wire.connected()),
                        wire.text(wire.media(1, sids[1], 1, 0, bytes(160))),
                    ],
                    "size bound": [*started(sids[2]), wire.text(oversized)],
                    "a second 'start'": [*started(sids[3]), wire.text(wire.start(2, sids[3]))],
                    "unknown event": [*started(sids[4]), json.dumps({"event": SECRET})],
                    "binary": [*started(sids[5]), SECRET.encode()],
                    "not JSON": [*started(sids[6]), "{" + SECRET],
                    "no 'start' within": [wire.text(wire.connected())],
                }
                results = await asyncio.gather(
                    *(bad_stream(url, messages) for messages in attempts.values())
                )
                for (fault, _), (code, reason) in zip(attempts.items(), results, strict=True):
                    expected = 1009 if fault == "size bound" else 1008
                    assert code == expected, (fault, code, reason)
                    assert fault in reason or fault == "size bound", (fault, reason)
                    assert SECRET not in reason
                    logged = [r.getMessage() for r in caplog.records if fault in r.getMessage()]
                    assert logged, f"no log line for {fault}"
                assert all(SECRET not in r.getMessage() for r in caplog.records)
                assert gateway.stats().ended.get("protocol error", 0) == 7
                assert gateway.stats().ended.get("timeout", 0) == 1

                # Meanwhile the good call goes on: its codec is L16 at 16 kHz, transcoded.
                good.say(tone(440.0, 8000, 0.6))
                good.pause(0.2)
                good.press("#")
                await good.wait_until(lambda: any(m.returned for m in good.log.marks), 10)
                heard = TwilioCaller.samples(good.log.played)
                assert len(good.log.played) >= 28
                assert abs(dominant_hz(heard, 8000) - 440.0) < 5
                starts = [r for r in records if r["phone"] == "start"]
                assert [r["codec"] for r in starts if not r["resumed"]].count("L16/16000") >= 1
                assert gateway.stats().active_calls == 1
                good.press("0")  # the app ends the call: the gateway hangs up the stream
                await good.wait_until(lambda: good.log.closed is not None, 10)
                assert good.log.closed is not None and good.log.closed[0] == 1000
                assert good.log.closed[1].startswith("the voice session ended")
            # The broken streams left no session open on the backend.
            broken = {r["session"] for r in records if r["phone"] == "start"} - {
                r["session"] for r in records if r["phone"] == "reply"
            }
            assert len(broken) == 6  # those whose 'start' came through
            await records.wait_for(
                lambda: broken <= {r["session"] for r in records if r["phone"] == "end"}, 5
            )
    finally:
        deployment.stop()


@pytest.mark.asyncio
async def test_the_endpoint_turns_away_calls_beyond_its_bound_and_answers_health_checks() -> None:
    release = asyncio.Event()

    async def hold(carrier: CarrierSocket, config: GatewayConfig) -> CallOutcome:
        await release.wait()
        return CallOutcome(reason="held", kind="stopped")

    config = GatewayConfig(
        backend="quic://127.0.0.1:9", listen=("127.0.0.1", 0), max_calls=1, verify=False
    )
    gateway = Gateway(config, runner=hold)
    await gateway.start()
    try:
        host, port = gateway.address
        async with connect(f"ws://{host}:{port}/a") as first:
            async with connect(f"ws://{host}:{port}/b") as second:
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(second.recv(), 5)
                assert second.close_code == 1013
            health = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5).read()
            )
            assert json.loads(health) == {"ok": True, "active_calls": 1}
            release.set()
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(first.recv(), 5)
        stats = gateway.stats()
        assert (stats.calls, stats.refused, stats.ended) == (1, 1, {"stopped": 1})
    finally:
        await gateway.aclose()


def test_the_configuration_names_what_is_wrong() -> None:
    from quicvoice.errors import ConfigurationError

    good = {"backend": "quic://127.0.0.1:4433"}
    for bad, fault in [
        ({"backend": "udp://x"}, "backend"),
        ({"codecs": ("G729/8000",)}, "codecs"),
        ({"codecs": ()}, "codecs"),
        ({"token": ""}, "token"),
        ({"verify": False, "ca_file": "ca.pem"}, "verify"),
        ({"idle_timeout": 0}, "idle_timeout"),
        ({"max_calls": 0}, "max_calls"),
        ({"dialect": "plivo"}, "dialect"),
    ]:
        with pytest.raises(ConfigurationError, match=fault):
            GatewayConfig(**{**good, **bad})
    assert GatewayConfig(**good, limits=CarrierLimits(max_media_bytes=160)).limits


@pytest.mark.asyncio
async def test_no_backend_closes_the_stream_without_saying_where_it_looked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="quicvoice.gateway")
    silent = free_port()  # nothing answers there
    config = GatewayConfig(
        backend=f"quic://127.0.0.1:{silent}",
        listen=("127.0.0.1", 0),
        verify=False,
        connect_timeout=0.5,
    )
    gateway = Gateway(config)
    await gateway.start()
    try:
        host, port = gateway.address
        code, reason = await bad_stream(f"ws://{host}:{port}/", started(wire.sid("MZ")))
        assert (code, reason) == (1011, "no voice session")
        logged = [r.getMessage() for r in caplog.records if "no voice session" in r.getMessage()]
        assert logged and "ConnectTimeoutError" in logged[0]
        assert gateway.stats().ended == {"backend unavailable": 1}
    finally:
        await gateway.aclose()
