"""quicvoice: voice sessions for AI agents over QUIC and WebTransport.

Calls survive a change of network (QUIC connection migration), route through a
stateless QUIC-LB load balancer, and keep their state outside the backend process.

``quicvoice.connect`` (a call, client side) and ``quicvoice.VoiceServer`` (a backend) are
imported on first use, so ``import quicvoice`` alone (as the forwarder does, for the QUIC-LB
codec) loads neither aioquic nor the audio stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .asyncio.client import VoiceClient, connect
    from .asyncio.server import ServerSession, VoiceServer

from .version import __version__

__all__ = ["ServerSession", "VoiceClient", "VoiceServer", "__version__", "connect"]

_LAZY = {
    "connect": "quicvoice.asyncio.client",
    "VoiceClient": "quicvoice.asyncio.client",
    "VoiceServer": "quicvoice.asyncio.server",
    "ServerSession": "quicvoice.asyncio.server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'quicvoice' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
