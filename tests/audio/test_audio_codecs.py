"""Codec specs, negotiation, the common codec interface and the transcoder."""

from __future__ import annotations

import numpy as np
import pytest
from audio_signals import tone
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from quicvoice.audio import (
    L16_16K,
    L16_48K,
    OPUS_48K,
    PCMA_8K,
    PCMU_8K,
    AudioCodec,
    AudioFrame,
    CodecSpec,
    Resampler,
    Transcoder,
    make_codec,
    negotiate,
    ulaw_decode,
    ulaw_encode,
)
from quicvoice.errors import CodecError


def test_parse_and_format() -> None:
    assert CodecSpec.parse("PCMU/8000") == PCMU_8K
    assert CodecSpec.parse(" opus/48000/1 ") == OPUS_48K
    assert str(L16_16K) == "L16/16000"
    for bad in ("opus", "opus/abc", "a/1/2/3", "/8000", "opus/48000/2"):
        with pytest.raises(ValueError):
            CodecSpec.parse(bad)


def test_negotiate() -> None:
    offer = ["G722/8000", "pcmu/8000", "opus/48000"]
    assert negotiate(offer) == CodecSpec(name="pcmu", rate=8000)  # offerer's order and spelling
    assert negotiate(offer, prefer_offer=False) == CodecSpec(name="opus", rate=48000)
    assert negotiate(["G722/8000"]) is None
    assert negotiate([L16_48K], [L16_16K]) is None  # rates must match
    assert negotiate([PCMA_8K, PCMU_8K], [PCMU_8K]) == PCMU_8K


@pytest.mark.parametrize(
    "spec", ["L16/16000", "L16/24000", "L16/48000", "PCMU/8000", "PCMA/8000", "opus/48000"]
)
def test_every_codec_round_trips_a_frame(spec: str) -> None:
    codec = make_codec(spec)
    assert isinstance(codec, AudioCodec)
    n = codec.frame_samples
    frames = [
        AudioFrame(
            samples=tone(440.0, codec.rate, n * 10)[i * n : (i + 1) * n],
            rate=codec.rate,
            timestamp=i * n,
        )
        for i in range(10)
    ]
    decoded = [codec.decode(codec.encode(f), timestamp=f.timestamp) for f in frames]
    assert all(len(d) == n and d.rate == codec.rate for d in decoded)
    if spec.startswith("L16"):
        assert decoded == frames  # lossless
    assert len(codec.conceal_pcm(n)) == n


def test_l16_is_big_endian() -> None:
    codec = make_codec(L16_16K)
    frame = AudioFrame(samples=np.array([1, -2], dtype=np.int16), rate=16000)
    assert codec.encode(frame) == b"\x00\x01\xff\xfe"


@given(st.binary(max_size=400))
def test_l16_decode_any_bytes(payload: bytes) -> None:
    codec = make_codec(L16_48K)
    if len(payload) % 2:
        with pytest.raises(CodecError, match="odd"):
            codec.decode(payload)
    else:
        assert len(codec.decode(payload)) == len(payload) // 2


def test_encode_checks_rate_and_type() -> None:
    codec = make_codec(PCMU_8K)
    with pytest.raises(CodecError, match="rate"):
        codec.encode(AudioFrame(samples=np.zeros(160, dtype=np.int16), rate=16000))
    with pytest.raises(CodecError):
        codec.encode(np.zeros(160, dtype=np.int16))  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        make_codec("G729/8000")


def test_audio_frame_validation() -> None:
    with pytest.raises(CodecError):
        AudioFrame(samples=np.zeros(4), rate=8000)  # float64
    with pytest.raises(ValueError):
        AudioFrame(samples=np.zeros(4, dtype=np.int16), rate=0)
    f = AudioFrame(samples=np.zeros(80, dtype=np.int16), rate=8000, timestamp=5)
    assert f.duration == 0.01 and f != AudioFrame(samples=f.samples, rate=8000, timestamp=6)


@given(arrays(np.int16, 160 * 5))
def test_ulaw_transcoder_equals_decode_then_resample(samples: np.ndarray) -> None:
    """µ-law 8k -> L16 48k in one pass is bit-exact with ulaw_decode + Resampler."""
    t = Transcoder(PCMU_8K, 48000)
    r = Resampler(8000, 48000)
    for i in range(0, len(samples), 160):
        payload = ulaw_encode(samples[i : i + 160])
        assert np.array_equal(t.decode(payload), r.process(ulaw_decode(payload)))


def test_transcoder_both_ways() -> None:
    t = Transcoder("PCMU/8000", 48000)
    assert t.decode_delay <= 0.005 and t.encode_delay <= 0.005
    x = tone(1000.0, 48000, 960 * 20)
    payloads = [t.encode(x[i : i + 960]) for i in range(0, len(x), 960)]
    assert all(len(p) == 160 for p in payloads)
    y = np.concatenate([t.decode(p) for p in payloads])
    assert len(y) == len(x)
    t16 = Transcoder(OPUS_48K, 16000)
    out = t16.decode(t16.encode(x[:320]))
    assert len(out) == 320
