"""Benchmark: quicvoice's resampler beside soxr (VHQ, HQ) and audioop.ratecv, in one run.

For each conversion, fed 20 ms frames on one thread:

* frames/s  -- 20 ms frames per second of wall time (best of ``REPEATS`` runs of
  ``FRAMES`` frames; process time is checked to match so a busy machine shows up);
* ratio     -- frames/s divided by soxr HQ's in the same run;
* delay     -- measured, not quoted: an impulse gives the alignment of output to
  input, and the samples still held back after each frame (fed minus emitted)
  add the buffering delay; mean and max over the frames of a 2 s run;
* rejection -- the worst component, in dB below a -1 dBFS tone, that should not be
  there: anything but the tone for tones in the passband (0.9 x lower Nyquist),
  anything at all for tones in the stopband (downsampling), over 8 tones.

Run: ``.venv/bin/python benchmarks/bench_audio.py`` (about a minute).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core, as documented

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402

from quicvoice.audio import Resampler, Transcoder, design_filter, ulaw_decode, ulaw_encode  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

try:
    import soxr
except ImportError:  # pragma: no cover - soxr is in the dev extra
    soxr = None

CONVERSIONS = [
    (8000, 48000),
    (48000, 8000),
    (16000, 48000),
    (48000, 16000),
    (24000, 48000),
    (48000, 24000),
    (44100, 48000),
    (48000, 44100),
]
FRAMES = 5000
REPEATS = 3
AMPLITUDE = 0.89
Process = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class Row:
    conversion: str
    implementation: str
    fps: float
    cpu_fps: float
    mean_delay_ms: float
    max_delay_ms: float
    rejection_db: float


def make_ours(i: int, o: int) -> Process:
    return Resampler(i, o).process


def make_soxr(quality: str) -> Callable[[int, int], Process]:
    def factory(i: int, o: int) -> Process:
        stream = soxr.ResampleStream(i, o, 1, dtype="int16", quality=quality)
        return lambda x: stream.resample_chunk(x)

    return factory


def make_ratecv(i: int, o: int) -> Process:
    state = None

    def process(x: np.ndarray) -> np.ndarray:
        nonlocal state
        out, state = audioop.ratecv(x.tobytes(), 2, 1, i, o, state)
        return np.frombuffer(out, dtype=np.int16)

    return process


def make_ulaw_ours(i: int, o: int) -> Callable[[bytes], np.ndarray]:
    return Transcoder("PCMU/8000", o).decode


def make_ulaw_soxr(quality: str) -> Callable[[int, int], Callable[[bytes], np.ndarray]]:
    def factory(i: int, o: int) -> Callable[[bytes], np.ndarray]:
        process = make_soxr(quality)(i, o)
        return lambda payload: process(ulaw_decode(payload))

    return factory


def make_ulaw_ratecv(i: int, o: int) -> Callable[[bytes], np.ndarray]:
    process = make_ratecv(i, o)
    return lambda payload: process(np.frombuffer(audioop.ulaw2lin(payload, 2), dtype=np.int16))


def throughput(
    factory: Callable[[int, int], Callable], i: int, o: int, frames: list
) -> tuple[float, float]:
    """Best frames/s (wall) and the process-time frames/s of that run."""
    best = (0.0, 0.0)
    for _ in range(REPEATS):
        process = factory(i, o)
        for f in frames[:20]:
            process(f)
        wall, cpu = time.perf_counter(), time.process_time()
        for f in frames:
            process(f)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if len(frames) / wall > best[0]:
            best = (len(frames) / wall, len(frames) / max(cpu, 1e-9))
    return best


def delay(
    factory: Callable[[int, int], Callable], i: int, o: int, encode: bool
) -> tuple[float, float]:
    """Mean and max delay in ms: impulse alignment plus samples held back per frame."""
    n = i // 50
    x = np.zeros(i * 2, dtype=np.int16)
    at = i  # impulse at 1.0 s
    x[at] = 20000
    if encode:
        x = np.frombuffer(ulaw_decode(ulaw_encode(x)), dtype=np.int16).copy()
    process = factory(i, o)
    outputs, held = [], []
    emitted = 0
    for k in range(0, len(x), n):
        frame = x[k : k + n]
        y = process(ulaw_encode(frame) if encode else frame)
        outputs.append(y)
        emitted += len(y)
        held.append((k + n) / i - emitted / o)
    y = np.concatenate(outputs).astype(np.float64)
    peak = int(np.argmax(np.abs(y)))
    if 0 < peak < len(y) - 1:  # parabolic interpolation of the peak
        a, b, c = np.abs(y[peak - 1 : peak + 2])
        offset = 0.5 * (a - c) / (a - 2 * b + c) if (a - 2 * b + c) else 0.0
    else:
        offset = 0.0
    align = (peak + offset) / o - at / i
    steady = np.array(held[5:])
    return 1000 * (align + steady.mean()), 1000 * (align + steady.max())


def rejection(factory: Callable[[int, int], Process], i: int, o: int) -> float:
    d = design_filter(i, o)
    tones = list(np.linspace(100.0, d.passband_hz, 5) + 0.37)
    if d.stopband_hz < i / 2:
        tones += list(np.linspace(d.stopband_hz, i / 2 - 50, 3) + 0.37)
    worst = -999.0
    for f in tones:
        t = np.arange(i // 2) / i
        x = np.rint(AMPLITUDE * 32767 * np.sin(2 * np.pi * f * t)).astype(np.int16)
        process = factory(i, o)
        y = np.concatenate([process(x[k : k + i // 50]) for k in range(0, len(x), i // 50)])
        y = y[o // 10 : o // 10 + o // 3].astype(np.float64)
        window = np.kaiser(len(y), 38.0)
        level = np.abs(np.fft.rfft(y * window)) / (window.sum() / 2) / (AMPLITUDE * 32767)
        db = 20 * np.log10(np.maximum(level, 1e-15))
        freqs = np.fft.rfftfreq(len(y), 1.0 / o)
        passband = f < d.passband_hz + 1.0
        mask = np.abs(freqs - f) > 60 if passband else np.ones(len(db), dtype=bool)
        worst = max(worst, float(db[mask].max()))
    return -worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=FRAMES, help="frames per timing run")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    implementations: list[tuple[str, Callable]] = [("quicvoice", make_ours)]
    if soxr is not None:
        implementations += [("soxr HQ", make_soxr("HQ")), ("soxr VHQ", make_soxr("VHQ"))]
    implementations.append(("audioop.ratecv", make_ratecv))
    rows: list[Row] = []
    for i, o in CONVERSIONS:
        frames = [rng.integers(-8000, 8000, i // 50, dtype=np.int16) for _ in range(args.frames)]
        for name, factory in implementations:
            fps, cpu = throughput(factory, i, o, frames)
            mean_d, max_d = delay(factory, i, o, encode=False)
            rows.append(
                Row(
                    f"{i / 1000:g}k -> {o / 1000:g}k",
                    name,
                    fps,
                    cpu,
                    mean_d,
                    max_d,
                    rejection(factory, i, o),
                )
            )
    payloads = [
        ulaw_encode(rng.integers(-8000, 8000, 160, dtype=np.int16)) for _ in range(args.frames)
    ]
    ulaw_impls: list[tuple[str, Callable, Callable]] = [
        ("quicvoice Transcoder", make_ulaw_ours, make_ours)
    ]
    if soxr is not None:
        ulaw_impls += [
            ("ulaw_decode + soxr HQ", make_ulaw_soxr("HQ"), make_soxr("HQ")),
            ("ulaw_decode + soxr VHQ", make_ulaw_soxr("VHQ"), make_soxr("VHQ")),
        ]
    ulaw_impls.append(("ulaw2lin + ratecv", make_ulaw_ratecv, make_ratecv))
    for name, factory, pcm_factory in ulaw_impls:
        fps, cpu = throughput(factory, 8000, 48000, payloads)
        mean_d, max_d = delay(factory, 8000, 48000, encode=True)
        rows.append(
            Row(
                "µ-law 8k -> L16 48k",
                name,
                fps,
                cpu,
                mean_d,
                max_d,
                rejection(pcm_factory, 8000, 48000),
            )
        )
    print(
        "| conversion | implementation | 20 ms frames/s | vs soxr HQ | CPU frames/s "
        "| mean delay ms | max delay ms | rejection dB |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    baseline = {r.conversion: r.fps for r in rows if "soxr HQ" in r.implementation}
    for r in rows:
        ratio = r.fps / baseline[r.conversion] if r.conversion in baseline else float("nan")
        print(
            f"| {r.conversion} | {r.implementation} | {r.fps:,.0f} | {ratio:.2f}x | "
            f"{r.cpu_fps:,.0f} | {r.mean_delay_ms:.2f} | {r.max_delay_ms:.2f} | "
            f"{r.rejection_db:.1f} |"
        )


if __name__ == "__main__":
    main()
