"""What a carrier's media stream tells the gateway: a closed union of facts.

A carrier dialect (``quicvoice.gateway.twilio``) turns each text frame of the carrier's
WebSocket into at most one of these; the gateway's shell acts on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamConnected:
    """The carrier opened the stream and named its protocol (Twilio: ``"Call"``, ``"1.0.0"``)."""

    #: The protocol name the carrier announced.
    protocol: str
    #: Its version.
    version: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamStarted:
    """The stream's metadata: who is calling, and in which format the audio comes."""

    #: The carrier's ID of this media stream (every later message carries it).
    stream_sid: str
    #: The carrier's ID of the phone call.
    call_sid: str
    #: The carrier account the call belongs to.
    account_sid: str
    #: The media tracks the carrier will send (``"inbound"``: the caller's voice).
    tracks: tuple[str, ...]
    #: The parameters the operator set on the stream (TwiML ``<Parameter>``), bounded
    #: like a hello's metadata. Kept out of ``repr``: it may hold a caller's credential.
    custom_parameters: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: Audio encoding of ``media`` payloads (always ``"audio/x-mulaw"`` here).
    encoding: str = "audio/x-mulaw"
    #: Sample rate of the payloads in Hz (always 8000 here).
    sample_rate: int = 8000
    #: Channels (always 1 here).
    channels: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaReceived:
    """One chunk of audio from the call (µ-law, 8 kHz, mono)."""

    #: Which track: ``"inbound"`` is the caller's voice.
    track: str
    #: The carrier's chunk counter (1 for the first chunk).
    chunk: int
    #: Milliseconds since the stream began, as the carrier stamped the chunk.
    timestamp_ms: int
    #: The µ-law samples, one octet each (kept out of ``repr``: logs never carry audio).
    payload: bytes = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class DtmfReceived:
    """The caller pressed a key."""

    #: The key: ``0``-``9``, ``*``, ``#`` or ``A``-``D``.
    digit: str
    #: The track it was detected on.
    track: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MarkPlayed:
    """The carrier returned a mark the gateway had sent after some audio."""

    #: The mark's name, as the gateway sent it.
    name: str
    #: True when the gateway had sent ``clear`` before this mark came back: the carrier
    #: returns every pending mark on ``clear``, so the audio before it was dropped, not
    #: played. (A mark the carrier returned just before the clear reached it is counted as
    #: cleared too: the two crossed on the wire.)
    cleared: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamStopped:
    """The carrier ended the stream (the caller hung up, or the call moved on)."""


CarrierEvent: TypeAlias = (
    StreamConnected | StreamStarted | MediaReceived | DtmfReceived | MarkPlayed | StreamStopped
)
"""Everything a carrier's stream can say."""
