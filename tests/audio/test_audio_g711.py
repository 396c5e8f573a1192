"""G.711 against a scalar implementation of the ITU-T G.711 tables, and against audioop.

The reference below is written from the standard's description, not from bit tricks:
µ-law (G.711 Table 2a) has 8 segments of 16 intervals; segment s ends at
2**(s+5) - 33 in 14-bit units and its steps are 2**(s+1) wide; the first interval
is [0, 1). A-law (Table 1a) has 8 segments of 16 intervals; segments 0 and 1 have
steps of 1 in 12-bit units (16 in 16-bit units), segment s >= 1 spans
[16 * 2**(s-1), 16 * 2**s) with steps of 2**(s-1). A value on a decision level
belongs to the interval above it; the decoded value is the interval's midpoint.
A 16-bit negative input x is taken as the magnitude of its one's complement (~x),
as in the ITU-T G.191 reference software, so x and ~x get mirror codes.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from quicvoice.audio import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from quicvoice.errors import CodecError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))


def _magnitude(x: int, shift: int) -> int:
    return ((~x) if x < 0 else x) >> shift


def _ulaw_segment_start(s: int) -> int:
    return (1 << (s + 5)) - 33  # B_s; segment 0 nominally starts at -1, i.e. [0, 1) first


def ref_ulaw_encode(x: int) -> int:
    v = _magnitude(x, 2)  # 14-bit magnitude
    if v >= _ulaw_segment_start(8):
        n = 127
    else:
        s = max(s for s in range(8) if v >= _ulaw_segment_start(s))
        n = 16 * s + (v - _ulaw_segment_start(s)) // (1 << (s + 1))
    # The magnitude bits are sent inverted; the sign bit is 1 for positive values.
    return (0xFF if x >= 0 else 0x7F) - n


def ref_ulaw_decode(code: int) -> int:
    n = 0x7F - (code & 0x7F)
    s, k = n >> 4, n & 15
    midpoint = _ulaw_segment_start(s) + (2 * k + 1) * (1 << s)  # 14-bit units
    return 4 * midpoint if code & 0x80 else -4 * midpoint


def ref_alaw_encode(x: int) -> int:
    u = _magnitude(x, 4)  # magnitude in units of 16
    if u < 16:
        s, k = 0, u
    else:
        s = 1
        while u >= 16 << s:
            s += 1
        k = (u - (16 << (s - 1))) // (1 << (s - 1))
    sign = 0x80 if x >= 0 else 0
    return (sign | (s << 4) | k) ^ 0x55


def ref_alaw_decode(code: int) -> int:
    c = code ^ 0x55
    s, k = (c >> 4) & 7, c & 15
    if s == 0:
        value = 16 * k + 8
    else:
        step = 16 << (s - 1)  # interval width in 16-bit units
        value = (256 << (s - 1)) + k * step + step // 2
    return value if c & 0x80 else -value


def test_ulaw_reference_sanity() -> None:
    # Values printed in G.711 Table 2a (scaled by 4 to 16-bit): extremes and zero.
    assert ref_ulaw_decode(0xFF) == 0 and ref_ulaw_decode(0x7F) == 0
    assert ref_ulaw_decode(0x80) == 32124 and ref_ulaw_decode(0x00) == -32124
    assert ref_ulaw_decode(0xFE) == 8 and ref_ulaw_decode(0xEF) == 4 * 33
    assert ref_alaw_decode(0xD5) == 8 and ref_alaw_decode(0xAA) == 32256


def test_ulaw_encode_matches_reference_for_every_int16() -> None:
    expected = bytes(ref_ulaw_encode(int(x)) for x in ALL_INT16)
    assert ulaw_encode(ALL_INT16) == expected


def test_alaw_encode_matches_reference_for_every_int16() -> None:
    expected = bytes(ref_alaw_encode(int(x)) for x in ALL_INT16)
    assert alaw_encode(ALL_INT16) == expected


def test_decode_matches_reference_for_every_code() -> None:
    assert ulaw_decode(ALL_CODES).tolist() == [ref_ulaw_decode(c) for c in ALL_CODES]
    assert alaw_decode(ALL_CODES).tolist() == [ref_alaw_decode(c) for c in ALL_CODES]


def test_decode_matches_audioop_for_every_code() -> None:
    assert ulaw_decode(ALL_CODES).tobytes() == audioop.ulaw2lin(ALL_CODES, 2)
    assert alaw_decode(ALL_CODES).tobytes() == audioop.alaw2lin(ALL_CODES, 2)


def test_alaw_encode_matches_audioop_for_every_int16() -> None:
    assert alaw_encode(ALL_INT16) == audioop.lin2alaw(ALL_INT16.tobytes(), 2)


def test_ulaw_encode_differs_from_audioop_only_on_negative_decision_levels() -> None:
    """audioop negates negative input (Sun g711.c) where G.191 takes the one's complement.

    They disagree on exactly 4 inputs below each of the 127 negative decision levels;
    there the codes are neighbours and ours is never farther from the input.
    """
    ours = np.frombuffer(ulaw_encode(ALL_INT16), dtype=np.uint8)
    theirs = np.frombuffer(audioop.lin2ulaw(ALL_INT16.tobytes(), 2), dtype=np.uint8)
    differ = np.flatnonzero(ours != theirs)
    assert len(differ) == 508
    x = ALL_INT16[differ].astype(np.int64)
    assert np.all(x < 0)
    assert np.all(np.abs(ours[differ].astype(int) - theirs[differ].astype(int)) == 1)
    table = ulaw_decode(ALL_CODES).astype(np.int64)
    assert np.all(np.abs(x - table[ours[differ]]) <= np.abs(x - table[theirs[differ]]))


@given(arrays(np.int16, st.integers(0, 400)))
def test_round_trip_error_is_within_half_a_step(samples: np.ndarray) -> None:
    x = samples.astype(np.int64)
    for encode, decode, tiny in ((ulaw_encode, ulaw_decode, 4), (alaw_encode, alaw_decode, 8)):
        y = decode(encode(samples)).astype(np.int64)
        # Steps are at most 1/16 of the magnitude (plus the smallest step near zero).
        assert np.all(
            np.abs(y - x) <= np.maximum(np.abs(x) // 16 + tiny, 1024 * (np.abs(x) > 31000))
        )
        assert len(y) == len(x)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(4, dtype=np.float32),
        np.zeros(4, dtype=np.int32),
        np.zeros((2, 2), dtype=np.int16),
        [0, 1, 2],
        b"\x00\x01",
    ],
)
def test_encode_rejects_bad_samples(bad: object) -> None:
    with pytest.raises(CodecError):
        ulaw_encode(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        alaw_encode(bad)  # type: ignore[arg-type]


@given(st.binary(max_size=500))
def test_any_bytes_decode(payload: bytes) -> None:
    assert len(ulaw_decode(payload)) == len(payload)
    assert len(alaw_decode(payload)) == len(payload)


def test_decode_rejects_non_bytes() -> None:
    with pytest.raises(CodecError):
        ulaw_decode("abc")  # type: ignore[arg-type]
