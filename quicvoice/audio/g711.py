"""ITU-T G.711 µ-law and A-law, vectorised through lookup tables.

The tables are computed once from the bit formulation of the ITU-T reference
implementation (G.191 software tools, ``g711.c``): a negative 16-bit input is
mapped through its one's complement (``~x``), so ``x`` and ``~x`` get mirror codes.
For A-law this is also what ``audioop`` (Sun's ``g711.c``) does; for µ-law
``audioop`` negates instead, and gives a code one step smaller in magnitude on the
4 inputs just below each of the 127 negative decision levels (508 inputs in all).
Decoding is identical in both.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import numpy.typing as npt

from quicvoice.audio.frames import Pcm, check_pcm
from quicvoice.errors import CodecError

ULAW_BIAS = 33
"""µ-law bias in 14-bit units (G.711 Table 2a: segment ends are 2**(s+5) - 33)."""
ULAW_CLIP = 0x1FFF
"""Largest biased 14-bit µ-law magnitude; anything above saturates at code 0x00/0x80."""
ALAW_XOR = 0x55
"""A-law inverts the even bits of every code (G.711 §3.4)."""
SIGN_BIT = 0x80
ULAW_SILENCE = 0xFF
"""The µ-law code for +0."""
ALAW_SILENCE = 0xD5
"""The A-law code for the smallest positive value."""


def _all_int16() -> npt.NDArray[np.int32]:
    return np.arange(-32768, 32768, dtype=np.int32)


def _readonly(array: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    array.setflags(write=False)
    return array


@lru_cache(maxsize=1)
def ulaw_encode_table() -> npt.NDArray[np.uint8]:
    """The µ-law code of every int16 value, indexed by the value viewed as uint16 (read-only)."""
    x = _all_int16()
    magnitude = np.where(x < 0, ~x, x) >> 2
    biased = np.minimum(magnitude + ULAW_BIAS, ULAW_CLIP)
    # Segment 0..7: position of the highest set bit above bit 5.
    segment = np.zeros_like(biased)
    for s in range(1, 8):
        segment += biased >= (64 << (s - 1))
    step = (biased >> (segment + 1)) & 0x0F
    code = ((7 - segment) << 4) | (0x0F - step)
    code = np.where(x >= 0, code | SIGN_BIT, code)
    table = np.empty(65536, dtype=np.uint8)
    table[x.astype(np.int16).view(np.uint16)] = code
    return _readonly(table)  # type: ignore[return-value]


@lru_cache(maxsize=1)
def ulaw_decode_table() -> npt.NDArray[np.int16]:
    """The int16 value of every µ-law code 0..255 (read-only)."""
    code = np.arange(256, dtype=np.int32)
    inverted = ~code & 0xFF
    exponent = (inverted >> 4) & 0x07
    mantissa = inverted & 0x0F
    step = 4 << (exponent + 1)
    magnitude = (0x80 << exponent) + step * mantissa + step // 2 - 4 * ULAW_BIAS
    return _readonly(np.where(code & SIGN_BIT, magnitude, -magnitude).astype(np.int16))  # type: ignore[return-value]


@lru_cache(maxsize=1)
def alaw_encode_table() -> npt.NDArray[np.uint8]:
    """The A-law code of every int16 value, indexed by the value viewed as uint16 (read-only)."""
    x = _all_int16()
    magnitude = np.where(x < 0, ~x, x) >> 4
    # Segment 0 and 1 both have steps of 1 in these units; segment s >= 1 starts at 16 << (s-1).
    segment = np.zeros_like(magnitude)
    for s in range(1, 8):
        segment += magnitude >= (16 << (s - 1))
    shift = np.maximum(segment - 1, 0)
    mantissa = np.where(segment > 0, (magnitude >> shift) - 16, magnitude)
    code = (segment << 4) | mantissa
    code = np.where(x >= 0, code | SIGN_BIT, code) ^ ALAW_XOR
    table = np.empty(65536, dtype=np.uint8)
    table[x.astype(np.int16).view(np.uint16)] = code
    return _readonly(table)  # type: ignore[return-value]


@lru_cache(maxsize=1)
def alaw_decode_table() -> npt.NDArray[np.int16]:
    """The int16 value of every A-law code 0..255 (read-only)."""
    code = np.arange(256, dtype=np.int32) ^ ALAW_XOR
    segment = (code & 0x7F) >> 4
    mantissa = (code & 0x0F) + np.where(segment > 0, 16, 0)
    magnitude = ((mantissa << 4) + 8) << np.maximum(segment - 1, 0)
    return _readonly(np.where(code & SIGN_BIT, magnitude, -magnitude).astype(np.int16))  # type: ignore[return-value]


def _codes(payload: bytes | bytearray | memoryview) -> npt.NDArray[np.uint8]:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise CodecError(f"G.711 payload must be bytes, not {type(payload).__name__}")
    return np.frombuffer(payload, dtype=np.uint8)


def ulaw_encode(samples: Pcm) -> bytes:
    """Encode int16 samples to µ-law, one byte per sample."""
    pcm = check_pcm(samples)
    return ulaw_encode_table()[pcm.view(np.uint16)].tobytes()


def ulaw_decode(payload: bytes | bytearray | memoryview) -> Pcm:
    """Decode µ-law bytes to int16 samples (every byte value is a valid code)."""
    return ulaw_decode_table()[_codes(payload)]


def alaw_encode(samples: Pcm) -> bytes:
    """Encode int16 samples to A-law, one byte per sample."""
    pcm = check_pcm(samples)
    return alaw_encode_table()[pcm.view(np.uint16)].tobytes()


def alaw_decode(payload: bytes | bytearray | memoryview) -> Pcm:
    """Decode A-law bytes to int16 samples (every byte value is a valid code)."""
    return alaw_decode_table()[_codes(payload)]
