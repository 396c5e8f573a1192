"""µ-law straight through for PCMU, and through the library's G.711 and resampler for
other codecs: a tone keeps its pitch both ways, each turn has its own decoder."""

from __future__ import annotations

import numpy as np

from quicvoice.audio.g711 import ulaw_decode, ulaw_encode
from quicvoice.audio.pcm import PcmDecoder, PcmEncoder
from quicvoice.gateway.transcode import DownlinkDecoder, UplinkFramer, is_line_codec

from .audio import dominant_hz, tone


def test_pcmu_goes_straight_through_recut_into_frames() -> None:
    framer = UplinkFramer("PCMU/8000")
    assert framer.passthrough and is_line_codec("pcmu/8000")
    chunk = bytes(range(256)) * 2  # every µ-law code, both zeros included
    frames = framer.write(chunk[:100]) + framer.write(chunk[100:])
    assert [len(f) for f in frames] == [160, 160, 160]
    assert b"".join(frames) == chunk[:480]  # octet for octet: no decode, no re-encode
    tail = framer.flush()
    assert tail == [chunk[480:] + b"\xff" * 128]  # padded with µ-law silence
    decoder = DownlinkDecoder("PCMU/8000")
    assert decoder.decode(0, b"\x7f\x00") == b"\x7f\x00"


def test_l16_at_16khz_keeps_the_tone_both_ways() -> None:
    line_audio = ulaw_encode(tone(440.0, 8000, 1.0))
    framer = UplinkFramer("L16/16000")
    assert not framer.passthrough
    payloads: list[bytes] = []
    for start in range(0, len(line_audio), 160):
        payloads += framer.write(line_audio[start : start + 160])
    payloads += framer.flush()
    assert all(len(p) == 640 for p in payloads)  # 20 ms of 16-bit samples at 16 kHz
    wideband = PcmDecoder("L16/16000", 16000)
    heard = np.concatenate([wideband.decode(p).samples for p in payloads])
    assert abs(dominant_hz(heard, 16000) - 440.0) < 5
    # Back down: a 16 kHz reply encoded by a backend, decoded for the line.
    backend = PcmEncoder("L16/16000", 16000)
    reply = [f.payload for f in backend.write(tone(600.0, 16000, 1.0))] + [
        f.payload for f in backend.flush()
    ]
    decoder = DownlinkDecoder("L16/16000")
    line = b"".join(decoder.decode(7, p) for p in reply)
    assert len(line) == 160 * len(reply)
    assert abs(dominant_hz(ulaw_decode(line), 8000) - 600.0) < 5
    decoder.end_turn(7)
    assert decoder.decode_errors == 0


def test_a_turn_cut_short_leaves_nothing_in_the_next() -> None:
    """A cancelled turn's filter tail must not sound at the start of the next turn."""
    backend = PcmEncoder("L16/16000", 16000)
    loud = [f.payload for f in backend.write(tone(1000.0, 16000, 0.2, level=0.9))]
    decoder = DownlinkDecoder("L16/16000")
    for payload in loud[:5]:  # turn 1 cut after 100 ms
        decoder.decode(1, payload)
    decoder.end_turn(1)
    silence = PcmEncoder("L16/16000", 16000).write(np.zeros(320, dtype=np.int16))[0].payload
    first = ulaw_decode(decoder.decode(2, silence))
    assert int(np.max(np.abs(first.astype(np.int32)))) <= 8  # µ-law's smallest steps


def test_a_payload_that_does_not_decode_plays_as_silence() -> None:
    decoder = DownlinkDecoder("L16/16000")
    out = decoder.decode(0, b"\x00" * 3)  # odd length: not 16-bit samples
    assert len(out) == 160 and decoder.decode_errors == 1
