"""A sans-I/O jitter (playout) buffer for realtime audio.

Packets go in with :meth:`JitterBuffer.put` as they arrive; the audio clock calls
:meth:`JitterBuffer.get` once per frame and always gets exactly one frame back.
Neither reads a clock: both take ``now`` in seconds.

The rules, per :meth:`~JitterBuffer.get`:

=========================  =========================================================
situation                  result
=========================  =========================================================
not started                silence (``BUFFERING``); playout starts once the first
                           packet has waited ``target_delay``
next packet present        decode it (``NORMAL``); if packets wait longer than
                           ``target + frame`` on average, decode two and merge them
                           into one frame (``ACCELERATED``, removes one frame)
next packet missing,       presumed lost: recover it from the following packet's
later ones present         FEC (``FEC``) or conceal (``PLC``), and move on
buffer empty               underrun: conceal without moving on (``EXPAND``), so a
                           packet that is merely late still plays and the delay
                           grows by a frame; after ``idle_after`` seconds of this,
                           go back to buffering (the stream paused)
waits far below target     conceal once without moving on (``EXPAND``, counted as
                           inserted samples) to raise the delay
=========================  =========================================================

The target delay follows the RFC 3550 §6.4.1 interarrival jitter ``J``:
``target = clamp(frame + jitter_factor * J, min_delay, max_delay)``.
A decode error (corrupt payload) is concealed like a loss. Memory is bounded:
at most ``capacity`` packets are held; older ones are dropped and counted.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from quicvoice.audio.frames import INT16_MAX, INT16_MIN, Pcm
from quicvoice.errors import CodecError

SEQUENCE_MODULUS = 1 << 16
"""RTP-style sequence numbers are 16 bits and wrap (RFC 3550 §5.1)."""
TIMESTAMP_MODULUS = 1 << 32
"""RTP-style timestamps are 32 bits and wrap."""
JITTER_GAIN = 1.0 / 16.0
"""Gain of the interarrival jitter estimator (RFC 3550 §6.4.1)."""
WAIT_GAIN = 1.0 / 8.0
"""Gain of the moving average of packet waiting time that drives acceleration."""


class FrameDecoder(Protocol):
    """What the jitter buffer needs from a codec (every :class:`AudioCodec` has it)."""

    @property
    def rate(self) -> int:
        """Sample rate of decoded audio in Hz."""
        ...

    def decode_pcm(self, payload: bytes) -> Pcm:
        """Decode one payload; raise ``ValueError`` (e.g. :class:`CodecError`) if corrupt."""
        ...

    def recover_pcm(self, next_payload: bytes, samples: int) -> Pcm | None:
        """Rebuild the frame lost before ``next_payload`` from FEC; ``None`` if impossible."""
        ...

    def conceal_pcm(self, samples: int) -> Pcm:
        """Synthesise ``samples`` samples in place of lost audio."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class JitterBufferConfig:
    """Jitter buffer settings; validated on construction."""

    frame_samples: int
    """Samples per packet and per :meth:`JitterBuffer.get` call."""
    rate: int
    """Sample rate in Hz (the RTP timestamp clock)."""
    min_delay: float = 0.02
    """Lowest target waiting time of a packet, in seconds."""
    max_delay: float = 0.4
    """Highest target waiting time, in seconds."""
    jitter_factor: float = 3.0
    """Target = one frame + jitter_factor x interarrival jitter."""
    capacity: int = 50
    """Most packets held at once; beyond this the oldest are dropped."""
    idle_after: float = 0.5
    """Seconds of continuous underrun after which playout stops and re-buffers."""

    def __post_init__(self) -> None:
        if self.frame_samples <= 0 or self.rate <= 0:
            raise ValueError("frame_samples and rate must be positive")
        if not 0.0 <= self.min_delay <= self.max_delay:
            raise ValueError("need 0 <= min_delay <= max_delay")
        if self.jitter_factor < 0:
            raise ValueError("jitter_factor must not be negative")
        if self.capacity < 2:
            raise ValueError("capacity must be at least 2 packets")
        if self.idle_after <= 0:
            raise ValueError("idle_after must be positive")

    @property
    def frame_duration(self) -> float:
        """Duration of one frame in seconds."""
        return self.frame_samples / self.rate


