"""quicvoice: voice sessions for AI agents over QUIC and WebTransport.

Calls survive a change of network (QUIC connection migration), route through a
stateless QUIC-LB load balancer, and keep their state outside the backend process.

``quicvoice.connect`` (a call, client side), ``quicvoice.VoiceServer`` (a backend) and the
server application API (``quicvoice.App``, ``quicvoice.Session``, ...; ``quicvoice.app``) are
imported on first use, so ``import quicvoice`` alone (as the forwarder does, for the QUIC-LB
codec) loads neither aioquic nor the audio stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import (
        App,
        AppEvent,
        Bye,
        CallerMigrated,
        Session,
        SessionEnded,
        Turn,
        TurnInterrupted,
        TurnInterruptedByCaller,
        TurnPlayed,
        UplinkEnded,
        UserEvent,
    )
    from .asyncio.client import VoiceClient, connect
    from .asyncio.server import ServerSession, VoiceServer
    from .audio.pcm import PcmFrame

from .version import __version__

__all__ = [
    "App",
    "AppEvent",
    "Bye",
    "CallerMigrated",
    "PcmFrame",
    "ServerSession",
    "Session",
    "SessionEnded",
    "Turn",
    "TurnInterrupted",
    "TurnInterruptedByCaller",
    "TurnPlayed",
    "UplinkEnded",
    "UserEvent",
    "VoiceClient",
    "VoiceServer",
    "__version__",
    "connect",
]

_APP_NAMES = (
    "App",
    "AppEvent",
    "Bye",
    "CallerMigrated",
    "Session",
    "SessionEnded",
    "Turn",
    "TurnInterrupted",
    "TurnInterruptedByCaller",
    "TurnPlayed",
    "UplinkEnded",
    "UserEvent",
)
_LAZY = {
    "connect": "quicvoice.asyncio.client",
    "VoiceClient": "quicvoice.asyncio.client",
    "VoiceServer": "quicvoice.asyncio.server",
    "ServerSession": "quicvoice.asyncio.server",
    "PcmFrame": "quicvoice.audio.pcm",
    **dict.fromkeys(_APP_NAMES, "quicvoice.app"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'quicvoice' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
