"""Real headless Chromium reads the code of every way a backend refuses or ends a session.

Before, Chromium reported only "Connection lost": aioquic's CONNECTION_CLOSE drops the
``error`` message queued just before it, and a bare CONNECTION_CLOSE is no WebTransport
session close. Now the backend closes the session with CLOSE_WEBTRANSPORT_SESSION (code and
reason) and the connection only once that has arrived, so ``WebTransport.closed`` resolves
with ``closeCode`` and ``reason``, and the browser client (``quicvoice.js``) reports them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from quicvoice.agent import demo_agent
from quicvoice.asyncio.config import BackendConfig
from quicvoice.asyncio.server import VoiceServer
from quicvoice.asyncio.web import WebServer, start_web
from quicvoice.auth import AuthConfig, CallRequest, Refuse, SigningKey
from quicvoice.session.codes import ErrorCode

from .harness import LoopThread, chromium, require_browser

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOM_CLOSED = 0x1234

ATTEMPT = """
const done = arguments[arguments.length - 1];
const [url, hash, options, misstep] = arguments;
(async () => {
  const { VoiceSession, encodeVarint, encodeFrame } = await import("/quicvoice.js");
  const session = new VoiceSession(url, { serverCertificateHashes: [hash], ...options });
  const errors = [];
  session.addEventListener("error", (e) => errors.push(e.detail));
  const closed = new Promise(
    (resolve) => session.addEventListener("close", (e) => resolve(e.detail)));
  let readyError = null;
  let welcomed = false;
  try {
    await session.ready;
    welcomed = true;
    if (misstep === "oversized-frame") {
      // A frame length of 4608 (varint 0x5200): over the 4104 limit.
      session._uplinkWriter.write(encodeVarint(4608));
    } else if (misstep === "short-frame") {
      // 100 octets of L16: not 20 ms of 16 kHz (640).
      session._uplinkWriter.write(encodeFrame(0, 0, new Uint8Array(100)));
    }
  } catch (error) {
    readyError = { code: error.code ?? null, message: String(error.message) };
  }
  const close = await Promise.race([
    closed, new Promise((resolve) => setTimeout(() => resolve("no close within 8 s"), 8000))]);
  let raw;
  try {
    const info = await session.transport.closed;
    raw = { closeCode: info.closeCode, reason: info.reason };
  } catch (error) {
    raw = { rejected: String(error) };
  }
  return { welcomed, readyError, errors, close, raw };
})().then(done, (error) => done({ failed: String(error && error.stack || error) }));
"""


@dataclass
class Backends:
    """An open backend (with the page, an accept hook) and one that requires a token."""

    driver: Any
    open_url: str
    open_hash: str
    locked_url: str
    locked_hash: str

    def attempt(self, url: str, hash_: str, options: dict[str, Any], misstep: str = "") -> Any:
        result = self.driver.execute_async_script(ATTEMPT, url, hash_, options, misstep)
        assert "failed" not in result, result
        return result


def refuse_closed_rooms(request: CallRequest) -> Refuse | None:
    if request.metadata.get("room") == "closed":
        return Refuse(code=ROOM_CLOSED, reason="room 7 is closed")
    return None


@pytest.fixture(scope="module")
def backends() -> Iterator[Backends]:
    require_browser()
    loop = LoopThread()
    locked_auth = AuthConfig(keys=(SigningKey.hs256(bytes(range(32))).verification_key(),))

    async def start() -> tuple[VoiceServer, VoiceServer, WebServer]:
        open_backend = VoiceServer(
            BackendConfig(listen=("127.0.0.1", 0)), demo_agent, accept=refuse_closed_rooms
        )
        locked = VoiceServer(BackendConfig(listen=("127.0.0.1", 0), auth=locked_auth), demo_agent)
        await open_backend.start()
        await locked.start()
        return open_backend, locked, await start_web(open_backend, ("127.0.0.1", 0))

    open_backend, locked, web = loop.run(start())
    try:
        with chromium(script_timeout=60) as driver:
            host, port = web.address
            driver.get(f"http://{host}:{port}/")
            hashes = []
            for server in (open_backend, locked):
                assert server.certificate_sha256 is not None
                hashes.append(server.certificate_sha256.hex())
            yield Backends(
                driver=driver,
                open_url=f"https://127.0.0.1:{open_backend.address[1]}/voice",
                open_hash=hashes[0],
                locked_url=f"https://127.0.0.1:{locked.address[1]}/voice",
                locked_hash=hashes[1],
            )
    finally:

        async def stop() -> None:
            web.close()
            open_backend.close()
            locked.close()

        loop.run(stop())
        loop.close()


def assert_closed_with(result: Any, code: int, reason_has: str, *, welcomed: bool) -> None:
    assert result["welcomed"] is welcomed, result
    # WebTransport itself: the session closed cleanly with the server's code and reason.
    assert result["raw"].get("closeCode") == code, result
    assert reason_has in result["raw"]["reason"], result
    # The browser client: its close event, its error event, and (a refusal) its ready promise.
    assert result["close"]["code"] == code, result
    assert any(error["code"] == code and error["remote"] for error in result["errors"]), result
    if not welcomed:
        assert result["readyError"]["code"] == code, result
        assert reason_has in result["readyError"]["message"], result


def test_unsupported_version(backends: Backends) -> None:
    result = backends.attempt(backends.open_url, backends.open_hash, {"protocolVersion": 2})
    assert_closed_with(result, ErrorCode.VERSION_UNSUPPORTED, "version 2", welcomed=False)


def test_no_common_codec(backends: Backends) -> None:
    result = backends.attempt(backends.open_url, backends.open_hash, {"codecs": ["G729/8000"]})
    assert_closed_with(result, ErrorCode.UNSUPPORTED, "no common codec", welcomed=False)


def test_frame_over_the_length_limit(backends: Backends) -> None:
    result = backends.attempt(backends.open_url, backends.open_hash, {}, "oversized-frame")
    assert_closed_with(result, ErrorCode.FRAME_ERROR, "4608", welcomed=True)


def test_frame_that_does_not_match_the_codec(backends: Backends) -> None:
    result = backends.attempt(backends.open_url, backends.open_hash, {}, "short-frame")
    assert_closed_with(result, ErrorCode.FRAME_MISMATCH, "100-octet", welcomed=True)


def test_token_required(backends: Backends) -> None:
    result = backends.attempt(backends.locked_url, backends.locked_hash, {})
    assert_closed_with(result, ErrorCode.UNAUTHENTICATED, "", welcomed=False)


def test_application_refusal_code(backends: Backends) -> None:
    result = backends.attempt(
        backends.open_url, backends.open_hash, {"metadata": {"room": "closed"}}
    )
    assert_closed_with(result, ROOM_CLOSED, "room 7 is closed", welcomed=False)


def test_an_accepted_call_still_works(backends: Backends) -> None:
    """The same page and backend: a call that breaks nothing is welcomed and ends cleanly."""
    script = """
const done = arguments[arguments.length - 1];
const [url, hash] = arguments;
(async () => {
  const { connect } = await import("/quicvoice.js");
  const session = await connect(url, { serverCertificateHashes: [hash],
                                       metadata: { room: "7" } });
  for (let i = 0; i < 5; i++) session.sendAudio(new Int16Array(320));
  let refused = null;
  try { session.sendAudio(new Int16Array(100)); } catch (error) { refused = error.name; }
  const bye = await session.bye();
  return { bye: bye && bye.uplink_frames, refused, state: session.state };
})().then(done, (error) => done({ failed: String(error && error.stack || error) }));
"""
    result = backends.driver.execute_async_script(script, backends.open_url, backends.open_hash)
    assert result == {"bye": 5, "refused": "RangeError", "state": "closing"} or result == {
        "bye": 5,
        "refused": "RangeError",
        "state": "closed",
    }, result
