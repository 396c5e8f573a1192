"""Backends with a certificate from the test's own CA, and a record of what reached them."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from quicvoice.agent import demo_agent
from quicvoice.asyncio.config import BackendConfig
from quicvoice.asyncio.server import ServerSession, SessionHandler, VoiceServer
from quicvoice.quic import peek_server_name
from quicvoice.session.messages import Hello

from ..pki import Issued
from .voice_harness import LB_CONFIG, SERVER_ID

Address = tuple[str, int]
_files = itertools.count()

#: QUIC v1 long-header packet types (RFC 9000 §17.2).
INITIAL, ZERO_RTT, HANDSHAKE = 0, 1, 2


@dataclass
class Seen:
    """What a backend received: datagrams (in order), and the hellos its handler was given."""

    datagrams: list[bytes] = field(default_factory=list)
    hellos: list[Hello] = field(default_factory=list)
    sessions: list[ServerSession] = field(default_factory=list)

    def server_name(self, cid_length: int) -> str | None:
        """The SNI of the first ClientHello received."""
        for data in self.datagrams:
            if data and data[0] & 0x80:
                name = peek_server_name(data, cid_length)
                if name is not None:
                    return name
        return None

    def only_handshake_packets(self) -> bool:
        """Whether every datagram was Initial or Handshake: no 0-RTT, no 1-RTT, so no hello
        or audio can have been in any of them."""
        return all(
            data[0] & 0x80 and (data[0] & 0x30) >> 4 in (INITIAL, HANDSHAKE)
            for data in self.datagrams
        )


@asynccontextmanager
async def tls_server(
    directory: Path,
    leaf: Issued,
    *,
    listen: Address = ("127.0.0.1", 0),
    handler: SessionHandler = demo_agent,
    server_id: bytes = SERVER_ID,
    session_store: str = "memory://",
    reset_key: bytes = bytes(32),
) -> AsyncIterator[tuple[VoiceServer, Seen]]:
    """A backend on ``listen`` presenting ``leaf``; yields it and what it saw."""
    certificate, key = leaf.write(directory, f"server{next(_files)}")
    config = BackendConfig(
        listen=listen,
        server_id=server_id,
        configs=(LB_CONFIG,),
        certificate=certificate,
        private_key=key,
        session_store=session_store,
        reset_key=reset_key,
    )
    seen = Seen()

    async def recording(session: ServerSession) -> None:
        seen.hellos.append(session.hello)
        seen.sessions.append(session)
        await handler(session)

    server = VoiceServer(config, recording)
    original = server._on_datagram

    def on_datagram(data: bytes, address: Address, tos: int | None = None) -> None:
        seen.datagrams.append(data)
        original(data, address, tos)

    server._on_datagram = on_datagram  # type: ignore[method-assign]
    await server.start()
    try:
        yield server, seen
    finally:
        server.close()
        await asyncio.sleep(0)
