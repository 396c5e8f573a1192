"""The Wi-Fi to 5G call over a lossy, delayed cellular link: a loss x delay matrix (root).

    python benchmarks/bench_network_matrix.py [--delays 20,100] [--losses 0,1,5,10] [--seed 1]
        [--modes reliable,realtime] [--runs 1]

Each cell runs ``examples/wifi_to_5g.py --netns`` (network namespaces; the client's ``cell0``
interface goes through the userspace delay-and-loss line of ``quicvoice.netlab``, each way):
the call starts on Wi-Fi, migrates mid-sentence to the cellular link with the given one-way
delay and random loss, and ends there. The loss draws are seeded: a cell is reproducible.

Reliable uplink (L16 on one QUIC stream): uplink frames sent and delivered (all of them, in
order), the migration gap (until the backend answers on the new path), the longest pause
between uplink frames arriving at the backend around the move, the RTT measured on the
cellular path, and the packets the delay line dropped.

Realtime uplink (``--uplink realtime``: Opus 48 kHz, 32 kbit/s, in-band FEC, one QUIC datagram
per 20 ms frame): the backend's agent pulls the session's jitter buffer once per frame period
for the whole call and records what it played. Reported per cell: frames sent / arrived /
played out, the concealment ratio (concealed samples / samples played, from the jitter
buffer's counters), lost frames rebuilt by FEC or concealed by PLC and frames expanded while
the buffer ran dry, the mean time packets waited in the buffer, and PESQ of the played-out
speech against the original: wideband (ITU-T P.862.2, 16 kHz) and narrowband (P.862.1,
8 kHz), each beside its difference from the codec alone (the same speech encoded and decoded
with no network, scored the same way: the baseline of the same run, printed above the table).
With ``--runs N`` each realtime cell is run N times (same seed, so the same loss draws; what
varies is timing on the machine): the row is the run with the median WB-PESQ, and the lowest
and highest concealment ratio and PESQ over the runs follow in square brackets.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 180
MODES = ("reliable", "realtime")


def run_cell(delay_ms: float, loss: float, seed: int, mode: str = "reliable") -> dict[str, Any]:
    command = [
        sys.executable,
        str(ROOT / "examples" / "wifi_to_5g.py"),
        "--netns",
        "--json",
        "--no-contrast",
        "--cell-delay-ms",
        str(delay_ms),
        "--cell-loss",
        str(loss),
        "--seed",
        str(seed),
        "--uplink",
        mode,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    lines = result.stdout.strip().splitlines()
    if not lines:
        # The last frame of the traceback and the error, not the whole of stderr.
        errors = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        where = [line for line in errors if line.startswith('File "')]
        summary = "; ".join(where[-2:] + errors[-2:])
        raise RuntimeError(f"demo failed ({result.returncode}): {summary}")
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def _resumed(netns: dict[str, Any]) -> str:
    """A note when the call lost its connection and resumed on a new one (its counts then
    cover the last connection only)."""
    count = netns.get("resumptions", 0)
    return f" (resumed {count}x)" if count else ""


def _dropped(netns: dict[str, Any]) -> str:
    line = netns.get("delay_line", {})
    up = line.get("dl-up", {}).get("lost", "-")
    down = line.get("dl-down", {}).get("lost", "-")
    return f"{up} / {down}"


def reliable_row(delay: float, loss: float, report: dict[str, Any]) -> tuple[str, bool]:
    quic, netns = report["quic"], report["netns"]
    complete = bool(quic["frames_sent"] == quic["frames_delivered"])
    row = (
        f"| {delay:.0f} ms | {loss:g} % | {quic['frames_sent']} / "
        f"{quic['frames_delivered']}{'' if complete else ' LOST'}{_resumed(netns)} | "
        f"{quic['migration_gap_ms']:.0f} | {quic['longest_uplink_pause_ms']:.0f} | "
        f"{netns.get('rtt_after_ms', float('nan')):.0f} | {_dropped(netns)} |"
    )
    return row, complete


def _score(quality: dict[str, Any], mode: str) -> tuple[str, float | None]:
    played = quality.get("played", {}).get(mode)
    codec = quality.get("codec_only", {}).get(mode)
    if not isinstance(played, float) or not isinstance(codec, float):
        return str(played if played is not None else quality.get("error", "-")), None
    return f"{played:.2f} ({played - codec:+.2f})", codec


def _wide(report: dict[str, Any]) -> float:
    """The report's wideband PESQ of the played-out uplink (-1 when there is none)."""
    quality = report["quic"]["realtime"].get("quality") or {}
    value = quality.get("played", {}).get("wb")
    return value if isinstance(value, float) else -1.0


def _span(values: list[float], fmt: str) -> str:
    return f" [{format(min(values), fmt)}-{format(max(values), fmt)}]" if len(values) > 1 else ""