class PlayoutKind(enum.Enum):
    """How a frame returned by :meth:`JitterBuffer.get` was made."""

    BUFFERING = "buffering"
    """Silence: playout has not started (or stopped after a long underrun)."""
    NORMAL = "normal"
    """Decoded from the packet due now."""
    ACCELERATED = "accelerated"
    """Two packets merged into one frame to cut the delay."""
    FEC = "fec"
    """A lost packet rebuilt from the next packet's forward error correction."""
    PLC = "plc"
    """A lost or undecodable packet concealed."""
    EXPAND = "expand"
    """Concealment while waiting: underrun, or a deliberate delay increase."""


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class PlayoutFrame:
    """One frame from :meth:`JitterBuffer.get`."""

    samples: Pcm
    """Exactly ``frame_samples`` int16 samples."""
    kind: PlayoutKind
    """How the samples were made."""
    sequence: int | None
    """Extended (unwrapped) sequence number of the packet played, if one was."""
    waited: float
    """Seconds the played packet spent in the buffer (0.0 when none was played)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JitterBufferStats:
    """A snapshot of counters, named after WebRTC's inbound-rtp statistics."""

    packets_received: int
    """Every packet given to ``put``, including late and duplicate ones."""
    packets_lost: int
    """Expected minus received, as in RFC 3550 §6.4.1 (never negative)."""
    packets_late: int
    """Packets that arrived after their frame was played or concealed; dropped."""
    packets_duplicate: int
    """Packets whose sequence number was already buffered; dropped."""
    packets_discarded: int
    """Packets dropped because the buffer was full."""
    decode_errors: int
    """Payloads the codec rejected (concealed instead)."""
    frames_emitted: int
    """Frames returned by ``get`` since playout started (buffering excluded)."""
    total_samples_received: int
    """Samples emitted since playout started (WebRTC totalSamplesReceived)."""
    concealed_samples: int
    """Samples not decoded from their own packet: FEC, PLC and expansion."""
    fec_samples: int
    """The part of ``concealed_samples`` rebuilt from FEC."""
    concealment_events: int
    """Runs of consecutive concealed frames."""
    inserted_samples_for_deceleration: int
    """Samples inserted on purpose to raise the delay."""
    removed_samples_for_acceleration: int
    """Samples removed by merging frames to cut the delay."""
    buffer_delay: float
    """Audio currently buffered, in seconds."""
    target_delay: float
    """Current target waiting time of a packet, in seconds."""
    jitter: float
    """RFC 3550 interarrival jitter, in seconds."""
    total_wait: float
    """Sum of the waiting times of played packets, in seconds (WebRTC jitterBufferDelay)."""
    packets_played: int
    """Packets played (normally or merged); ``total_wait / packets_played`` is the mean wait."""


