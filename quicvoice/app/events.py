"""What a server application hears from its session besides audio: a closed union of facts.

``AppEvent`` is a union of frozen dataclasses, so a ``match`` over it can be checked::

    async for event in session.events():
        match event:
            case UserEvent(name="order.add", data=data): ...
            case TurnPlayed(turn_id=turn, played_ms=ms): ...
            case SessionEnded(): break
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias


@dataclass(frozen=True, slots=True, kw_only=True)
class UserEvent:
    """The client sent an application event on the control stream."""

    #: Dotted event name, e.g. ``"order.add"``.
    name: str
    #: Its data (any msgpack value; validate it before use, it comes from the caller).
    data: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnInterruptedByCaller:
    """The caller barged in on turn ``turn_id`` (a ``TurnPlayed`` follows when it reports)."""

    #: The turn.
    turn_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnPlayed:
    """The client reported how much of turn ``turn_id`` its caller heard."""

    #: The turn.
    turn_id: int
    #: Milliseconds of the turn the client's playout handed to its audio device.
    played_ms: int
    #: True when all of it played out, False when it was cut short.
    complete: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class CallerMigrated:
    """The caller's address changed (connection migration or NAT rebinding); the call goes on."""

    #: The address before, ``"host:port"``.
    from_address: str
    #: The address now, ``"host:port"``.
    to_address: str
    #: Milliseconds between the last datagram from the old address and the first from the new.
    gap_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class UplinkEnded:
    """Reliable uplink: the caller finished its audio; ``audio()`` ends after its last frame."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Bye:
    """The caller said goodbye after sending ``uplink_frames`` frames.

    The library answers with the count of frames received once the uplink is complete
    (reliable mode: after its last frame; realtime: at once).
    """

    #: Uplink frames the caller says it sent.
    uplink_frames: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionEnded:
    """The session's connection closed; the last event ``events()`` yields."""

    #: The application or transport error code (0: normal).
    code: int
    #: The reason phrase.
    reason: str


AppEvent: TypeAlias = (
    UserEvent
    | TurnInterruptedByCaller
    | TurnPlayed
    | CallerMigrated
    | UplinkEnded
    | Bye
    | SessionEnded
)
"""Every event ``Session.events()`` yields."""