def realtime_row(
    delay: float, loss: float, reports: list[dict[str, Any]]
) -> tuple[str, bool, dict[str, float]]:
    """One row for a cell: the run with the median WB-PESQ, with the spread over the runs."""
    ranked = sorted(reports, key=_wide)
    report = ranked[(len(ranked) - 1) // 2]
    ratios = [
        float((r["quic"]["realtime"].get("playout") or {}).get("concealment_ratio", float("nan")))
        for r in reports
    ]
    wides = [_wide(r) for r in reports if _wide(r) >= 0]
    narrows = [
        v
        for r in reports
        if isinstance(
            v := ((r["quic"]["realtime"].get("quality") or {}).get("played", {}).get("nb")), float
        )
    ]
    quic, netns = report["quic"], report["netns"]
    realtime = quic["realtime"]
    playout: dict[str, Any] = realtime.get("playout") or {}
    quality: dict[str, Any] = realtime.get("quality") or {}
    wide, codec_wide = _score(quality, "wb")
    narrow, codec_narrow = _score(quality, "nb")
    baseline = {
        mode: value
        for mode, value in (("wb", codec_wide), ("nb", codec_narrow))
        if value is not None
    }
    ok = (
        all(
            bool((r["quic"]["realtime"].get("playout") or {}).get("final"))
            and r["quic"]["server_before"] == r["quic"]["server_after"]
            for r in reports
        )
        and len(baseline) == 2
    )
    row = (
        f"| {delay:.0f} ms | {loss:g} % | {quic['frames_sent']} / {quic['frames_delivered']} / "
        f"{playout.get('frames', '-')}{_resumed(netns)} | "
        f"{playout.get('concealment_ratio', float('nan')):.2%}"
        f"{_span([100 * r for r in ratios], '.2f')} | "
        f"{playout.get('fec_frames', '-')} / {playout.get('plc_frames', '-')} / "
        f"{playout.get('expand_frames', '-')} | {playout.get('mean_wait_ms', float('nan')):.0f} | "
        f"{wide}{_span(wides, '.2f')} | {narrow}{_span(narrows, '.2f')} | "
        f"{quic['migration_gap_ms']:.0f} | "
        f"{netns.get('rtt_after_ms', float('nan')):.0f} | {_dropped(netns)} |"
    )
    return row, ok, baseline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delays", default="20,100", help="one-way delays in ms")
    parser.add_argument("--losses", default="0,1,5,10", help="random loss in percent, each way")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--modes", default=",".join(MODES), help="uplink modes, of: reliable,realtime"
    )
    parser.add_argument(
        "--runs", type=int, default=1, help="runs per realtime cell (median and spread)"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_network_matrix: needs root (network namespaces)", file=sys.stderr)
        return 2
    delays = [float(d) for d in args.delays.split(",")]
    losses = [float(loss) for loss in args.losses.split(",")]
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s): {', '.join(sorted(unknown))}")
    failures = 0
    for mode in modes:
        if mode != modes[0]:
            print()
        if mode == "reliable":
            print(
                "Reliable uplink, Wi-Fi -> cellular migration mid-call; cellular link delay and "
                f"loss each way; seed {args.seed}"
            )
            print()
            print(
                "| one-way delay | loss | frames sent / delivered | migration gap ms | longest "
                "uplink pause ms | RTT on cell ms | dropped by the line (up / down) |"
            )
            print("|---:|---:|---:|---:|---:|---:|---:|")
        baselines: list[dict[str, float]] = []
        rows: list[str] = []
        for delay in delays:
            for loss in losses:
                reports = []
                for _ in range(1 if mode == "reliable" else max(1, args.runs)):
                    try:
                        reports.append(run_cell(delay, loss, args.seed, mode))
                    except (
                        RuntimeError,
                        subprocess.TimeoutExpired,
                        json.JSONDecodeError,
                    ) as error:
                        failures += 1
                        message = str(error).replace("\n", " ")[-400:]
                        row = f"| {delay:.0f} ms | {loss:g} % | failed: {message} |"
                        if mode == "reliable":
                            print(row, flush=True)
                        else:
                            rows.append(row)
                if not reports:
                    continue
                if mode == "reliable":
                    row, ok = reliable_row(delay, loss, reports[0])
                    print(row, flush=True)
                else:
                    row, ok, baseline = realtime_row(delay, loss, reports)
                    rows.append(row)
                    if baseline:
                        baselines.append(baseline)
                    print(f"  ... {delay:.0f} ms, {loss:g} %: done", file=sys.stderr, flush=True)
                failures += not ok
        if mode == "realtime":
            print_realtime(args.seed, max(1, args.runs), rows, baselines)
    return 1 if failures else 0


def print_realtime(
    seed: int, runs: int, rows: list[str], baselines: list[dict[str, float]]
) -> None:
    """The realtime table, under its reference line (printed first, so it is known by then)."""
    print(
        "Realtime uplink (Opus 48 kHz, 32 kbit/s, in-band FEC, QUIC datagrams), Wi-Fi -> "
        f"cellular migration mid-call; cellular link delay and loss each way; seed {seed}"
        + (
            f"; {runs} runs per cell: the run with the median WB-PESQ, [lowest-highest]"
            if runs > 1
            else ""
        )
    )
    print()
    wide = sorted({b["wb"] for b in baselines})
    narrow = sorted({b["nb"] for b in baselines})
    if wide and narrow:
        spread = "" if len(wide) == len(narrow) == 1 else " (varied between cells)"
        print(
            "Reference, the codec alone (the same speech encoded and decoded, no network, "
            f"aligned and scored the same way): WB-PESQ {'/'.join(f'{w:.2f}' for w in wide)}, "
            f"NB-PESQ {'/'.join(f'{n:.2f}' for n in narrow)}{spread}. In brackets below: the "
            "cell's PESQ minus this."
        )
    else:
        print("Reference, the codec alone: not measured (no cell reported PESQ).")
    print()
    print(
        "| one-way delay | loss | frames sent / arrived / played | concealment ratio | "
        "FEC / PLC / expand frames | mean wait in jitter buffer ms | WB-PESQ (vs codec) | "
        "NB-PESQ (vs codec) | migration gap ms | RTT on cell ms | dropped by the line "
        "(up / down) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(row, flush=True)


if __name__ == "__main__":
    sys.exit(main())
