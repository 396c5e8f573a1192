"""Does an uplink payload match the negotiated codec and frame duration? (sans-I/O)

PCM codecs (L16, PCMU, PCMA) carry exactly one frame of samples: the size follows from the
clock rate and the frame duration. An Opus payload is one Opus packet (RFC 7587) that must be
well formed (RFC 6716 §3.4, requirements R1-R7) and last the frame duration: its frame count
times the frame size its TOC byte's configuration gives (§3.1). Codecs other than those are
not checked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ProtocolError
from .codes import ErrorCode

#: Octets per sample of the PCM codecs the server negotiates (RFC 3551 §4.5).
PCM_SAMPLE_OCTETS = {"l16": 2, "pcmu": 1, "pcma": 1}
#: RFC 6716 §3.1: frame size in microseconds for each of the 32 TOC configurations:
#: 0..11 SILK (10, 20, 40, 60 ms), 12..15 hybrid (10, 20 ms), 16..31 CELT (2.5 to 20 ms).
OPUS_FRAME_US = (
    (10_000, 20_000, 40_000, 60_000) * 3 + (10_000, 20_000) * 2 + (2_500, 5_000, 10_000, 20_000) * 4
)
#: RFC 6716 §3.4 R2: no frame is longer than 1275 octets.
OPUS_MAX_FRAME = 1275
#: RFC 6716 §3.4 R5: a code 3 packet holds at most 120 ms of audio.
OPUS_MAX_PACKET_US = 120_000


def _frame_length(packet: bytes, position: int) -> tuple[int, int]:
    """RFC 6716 §3.2.1: a frame length coded in one or two octets; (length, next position)."""
    if position >= len(packet):
        raise ValueError("the packet ends inside a frame length")
    first = packet[position]
    if first < 252:
        return first, position + 1
    if position + 1 >= len(packet):
        raise ValueError("the packet ends inside a frame length")
    return packet[position + 1] * 4 + first, position + 2


def opus_packet_duration_us(packet: bytes) -> int:
    """The audio an Opus packet holds, in microseconds; ``ValueError`` saying why it is malformed.

    Checks RFC 6716 §3.4's requirements R1 to R7 for the four frame-packing codes of §3.2.
    """
    if not packet:
        raise ValueError("an Opus packet has at least its TOC octet (R1)")
    toc = packet[0]
    frame_us = OPUS_FRAME_US[toc >> 3]
    code = toc & 0x3
    rest = len(packet) - 1
    if code == 0:  # one frame
        sizes = [rest]
    elif code == 1:  # two frames of equal size
        if rest % 2:
            raise ValueError("a code 1 packet has an odd number of frame octets (R3)")
        sizes = [rest // 2, rest // 2]
    elif code == 2:  # two frames, the first one's length coded
        first, position = _frame_length(packet, 1)
        if first > len(packet) - position:
            raise ValueError("a code 2 packet's first frame overruns the packet (R4)")
        sizes = [first, len(packet) - position - first]
    else:
        sizes = _code3_sizes(packet, frame_us)
    if max(sizes) > OPUS_MAX_FRAME:
        raise ValueError(f"an Opus frame is longer than {OPUS_MAX_FRAME} octets (R2)")
    return len(sizes) * frame_us


def _code3_sizes(packet: bytes, frame_us: int) -> list[int]:
    """The frame sizes of a code 3 packet (RFC 6716 §3.2.5): a count octet, optional padding,
    then CBR (equal sizes) or VBR (every length but the last coded)."""
    if len(packet) < 2:
        raise ValueError("a code 3 packet has a frame count octet (R6, R7)")
    count_octet = packet[1]
    count = count_octet & 0x3F
    if count == 0:
        raise ValueError("a code 3 packet holds at least one frame (R5)")
    if count * frame_us > OPUS_MAX_PACKET_US:
        raise ValueError("a code 3 packet holds more than 120 ms (R5)")
    position = 2
    padding = 0
    if count_octet & 0x40:
        while True:
            if position >= len(packet):
                raise ValueError("the packet ends inside its padding length")
            value = packet[position]
            position += 1
            padding += 254 if value == 255 else value
            if value != 255:
                break
    end = len(packet) - padding
    if end < position:
        raise ValueError("a code 3 packet's padding overruns the packet (R6, R7)")
    if not count_octet & 0x80:  # constant bitrate
        if (end - position) % count:
            raise ValueError("a CBR code 3 packet does not split into equal frames (R6)")
        return [(end - position) // count] * count
    sizes = []
    for _ in range(count - 1):
        size, position = _frame_length(packet, position)
        sizes.append(size)
    last = end - position - sum(sizes)
    if last < 0:
        raise ValueError("a VBR code 3 packet's frame lengths overrun the packet (R7)")
    return [*sizes, last]


@dataclass(frozen=True, slots=True, kw_only=True)
class UplinkCheck:
    """What every uplink payload of a session must look like."""

    #: The negotiated codec, ``"NAME/RATE"`` as in ``welcome``.
    codec: str
    #: The negotiated frame duration in milliseconds.
    frame_ms: int
    _problem: Callable[[bytes], str | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_problem", _rule(self.codec, self.frame_ms))

    def problem(self, payload: bytes) -> str | None:
        """Why ``payload`` does not fit the session, or ``None`` when it does."""
        return self._problem(payload)

    def check(self, payload: bytes) -> None:
        """Raise ``ProtocolError`` (``FRAME_MISMATCH``) when ``payload`` does not fit."""
        problem = self._problem(payload)
        if problem is not None:
            raise ProtocolError(problem, ErrorCode.FRAME_MISMATCH)


def _rule(codec: str, frame_ms: int) -> Callable[[bytes], str | None]:
    name, _, rest = codec.partition("/")
    rate_text = rest.partition("/")[0]
    name = name.lower()
    rate = int(rate_text) if rate_text.isascii() and rate_text.isdigit() else 0
    octets = PCM_SAMPLE_OCTETS.get(name)
    if octets is not None:
        samples, remainder = divmod(rate * frame_ms, 1000)
        size = samples * octets if samples and not remainder else -1

        def pcm(payload: bytes) -> str | None:
            if len(payload) == size:
                return None
            return f"a {len(payload)}-octet payload is not {frame_ms} ms of {codec} ({size})"

        return pcm
    if name == "opus":
        wanted = frame_ms * 1000

        def opus(payload: bytes) -> str | None:
            try:
                duration = opus_packet_duration_us(payload)
            except ValueError as error:
                return f"malformed Opus packet: {error}"
            if duration != wanted:
                return f"an Opus packet of {duration / 1000:g} ms in a {frame_ms} ms session"
            return None

        return opus
    return lambda payload: None
