"""A client's downlink turns to app PCM (``TurnPcmDecoder``): each turn decodes as if it were
alone, whatever else arrives between its frames; a payload that does not decode is a frame of
silence and counted; memory stays bounded."""

from __future__ import annotations

import numpy as np
import pytest
from audio_signals import tone
from hypothesis import given, settings
from hypothesis import strategies as st

from quicvoice.audio.pcm import PcmDecoder, PcmEncoder
from quicvoice.audio.turn_pcm import MAX_OPEN_TURNS, TurnPcmDecoder
from quicvoice.errors import CodecError

CODECS = ["opus/48000", "PCMU/8000", "L16/24000"]


def turn_payloads(codec: str, freq: float, app_rate: int = 24000) -> list[bytes]:
    """What a server's turn of 200 ms of ``freq`` Hz (its own encoder) puts on the wire."""
    encoder = PcmEncoder(codec, app_rate)
    frames = encoder.write(tone(freq, app_rate, app_rate // 5)) + encoder.flush()
    return [frame.payload for frame in frames]


@pytest.mark.parametrize("codec", CODECS)
def test_interleaved_turns_decode_each_as_if_alone(codec: str) -> None:
    first, second = turn_payloads(codec, 440.0), turn_payloads(codec, 1000.0)
    decoder = TurnPcmDecoder(codec, 16000)
    out: dict[int, list[bytes]] = {0: [], 1: []}
    for a, b in zip(first, second, strict=True):
        out[0].append(decoder.decode(0, a))
        out[1].append(decoder.decode(1, b))
    assert decoder.open_turns == 2
    for turn, payloads in ((0, first), (1, second)):
        alone = PcmDecoder(codec, 16000)
        assert out[turn] == [alone.decode(p).data for p in payloads]
        assert all(len(data) == 2 * decoder.frame_samples == 640 for data in out[turn])
    decoder.end_turn(0)
    decoder.end_turn(1)
    assert decoder.open_turns == 0 and decoder.decode_errors == 0


def test_a_turn_decoded_after_its_end_starts_afresh() -> None:
    payloads = turn_payloads("opus/48000", 440.0)
    decoder = TurnPcmDecoder("opus/48000", 16000)
    before = [decoder.decode(3, p) for p in payloads]
    decoder.end_turn(3)
    assert [decoder.decode(3, p) for p in payloads] == before


def test_a_payload_that_does_not_decode_is_a_frame_of_silence_and_counted() -> None:
    decoder = TurnPcmDecoder("L16/24000", 16000)
    good = turn_payloads("L16/24000", 440.0)
    decoder.decode(0, good[0])
    assert decoder.decode(0, b"\x01\x02\x03") == bytes(640)  # half a sample
    assert decoder.decode_errors == 1
    alone = PcmDecoder("L16/24000", 16000)
    alone.decode(good[0])
    assert decoder.decode(0, good[1]) == alone.decode(good[1]).data  # nothing else changed


def test_open_turns_are_bounded_the_oldest_forgotten() -> None:
    decoder = TurnPcmDecoder("PCMU/8000", 16000, max_open_turns=4)
    payload = turn_payloads("PCMU/8000", 440.0)[0]
    for turn in range(10):
        decoder.decode(turn, payload)
    assert decoder.open_turns == 4
    assert TurnPcmDecoder("PCMU/8000", 16000).decode(None, payload)  # audio outside a turn
    assert MAX_OPEN_TURNS >= 4


def test_bad_arguments_are_refused_at_once() -> None:
    with pytest.raises(ValueError):
        TurnPcmDecoder("opus/48000", 12345)
    with pytest.raises(ValueError):
        TurnPcmDecoder("opus/48000", 16000, frame_ms=15)
    with pytest.raises(ValueError):
        TurnPcmDecoder("opus/48000", 16000, max_open_turns=0)
    with pytest.raises(CodecError):
        TurnPcmDecoder("G729/8000", 16000)


@settings(max_examples=200, deadline=None)
@given(
    codec=st.sampled_from(CODECS),
    payloads=st.lists(
        st.tuples(st.integers(0, 40), st.binary(max_size=2000)), min_size=1, max_size=30
    ),
)
def test_whatever_a_server_sends_comes_out_as_frames_and_nothing_is_raised(
    codec: str, payloads: list[tuple[int, bytes]]
) -> None:
    decoder = TurnPcmDecoder(codec, 16000)
    for turn, payload in payloads:
        data = decoder.decode(turn, payload)
        assert isinstance(data, bytes) and len(data) % 2 == 0
        assert np.frombuffer(data, dtype="<i2").size == len(data) // 2
    assert decoder.open_turns <= MAX_OPEN_TURNS
