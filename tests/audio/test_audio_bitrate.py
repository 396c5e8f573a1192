"""The Opus encoder follows a congestion response: its bitrate changes between frames."""

from __future__ import annotations

import numpy as np
import pytest
from audio_signals import tone

from quicvoice.audio import OpusConfig, OpusEncoder, PcmEncoder
from quicvoice.audio.codecs import OpusCodec
from quicvoice.session.congestion import CongestionResponse

FRAME = 960


def _mean_packet(encoder: OpusEncoder, samples: np.ndarray, frames: int = 50) -> float:
    sizes = [len(encoder.encode(samples[i * FRAME : (i + 1) * FRAME])) for i in range(frames)]
    return sum(sizes[10:]) / len(sizes[10:])  # past the encoder's settling


def test_set_bitrate_changes_the_packet_size_from_the_next_frame() -> None:
    signal = tone(440.0, 48000, 100 * FRAME) // 2 + tone(1870.0, 48000, 100 * FRAME) // 4
    noise = np.random.default_rng(1).integers(-3000, 3000, len(signal)).astype(np.int16)
    samples = (signal + noise).astype(np.int16)
    encoder = OpusEncoder(OpusConfig(bitrate=32000, fec=False, expected_loss_percent=0))
    high = _mean_packet(encoder, samples[: 50 * FRAME])
    encoder.set_bitrate(8000)
    assert encoder.bitrate == 8000
    low = _mean_packet(encoder, samples[50 * FRAME : 100 * FRAME])
    assert high == pytest.approx(32000 / 8 / 50, rel=0.25)
    assert low == pytest.approx(8000 / 8 / 50, rel=0.35)


@pytest.mark.parametrize("bad", [5999, 510001, 0, -1])
def test_out_of_range_bitrates_are_refused_and_change_nothing(bad: int) -> None:
    encoder = OpusEncoder()
    with pytest.raises(ValueError):
        encoder.set_bitrate(bad)
    with pytest.raises(TypeError):
        encoder.set_bitrate(16000.0)  # type: ignore[arg-type]
    assert encoder.bitrate == 32000


def test_pcm_encoder_sets_opus_and_leaves_fixed_rate_codecs_alone() -> None:
    opus = PcmEncoder("opus/48000", 16000)
    assert opus.bitrate == 32000
    assert opus.set_bitrate(12000) is True
    assert opus.bitrate == 12000
    codec = opus.codec
    assert isinstance(codec, OpusCodec) and codec.bitrate == 12000
    l16 = PcmEncoder("L16/16000", 16000)
    assert l16.set_bitrate(12000) is False
    assert l16.bitrate is None


def test_an_encoder_following_ce_feedback_sends_fewer_octets() -> None:
    """The wiring the client and the app session use: target bitrate before each write."""
    response = CongestionResponse()
    encoder = PcmEncoder("opus/48000", 48000)
    pcm = tone(300.0, 48000, 4 * 48000)
    octets = []
    for second in range(4):
        if second == 2:  # heavy marking for a second: one round with every packet CE
            for step in range(10):
                response.on_ecn_feedback(now=10.0 + step * 0.1, acked=5, ce=5, rtt=0.1)
        encoder.set_bitrate(response.target_bitrate)
        chunk = pcm[second * 48000 : (second + 1) * 48000]
        octets.append(sum(len(frame.payload) for frame in encoder.write(chunk)))
    assert response.target_bitrate < 16000
    assert octets[3] < octets[1] * 0.6
