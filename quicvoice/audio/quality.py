"""What a listener of a realtime stream hears, and how to compare it with what was said.

* :class:`PlayoutRecorder` pulls a :class:`~quicvoice.audio.jitter.JitterBuffer` once per
  frame (the caller's audio clock gives ``now``), keeps the samples it played and counts
  how each frame was made (decoded, FEC, PLC, expansion, merged). Told how many frames the
  sender sent, it knows when the utterance is over and freezes a :class:`PlayoutReport`:
  the concealment ratio (concealed samples / samples played, from
  :meth:`~quicvoice.audio.jitter.JitterBuffer.stats`), loss, lateness and waiting time.
* :func:`estimate_lag` and :func:`align` line a played-out recording up with the original:
  first by the capture time of the first frame played (known from its sequence number),
  then by cross-correlation for the fixed codec and resampler delay.
* :func:`encode_stream` and :func:`codec_round_trip` run speech through a codec with no
  network at all: the reference an objective score (PESQ) through the network is read
  against, since the codec alone already costs some quality.

Sans-I/O like the rest of :mod:`quicvoice.audio`: no clock, no files; the caller reads the
clock, writes WAV files and scores (the ``pesq`` package is a test/benchmark dependency).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from quicvoice.audio.codecs import AudioCodec
from quicvoice.audio.frames import AudioFrame, Pcm, check_pcm
from quicvoice.audio.jitter import JitterBuffer, JitterBufferStats, PlayoutFrame, PlayoutKind
from quicvoice.audio.resample import Resampler

DEFAULT_UNDERRUN_FRAMES = 10
"""After the sender's last frame, this many frames of underrun end the utterance."""
DEFAULT_MAX_SECONDS = 600.0
"""Most audio a recorder keeps, in seconds (the counters go on beyond it)."""

EndReason = Literal["sequence", "underrun", "closed"]
"""Why a recording ended: the last frame was played (or concealed), the buffer ran dry
after the sender's last frame (its tail was lost), or the caller closed it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PlayoutReport:
    """What a jitter buffer played for one utterance, frozen when it ended."""

    rate: int
    """Sample rate of the played audio in Hz."""
    frame_samples: int
    """Samples per frame."""
    first_sequence: int | None
    """Sequence number of the first frame played: its capture time is sample 0 of the
    recording (``None`` if nothing was played)."""
    end_sequence: int | None
    """Sequence number the buffer would have played next when the utterance ended."""
    ended_by: EndReason
    """Why the utterance was considered over."""
    frames: int
    """Frames played out since playout started (decoded, merged or concealed)."""
    normal_frames: int
    """Frames decoded from their own packet."""
    accelerated_frames: int
    """Frames made by merging two packets (each removes one frame of delay)."""
    fec_frames: int
    """Lost frames rebuilt from the next packet's in-band FEC."""
    plc_frames: int
    """Lost (or undecodable) frames concealed by the codec's PLC."""
    expand_frames: int
    """Frames concealed while waiting: underruns, and deliberate delay increases."""
    total_samples: int
    """Samples played out (``JitterBufferStats.total_samples_received``)."""
    concealed_samples: int
    """Samples not decoded from their own packet: FEC, PLC and expansion."""
    fec_samples: int
    """The part of ``concealed_samples`` rebuilt from FEC."""
    packets_received: int
    """Packets that reached the buffer, late and duplicate ones included."""
    packets_lost: int
    """Packets never received between the first and the highest seen."""
    packets_late: int
    """Packets that arrived after their frame was played or concealed."""
    packets_discarded: int
    """Packets dropped because the buffer was full."""
    decode_errors: int
    """Payloads the codec rejected."""
    inserted_samples: int
    """Samples inserted on purpose to raise the delay."""
    removed_samples: int
    """Samples removed by merging frames."""
    mean_wait: float
    """Mean time a played packet waited in the buffer, in seconds."""
    target_delay: float
    """The buffer's target wait when the utterance ended, in seconds."""
    jitter: float
    """RFC 3550 interarrival jitter when the utterance ended, in seconds."""

    @property
    def concealment_ratio(self) -> float:
        """Concealed samples / samples played (0.0 when nothing was played)."""
        return self.concealed_samples / self.total_samples if self.total_samples else 0.0

    def as_dict(self) -> dict[str, object]:
        """The report as a JSON-ready dict (times in milliseconds, ratio included)."""
        return {
            "rate": self.rate,
            "frame_samples": self.frame_samples,
            "first_sequence": self.first_sequence,
            "end_sequence": self.end_sequence,
            "ended_by": self.ended_by,
            "frames": self.frames,
            "normal_frames": self.normal_frames,
            "accelerated_frames": self.accelerated_frames,
            "fec_frames": self.fec_frames,
            "plc_frames": self.plc_frames,
            "expand_frames": self.expand_frames,
            "total_samples": self.total_samples,
            "concealed_samples": self.concealed_samples,
            "fec_samples": self.fec_samples,
            "concealment_ratio": round(self.concealment_ratio, 5),
            "packets_received": self.packets_received,
            "packets_lost": self.packets_lost,
            "packets_late": self.packets_late,
            "packets_discarded": self.packets_discarded,
            "decode_errors": self.decode_errors,
            "inserted_samples": self.inserted_samples,
            "removed_samples": self.removed_samples,
            "mean_wait_ms": round(self.mean_wait * 1000, 2),
            "target_delay_ms": round(self.target_delay * 1000, 2),
            "jitter_ms": round(self.jitter * 1000, 3),
        }


