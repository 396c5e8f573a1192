"""quicvoice: voice sessions for AI agents over QUIC and WebTransport.

Calls survive a change of network (QUIC connection migration), route through a
stateless QUIC-LB load balancer, and keep their state outside the backend process.

The public names live here: the client (``connect``, ``VoiceClient`` and the events a call
receives), the server application API (``App``, ``Session``, ``Turn``, the ``AppEvent``
union), who may call (``CallRequest``, ``Caller``, ``Refuse``) and the error tree. All but
the errors are imported on first use, so ``import quicvoice`` alone (as the forwarder does,
for the QUIC-LB codec) loads neither aioquic nor the audio stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    CallEndedError,
    CallReconnectingError,
    CertificateVerificationError,
    CodecError,
    ConfigurationError,
    ConnectFailedError,
    ConnectTimeoutError,
    InvalidStateError,
    InvalidURLError,
    MigrationError,
    NameResolutionError,
    ProtocolError,
    QuicVoiceError,
    SessionRefusedError,
    StoreError,
    UplinkEndedError,
)
from .version import __version__

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
    from .auth import Caller, CallRequest, Refuse
    from .session.events import (
        AudioReceived,
        ErrorReceived,
        EventReceived,
        SessionClosed,
        SessionResumed,
        TurnCancelled,
        TurnEnded,
        TurnStarted,
    )

_LAZY_FROM = {
    "quicvoice.app": (
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
    ),
    "quicvoice.asyncio.client": ("VoiceClient", "connect"),
    "quicvoice.asyncio.server": ("ServerSession", "VoiceServer"),
    "quicvoice.audio.pcm": ("PcmFrame",),
    "quicvoice.auth": ("CallRequest", "Caller", "Refuse"),
    "quicvoice.session.events": (
        "AudioReceived",
        "ErrorReceived",
        "EventReceived",
        "SessionClosed",
        "SessionResumed",
        "TurnCancelled",
        "TurnEnded",
        "TurnStarted",
    ),
}
_LAZY = {name: module for module, names in _LAZY_FROM.items() for name in names}

__all__ = [
    "App",
    "AppEvent",
    "AudioReceived",
    "Bye",
    "CallEndedError",
    "CallReconnectingError",
    "CallRequest",
    "Caller",
    "CallerMigrated",
    "CertificateVerificationError",
    "CodecError",
    "ConfigurationError",
    "ConnectFailedError",
    "ConnectTimeoutError",
    "ErrorReceived",
    "EventReceived",
    "InvalidStateError",
    "InvalidURLError",
    "MigrationError",
    "NameResolutionError",
    "PcmFrame",
    "ProtocolError",
    "QuicVoiceError",
    "Refuse",
    "ServerSession",
    "Session",
    "SessionClosed",
    "SessionEnded",
    "SessionRefusedError",
    "SessionResumed",
    "StoreError",
    "Turn",
    "TurnCancelled",
    "TurnEnded",
    "TurnInterrupted",
    "TurnInterruptedByCaller",
    "TurnPlayed",
    "TurnStarted",
    "UplinkEnded",
    "UplinkEndedError",
    "UserEvent",
    "VoiceClient",
    "VoiceServer",
    "__version__",
    "connect",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'quicvoice' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
