"""Opus: settings really applied, FEC really recovers, corrupt packets never crash."""

from __future__ import annotations

import numpy as np
import pytest
from audio_signals import loss_pattern, tone, tone_gain_db
from hypothesis import given, settings
from hypothesis import strategies as st

from quicvoice.audio import OpusConfig, OpusDecoder, OpusEncoder
from quicvoice.errors import CodecError

FRAME = 960
LOSS_SEED = 5


def _encode(samples: np.ndarray, config: OpusConfig | None = None) -> list[bytes]:
    enc = OpusEncoder(config)
    return [enc.encode(samples[i : i + FRAME]) for i in range(0, len(samples), FRAME)]


def _playout(packets: list[bytes], lost: np.ndarray, mode: str) -> np.ndarray:
    """Decode with losses filled by silence, PLC, or FEC from the next packet (else PLC)."""
    dec = OpusDecoder(48000, FRAME)
    out = []
    for i, packet in enumerate(packets):
        if not lost[i]:
            out.append(dec.decode(packet))
        elif mode == "silence":
            dec.conceal()  # keeps the decoder state as a receiver that conceals would
            out.append(np.zeros(FRAME, dtype=np.int16))
        elif mode == "fec" and i + 1 < len(packets) and not lost[i + 1]:
            out.append(dec.decode_fec(packets[i + 1]))
        else:
            out.append(dec.conceal())
    return np.concatenate(out)


def test_settings_are_read_back_from_libopus() -> None:
    enc = OpusEncoder(OpusConfig(fec=True, expected_loss_percent=15, dtx=False))
    raw = enc._encoder  # the binding object: check libopus itself agrees
    assert (raw.inband_fec, raw.packet_loss_perc, raw.dtx) == (1, 15, 0)
    enc = OpusEncoder(OpusConfig(fec=False, expected_loss_percent=0, dtx=True))
    raw = enc._encoder
    assert (raw.inband_fec, raw.packet_loss_perc, raw.dtx) == (0, 0, 1)


@pytest.mark.parametrize("rate", [16000, 24000, 48000])
def test_round_trip_keeps_a_tone(rate: int) -> None:
    frame = rate // 50
    x = tone(440.0, rate, rate)
    enc, dec = OpusEncoder(OpusConfig(rate=rate)), OpusDecoder(rate, frame)
    y = np.concatenate([dec.decode(enc.encode(x[i : i + frame])) for i in range(0, rate, frame)])
    gain = tone_gain_db(y[rate // 5 :], 440.0, rate)
    assert abs(gain) < 1.5, gain


def test_fec_rebuilds_lost_frames_better_than_plc(speech: dict[int, np.ndarray]) -> None:
    """Per lost frame: error energy after FEC is far below that after PLC."""
    x = speech[48000]
    packets = _encode(x)
    lost = loss_pattern(len(packets), 0.10, LOSS_SEED)
    lost[-1] = False
    clean = _playout(packets, np.zeros(len(packets), dtype=bool), "plc").astype(float)
    fec = _playout(packets, lost, "fec").astype(float)
    plc = _playout(packets, lost, "plc").astype(float)
    recoverable = lost & ~np.roll(lost, -1)
    idx = np.concatenate(
        [np.arange(i * FRAME, (i + 1) * FRAME) for i in np.flatnonzero(recoverable)]
    )
    err_fec = np.sum((fec[idx] - clean[idx]) ** 2)
    err_plc = np.sum((plc[idx] - clean[idx]) ** 2)
    assert err_fec < 0.5 * err_plc, (err_fec, err_plc)


def test_without_fec_the_next_packet_cannot_rebuild_a_loss(speech: dict[int, np.ndarray]) -> None:
    x = speech[48000][: 48000 * 3]
    packets = _encode(x, OpusConfig(fec=False, expected_loss_percent=0))
    lost = np.zeros(len(packets), dtype=bool)
    lost[40::25] = True
    assert np.array_equal(_playout(packets, lost, "fec"), _playout(packets, lost, "plc"))


def test_encoder_rejects_wrong_frames() -> None:
    enc = OpusEncoder()
    for bad in (np.zeros(959, dtype=np.int16), np.zeros(960, dtype=np.float32), b"\x00" * 1920):
        with pytest.raises(CodecError):
            enc.encode(bad)  # type: ignore[arg-type]


def test_decoder_rejects_empty_and_non_bytes() -> None:
    dec = OpusDecoder()
    with pytest.raises(CodecError):
        dec.decode(b"")
    with pytest.raises(CodecError):
        dec.decode("x")  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        dec.conceal(100)  # not a multiple of 2.5 ms


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=1500))
def test_corrupt_packets_decode_or_raise_codec_error(payload: bytes) -> None:
    dec = OpusDecoder(48000, FRAME)
    try:
        pcm = dec.decode(payload)
    except CodecError:
        pass
    else:
        assert pcm.dtype == np.int16 and len(pcm) <= 5760
    try:
        assert len(dec.decode_fec(payload, FRAME)) == FRAME
    except CodecError:
        pass
    assert len(dec.conceal()) == FRAME  # the decoder still works afterwards


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        OpusConfig(rate=44100)
    with pytest.raises(ValueError):
        OpusConfig(frame_ms=30)
    with pytest.raises(ValueError):
        OpusConfig(bitrate=100)
