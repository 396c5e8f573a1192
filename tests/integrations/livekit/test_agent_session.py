"""A real LiveKit ``AgentSession`` over a real quicvoice session, through a real forwarder
process on loopback: audio both ways at the app's rate, barge-in both ways, and
``on_playback_finished`` from what the client reports it played."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("livekit.agents", reason="needs the livekit extra")

from livekit.agents.voice.io import PlaybackFinishedEvent  # noqa: E402

from quicvoice.app import session_handler  # noqa: E402
from quicvoice.asyncio.client import connect  # noqa: E402
from quicvoice.integrations.livekit import AgentCall, agent_app  # noqa: E402
from quicvoice.session.messages import Hello  # noqa: E402

from ...integration.deployment import Deployment, backends  # noqa: E402
from .caller import calling, dominant_hz, load_example, tone  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]
example = load_example()


class Agents:
    """What the backend's calls did: their ``AgentCall`` s and playback reports."""

    def __init__(self) -> None:
        self.calls: list[AgentCall] = []
        self.finished: list[PlaybackFinishedEvent] = []
        self.stt: Any = None

    async def entry(self, call: AgentCall, *, greet: bool = True) -> None:
        self.calls.append(call)
        call.audio_output.on("playback_finished", self.finished.append)
        agent_session = example.build_session()
        self.stt = agent_session.stt
        await call.start(agent_session, example.Assistant(greet=greet))


@asynccontextmanager
async def deployed(tmp_path: Path, agents: Agents, rate: int) -> AsyncIterator[Deployment]:
    deployment = Deployment(tmp_path, server_ids=["0a000001"])
    deployment.start_forwarder()
    try:
        app = agent_app(agents.entry, sample_rate=rate)
        async with backends(deployment, session_handler(app)):
            yield deployment
    finally:
        deployment.stop()


@pytest.mark.parametrize(
    ("codec", "rate"), [("L16/16000", 16000), ("L16/48000", 24000)], ids=["16k", "48k-wire-24k-app"]
)
async def test_the_agent_hears_the_caller_and_answers_at_the_apps_rate(
    tmp_path: Path, codec: str, rate: int
) -> None:
    agents = Agents()
    async with deployed(tmp_path, agents, rate) as deployment:
        hello = Hello(codecs=(codec,))
        async with connect(*deployment.vip, hello=hello, verify=False) as client:
            async with calling(client, codec) as caller:
                # The greeting: one turn, played out in full and reported.
                await caller.wait_for(lambda: len(caller.conversation) >= 1, "the greeting")
                await caller.wait_for(lambda: len(agents.finished) >= 1, "the greeting played")
                greeting = caller.turns_started()[0]
                assert caller.conversation[0]["role"] == "assistant"
                await caller.say(tone(440.0, caller.rate, 0.8))
                await caller.wait_for(lambda: len(caller.conversation) >= 3, "the answer")
                await caller.wait_for(lambda: len(agents.finished) >= 2, "the answer played")
    user, answer = caller.conversation[1], caller.conversation[2]
    assert user["role"] == "user" and str(user["text"]).startswith("a 440 hertz sound")
    assert answer == {
        "role": "assistant",
        "text": "You made a 440 hertz sound. That was your turn 1.",
        "interrupted": False,
    }
    assert set(agents.stt.rates_heard) == {rate}  # the agent heard the call at the app's rate
    turn = caller.turns_started()[1]
    heard = caller.audio_of(turn)
    expected = len(example.beep_pcm(str(answer["text"]))) / 2 / example.VOICE_RATE
    assert abs(len(heard) / caller.rate - expected) < 0.1
    voiced = heard[len(heard) // 10 : len(heard) // 10 + caller.rate // 5]
    assert abs(dominant_hz(voiced, caller.rate) - example.VOICE_HZ) < 10
    # on_playback_finished is the client's report: complete, and as long as it played.
    for event, turn_id in zip(agents.finished, (greeting, turn), strict=True):
        assert not event.interrupted
        assert event.playback_position == pytest.approx(caller.played_ms(turn_id) / 1000, abs=0.021)


async def test_a_callers_barge_in_interrupts_the_agent_and_reports_what_was_heard(
    tmp_path: Path,
) -> None:
    agents = Agents()
    async with deployed(tmp_path, agents, 16000) as deployment:
        async with connect(*deployment.vip, verify=False) as client:
            async with calling(client, "L16/16000") as caller:
                await caller.wait_for(lambda: caller.turns_started(), "the greeting")
                greeting = caller.turns_started()[0]
                await caller.wait_for(lambda: caller.played_ms(greeting) >= 600, "600 ms heard")
                client.cancel_turn(greeting)  # the caller talks over the agent
                heard = caller.played_ms(greeting)
                await caller.wait_for(lambda: agents.finished, "the greeting's end")
                await caller.wait_for(lambda: caller.conversation, "the greeting's transcript")
    call = agents.calls[0]
    assert call.barge_ins == 1
    finished = agents.finished[0]
    assert finished.interrupted
    assert finished.playback_position == pytest.approx(heard / 1000, abs=0.021)
    full = len(example.beep_pcm(example.reply_to(example.llm.ChatContext()))) / 2 / 24000
    assert heard / 1000 < full - 1.0  # it was cut short: the agent knows it was not all heard
    assert caller.conversation[0]["role"] == "assistant"
    assert caller.conversation[0]["interrupted"] is True
    assert caller.played_ms(greeting) == heard  # nothing of it played after the barge-in


async def test_the_agents_barge_in_stops_the_callers_playout_of_a_sent_turn(
    tmp_path: Path,
) -> None:
    agents = Agents()
    async with deployed(tmp_path, agents, 16000) as deployment:
        async with connect(*deployment.vip, verify=False) as client:
            async with calling(client, "L16/16000") as caller:
                await caller.wait_for(lambda: caller.turns_started(), "the greeting")
                greeting = caller.turns_started()[0]
                await caller.wait_for(lambda: caller.played_ms(greeting) >= 400, "400 ms heard")
                # The whole greeting has reached the client; the caller starts to speak and
                # the agent's VAD, not the client, decides it is an interruption.
                await caller.say(tone(440.0, caller.rate, 0.8))
                await caller.wait_for(lambda: caller.cancelled(), "the agent's cancel")
                heard = caller.played_ms(greeting)
                await caller.wait_for(lambda: len(caller.conversation) >= 3, "the answer")
    assert [c.turn_id for c in caller.cancelled()] == [greeting]
    assert caller.cancelled()[0].by_peer
    assert agents.calls[0].barge_ins == 0  # the agent's own doing, not the caller's
    finished = agents.finished[0]
    assert finished.interrupted
    assert finished.playback_position == pytest.approx(heard / 1000, abs=0.021)
    full = len(example.beep_pcm(example.reply_to(example.llm.ChatContext()))) / 2 / 24000
    assert heard / 1000 < full - 1.0
    assert caller.played_ms(greeting) == heard  # the client stopped playing it at once
    assert caller.conversation[0]["interrupted"] is True
    assert caller.conversation[2]["text"] == "You made a 440 hertz sound. That was your turn 1."