class JitterBuffer:
    """Reorders packets, adapts its delay to jitter, and conceals losses (sans-I/O)."""

    def __init__(self, decoder: FrameDecoder, config: JitterBufferConfig) -> None:
        if decoder.rate != config.rate:
            raise ValueError(f"decoder rate {decoder.rate} != config rate {config.rate}")
        self._decoder = decoder
        self._config = config
        self._frame = config.frame_duration
        self._packets: dict[int, tuple[bytes, float]] = {}
        self._highest: int | None = None
        self._lowest: int | None = None
        self._next: int | None = None
        self._floor: int | None = None
        self._started = False
        self._first_arrival: float | None = None
        self._underrun = 0.0
        self._concealing = False
        self._previous_arrival: tuple[float, int] | None = None
        self._jitter = 0.0
        self._wait_average: float | None = None
        self._received = 0
        self._unique = 0
        self._late = 0
        self._duplicate = 0
        self._discarded = 0
        self._decode_errors = 0
        self._emitted = 0
        self._concealed = 0
        self._fec = 0
        self._events = 0
        self._inserted = 0
        self._removed = 0
        self._total_wait = 0.0
        self._played = 0

    @property
    def config(self) -> JitterBufferConfig:
        """The settings in use."""
        return self._config

    @property
    def target_delay(self) -> float:
        """Target waiting time of a packet, in seconds (from the measured jitter)."""
        c = self._config
        return min(c.max_delay, max(c.min_delay, self._frame + c.jitter_factor * self._jitter))

    @property
    def jitter(self) -> float:
        """RFC 3550 interarrival jitter, in seconds."""
        return self._jitter

    def put(self, *, sequence: int, timestamp: int, payload: bytes, now: float) -> bool:
        """Add a packet that arrived at ``now``; returns False if it was dropped.

        ``sequence`` is a 16-bit RTP-style sequence number (one per frame) and
        ``timestamp`` a 32-bit sample clock at the configured rate.
        """
        _check_int(sequence, SEQUENCE_MODULUS, "sequence")
        _check_int(timestamp, TIMESTAMP_MODULUS, "timestamp")
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
        _check_now(now)
        self._received += 1
        ext = self._extend(sequence)
        self._update_jitter(timestamp, now)
        if self._floor is not None and ext < self._floor:
            if self._floor - ext < SEQUENCE_MODULUS // 4:
                self._late += 1
                self._unique += 1
                return False
            self._restart()  # far behind what was played: the sender started a new stream
        if ext in self._packets:
            self._duplicate += 1
            return False
        self._unique += 1
        self._packets[ext] = (bytes(payload), now)
        self._highest = ext if self._highest is None else max(self._highest, ext)
        self._lowest = ext if self._lowest is None else min(self._lowest, ext)
        if self._next is None or (not self._started and ext < self._next):
            self._next = ext
        if self._first_arrival is None:
            self._first_arrival = now
        self._enforce_capacity()
        return ext in self._packets

    def get(self, now: float) -> PlayoutFrame:
        """Return the next frame of audio (always ``frame_samples`` samples)."""
        _check_now(now)
        n = self._config.frame_samples
        if not self._started:
            if self._first_arrival is None or now - self._first_arrival < self.target_delay:
                return PlayoutFrame(
                    samples=np.zeros(n, dtype=np.int16),
                    kind=PlayoutKind.BUFFERING,
                    sequence=None,
                    waited=0.0,
                )
            self._started = True
            if self._packets:
                self._next = min(self._packets)
        seq = self._next
        if seq is None:  # pragma: no cover - set whenever a packet is stored
            raise RuntimeError("jitter buffer started without a packet")
        entry = self._packets.get(seq)
        if entry is not None and self._should_decelerate():
            frame = self._expand(inserted=True)
        elif entry is not None:
            del self._packets[seq]
            frame = self._play(seq, entry, now)
        elif self._packets:
            frame = self._conceal_lost(seq)
        else:
            frame = self._expand(inserted=False)
        self._emitted += 1
        return frame

    def stats(self) -> JitterBufferStats:
        """A snapshot of the counters."""
        expected = 0 if self._highest is None else self._highest - (self._lowest or 0) + 1
        return JitterBufferStats(
            packets_received=self._received,
            packets_lost=max(0, expected - self._unique),
            packets_late=self._late,
            packets_duplicate=self._duplicate,
            packets_discarded=self._discarded,
            decode_errors=self._decode_errors,
            frames_emitted=self._emitted,
            total_samples_received=self._emitted * self._config.frame_samples,
            concealed_samples=self._concealed,
            fec_samples=self._fec,
            concealment_events=self._events,
            inserted_samples_for_deceleration=self._inserted,
            removed_samples_for_acceleration=self._removed,
            buffer_delay=len(self._packets) * self._frame,
            target_delay=self.target_delay,
            jitter=self._jitter,
            total_wait=self._total_wait,
            packets_played=self._played,
        )

    # -- playout ---------------------------------------------------------------------

    def _play(self, seq: int, entry: tuple[bytes, float], now: float) -> PlayoutFrame:
        payload, arrival = entry
        waited = max(0.0, now - arrival)
        self._underrun = 0.0
        self._next = self._floor = seq + 1
        self._record_wait(waited)
        average = self._wait_average if self._wait_average is not None else waited
        target = self.target_delay
        following = self._packets.get(seq + 1)
        if average > target + self._frame and following is not None:
            return self._accelerate(seq, payload, following, now)
        pcm = self._decode(payload)
        if pcm is None:
            return self._concealed_frame(PlayoutKind.PLC, seq=seq, waited=waited)
        self._concealing = False
        return PlayoutFrame(samples=pcm, kind=PlayoutKind.NORMAL, sequence=seq, waited=waited)

    def _should_decelerate(self) -> bool:
        """Packets wait far less than the target (jitter grew): hold back one frame."""
        average = self._wait_average
        if average is None or average >= self.target_delay - self._frame:
            return False
        self._wait_average = average + self._frame
        return True

    def _accelerate(
        self, seq: int, payload: bytes, following: tuple[bytes, float], now: float
    ) -> PlayoutFrame:
        waited = max(0.0, now - following[1])
        first = self._decode(payload)
        del self._packets[seq + 1]
        self._next = self._floor = seq + 2
        second = self._decode(following[0])
        if first is None or second is None:
            return self._concealed_frame(PlayoutKind.PLC, seq=seq, waited=waited)
        n = self._config.frame_samples
        ramp = (np.arange(n) + 0.5) / n
        merged = np.rint(first * (1.0 - ramp) + second * ramp)
        self._removed += n
        self._played += 1
        self._total_wait += waited
        if self._wait_average is not None:
            self._wait_average -= self._frame
        self._concealing = False
        samples = np.clip(merged, INT16_MIN, INT16_MAX).astype(np.int16)
        return PlayoutFrame(
            samples=samples, kind=PlayoutKind.ACCELERATED, sequence=seq, waited=waited
        )

    def _conceal_lost(self, seq: int) -> PlayoutFrame:
        self._next = self._floor = seq + 1
        self._underrun = 0.0
        n = self._config.frame_samples
        following = self._packets.get(seq + 1)
        if following is not None:
            try:
                pcm = self._decoder.recover_pcm(following[0], n)
            except (CodecError, ValueError):
                pcm = None
            if pcm is not None and len(pcm) == n:
                self._fec += n
                return self._mark_concealed(pcm, PlayoutKind.FEC, seq=None)
        return self._concealed_frame(PlayoutKind.PLC, seq=None, waited=0.0)

    def _expand(self, *, inserted: bool) -> PlayoutFrame:
        self._underrun += self._frame
        if self._underrun >= self._config.idle_after:
            self._started = False
            self._first_arrival = None
            self._underrun = 0.0
        if inserted:
            self._inserted += self._config.frame_samples
        return self._concealed_frame(PlayoutKind.EXPAND, seq=None, waited=0.0)

    def _concealed_frame(
        self, kind: PlayoutKind, *, seq: int | None, waited: float
    ) -> PlayoutFrame:
        n = self._config.frame_samples
        try:
            pcm = self._decoder.conceal_pcm(n)
        except (CodecError, ValueError):
            pcm = np.zeros(n, dtype=np.int16)
        if len(pcm) != n:
            pcm = np.resize(pcm, n) if len(pcm) else np.zeros(n, dtype=np.int16)
        return self._mark_concealed(pcm, kind, seq=seq, waited=waited)

    def _mark_concealed(
        self, pcm: Pcm, kind: PlayoutKind, *, seq: int | None, waited: float = 0.0
    ) -> PlayoutFrame:
        self._concealed += len(pcm)
        if not self._concealing:
            self._events += 1
            self._concealing = True
        return PlayoutFrame(samples=pcm, kind=kind, sequence=seq, waited=waited)

    def _decode(self, payload: bytes) -> Pcm | None:
        try:
            pcm = self._decoder.decode_pcm(payload)
        except (CodecError, ValueError):
            self._decode_errors += 1
            return None
        if len(pcm) != self._config.frame_samples:
            self._decode_errors += 1
            return None
        return pcm

    def _record_wait(self, waited: float) -> None:
        self._played += 1
        self._total_wait += waited
        if self._wait_average is None:
            self._wait_average = waited
        else:
            self._wait_average += WAIT_GAIN * (waited - self._wait_average)

    # -- arrival bookkeeping -----------------------------------------------------------

    def _extend(self, sequence: int) -> int:
        """Unwrap a 16-bit sequence number next to the highest seen (RFC 3550 §A.1)."""
        if self._highest is None:
            return sequence
        half = SEQUENCE_MODULUS // 2
        delta = (sequence - self._highest + half) % SEQUENCE_MODULUS - half
        return self._highest + delta

    def _update_jitter(self, timestamp: int, now: float) -> None:
        """RFC 3550 §6.4.1: J += (|D(i-1, i)| - J) / 16, with D in seconds."""
        previous = self._previous_arrival
        self._previous_arrival = (now, timestamp)
        if previous is None:
            return
        half = TIMESTAMP_MODULUS // 2
        sent = ((timestamp - previous[1] + half) % TIMESTAMP_MODULUS - half) / self._config.rate
        difference = (now - previous[0]) - sent
        self._jitter += JITTER_GAIN * (abs(difference) - self._jitter)

    def _enforce_capacity(self) -> None:
        capacity = self._config.capacity
        next_seq = self._next
        if next_seq is None or self._highest is None:  # pragma: no cover - set by put()
            return
        oldest_kept = max(next_seq, self._highest - capacity + 1)
        if oldest_kept > next_seq:
            for seq in [s for s in self._packets if s < oldest_kept]:
                del self._packets[seq]
                self._discarded += 1
            self._next = oldest_kept
            if self._floor is not None:
                self._floor = max(self._floor, oldest_kept)
        while len(self._packets) > capacity:
            del self._packets[min(self._packets)]
            self._discarded += 1

    def _restart(self) -> None:
        """The sender restarted its sequence: drop what is buffered and start again."""
        self._discarded += len(self._packets)
        self._packets.clear()
        self._highest = self._lowest = None
        self._next = self._floor = None
        self._started = False
        self._first_arrival = None
        self._wait_average = None


def _check_int(value: int, modulus: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value < modulus:
        raise ValueError(f"{name} must be in 0..{modulus - 1}, not {value}")


def _check_now(now: float) -> None:
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise ValueError(f"now must be a finite number of seconds, not {now!r}")
