"""Forwarder + three real backends + clients, all on loopback (issue 4's end-to-end test).

The forwarder runs as a real ``quicvoice-lb`` process; the backends are ``VoiceServer``s in
this event loop, configured from the same file. Clients talk only to the VIP.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from quicvoice.asyncio.client import connect
from quicvoice.encapsulation import wrap

from .deployment import (
    LB_CONFIG,
    Deployment,
    backends,
    finish,
    session_home,
    stream,
)
from .voice_harness import http3_get_status

pytestmark = pytest.mark.integration

def test_calls_land_where_their_cids_say(deployment: Deployment) -> None:
    async def scenario() -> None:
        async with backends(deployment) as servers:
            homes = []
            for index in range(8):
                async with connect(
                    *deployment.vip, verify=False, local_address=f"127.0.0.{2 + index % 3}"
                ) as client:
                    assert client.session is not None
                    home = session_home(servers, client.session.session_id)
                    assert client.session.server_id == home
                    # The CID the client sends to decodes to the backend that holds the call.
                    assert LB_CONFIG.decode(client._link.quic._peer_cid.cid) == bytes.fromhex(home)
                    await stream(client, 5, 0.005)
                    assert await finish(client) == 5
                    homes.append(home)
            assert len(set(homes)) >= 2  # first flights spread over the backends

    asyncio.run(scenario())


def test_migration_through_the_forwarder_stays_on_its_backend(deployment: Deployment) -> None:
    async def scenario() -> None:
        async with backends(deployment) as servers:
            async with connect(*deployment.vip, verify=False, local_address="127.0.0.2") as client:
                assert client.session is not None
                home = session_home(servers, client.session.session_id)
                streaming = asyncio.get_running_loop().create_task(stream(client, 50))
                await asyncio.sleep(0.4)
                migration = await client.migrate("127.0.0.3")
                await streaming
                assert await finish(client) == 50
                assert migration.to_address.startswith("127.0.0.3:")
                assert session_home(servers, client.session.session_id) == home
                session = servers[home].sessions()[0]
                assert session.peer_address is not None and session.peer_address[0] == "127.0.0.3"

    asyncio.run(scenario())


def test_forwarder_restart_mid_call_loses_nothing(deployment: Deployment) -> None:
    async def scenario() -> None:
        async with backends(deployment) as servers:
            async with connect(*deployment.vip, verify=False, idle_timeout=30) as client:
                assert client.session is not None
                streaming = asyncio.get_running_loop().create_task(stream(client, 60))
                await asyncio.sleep(0.3)
                deployment.kill_forwarder()
                await asyncio.sleep(0.2)  # frames sent now are lost on the wire...
                deployment.start_forwarder()  # ...and retransmitted by QUIC once it is back
                await streaming
                assert await finish(client) == 60
                assert client.stats().migrations == ()
                assert session_home(servers, client.session.session_id) == client.session.server_id

    asyncio.run(scenario())


def test_the_forwarder_is_not_a_reflector(deployment: Deployment) -> None:
    victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    victim.bind(("127.0.0.9", 0))
    victim.settimeout(0.5)
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    attacker.bind(("127.0.0.5", 0))
    try:
        payload = os.urandom(1000)
        for _ in range(20):
            attacker.sendto(wrap(victim.getsockname(), payload), deployment.backend_listen)
        with pytest.raises(TimeoutError):
            victim.recvfrom(2048)
        for _ in range(40):  # counters reach the metrics endpoint about once a second
            metrics = deployment.wait_for_metrics()
            line = next(
                (row for row in metrics.splitlines() if 'reason="not_a_backend"' in row), ""
            )
            if line.endswith(" 20"):
                break
            time.sleep(0.1)
        assert line.endswith(" 20"), line
    finally:
        victim.close()
        attacker.close()


def test_plain_http3_get_through_the_forwarder_reaches_the_named_backend(
    deployment: Deployment,
) -> None:
    async def scenario() -> None:
        async with backends(deployment):
            for _ in range(4):
                status = await http3_get_status(*deployment.vip, local_host="127.0.0.2")
                named = LB_CONFIG.decode(status["_peer_cid"])
                assert named is not None and status["server_id"] == named.hex()

    asyncio.run(scenario())
