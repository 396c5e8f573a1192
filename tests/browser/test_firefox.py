"""Headless Firefox (Debian's firefox-esr) runs the browser client through the forwarder.

The same deployment as the Chromium end-to-end test (``quicvoice-lb`` + two backends + the
page naming the VIP), driven over Marionette (``firefox.py``): the page connects to the VIP
with the pinned certificate hash, streams frames, says ``bye``; the backend counted them. A
refusal reaches Firefox as the WebTransport session's ``closeCode`` too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quicvoice.session.codes import ErrorCode

from .firefox import Marionette, firefox, require_firefox
from .test_browser_e2e import SERVER_IDS, Deployment

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

FRAMES = 25

CALL = """
const done = arguments[arguments.length - 1];
const [frames, options] = arguments;
(async () => {
  const { connectFromConfig } = await import("/quicvoice.js");
  const out = { hasWebTransport: typeof WebTransport };
  try {
    const session = await connectFromConfig("/config.json", options);
    out.serverId = session.welcome.serverId;
    out.sessionId = session.welcome.sessionId;
    const tone = new Int16Array(320);
    for (let i = 0; i < tone.length; i++) tone[i] = Math.round(8000 * Math.sin(i / 4));
    for (let i = 0; i < frames; i++) session.sendAudio(tone);
    const bye = await session.bye();
    out.bye = bye && bye.uplink_frames;
  } catch (error) {
    out.error = String(error && error.message || error);
    out.code = error.code ?? null;
  }
  return out;
})().then(done, (error) => done({ failed: String(error && error.stack || error) }));
"""

REFUSED = """
const done = arguments[arguments.length - 1];
(async () => {
  const { VoiceSession } = await import("/quicvoice.js");
  const config = await (await fetch("/config.json")).json();
  const session = new VoiceSession(config.url, {
    serverCertificateHashes: [config.certificate_sha256], protocolVersion: 9 });
  let readyCode = null;
  try { await session.ready; } catch (error) { readyCode = error.code ?? null; }
  let raw;
  try {
    const info = await session.transport.closed;
    raw = { closeCode: info.closeCode, reason: info.reason };
  } catch (error) {
    raw = { rejected: String(error) };
  }
  return { readyCode, raw, closeInfo: session.closeInfo };
})().then(done, (error) => done({ failed: String(error && error.stack || error) }));
"""


@pytest.fixture()
def browser_and_deployment(tmp_path: Path) -> Iterator[tuple[Marionette, str, Deployment]]:
    require_firefox()
    deployment = Deployment(tmp_path)
    try:
        deployment.start()
        with firefox() as (marionette, version):
            assert deployment.web is not None
            host, port = deployment.web.address
            marionette.call("WebDriver:Navigate", {"url": f"http://{host}:{port}/"})
            yield marionette, version, deployment
    finally:
        deployment.stop()


def test_firefox_talks_to_a_backend_through_the_forwarder(
    browser_and_deployment: tuple[Marionette, str, Deployment],
) -> None:
    marionette, version, deployment = browser_and_deployment
    assert int(version.split(".")[0]) >= 114, version  # WebTransport since Firefox 114
    result: Any = marionette.execute_async(CALL, FRAMES, {})
    assert "failed" not in result and "error" not in result, result
    assert result["hasWebTransport"] == "function"
    assert result["serverId"] in SERVER_IDS
    assert result["bye"] == FRAMES
    record = deployment.records[result["sessionId"]]
    assert [frame.seq for frame in record["frames"]] == list(range(FRAMES))
    assert all(len(frame.payload) == 640 for frame in record["frames"])


def test_firefox_reads_the_refusal_code(
    browser_and_deployment: tuple[Marionette, str, Deployment],
) -> None:
    marionette, _, _ = browser_and_deployment
    result: Any = marionette.execute_async(REFUSED)
    assert "failed" not in result, result
    assert result["raw"].get("closeCode") == ErrorCode.VERSION_UNSUPPORTED, result
    assert "version 9" in result["raw"]["reason"], result
    assert result["readyCode"] == ErrorCode.VERSION_UNSUPPORTED, result
