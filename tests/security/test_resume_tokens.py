"""Resume tokens cannot be forged, and a replay cannot make two connections drive one session
(specs/store.md, "Resume tokens"): the issuer's API, then real servers on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from quicvoice.agent import demo_agent
from quicvoice.asyncio.client import VoiceClient, connect
from quicvoice.asyncio.config import BackendConfig
from quicvoice.asyncio.server import VoiceServer
from quicvoice.session.events import SessionClosed
from quicvoice.session.messages import Hello
from quicvoice.store.tokens import RefusalReason, ResumeRefused, ResumeTokenIssuer
from tests.conftest import RedisServer
from tests.integration.voice_harness import LB_CONFIG

pytestmark = pytest.mark.integration
KEY = bytes(range(32))
NOW = 1_700_000_000.0


def _reason(issuer: ResumeTokenIssuer, token: bytes, now: float = NOW + 1) -> RefusalReason:
    with pytest.raises(ResumeRefused) as refused:
        issuer.verify(token, now)
    return refused.value.reason


def test_forgeries_are_refused_with_the_right_reason() -> None:
    issuer = ResumeTokenIssuer({1: KEY}, 1, 60)
    token = issuer.issue("session-S", NOW)
    assert issuer.verify(token, NOW + 1) == "session-S"
    for bit in range(8 * len(token)):
        flipped = bytearray(token)
        flipped[bit // 8] ^= 0x80 >> bit % 8
        assert _reason(issuer, bytes(flipped)) in {
            RefusalReason.MALFORMED,
            RefusalReason.UNKNOWN_KEY,
            RefusalReason.BAD_SIGNATURE,
        }
    for length in range(len(token)):
        assert _reason(issuer, token[:length]) is RefusalReason.MALFORMED
    other_secret = ResumeTokenIssuer({1: bytes(reversed(KEY))}, 1, 60).issue("session-S", NOW)
    assert _reason(issuer, other_secret) is RefusalReason.BAD_SIGNATURE
    other_id = ResumeTokenIssuer({2: KEY}, 2, 60).issue("session-S", NOW)
    assert _reason(issuer, other_id) is RefusalReason.UNKNOWN_KEY
    assert _reason(issuer, token, NOW + 60) is RefusalReason.EXPIRED


def test_a_token_for_one_session_cannot_name_another() -> None:
    issuer = ResumeTokenIssuer({1: KEY}, 1, 60)
    token_s, token_t = issuer.issue("session-S", NOW), issuer.issue("session-T", NOW)
    # Same length IDs: splice T's ID into S's token, and S's tag onto T's body.
    spliced = token_s[:4] + b"session-T" + token_s[13:]
    assert _reason(issuer, spliced) is RefusalReason.BAD_SIGNATURE
    assert _reason(issuer, token_t[:-32] + token_s[-32:]) is RefusalReason.BAD_SIGNATURE
    assert issuer.verify(token_s, NOW + 1) == "session-S"


@asynccontextmanager
async def servers(count: int, store: str, **settings: object) -> AsyncIterator[list[VoiceServer]]:
    """``count`` backends sharing keys and a session store, direct (no forwarder)."""
    started = []
    try:
        for index in range(count):
            config = BackendConfig(
                listen=("127.0.0.1", 0),
                server_id=bytes((10, 11, 12, 13 + index)),
                configs=(LB_CONFIG,),
                reset_key=KEY,
                session_store=store,
                **settings,  # type: ignore[arg-type]
            )
            server = VoiceServer(config, demo_agent)
            await server.start()
            started.append(server)
        yield started
    finally:
        for server in started:
            await server.aclose()


async def _order(call: VoiceClient, item: str) -> list[str]:
    call.send_event("order.add", {"item": item})
    cart = (await call.wait_event("order.cart")).data["items"]
    return [entry["item"] for entry in cart]


async def _refusal(address: tuple[str, int], token: bytes) -> str:
    hello = Hello(resume_token=token)
    with pytest.raises(ConnectionError) as refused:
        async with connect(*address, verify=False, hello=hello, reconnect=False):
            pass
    return str(refused.value)


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_replayed_token_moves_the_session_and_the_old_holder_is_closed(
    store: str, request: pytest.FixtureRequest
) -> None:
    """A holds session S, B holds T. C presents A's token (on another backend when the store
    is shared): C gets S with its state, never T; A's next checkpoint conflicts and A's
    session closes; B is untouched."""
    url = "memory://"
    if store == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        url = redis.unique_url()

    async def scenario() -> None:
        async with servers(2 if store == "redis" else 1, url) as backends:
            first, last = backends[0].address, backends[-1].address
            async with (
                connect(*first, verify=False, reconnect=False) as a,
                connect(*first, verify=False, reconnect=False) as b,
            ):
                assert a.session is not None and b.session is not None
                assert await _order(a, "taro milk tea") == ["taro milk tea"]
                assert await _order(b, "oolong") == ["oolong"]
                token = a.session.resume_token
                assert token is not None
                hello = Hello(resume_token=token)
                async with connect(*last, verify=False, hello=hello, reconnect=False) as c:
                    assert c.session is not None and c.session.resumed
                    assert c.session.session_id == a.session.session_id
                    assert c.session.session_id != b.session.session_id
                    assert await _order(c, "matcha") == ["taro milk tea", "matcha"]
                    a.send_event("order.add", {"item": "stale write"})

                    async def closed() -> SessionClosed:
                        while True:
                            event = await a.receive()
                            if isinstance(event, SessionClosed):
                                return event

                    event = await asyncio.wait_for(closed(), 5)
                    assert "resumed elsewhere" in event.reason
                    assert await _order(c, "latte") == ["taro milk tea", "matcha", "latte"]
                    assert await _order(b, "green tea") == ["oolong", "green tea"]

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_real_server_refuses_forged_foreign_expired_and_orphan_tokens() -> None:
    async def scenario() -> None:
        async with servers(1, "memory://", token_ttl=0.5) as (server,):
            async with connect(*server.address, verify=False, reconnect=False) as call:
                assert call.session is not None and call.session.resume_token is not None
                token = call.session.resume_token
                flipped = bytes((token[0], token[1], token[2] ^ 1)) + token[3:]
                assert "unknown key" in await _refusal(server.address, flipped)
                tampered = token[:-1] + bytes((token[-1] ^ 1,))
                assert "bad signature" in await _refusal(server.address, tampered)
                foreign = ResumeTokenIssuer({1: bytes(32)}, 1, 60)
                forged = foreign.issue(call.session.session_id, time.time())
                assert "bad signature" in await _refusal(server.address, forged)
                orphan = server.resume_tokens.issue("no-such-session", time.time())
                assert "unknown session" in await _refusal(server.address, orphan)
                await asyncio.sleep(0.6)
                assert "expired" in await _refusal(server.address, token)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_resume_abandoned_before_the_claim_leaves_the_session_where_it_is() -> None:
    """A connection that closed while its backend loaded the record (the client gave up on
    that attempt) does not claim the session: the holder keeps it and its writes still land."""

    async def scenario() -> None:
        async with servers(1, "memory://") as (server,):
            async with connect(*server.address, verify=False, reconnect=False) as call:
                assert call.session is not None and call.session.resume_token is not None
                assert await _order(call, "taro milk tea") == ["taro milk tea"]
                before = await server.store.load(call.session.session_id)
                with pytest.raises(ResumeRefused) as refused:
                    await server.resume(call.session.resume_token, "gone", claim_if=lambda: False)
                assert refused.value.reason is RefusalReason.ABANDONED
                after = await server.store.load(call.session.session_id)
                assert before is not None and after is not None
                assert (after.version, after.owner) == (before.version, before.owner)
                assert await _order(call, "oat milk") == ["taro milk tea", "oat milk"]
                claimed, record, _ = await server.resume(
                    call.session.resume_token, "next", claim_if=lambda: True
                )
                assert claimed == call.session.session_id and record.owner == "next"

    asyncio.run(asyncio.wait_for(scenario(), 60))
