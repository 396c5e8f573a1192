"""The Wi-Fi to 5G call over a lossy, delayed cellular link: a loss x delay matrix (root).

    python benchmarks/bench_network_matrix.py [--delays 20,100] [--losses 0,1,5,10] [--seed 1]

Each cell runs ``examples/wifi_to_5g.py --netns`` (network namespaces; the client's ``cell0``
interface goes through the userspace delay-and-loss line of ``quicvoice.netlab``, each way)
with the reliable uplink: the call starts on Wi-Fi, migrates mid-sentence to the cellular link
with the given one-way delay and random loss, and ends there. Reported per cell: uplink frames
sent and delivered (reliable mode must deliver all of them, in order: one stream), the
migration gap (until the backend answers on the new path), the longest pause between uplink
frames arriving at the backend around the move, the RTT measured on the cellular path, and
the packets the delay line dropped. The loss draws are seeded: a cell is reproducible.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 180


def run_cell(delay_ms: float, loss: float, seed: int) -> dict[str, object]:
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
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"demo failed ({result.returncode}): {result.stderr[-500:]}")
    report: dict[str, object] = json.loads(lines[-1])
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delays", default="20,100", help="one-way delays in ms")
    parser.add_argument("--losses", default="0,1,5,10", help="random loss in percent, each way")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_network_matrix: needs root (network namespaces)", file=sys.stderr)
        return 2
    delays = [float(d) for d in args.delays.split(",")]
    losses = [float(loss) for loss in args.losses.split(",")]
    print("Reliable uplink, Wi-Fi -> cellular migration mid-call; cellular link delay and loss "
          f"each way; seed {args.seed}")
    print()
    print("| one-way delay | loss | frames sent / delivered | migration gap ms | longest uplink "
          "pause ms | RTT on cell ms | dropped by the line (up / down) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    failures = 0
    for delay in delays:
        for loss in losses:
            report = run_cell(delay, loss, args.seed)
            quic = report["quic"]
            netns = report["netns"]
            assert isinstance(quic, dict) and isinstance(netns, dict)
            line = netns.get("delay_line", {})
            up = line.get("dl-up", {}).get("lost", "-")
            down = line.get("dl-down", {}).get("lost", "-")
            complete = quic["frames_sent"] == quic["frames_delivered"]
            failures += not complete
            print(
                f"| {delay:.0f} ms | {loss:g} % | {quic['frames_sent']} / "
                f"{quic['frames_delivered']}{'' if complete else ' LOST'} | "
                f"{quic['migration_gap_ms']:.0f} | {quic['longest_uplink_pause_ms']:.0f} | "
                f"{netns.get('rtt_after_ms', float('nan')):.0f} | {up} / {down} |",
                flush=True,
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
