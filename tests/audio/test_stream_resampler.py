"""StreamResampler: chunks of any length give what the whole stream gives at once."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from quicvoice.audio.resample import Resampler, StreamResampler

RATES = [8000, 16000, 24000, 44100, 48000]


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(RATES),
    st.sampled_from(RATES),
    st.lists(st.integers(0, 700), min_size=1, max_size=12),
    st.integers(0, 2**32 - 1),
)
def test_any_chunking_is_bit_exact_with_the_whole_stream(
    in_rate: int, out_rate: int, chunks: list[int], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    signal = rng.integers(-20000, 20000, sum(chunks), dtype=np.int16)
    stream = StreamResampler(in_rate, out_rate)
    pieces, start = [], 0
    for length in chunks:
        pieces.append(stream.process(signal[start : start + length]))
        start += length
        assert stream.held_samples < stream.resampler.input_multiple
    whole = Resampler(in_rate, out_rate)
    usable = len(signal) - len(signal) % whole.input_multiple
    expected = whole.process(signal[:usable])
    assert np.array_equal(np.concatenate(pieces), expected)


def test_flush_gives_the_held_samples_and_the_delayed_tail_then_starts_afresh() -> None:
    stream = StreamResampler(44100, 16000)
    tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(4410 + 7) / 44100)).astype(np.int16)
    out = stream.process(tone)
    assert stream.held_samples == len(tone) % stream.resampler.input_multiple
    tail = stream.flush()
    total = len(out) + len(tail)
    delay = stream.resampler.delay
    # Every input sample and the filter's delay come out, and no more than one multiple's worth.
    assert total >= int(len(tone) * 16000 / 44100 + delay * 16000)
    assert total <= int(np.ceil((len(tone) + delay * 44100) * 16000 / 44100)) + 1
    assert stream.held_samples == 0
    again = StreamResampler(44100, 16000)
    assert np.array_equal(stream.process(tone), again.process(tone))  # history forgotten
