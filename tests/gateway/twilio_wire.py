"""Twilio Media Streams messages as Twilio's public "WebSocket Messages" page shows them,
written for the tests independently of the gateway's parser: what Twilio sends
(``connected``, ``start``, ``media``, ``dtmf``, ``mark``, ``stop``; counters as decimal
strings, ``sequenceNumber`` from 1) and what a server sends back (``media``, ``mark``,
``clear``)."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any


def sid(prefix: str) -> str:
    """A Twilio-style SID: two letters and 32 hex digits."""
    return prefix + secrets.token_hex(16)


def connected() -> dict[str, Any]:
    return {"event": "connected", "protocol": "Call", "version": "1.0.0"}


def start(
    seq: int,
    stream_sid: str,
    *,
    call_sid: str = "CA" + "0" * 32,
    account_sid: str = "AC" + "0" * 32,
    tracks: tuple[str, ...] = ("inbound",),
    custom_parameters: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "event": "start",
        "sequenceNumber": str(seq),
        "start": {
            "accountSid": account_sid,
            "streamSid": stream_sid,
            "callSid": call_sid,
            "tracks": list(tracks),
            "customParameters": dict(custom_parameters or {}),
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
        "streamSid": stream_sid,
    }


def media(
    seq: int, stream_sid: str, chunk: int, timestamp_ms: int, payload: bytes, track: str = "inbound"
) -> dict[str, Any]:
    return {
        "event": "media",
        "sequenceNumber": str(seq),
        "media": {
            "track": track,
            "chunk": str(chunk),
            "timestamp": str(timestamp_ms),
            "payload": base64.b64encode(payload).decode("ascii"),
        },
        "streamSid": stream_sid,
    }


def dtmf(seq: int, stream_sid: str, digit: str) -> dict[str, Any]:
    return {
        "event": "dtmf",
        "streamSid": stream_sid,
        "sequenceNumber": str(seq),
        "dtmf": {"track": "inbound_track", "digit": digit},
    }


def mark(seq: int, stream_sid: str, name: str) -> dict[str, Any]:
    return {
        "event": "mark",
        "sequenceNumber": str(seq),
        "streamSid": stream_sid,
        "mark": {"name": name},
    }


def stop(seq: int, stream_sid: str) -> dict[str, Any]:
    return {
        "event": "stop",
        "sequenceNumber": str(seq),
        "stop": {"accountSid": "AC" + "0" * 32, "callSid": "CA" + "0" * 32},
        "streamSid": stream_sid,
    }


def text(message: dict[str, Any]) -> str:
    return json.dumps(message)