class PlayoutRecorder:
    """Plays a jitter buffer out frame by frame and records what it played (sans-I/O).

    Call :meth:`tick` once per frame period with the audio clock's ``now``; it returns the
    frame the buffer gave. Recording starts with the first frame that is not
    ``BUFFERING``, so sample 0 of :meth:`audio` was captured with ``first_sequence``.
    :meth:`end` says the sender has sent ``frames`` frames (sequence numbers
    ``0 .. frames - 1``): the utterance is over (:attr:`done`) once the buffer has played
    or concealed the last of them, or, if the tail never arrives, once it has run dry for
    ``underrun_frames`` frames; of that final underrun only as many frames as were missing
    are kept (they stand for the lost tail), the rest is cut from the audio and the counts.
    After that, :meth:`tick` still drains the buffer but records nothing.
    """

    def __init__(
        self,
        jitter: JitterBuffer,
        *,
        keep_audio: bool = True,
        max_seconds: float = DEFAULT_MAX_SECONDS,
        underrun_frames: int = DEFAULT_UNDERRUN_FRAMES,
    ) -> None:
        if underrun_frames < 1:
            raise ValueError("underrun_frames must be at least 1")
        if max_seconds < 0:
            raise ValueError("max_seconds must not be negative")
        self._jitter = jitter
        config = jitter.config
        self._frame_samples = config.frame_samples
        self._rate = config.rate
        self._keep_audio = keep_audio
        self._max_frames = int(max_seconds * config.rate) // config.frame_samples
        self._underrun_frames = underrun_frames
        self._chunks: list[Pcm] = []
        self._kinds = dict.fromkeys(PlayoutKind, 0)
        self._started = False
        self._first_sequence: int | None = None
        self._position: int | None = None
        self._expand_run = 0
        self._end_frames: int | None = None
        self._end_requested = False
        self._report: PlayoutReport | None = None

    @property
    def done(self) -> bool:
        """True once the utterance is over and :meth:`report` is final."""
        return self._report is not None

    @property
    def position(self) -> int | None:
        """Sequence number the buffer plays next (``None`` before playout starts)."""
        return self._position

    @property
    def kinds(self) -> dict[PlayoutKind, int]:
        """Frames recorded so far, by how they were made (BUFFERING: silence after a pause)."""
        return dict(self._kinds)

    def tick(self, now: float) -> PlayoutFrame:
        """Take one frame from the jitter buffer at ``now`` and record it."""
        frame = self._jitter.get(now)
        if self._report is not None:
            return frame
        if not self._started:
            if frame.kind is PlayoutKind.BUFFERING:
                return frame
            self._started = True
            self._first_sequence = frame.sequence
        self._kinds[frame.kind] += 1
        if self._keep_audio and len(self._chunks) < self._max_frames:
            self._chunks.append(frame.samples)
        self._advance(frame)
        self._expand_run = self._expand_run + 1 if frame.kind is PlayoutKind.EXPAND else 0
        self._check_end()
        return frame

    def end(self, frames: int | None = None) -> None:
        """The sender's utterance is over; it sent ``frames`` frames (``None``: not known)."""
        if frames is not None and (isinstance(frames, bool) or frames < 0):
            raise ValueError(f"frames must be a non-negative int, not {frames!r}")
        self._end_requested = True
        self._end_frames = frames
        if self._report is None:
            self._check_end()

    def close(self) -> PlayoutReport:
        """End the recording now (the session closed); return the report."""
        if self._report is None:
            self._finish("closed", trim=0)
        assert self._report is not None
        return self._report

    def report(self) -> PlayoutReport:
        """The final report once :attr:`done`; before that, a snapshot of the counts so far."""
        if self._report is not None:
            return self._report
        return self._build("closed", self._jitter.stats(), trim=0)

    def audio(self) -> Pcm:
        """The samples played since playout started (up to the end of the utterance)."""
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._chunks)

    # -- internals -----------------------------------------------------------------------

    def _advance(self, frame: PlayoutFrame) -> None:
        kind, sequence = frame.kind, frame.sequence
        if kind is PlayoutKind.ACCELERATED and sequence is not None:
            self._position = sequence + 2
        elif sequence is not None:  # NORMAL, or PLC for an undecodable packet
            self._position = sequence + 1
        elif kind in (PlayoutKind.FEC, PlayoutKind.PLC) and self._position is not None:
            self._position += 1  # a lost frame, concealed: the buffer moved past it

    def _check_end(self) -> None:
        if not self._end_requested or not self._started:
            return
        end, position = self._end_frames, self._position
        if end is not None and position is not None and position >= end:
            self._finish("sequence", trim=0)
            return
        if self._expand_run >= self._underrun_frames and self._jitter.stats().buffer_delay == 0:
            missing = 0 if end is None or position is None else max(0, end - position)
            self._finish("underrun", trim=self._expand_run - min(self._expand_run, missing))

    def _finish(self, reason: EndReason, *, trim: int) -> None:
        stats = self._jitter.stats()
        if trim:
            self._kinds[PlayoutKind.EXPAND] -= trim
            kept = len(self._chunks)
            recorded = sum(self._kinds.values()) + trim
            # Only frames that were kept can be cut (the audio may have hit max_seconds).
            cut = max(0, min(trim, kept - (recorded - trim)))
            if cut:
                del self._chunks[kept - cut :]
        self._report = self._build(reason, stats, trim=trim)

    def _build(self, reason: EndReason, stats: JitterBufferStats, *, trim: int) -> PlayoutReport:
        n = self._frame_samples
        kinds = self._kinds
        return PlayoutReport(
            rate=self._rate,
            frame_samples=n,
            first_sequence=self._first_sequence,
            end_sequence=self._position,
            ended_by=reason,
            frames=stats.frames_emitted - trim,
            normal_frames=kinds[PlayoutKind.NORMAL],
            accelerated_frames=kinds[PlayoutKind.ACCELERATED],
            fec_frames=kinds[PlayoutKind.FEC],
            plc_frames=kinds[PlayoutKind.PLC],
            expand_frames=kinds[PlayoutKind.EXPAND],
            total_samples=stats.total_samples_received - trim * n,
            concealed_samples=stats.concealed_samples - trim * n,
            fec_samples=stats.fec_samples,
            packets_received=stats.packets_received,
            packets_lost=stats.packets_lost,
            packets_late=stats.packets_late,
            packets_discarded=stats.packets_discarded,
            decode_errors=stats.decode_errors,
            inserted_samples=stats.inserted_samples_for_deceleration,
            removed_samples=stats.removed_samples_for_acceleration,
            mean_wait=stats.total_wait / stats.packets_played if stats.packets_played else 0.0,
            target_delay=stats.target_delay,
            jitter=stats.jitter,
        )


