"""Uplink payloads against the negotiated codec and frame duration (``FRAME_MISMATCH``).

The Opus parser is checked against libopus itself (``opus_packet_parse`` and
``opus_packet_get_nb_samples`` of the system's libopus, through ctypes) on random packets,
and against packets that libopus's encoder makes at every frame duration a session offers.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicvoice.errors import ProtocolError
from quicvoice.session.codes import ErrorCode
from quicvoice.session.uplink_check import UplinkCheck, opus_packet_duration_us

FRAME_MS = (10, 20, 40, 60)


def _libopus() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("opus")
    return ctypes.CDLL(name) if name else None


LIBOPUS = _libopus()


def libopus_duration_us(packet: bytes) -> int | None:
    """libopus's verdict: the packet's duration in microseconds, or None when it is invalid."""
    assert LIBOPUS is not None
    toc = ctypes.c_ubyte()
    frames = (ctypes.c_void_p * 48)()
    sizes = (ctypes.c_int16 * 48)()
    offset = ctypes.c_int()
    count = LIBOPUS.opus_packet_parse(
        packet, len(packet), ctypes.byref(toc), frames, sizes, ctypes.byref(offset)
    )
    if count < 0:
        return None
    samples = LIBOPUS.opus_packet_get_nb_samples(packet, len(packet), 48000)
    assert samples > 0
    return int(samples) * 1000 // 48


@pytest.mark.parametrize(
    ("codec", "frame_ms", "size"),
    [
        ("L16/16000", 20, 640),
        ("L16/16000", 40, 1280),
        ("L16/48000", 10, 960),
        ("L16/24000", 60, 2880),
        ("l16/8000", 20, 320),
        ("PCMU/8000", 20, 160),
        ("PCMA/8000", 60, 480),
        ("pcmu/8000", 10, 80),
    ],
)
def test_pcm_payloads_are_exactly_one_frame(codec: str, frame_ms: int, size: int) -> None:
    check = UplinkCheck(codec=codec, frame_ms=frame_ms)
    assert check.problem(bytes(size)) is None
    for wrong in (0, 1, size - 1, size + 1, size // 2, 2 * size, 100, 4096):
        if wrong != size:
            with pytest.raises(ProtocolError) as refused:
                check.check(bytes(wrong))
            assert refused.value.error_code == ErrorCode.FRAME_MISMATCH
            assert f"{wrong}-octet" in str(refused.value)


def test_the_reported_mismatches() -> None:
    """Issue 16: 100- and 4096-octet L16 frames, and 20 ms frames after agreeing on 40 ms."""
    l16 = UplinkCheck(codec="L16/16000", frame_ms=20)
    assert l16.problem(bytes(100)) is not None
    assert l16.problem(bytes(4096)) is not None
    assert UplinkCheck(codec="L16/16000", frame_ms=40).problem(bytes(640)) is not None
    # SILK wideband 20 ms, one frame (code 0): right at 20 ms, wrong at 40 ms.
    toc_20ms = bytes([(9 << 3) | 0]) + bytes(40)
    assert UplinkCheck(codec="opus/48000", frame_ms=20).problem(toc_20ms) is None
    assert "20 ms in a 40 ms" in str(UplinkCheck(codec="opus/48000", frame_ms=40).problem(toc_20ms))


def test_unknown_codecs_are_not_checked() -> None:
    assert UplinkCheck(codec="G729/8000", frame_ms=20).problem(b"x") is None
    assert UplinkCheck(codec="garbage", frame_ms=20).problem(b"") is None


@pytest.mark.parametrize(
    ("packet", "duration_us"),
    [
        (bytes([0 << 3]), 10_000),  # SILK NB 10 ms, a zero-length frame (DTX)
        (bytes([(3 << 3) | 0]) + bytes(20), 60_000),  # SILK NB 60 ms
        (bytes([(13 << 3) | 0]) + bytes(50), 20_000),  # hybrid SWB 20 ms
        (bytes([(16 << 3) | 0]) + bytes(10), 2_500),  # CELT NB 2.5 ms
        (bytes([(31 << 3) | 1]) + bytes(60), 40_000),  # CELT FB 20 ms, code 1: two frames
        (bytes([(31 << 3) | 2, 10]) + bytes(25), 40_000),  # code 2: 10 + 15 octets
        (bytes([(31 << 3) | 2, 253, 1]) + bytes(300), 40_000),  # code 2, two-octet length 257
        (bytes([(31 << 3) | 3, 3]) + bytes(30), 60_000),  # code 3 CBR, 3 x 20 ms
        (bytes([(28 << 3) | 3, 0x80 | 4, 5, 6, 7]) + bytes(30), 10_000),  # VBR 4 x 2.5 ms
        (bytes([(31 << 3) | 3, 0x40 | 2, 3]) + bytes(10) + bytes(3), 40_000),  # padding 3
        (bytes([(31 << 3) | 3, 0x40 | 1, 255, 0]) + bytes(254), 20_000),  # padding 254 + 0
        (bytes([(31 << 3) | 3, 0x40 | 1, 255, 255, 2]) + bytes(510), 20_000),  # padding 510
        (bytes([(16 << 3) | 3, 48]), 120_000),  # 48 x 2.5 ms of empty frames: the maximum
        (bytes([(9 << 3) | 0]) + bytes(1275), 20_000),  # the longest frame
    ],
)
def test_well_formed_opus_packets(packet: bytes, duration_us: int) -> None:
    assert opus_packet_duration_us(packet) == duration_us
    if LIBOPUS is not None:
        assert libopus_duration_us(packet) == duration_us


@pytest.mark.parametrize(
    ("packet", "rule"),
    [
        (b"", "R1"),
        (bytes([(9 << 3) | 0]) + bytes(1276), "R2"),
        (bytes([(31 << 3) | 1]) + bytes(61), "R3"),
        (bytes([(31 << 3) | 1]) + bytes(2 * 1276), "R2"),
        (bytes([(31 << 3) | 2]), "frame length"),
        (bytes([(31 << 3) | 2, 252]), "frame length"),
        (bytes([(31 << 3) | 2, 30]) + bytes(29), "R4"),
        (bytes([(31 << 3) | 2, 0]) + bytes(1276), "R2"),
        (bytes([(31 << 3) | 3]), "count"),
        (bytes([(31 << 3) | 3, 0]), "R5"),
        (bytes([(3 << 3) | 3, 3]) + bytes(3), "R5"),  # 3 x 60 ms
        (bytes([(31 << 3) | 3, 7]) + bytes(3), "R5"),  # 7 x 20 ms
        (bytes([(31 << 3) | 3, 3]) + bytes(31), "R6"),
        (bytes([(31 << 3) | 3, 0x40 | 1]), "padding"),
        (bytes([(31 << 3) | 3, 0x40 | 1, 255]), "padding"),
        (bytes([(31 << 3) | 3, 0x40 | 1, 9]) + bytes(5), "padding overruns"),
        (bytes([(31 << 3) | 3, 0x80 | 3, 20, 20]) + bytes(30), "R7"),
        (bytes([(31 << 3) | 3, 0x80 | 3, 20]), "frame length"),
        (bytes([(31 << 3) | 3, 0x80 | 1]) + bytes(1276), "R2"),
    ],
)
def test_malformed_opus_packets(packet: bytes, rule: str) -> None:
    with pytest.raises(ValueError, match=rule):
        opus_packet_duration_us(packet)
    if LIBOPUS is not None:
        assert libopus_duration_us(packet) is None
    problem = UplinkCheck(codec="opus/48000", frame_ms=20).problem(packet)
    assert problem is not None and problem.startswith("malformed Opus packet")


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=64),
        st.binary(min_size=1, max_size=8).map(lambda head: head + bytes(1300)),
        st.tuples(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=600)).map(
            lambda parts: bytes([parts[0] | 3, parts[1]]) + parts[2]
        ),
    )
)
def test_opus_parser_agrees_with_libopus(packet: bytes) -> None:
    if LIBOPUS is None:
        pytest.skip("needs the system's libopus")
    try:
        ours: int | None = opus_packet_duration_us(packet)
    except ValueError:
        ours = None
    assert ours == libopus_duration_us(packet)


@settings(max_examples=500, deadline=None)
@given(
    codec=st.sampled_from(["L16/16000", "L16/48000", "PCMU/8000", "PCMA/8000", "opus/48000"]),
    frame_ms=st.sampled_from(FRAME_MS),
    payload=st.binary(max_size=4096),
)
def test_any_payload_is_accepted_or_refused_with_frame_mismatch(
    codec: str, frame_ms: int, payload: bytes
) -> None:
    check = UplinkCheck(codec=codec, frame_ms=frame_ms)
    problem = check.problem(payload)
    if problem is None:
        check.check(payload)
    else:
        with pytest.raises(ProtocolError) as refused:
            check.check(payload)
        assert refused.value.error_code == ErrorCode.FRAME_MISMATCH


@pytest.mark.parametrize("frame_ms", FRAME_MS)
@pytest.mark.parametrize("application", ["voip", "audio", "restricted_lowdelay"])
def test_libopus_encoder_packets_pass(frame_ms: int, application: str) -> None:
    """What a real encoder sends at each frame duration is accepted, and only there."""
    opus = pytest.importorskip("quicvoice.audio.opus")
    try:
        encoder = opus.OpusEncoder(
            opus.OpusConfig(frame_ms=float(frame_ms), application=application)
        )
    except Exception as error:  # noqa: BLE001 - no libopus: nothing to encode with
        pytest.skip(f"no Opus encoder: {error}")
    rng = np.random.default_rng(frame_ms)
    samples = encoder.frame_samples
    right = UplinkCheck(codec="opus/48000", frame_ms=frame_ms)
    for index in range(20):
        pcm = (rng.standard_normal(samples) * (0 if index % 5 == 0 else 3000)).astype(np.int16)
        packet = encoder.encode(pcm)
        assert right.problem(packet) is None, (index, packet[:4].hex())
        for other in FRAME_MS:
            if other != frame_ms:
                assert UplinkCheck(codec="opus/48000", frame_ms=other).problem(packet)
