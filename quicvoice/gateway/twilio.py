"""The Twilio Media Streams protocol, the gateway's side of one WebSocket (sans-I/O).

Written from Twilio's public "Media Streams - WebSocket Messages" page. Every frame is a
JSON text message with an ``event`` name. From Twilio: ``connected`` (``protocol``,
``version``), ``start`` (``streamSid``, ``callSid``, ``accountSid``, ``tracks``,
``customParameters``, ``mediaFormat``), ``media`` (``track``, ``chunk``, ``timestamp``,
base64 ``payload`` of µ-law 8 kHz mono), ``dtmf`` (``digit``), ``mark`` (a mark the server
sent, returned once the audio before it has played, or at once after a ``clear``) and
``stop``. Every message after ``connected`` carries ``streamSid`` and a ``sequenceNumber``
(decimal strings count up from 1). To Twilio (bidirectional streams): ``media``
(``payload``), ``mark`` (``name``) and ``clear`` (drop the audio Twilio holds and return
every pending mark).

Allowed order; anything else is a :class:`~quicvoice.errors.CarrierProtocolError` and the
stream is over (every later input raises too):

=============  ==========================================  =============
state          events allowed                              next state
=============  ==========================================  =============
new            ``connected``                               connected
new            ``start`` (``connected`` is optional)       streaming
connected      ``start``                                   streaming
streaming      ``media``, ``dtmf``, ``mark``               streaming
streaming      ``stop``                                    stopped
stopped        nothing                                     —
=============  ==========================================  =============

A ``mark`` must name one the gateway sent and has not had back; ``media`` must be on a
track ``start`` announced; every message's ``streamSid`` must be the stream's own; a
``sequenceNumber`` must grow. Messages are bounded (:class:`CarrierLimits`) before they are
parsed. Error messages name the fault and never quote what the carrier sent (payloads,
parameters and tokens stay out of logs): a string the carrier sent is described by its
length, a number shown as it is.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from typing import Any

from quicvoice.errors import CarrierProtocolError
from quicvoice.gateway.events import (
    CarrierEvent,
    DtmfReceived,
    MarkPlayed,
    MediaReceived,
    StreamConnected,
    StreamStarted,
    StreamStopped,
)
from quicvoice.session.messages import (
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY_LEN,
    MAX_METADATA_VALUE_LEN,
)

#: The only audio format a Twilio stream carries (``start.mediaFormat``).
ENCODING = "audio/x-mulaw"
SAMPLE_RATE = 8000
CHANNELS = 1
#: Tracks a stream may announce.
TRACKS = frozenset({"inbound", "outbound"})
#: Keys a caller may press.
DTMF_DIGITS = frozenset("0123456789*#ABCD")
#: Stream, call and account identifiers: Twilio's are two letters and 32 hex digits.
_SID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: What a DTMF track name may be.
_PLAIN = re.compile(r"[A-Za-z0-9_./-]{1,32}")
#: Decimal counters (``sequenceNumber``, ``chunk``, ``timestamp``): at most 2^63 - 1.
_MAX_COUNTER = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")
#: Longest mark name the gateway sends or accepts back.
MAX_MARK_NAME = 256


class StreamState(Enum):
    """Where a stream is in its life."""

    NEW = "new"
    CONNECTED = "connected"
    STREAMING = "streaming"
    STOPPED = "stopped"
    FAILED = "failed"


#: Which events each state accepts (the table in the module docstring).
_ALLOWED: dict[StreamState, frozenset[str]] = {
    StreamState.NEW: frozenset({"connected", "start"}),
    StreamState.CONNECTED: frozenset({"start"}),
    StreamState.STREAMING: frozenset({"media", "dtmf", "mark", "stop"}),
    StreamState.STOPPED: frozenset(),
    StreamState.FAILED: frozenset(),
}
#: Events a Twilio stream can send at all.
EVENTS = frozenset({"connected", "start", "media", "dtmf", "mark", "stop"})


@dataclass(frozen=True, slots=True, kw_only=True)
class CarrierLimits:
    """Bounds on what one carrier stream may send or make the gateway hold."""

    #: Longest text message accepted, in octets of UTF-8 (a 20 ms media message is about
    #: 300; ``start`` with parameters a few hundred more).
    max_message_bytes: int = 8192
    #: Most µ-law octets in one ``media`` payload (200 ms); Twilio sends 160 (20 ms).
    max_media_bytes: int = 1600
    #: Marks sent and not yet returned, at most.
    max_pending_marks: int = 64
    #: Most ``customParameters`` (the gateway adds a few metadata keys of its own).
    max_custom_parameters: int = MAX_METADATA_ENTRIES - 4

    def __post_init__(self) -> None:
        if self.max_message_bytes < 512:
            raise ValueError("max_message_bytes must be at least 512")
        if not 1 <= self.max_media_bytes <= self.max_message_bytes:
            raise ValueError("max_media_bytes must be 1..max_message_bytes")
        if self.max_pending_marks < 1:
            raise ValueError("max_pending_marks must be positive")
        if not 0 <= self.max_custom_parameters <= MAX_METADATA_ENTRIES:
            raise ValueError(f"max_custom_parameters must be 0..{MAX_METADATA_ENTRIES}")


def _shown(value: object) -> str:
    """What kind of value the carrier sent, for an error message: numbers as they are, a
    string only by its length (it may be anything, a credential included)."""
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int) and abs(value) < 10**18:
        return str(value)
    return {int: "a large number", float: "a fraction", list: "a list", dict: "an object"}.get(
        type(value), "a value"
    )


def _fail(message: str) -> CarrierProtocolError:
    return CarrierProtocolError(message)


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(f"{where} must be an object, not {_shown(value)}")
    return value


def _string(container: dict[str, Any], key: str, where: str, *, max_len: int = 256) -> str:
    value = container.get(key)
    if not isinstance(value, str):
        raise _fail(f"{where}.{key} must be a string, not {_shown(value)}")
    if len(value) > max_len:
        raise _fail(f"{where}.{key} is longer than {max_len} characters")
    return value


def _sid(container: dict[str, Any], key: str, where: str) -> str:
    value = container.get(key)
    if not isinstance(value, str) or not _SID.fullmatch(value):
        raise _fail(f"{where}.{key} must be an identifier of 1..64 letters, digits, - or _")
    return value


def _counter(container: dict[str, Any], key: str, where: str) -> int:
    """A non-negative decimal counter, sent as a string (Twilio) or a number."""
    value = container.get(key)
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise _fail(f"{where}.{key} must be a decimal counter, not {_shown(value)}")
    if not 0 <= number <= _MAX_COUNTER:
        raise _fail(f"{where}.{key} is out of range")
    return number


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class TwilioMediaStream:
    """One Twilio Media Streams WebSocket, from the gateway's side (the server's).

    ``receive(text)`` takes each text message and returns the :data:`CarrierEvent` it
    carries; ``media``, ``mark`` and ``clear`` return the text of a message to send. Any
    input that breaks the protocol raises :class:`~quicvoice.errors.CarrierProtocolError`,
    after which the stream is ``FAILED`` and every further input raises too.
    """

    def __init__(self, limits: CarrierLimits | None = None) -> None:
        self.limits = limits if limits is not None else CarrierLimits()
        self._state = StreamState.NEW
        self._started: StreamStarted | None = None
        self._sequence = 0
        #: Marks sent and not yet returned, in order; the value says a ``clear`` followed.
        self._pending_marks: OrderedDict[str, bool] = OrderedDict()

    @property
    def state(self) -> StreamState:
        """Where the stream is."""
        return self._state

    @property
    def started(self) -> StreamStarted | None:
        """The stream's ``start`` metadata, once it came."""
        return self._started

    @property
    def pending_marks(self) -> int:
        """Marks sent and not yet returned by the carrier."""
        return len(self._pending_marks)

    # -- from the carrier ------------------------------------------------------------------

    def receive(self, message: str | bytes) -> CarrierEvent:
        """Parse one WebSocket message from the carrier; return its event.

        Raises :class:`~quicvoice.errors.CarrierProtocolError` for a binary message, one
        over ``max_message_bytes``, bad JSON, an unknown event, an event out of order, a
        field of the wrong type or range, or a payload that is not base64 µ-law of
        1..``max_media_bytes`` octets.
        """
        try:
            return self._receive(message)
        except CarrierProtocolError:
            self._state = StreamState.FAILED
            raise

    def _receive(self, message: str | bytes) -> CarrierEvent:
        if self._state is StreamState.FAILED:
            raise _fail("the stream already failed")
        if not isinstance(message, str):
            raise _fail("a binary message (the stream speaks JSON text)")
        limit = self.limits.max_message_bytes
        if len(message) > limit or len(message.encode("utf-8", "surrogatepass")) > limit:
            raise _fail(f"a message over {limit} octets")
        try:
            body = json.loads(message, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as error:
            where = f" at offset {error.pos}" if isinstance(error, json.JSONDecodeError) else ""
            raise _fail(f"a message that is not JSON{where}") from None
        body = _object(body, "the message")
        event = body.get("event")
        if not isinstance(event, str) or event not in EVENTS:
            raise _fail(f"an unknown event ({_shown(event)})")
        if event not in _ALLOWED[self._state]:
            raise _fail(self._out_of_order(event))
        if event != "connected":
            self._check_sequence(body, event)
        if event == "connected":
            return self._on_connected(body)
        if event == "start":
            return self._on_start(body)
        self._check_stream_sid(body, event)
        if event == "media":
            return self._on_media(body)
        if event == "dtmf":
            return self._on_dtmf(body)
        if event == "mark":
            return self._on_mark(body)
        self._state = StreamState.STOPPED
        return StreamStopped()

    def _out_of_order(self, event: str) -> str:
        state = self._state
        if state is StreamState.STOPPED:
            return f"{event!r} after 'stop'"
        if event in ("connected", "start") and state is not StreamState.NEW:
            return f"a second {event!r}"
        return f"{event!r} before 'start'"

    def _check_sequence(self, body: dict[str, Any], event: str) -> None:
        if "sequenceNumber" not in body:
            return
        number = _counter(body, "sequenceNumber", event)
        if number <= self._sequence:
            raise _fail(f"{event}.sequenceNumber did not grow")
        self._sequence = number

    def _check_stream_sid(self, body: dict[str, Any], event: str) -> None:
        started = self._started
        if started is None or body.get("streamSid") != started.stream_sid:
            raise _fail(f"{event}.streamSid is not this stream's")

    def _on_connected(self, body: dict[str, Any]) -> StreamConnected:
        protocol = _string(body, "protocol", "connected", max_len=64)
        version = _string(body, "version", "connected", max_len=64)
        self._state = StreamState.CONNECTED
        return StreamConnected(protocol=protocol, version=version)

    def _on_start(self, body: dict[str, Any]) -> StreamStarted:
        start = _object(body.get("start"), "start.start")
        stream_sid = _sid(start, "streamSid", "start")
        if "streamSid" in body and body["streamSid"] != stream_sid:
            raise _fail("start.streamSid differs from the message's streamSid")
        call_sid = _sid(start, "callSid", "start")
        account_sid = _sid(start, "accountSid", "start")
        tracks = start.get("tracks")
        if (
            not isinstance(tracks, list)
            or not 1 <= len(tracks) <= len(TRACKS)
            or not all(isinstance(t, str) and t in TRACKS for t in tracks)
            or len(set(tracks)) != len(tracks)
        ):
            raise _fail("start.tracks must list 'inbound' and/or 'outbound' once each")
        media_format = _object(start.get("mediaFormat"), "start.mediaFormat")
        encoding = media_format.get("encoding")
        if encoding != ENCODING:
            raise _fail(f"start.mediaFormat.encoding ({_shown(encoding)}) is not {ENCODING!r}")
        rate = media_format.get("sampleRate")
        if rate != SAMPLE_RATE or isinstance(rate, bool):
            raise _fail(f"start.mediaFormat.sampleRate {_shown(rate)} is not {SAMPLE_RATE}")
        channels = media_format.get("channels")
        if channels != CHANNELS or isinstance(channels, bool):
            raise _fail(f"start.mediaFormat.channels {_shown(channels)} is not {CHANNELS}")
        started = StreamStarted(
            stream_sid=stream_sid,
            call_sid=call_sid,
            account_sid=account_sid,
            tracks=tuple(tracks),
            custom_parameters=self._custom_parameters(start.get("customParameters")),
            encoding=ENCODING,
            sample_rate=SAMPLE_RATE,
            channels=CHANNELS,
        )
        self._started = started
        self._state = StreamState.STREAMING
        return started

    def _custom_parameters(self, value: object) -> dict[str, str]:
        if value is None:
            return {}
        parameters = _object(value, "start.customParameters")
        if len(parameters) > self.limits.max_custom_parameters:
            raise _fail(
                f"start.customParameters has more than {self.limits.max_custom_parameters} entries"
            )
        for key, item in parameters.items():
            if not 1 <= len(key) <= MAX_METADATA_KEY_LEN:
                raise _fail(f"a start.customParameters name is not 1..{MAX_METADATA_KEY_LEN} long")
            if not isinstance(item, str) or len(item) > MAX_METADATA_VALUE_LEN:
                raise _fail(
                    f"a start.customParameters value is not a string of at most "
                    f"{MAX_METADATA_VALUE_LEN} characters"
                )
        return dict(parameters)

    def _on_media(self, body: dict[str, Any]) -> MediaReceived:
        media = _object(body.get("media"), "media.media")
        track = media.get("track")
        tracks = self._started.tracks if self._started is not None else ()
        if not isinstance(track, str) or track not in tracks:
            shown = (
                repr(track) if isinstance(track, str) and track in TRACKS else f"({_shown(track)})"
            )
            raise _fail(f"media.track {shown} is not a track 'start' announced")
        chunk = _counter(media, "chunk", "media")
        timestamp = _counter(media, "timestamp", "media")
        text = media.get("payload")
        limit = self.limits.max_media_bytes
        if not isinstance(text, str):
            raise _fail(f"media.payload must be a string, not {_shown(text)}")
        if len(text) > 4 * -(-limit // 3):
            raise _fail(f"media.payload holds more than {limit} octets")
        try:
            payload = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
        except (UnicodeEncodeError, binascii.Error):
            raise _fail("media.payload is not base64") from None
        if not 1 <= len(payload) <= limit:
            raise _fail(f"media.payload must hold 1..{limit} octets, not {len(payload)}")
        return MediaReceived(track=track, chunk=chunk, timestamp_ms=timestamp, payload=payload)

    def _on_dtmf(self, body: dict[str, Any]) -> DtmfReceived:
        dtmf = _object(body.get("dtmf"), "dtmf.dtmf")
        digit = dtmf.get("digit")
        if not isinstance(digit, str) or digit not in DTMF_DIGITS:
            raise _fail("dtmf.digit must be one of 0-9, *, # or A-D")
        track = dtmf.get("track", "inbound_track")
        if not isinstance(track, str) or not _PLAIN.fullmatch(track):
            raise _fail("dtmf.track must be a plain word")
        return DtmfReceived(digit=digit, track=track)

    def _on_mark(self, body: dict[str, Any]) -> MarkPlayed:
        mark = _object(body.get("mark"), "mark.mark")
        name = _string(mark, "name", "mark", max_len=MAX_MARK_NAME)
        if name not in self._pending_marks:
            raise _fail("a mark the gateway did not send (or already had back)")
        cleared = self._pending_marks.pop(name)
        return MarkPlayed(name=name, cleared=cleared)

    # -- to the carrier --------------------------------------------------------------------

    def _stream_sid(self, what: str) -> str:
        if self._state is not StreamState.STREAMING or self._started is None:
            raise ValueError(f"{what}: the stream is {self._state.value}, not streaming")
        return self._started.stream_sid

    def media(self, payload: bytes) -> str:
        """The message that plays ``payload`` (µ-law 8 kHz) to the caller."""
        stream_sid = self._stream_sid("media")
        if not payload:
            raise ValueError("media: an empty payload")
        text = base64.b64encode(payload).decode("ascii")
        return _dump({"event": "media", "streamSid": stream_sid, "media": {"payload": text}})

    def can_mark(self) -> bool:
        """Whether another mark may be sent now (``max_pending_marks`` not reached)."""
        return len(self._pending_marks) < self.limits.max_pending_marks

    def mark(self, name: str) -> str:
        """The message asking the carrier to return ``name`` once the audio sent before it
        has played. ``ValueError`` for a name already pending, or too many pending."""
        stream_sid = self._stream_sid("mark")
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_MARK_NAME:
            raise ValueError(f"mark: the name must be 1..{MAX_MARK_NAME} characters")
        if name in self._pending_marks:
            raise ValueError("mark: a mark of that name is pending")
        if not self.can_mark():
            raise ValueError(f"mark: {self.limits.max_pending_marks} marks are pending")
        self._pending_marks[name] = False
        return _dump({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})

    def clear(self) -> str:
        """The message that drops the audio the carrier holds (barge-in); the carrier then
        returns every pending mark, which come back as ``MarkPlayed(cleared=True)``."""
        stream_sid = self._stream_sid("clear")
        for name in self._pending_marks:
            self._pending_marks[name] = True
        return _dump({"event": "clear", "streamSid": stream_sid})


def _dump(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"))
