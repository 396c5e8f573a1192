"""Receive-side statistics: RFC 3550 interarrival jitter and lateness from capture timestamps."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ecn import PathEcnStats

U32 = 1 << 32


class ArrivalStats:
    """Tracks frames as they arrive: jitter (RFC 3550 §6.4.1), loss by sequence gaps, lateness.

    ``on_frame`` takes the frame's sequence number and capture timestamp (samples at
    ``clock_rate``) and the arrival time in seconds. A frame is *late* when its transit time
    exceeds the smallest transit seen so far by more than ``late_threshold`` seconds.
    """

    __slots__ = (
        "clock_rate",
        "late_threshold",
        "jitter",
        "frames",
        "late",
        "lost",
        "duplicates",
        "_last_transit",
        "_min_transit",
        "_highest_seq",
        "_seen_recent",
    )

    def __init__(self, clock_rate: int, late_threshold: float = 0.020) -> None:
        if clock_rate <= 0:
            raise ValueError("clock_rate must be positive")
        self.clock_rate = clock_rate
        self.late_threshold = late_threshold
        #: Interarrival jitter in seconds (RFC 3550 J, smoothed by 1/16).
        self.jitter = 0.0
        #: Frames received.
        self.frames = 0
        #: Frames whose transit exceeded the minimum by more than the threshold.
        self.late = 0
        #: Sequence numbers skipped and not (yet) received.
        self.lost = 0
        #: Frames received twice.
        self.duplicates = 0
        self._last_transit: float | None = None
        self._min_transit = float("inf")
        self._highest_seq: int | None = None
        self._seen_recent: set[int] = set()

    def on_frame(self, seq: int, timestamp: int, arrival: float) -> None:
        """Account for one frame that arrived at ``arrival`` seconds."""
        seen = self._seen_recent
        if seq in seen:
            self.duplicates += 1
            return
        seen.add(seq)
        if len(seen) > 1024:
            self._seen_recent = {s for s in seen if (seq - s) % U32 < 512}
        self.frames += 1
        highest = self._highest_seq
        if highest is None:
            self._highest_seq = seq
        else:
            ahead = (seq - highest) % U32
            if 0 < ahead < U32 // 2:
                self.lost += ahead - 1
                self._highest_seq = seq
            elif self.lost > 0:
                self.lost -= 1  # a reordered frame fills an earlier gap
        transit = arrival - timestamp / self.clock_rate
        last = self._last_transit
        if last is not None:
            # RFC 3550 §6.4.1: J += (|D| - J) / 16, D the change in transit time.
            self.jitter += (abs(transit - last) - self.jitter) / 16
        self._last_transit = transit
        if transit < self._min_transit:
            self._min_transit = transit
        elif transit - self._min_transit > self.late_threshold:
            self.late += 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Migration:
    """One change of the client's network path."""

    #: The old local (client) or peer (server) address, ``"HOST:PORT"``.
    from_address: str
    #: The new one.
    to_address: str
    #: The longest pause in arriving audio around the change, in milliseconds.
    gap_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionStats:
    """A snapshot of one session, in the spirit of WebRTC's getStats()."""

    #: Latest, smoothed and minimum RTT in milliseconds (``None`` before the first sample).
    rtt_latest_ms: float | None = None
    rtt_smoothed_ms: float | None = None
    rtt_min_ms: float | None = None
    #: Uplink frames this side sent (client) or received (server).
    uplink_frames_sent: int = 0
    uplink_frames_received: int = 0
    #: Uplink frames missing by sequence number (realtime mode; reliable loses none).
    uplink_frames_lost: int = 0
    #: Realtime frames dropped before sending because they outlived their deadline.
    uplink_frames_dropped: int = 0
    #: Downlink (turn) frames sent by the server / received by the client.
    downlink_frames_sent: int = 0
    downlink_frames_received: int = 0
    #: Turns started and cancelled.
    turns: int = 0
    turns_cancelled: int = 0
    #: Interarrival jitter of received real-time audio, milliseconds (RFC 3550).
    jitter_ms: float = 0.0
    #: Received frames later than the fastest one by more than one frame duration.
    frames_late: int = 0
    #: Client: frames buffered ahead for playout, and samples concealed for lack of audio.
    playout_buffer_frames: int = 0
    concealed_samples: int = 0
    #: Path changes during the session.
    migrations: tuple[Migration, ...] = field(default=())
    #: Payload octets sent and received (audio and control).
    bytes_sent: int = 0
    bytes_received: int = 0
    #: UDP datagrams sent and received on this connection (filled in by the I/O shell).
    packets_sent: int = 0
    packets_received: int = 0
    #: ECN per network path, the current one last (specs/ecn.md): datagrams received by codepoint,
    #: the CE ratio, the validation outcome and whether an L4S bottleneck was seen.
    ecn: tuple[PathEcnStats, ...] = field(default=())
    #: What this side marks: ``"l4s"``, ``"classic"`` or ``"off"`` (filled in by the shell).
    ecn_mode: str = ""
