"""Shared fixtures for the audio tests: synthetic speech from espeak-ng, resampled with soxr."""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

SPEECH_TEXT = (
    "The quick brown fox jumps over the lazy dog. Voice sessions for agents must "
    "survive packet loss and network changes. Please call me back at five five five, "
    "one two three four."
)


def _espeak(path: Path) -> tuple[np.ndarray, int]:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (scripts/test installs it)")
    subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), SPEECH_TEXT],
        check=True,
        timeout=60,
        capture_output=True,
    )
    with wave.open(str(path)) as w:
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        return samples, w.getframerate()


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[int, np.ndarray]:
    """About 13 s of espeak-ng speech at 16 and 48 kHz (soxr VHQ), a whole number of 20 ms."""
    soxr = pytest.importorskip("soxr")
    samples, rate = _espeak(tmp_path_factory.mktemp("speech") / "speech.wav")
    result = {}
    for target in (16000, 48000):
        y = soxr.resample(samples.astype(np.float64), rate, target, "VHQ")
        frame = target // 50
        y = y[: len(y) // frame * frame]
        result[target] = np.clip(np.rint(y), -32768, 32767).astype(np.int16)
    return result
