"""The endpoint's short-header fast path (``VoiceServer._on_datagram``): datagrams that carry
a live call's CID but are not its packets (forged, truncated, random after the CID, sent from
another address) reach that call's QUIC connection, which drops them; the call loses nothing
and does not move."""

from __future__ import annotations

import asyncio
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicvoice.asyncio.client import connect
from quicvoice.session.events import TurnEnded

from .test_voice_loopback import next_of, stream
from .voice_harness import running_server

pytestmark = pytest.mark.integration

# Everything after the first octet and the CID: short headers (form 0, fixed bit 1) and the
# other first octets a peer could send with the same CID behind them.
FIRST_OCTETS = st.sampled_from([0x40, 0x41, 0x43, 0x5F, 0x7F, 0x00, 0x80, 0xC0])
TAILS = st.binary(min_size=0, max_size=1300)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forged=st.lists(st.tuples(FIRST_OCTETS, TAILS), min_size=5, max_size=40))
def test_forged_datagrams_with_a_live_cid_neither_disturb_nor_move_the_call(
    forged: list[tuple[int, bytes]],
) -> None:
    async def scenario() -> None:
        async with running_server() as server:
            host, port = server.address
            async with connect(host, port, verify=False) as client:
                cid = client._link.quic._peer_cid.cid
                attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                attacker.bind(("127.0.0.6", 0))
                streaming = asyncio.get_running_loop().create_task(stream(client, 30, 0.005))
                for first, tail in forged:
                    attacker.sendto(bytes([first]) + cid + tail, (host, port))
                    await asyncio.sleep(0.002)
                attacker.close()
                await streaming
                client.end_audio()
                await next_of(client, TurnEnded)
                session = server.sessions()[0]
                assert session.peer_address is not None
                assert session.peer_address[0] == "127.0.0.1"  # never moved to the forger
                assert await client.bye() == 30

    asyncio.run(scenario())
