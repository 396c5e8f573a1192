"""The demo agent's ear in realtime mode: it plays the uplink's jitter buffer, reports the
playout (``session.playout``) and records it (``record_dir``, ``serve --record-uplink``)."""

from __future__ import annotations

import asyncio
import json
import wave
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from quicvoice.agent import demo_agent
from quicvoice.asyncio.client import connect
from quicvoice.audio import encode_stream, make_codec
from quicvoice.session.events import TurnEnded
from quicvoice.session.messages import Hello, UplinkMode

from .voice_harness import running_server

pytestmark = pytest.mark.integration
FRAMES = 50


def test_the_agent_records_what_its_jitter_buffer_played(tmp_path: Path) -> None:
    t = np.arange(FRAMES * 320) / 16000
    voice = (5000 * np.sin(2 * np.pi * 200 * t)).astype(np.int16)
    payloads = encode_stream(voice, 16000, make_codec("opus/48000"))
    assert len(payloads) == FRAMES
    results: dict[str, object] = {}

    async def scenario() -> None:
        handler = partial(demo_agent, record_dir=tmp_path)
        async with running_server(handler) as server:
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
                results["playout"] = (await client.wait_event("session.playout", 5.0)).data
                while not isinstance(await client.receive(), TurnEnded):
                    pass
                results["received"] = await client.bye()
            # A reliable call has no jitter buffer: the reply says so.
            async with connect(host, port, verify=False) as client:
                client.send_event("session.playout")
                results["reliable"] = (await client.wait_event("session.playout", 5.0)).data

    asyncio.run(scenario())
    playout = results["playout"]
    assert isinstance(playout, dict)
    assert playout["final"] is True and playout["ended_by"] == "sequence"
    assert playout["rate"] == 48000 and playout["first_sequence"] == 0
    assert results["received"] == playout["packets_received"] == FRAMES
    # Loopback: every packet arrives in time and is played once, alone or merged with the
    # next one (a scheduling stall lets packets pile up; the buffer then merges to catch up).
    assert playout["packets_late"] == playout["packets_discarded"] == playout["packets_lost"] == 0
    assert playout["normal_frames"] + 2 * playout["accelerated_frames"] == FRAMES
    assert playout["frames"] == (
        playout["normal_frames"] + playout["accelerated_frames"] + playout["expand_frames"]
    )
    assert playout["expand_frames"] <= 3
    assert playout["fec_frames"] == playout["plc_frames"] == 0
    assert playout["concealment_ratio"] < 0.05
    recording = Path(playout["recording"])
    assert recording.parent == tmp_path
    with wave.open(str(recording)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth()) == (1, 2)
        assert reader.getframerate() == 48000
        assert reader.getnframes() == playout["frames"] * 960
    sidecar = json.loads(recording.with_suffix(".json").read_text())
    assert sidecar["frames"] == playout["frames"]
    assert sidecar["recording"] == str(recording)
    assert results["reliable"] == {"uplink": "reliable", "final": True}
