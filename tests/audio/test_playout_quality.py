"""Playout recording, concealment ratio, alignment and the codec-alone reference
(``quicvoice.audio.quality``), and the demo's PESQ scoring on top of them (no root)."""

from __future__ import annotations

import importlib.util
import sys
import wave
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from audio_signals import loss_pattern

from quicvoice.audio import (
    JitterBuffer,
    JitterBufferConfig,
    PlayoutRecorder,
    align,
    codec_round_trip,
    encode_stream,
    estimate_lag,
    make_codec,
)
from quicvoice.audio.codecs import AudioCodec

PERIOD = 0.02
DEMO = Path(__file__).resolve().parents[2] / "examples" / "wifi_to_5g.py"


def play(
    codec: AudioCodec,
    payloads: list[bytes],
    lost: set[int] | frozenset[int] = frozenset(),
    delay: Callable[[int], float] = lambda seq: 0.03,
    *,
    announce: bool = True,
    keep_audio: bool = True,
) -> PlayoutRecorder:
    """Send ``payloads`` every 20 ms through a fake network into a jitter buffer; pull it
    every 20 ms (offset 7 ms) with a recorder until the utterance is over."""
    n = codec.frame_samples
    jitter = JitterBuffer(codec, JitterBufferConfig(frame_samples=n, rate=codec.rate))
    recorder = PlayoutRecorder(jitter, keep_audio=keep_audio)
    arrivals = sorted(
        (seq * PERIOD + delay(seq), seq) for seq in range(len(payloads)) if seq not in lost
    )
    end_at = len(payloads) * PERIOD + delay(len(payloads) - 1)
    tick, index, ended = 0.007, 0, False
    for _ in range(len(payloads) * 3 + 100):
        while index < len(arrivals) and arrivals[index][0] <= tick:
            at, seq = arrivals[index]
            jitter.put(sequence=seq & 0xFFFF, timestamp=seq * n, payload=payloads[seq], now=at)
            index += 1
        if not ended and tick >= end_at:
            recorder.end(len(payloads) if announce else None)
            ended = True
        recorder.tick(tick)
        if recorder.done:
            return recorder
        tick += PERIOD
    raise AssertionError("the utterance never ended")


def l16_stream(frames: int, seed: int = 1) -> tuple[AudioCodec, np.ndarray, list[bytes]]:
    codec = make_codec("L16/16000")
    rng = np.random.default_rng(seed)
    samples = rng.integers(-8000, 8000, frames * 320).astype(np.int16)
    return codec, samples, encode_stream(samples, 16000, codec)


def test_a_clean_stream_plays_back_exactly_with_nothing_concealed() -> None:
    codec, samples, payloads = l16_stream(100)
    recorder = play(codec, payloads)
    report = recorder.report()
    assert report.ended_by == "sequence" and report.end_sequence == 100
    assert report.first_sequence == 0
    assert report.frames == report.normal_frames == 100
    assert report.concealed_samples == 0 and report.concealment_ratio == 0.0
    assert np.array_equal(recorder.audio(), samples)
    assert 0.0 < report.mean_wait < 0.06


def test_isolated_opus_losses_are_rebuilt_by_fec_and_counted_as_concealed() -> None:
    codec = make_codec("opus/48000")
    t = np.arange(200 * 320) / 16000
    voice = (6000 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.int16)
    payloads = encode_stream(voice, 16000, codec)
    lost = {20, 55, 90, 91, 140}
    report = play(make_codec("opus/48000"), payloads, lost).report()
    assert report.ended_by == "sequence"
    # A single loss: the next packet is there, its FEC rebuilds the frame. The buffer holds
    # about one packet, so the run 90-91 first empties it (one frame expanded while
    # waiting), then 90 is concealed by PLC (91 is gone too) and 91 rebuilt from 92's FEC.
    # (The buffer later merges two frames to win that frame back.)
    assert (report.fec_frames, report.plc_frames, report.expand_frames) == (4, 1, 1)
    assert report.packets_lost == 5
    assert report.normal_frames + 2 * report.accelerated_frames == 195
    assert report.frames == 195 - report.accelerated_frames + 6
    assert report.removed_samples == report.accelerated_frames * 960
    assert report.concealed_samples == 6 * 960
    assert report.fec_samples == 4 * 960
    assert report.concealment_ratio == pytest.approx(6 / report.frames)


def test_l16_losses_are_plc_and_the_ratio_follows_the_loss() -> None:
    codec, _, payloads = l16_stream(400)
    lost = {int(i) for i in np.flatnonzero(loss_pattern(400, 0.08, seed=3)) if 0 < i < 399}
    report = play(codec, payloads, lost).report()
    assert report.fec_frames == 0
    assert report.plc_frames == len(lost)  # each, once a later packet is there
    concealed = report.plc_frames + report.expand_frames  # runs of losses also underrun
    assert report.concealed_samples == concealed * 320
    assert report.concealment_ratio == pytest.approx(concealed / report.frames)
    assert len(lost) / 400 <= report.concealment_ratio < 2 * len(lost) / 400


def test_a_lost_tail_is_concealed_once_and_the_trailing_underrun_is_cut() -> None:
    codec, samples, payloads = l16_stream(60)
    recorder = play(codec, payloads, lost={57, 58, 59})
    report = recorder.report()
    assert report.ended_by == "underrun"
    # The three missing frames stand for the lost tail; the rest of the underrun is cut.
    assert report.expand_frames == 3 and report.frames == 60
    assert report.concealed_samples == 3 * 320
    assert len(recorder.audio()) == 60 * 320
    assert np.array_equal(recorder.audio()[: 57 * 320], samples[: 57 * 320])