# -- alignment ---------------------------------------------------------------------------


def estimate_lag(reference: Pcm, degraded: Pcm, max_lag: int) -> int:
    """Samples by which ``degraded`` lags ``reference`` (negative: it leads), ``|lag| <= max_lag``.

    The peak of their cross-correlation (FFT, zero-padded, so nothing wraps around).
    Both signals are at the same rate; a constant delay is assumed over what is given, so
    pass matching stretches (e.g. the first seconds) when the delay changes later.
    """
    check_pcm(reference, name="reference")
    check_pcm(degraded, name="degraded")
    if max_lag < 0:
        raise ValueError("max_lag must not be negative")
    if not len(reference) or not len(degraded):
        return 0
    size = 1 << int(np.ceil(np.log2(len(reference) + len(degraded))))
    spectrum = np.conj(np.fft.rfft(reference.astype(np.float64), size))
    spectrum *= np.fft.rfft(degraded.astype(np.float64), size)
    correlation = np.fft.irfft(spectrum, size)  # index k: degraded[i + k] ~ reference[i]
    max_lag = min(max_lag, size // 2 - 1)
    lags = np.arange(-max_lag, max_lag + 1)
    return int(lags[np.argmax(correlation[lags])])  # negative lags index from the end


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Alignment:
    """A reference and a degraded signal cut so that sample 0 of each is the same instant."""

    reference: Pcm
    """The reference from the aligned instant on."""
    degraded: Pcm
    """The degraded signal from the aligned instant on (its length may differ: a jitter
    buffer inserts and removes frames)."""
    start: int
    """Reference sample at which the degraded signal's first sample was captured, as given
    (e.g. first played sequence number x samples per frame)."""
    lag: int
    """Further delay of the degraded signal found by cross-correlation (codec, resampling),
    in samples; the degraded signal was cut by it (or the reference, when negative)."""


def align(
    reference: Pcm,
    degraded: Pcm,
    *,
    start: int = 0,
    max_lag: int,
    window: int | None = None,
) -> Alignment:
    """Align ``degraded`` with ``reference``: known start first, then cross-correlation.

    ``start`` is where in ``reference`` the degraded recording begins (known from the
    capture timestamp or sequence number of its first frame). The remaining fixed delay
    (codec look-ahead, resamplers) is found by :func:`estimate_lag` within ``±max_lag``
    over the first ``window`` samples (all by default; keep it before any point where a
    jitter buffer changed its delay). Later delay changes are left for the scorer (PESQ
    re-aligns each utterance).
    """
    check_pcm(reference, name="reference")
    check_pcm(degraded, name="degraded")
    if not 0 <= start <= len(reference):
        raise ValueError(f"start {start} is outside the reference (0..{len(reference)})")
    shifted = reference[start:]
    span = len(shifted) if window is None else window
    lag = estimate_lag(shifted[:span], degraded[: span + max_lag], max_lag)
    if lag >= 0:
        return Alignment(reference=shifted, degraded=degraded[lag:], start=start, lag=lag)
    return Alignment(reference=shifted[-lag:], degraded=degraded, start=start, lag=lag)


# -- the codec alone -----------------------------------------------------------------------


def resample_signal(samples: Pcm, in_rate: int, out_rate: int) -> Pcm:
    """Resample a whole signal (zero-padded to what the resampler takes; delay not removed)."""
    check_pcm(samples)
    if in_rate == out_rate:
        return samples
    resampler = Resampler(in_rate, out_rate)
    padded = np.concatenate(
        [samples, np.zeros(-len(samples) % resampler.input_multiple, dtype=np.int16)]
    )
    return resampler.process(padded)


def encode_stream(samples: Pcm, rate: int, codec: AudioCodec) -> list[bytes]:
    """Resample ``samples`` (at ``rate``) to the codec's rate and encode them frame by frame.

    The last frame is zero-padded. One codec instance encodes the whole stream (Opus keeps
    state between frames, and its in-band FEC describes the previous frame).
    """
    edge = resample_signal(check_pcm(samples), rate, codec.rate)
    size = codec.frame_samples
    edge = np.concatenate([edge, np.zeros(-len(edge) % size, dtype=np.int16)])
    return [
        codec.encode(AudioFrame(samples=edge[i : i + size], rate=codec.rate, timestamp=i))
        for i in range(0, len(edge), size)
    ]


def codec_round_trip(samples: Pcm, rate: int, encoder: AudioCodec, decoder: AudioCodec) -> Pcm:
    """``samples`` through ``encoder`` and ``decoder`` with no loss, back at ``rate``.

    Use two fresh codec instances of one spec. The result is delayed by the codec's
    look-ahead and both resamplers (find it with :func:`estimate_lag`).
    """
    payloads = encode_stream(samples, rate, encoder)
    decoded: npt.NDArray[np.int16] = np.concatenate(
        [decoder.decode_pcm(payload) for payload in payloads]
    )
    return resample_signal(decoded, decoder.rate, rate)
