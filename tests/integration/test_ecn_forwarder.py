"""ECN through a real forwarder process: a call validates "capable" both ways, so the client's
marks reach the backend inside the encapsulation and the backend's reach the client."""

from __future__ import annotations

import asyncio

import pytest

from quicvoice.asyncio.client import connect
from quicvoice.ecn import Validation

from .deployment import Deployment, backends, session_home
from .voice_harness import FRAME

pytestmark = pytest.mark.integration

#: Frames streamed at most while waiting for validation (50 per second).
MAX_FRAMES = 150


def test_a_call_through_the_forwarder_validates_ecn_capable_both_ways(
    deployment: Deployment,
) -> None:
    async def scenario() -> None:
        async with backends(deployment) as servers:
            async with connect(*deployment.vip, verify=False) as client:
                assert client.session is not None
                home = servers[session_home(servers, client.session.session_id)]

                def capable() -> bool:
                    mine = client.stats().ecn
                    theirs = [path for s in home.sessions() for path in s.stats().ecn]
                    return (
                        bool(mine and theirs)
                        and mine[-1].validation is Validation.CAPABLE
                        and theirs[-1].validation is Validation.CAPABLE
                    )

                for _ in range(MAX_FRAMES):
                    if capable():
                        break
                    client.send_audio(FRAME)
                    await asyncio.sleep(0.02)
                assert capable(), (client.stats().ecn, [s.stats().ecn for s in home.sessions()])
                backend_path = home.sessions()[0].stats().ecn[-1]
                # What the backend read came from the client, through the forwarder, marked.
                assert backend_path.received_ect1 > 0 and backend_path.received_not_ect == 0
                assert client.stats().ecn[-1].received_ect1 > 0

    asyncio.run(scenario())