def test_without_a_frame_count_the_whole_trailing_underrun_is_cut() -> None:
    codec, _, payloads = l16_stream(50)
    report = play(codec, payloads, announce=False).report()
    assert report.ended_by == "underrun"
    assert report.frames == 50 and report.expand_frames == 0
    assert report.concealment_ratio == 0.0


def test_a_delay_step_mid_call_is_an_underrun_played_as_expansion() -> None:
    # The call moves to a path 100 ms longer at frame 100: the buffer runs dry for about
    # five frames, then plays everything (nothing is lost), 100 ms later than before.
    codec, samples, payloads = l16_stream(200)
    recorder = play(codec, payloads, delay=lambda seq: 0.01 if seq < 100 else 0.11)
    report = recorder.report()
    assert report.ended_by == "sequence"
    assert report.normal_frames + 2 * report.accelerated_frames == 200
    assert 4 <= report.expand_frames <= 6
    assert report.concealment_ratio == pytest.approx(report.expand_frames / report.frames)
    audio = recorder.audio()
    assert np.array_equal(audio[: 100 * 320], samples[: 100 * 320])
    shift = (report.expand_frames - report.accelerated_frames) * 320
    assert estimate_lag(samples[120 * 320 :], audio[120 * 320 :], 3200) == shift


def test_a_report_before_the_end_is_a_snapshot_and_close_freezes_it() -> None:
    codec, _, payloads = l16_stream(10)
    jitter = JitterBuffer(codec, JitterBufferConfig(frame_samples=320, rate=16000))
    recorder = PlayoutRecorder(jitter, keep_audio=False)
    for seq, payload in enumerate(payloads):
        jitter.put(sequence=seq, timestamp=seq * 320, payload=payload, now=seq * PERIOD)
        recorder.tick(seq * PERIOD + 0.05)
    assert not recorder.done and recorder.report().frames > 0
    assert len(recorder.audio()) == 0
    final = recorder.close()
    assert recorder.done and final.ended_by == "closed" and recorder.report() is final
    with pytest.raises(ValueError):
        recorder.end(-1)


@pytest.mark.parametrize("lag", [0, 1, 37, 480, -25])
def test_estimate_lag_finds_a_known_delay_in_speech(
    speech: dict[int, np.ndarray], lag: int
) -> None:
    x = speech[16000][: 3 * 16000]
    y = np.concatenate([np.zeros(lag, np.int16), x]) if lag >= 0 else x[-lag:]
    assert estimate_lag(x, y, 960) == lag


def test_align_uses_the_known_start_then_the_residual_lag(speech: dict[int, np.ndarray]) -> None:
    x = speech[16000]
    start, residual = 25 * 320, 167  # playout began at frame 25; the chain adds 167 samples
    played = np.concatenate([np.zeros(residual, np.int16), x[start:]])
    aligned = align(x, played, start=start, max_lag=960, window=32000)
    assert (aligned.start, aligned.lag) == (start, residual)
    assert np.array_equal(aligned.degraded[:16000], aligned.reference[:16000])


def test_the_codec_alone_is_the_reference_line(speech: dict[int, np.ndarray]) -> None:
    pesq = pytest.importorskip("pesq").pesq
    x = speech[16000]
    y = codec_round_trip(x, 16000, make_codec("opus/48000"), make_codec("opus/48000"))
    aligned = align(x, y, max_lag=960, window=32000)
    # Opus look-ahead (6.5 ms) and two resamplers (2 ms each).
    assert 150 <= aligned.lag <= 185
    assert estimate_lag(aligned.reference, aligned.degraded, 160) == 0
    score = pesq(16000, aligned.reference.astype(float), aligned.degraded.astype(float), "wb")
    assert 3.2 < score < 4.5  # below the clean ceiling: the codec costs quality by itself


def _demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wifi_to_5g_under_test", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_demo_scores_a_recording_against_the_codec_alone(
    speech: dict[int, np.ndarray], tmp_path: Path
) -> None:
    """The demo's PESQ path end to end: Opus frames, 8 % loss, jitter buffer, WAV, scores."""
    pytest.importorskip("pesq")
    demo = _demo()
    x = speech[16000]
    payloads = demo.uplink_frames(x, "realtime")
    lost = {int(i) for i in np.flatnonzero(loss_pattern(len(payloads), 0.08, seed=2)) if i > 3}
    first = 2  # the first two packets never arrive: playout starts at frame 2
    lost |= {0, 1}
    recorder = play(make_codec("opus/48000"), payloads, lost)
    report = recorder.report()
    assert report.first_sequence == first
    path = tmp_path / "played.wav"
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(48000)
        writer.writeframes(recorder.audio().astype("<i2").tobytes())
    quality = demo.speech_quality({**report.as_dict(), "recording": str(path)}, x)
    assert quality["start_ms"] == first * 20
    assert quality["lag_ms"] == pytest.approx(quality["codec_lag_ms"], abs=0.1)
    played, codec = quality["played"], quality["codec_only"]
    assert codec["wb"] > 3.2 and codec["nb"] > 3.5
    assert 1.5 < played["wb"] < codec["wb"] - 0.2
    assert 1.5 < played["nb"] < codec["nb"] - 0.1
