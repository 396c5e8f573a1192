"""Many real calls through a forwarder and three backends: what fits on this machine.

    python benchmarks/loadgen.py [--calls 100] [--seconds 20] [--frame-ms 60] [--workers 2]
                                 [--store memory|redis] [--talk 0 --listen 0 | --turn-every 5]
                                 [--reply-cap 0] [--migrate-every 0]

Starts a deployment of processes on loopback (``quicvoice-lb``, three ``quicvoice serve``
backends with the demo agent, redis-server for ``--store redis``) and ``--calls`` calls from
``--workers`` generator processes (``benchmarks/load/``). Every call orders an item, streams
PCMU frames of ``--frame-ms``, and ends with ``bye``. By default the microphone never pauses
and the agent is asked to answer every ``--turn-every`` seconds (it echoes what it heard, 5x
faster than real time, so the downlink carries as many frames as the uplink; ``--reply-cap S``
barges in after S seconds of reply). ``--talk T --listen L`` sends talk spurts of T seconds and
then L seconds of silence carrying a small silence-descriptor frame every ``--sid-every``
seconds (Opus DTX style), asking for the reply at the end of each spurt.

Printed: calls lost, uplink frames sent / delivered (as the backends' applications counted
them), one-way uplink delay (capture to the backend's application) and the share of frames
later than 150 ms, sends the generator made more than one frame behind schedule (the
generator itself overloaded), and CPU of each process. Overload shows as late frames.

Measured on the shared 2-core VM (load average 0.6-2 from other jobs): 100 calls of 60 ms
frames without pause, echoed in full, use 159 % of a core on average and 55 % of frames arrive
later than 150 ms (saturated); a 2 s reply cap does not change it (171 %, 42 % late); talk
spurts of 3 s and 3 s of silence: 153 %, 4.4 % late, p50 25 ms. The fault benchmark uses the
spurts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.load.calls import CallPlan, CallResult  # noqa: E402
from benchmarks.load.deploy import Deployment, RedisProcess  # noqa: E402
from benchmarks.load.generator import LoadGenerator, sampled_processes  # noqa: E402
from benchmarks.load.procstat import Sampler, load_average  # noqa: E402
from benchmarks.load.report import cpu_rss_table, percentile, summarize  # noqa: E402


def plans(args: argparse.Namespace, vip: tuple[str, int], start_at: float) -> list[CallPlan]:
    """The calls: spread over ``--ramp`` seconds, all streaming ``--seconds`` of audio."""
    return [
        CallPlan(
            call_id=i,
            vip=vip,
            start_at=start_at + args.ramp * i / args.calls,
            duration=args.seconds,
            frame_ms=args.frame_ms,
            turn_every=args.turn_every,
            talk_s=args.talk,
            listen_s=args.listen,
            sid_every=args.sid_every,
            reply_cap_s=args.reply_cap,
            migrate_every=args.migrate_every,
        )
        for i in range(args.calls)
    ]


def print_results(results: list[CallResult], calls: int) -> None:
    """The per-run summary table."""
    summary = summarize(results)
    p50 = [r.delay_p50_ms for r in results if r.completed]
    p99 = [r.delay_p99_ms for r in results if r.completed]
    print("| calls | completed | lost | frames sent / delivered | delay p50 (median call) | "
          "delay p99 (worst call) | late > 150 ms | sends > 1 frame late | carts intact | "
          "resumed | migrations (errors) |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {calls} | {summary.completed} | {summary.lost + summary.failed_to_start} | "
        f"{summary.sent} / {summary.delivered} | {percentile(p50, 0.5):.1f} ms | "
        f"{max(p99, default=0):.1f} ms | {summary.late} ({summary.late_share:.2%}) | "
        f"{summary.send_late} (max lag {summary.max_send_lag_ms:.0f} ms) | "
        f"{summary.carts_intact}/{calls} | {summary.resumed_calls} | "
        f"{summary.migrations} ({summary.migration_errors}) |"
    )
    for error in summary.errors:
        print(f"error: {error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per call")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds to start all calls")
    parser.add_argument("--frame-ms", type=int, default=60, choices=(20, 40, 60))
    parser.add_argument("--turn-every", type=float, default=5.0)
    parser.add_argument("--talk", type=float, default=0.0, help="talk spurts of S s (0: no pause)")
    parser.add_argument("--listen", type=float, default=0.0, help="silence between spurts, s")
    parser.add_argument(
        "--sid-every", type=float, default=0.4, help="silence descriptor interval, s (0: none)"
    )
    parser.add_argument(
        "--reply-cap", type=float, default=0.0, help="barge in after this much reply audio (s)"
    )
    parser.add_argument("--migrate-every", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=2, help="generator processes")
    parser.add_argument("--store", choices=("memory", "redis"), default="memory")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        redis = RedisProcess(directory) if args.store == "redis" else None
        if redis is not None:
            redis.start()
        deployment = Deployment(directory, session_store=redis.url() if redis else "memory://")
        generator = LoadGenerator(directory, args.workers)

        sampler = Sampler(sampled_processes(deployment, generator, redis), 1.0)
        try:
            deployment.start()
            start_at = time.time() + 2.0
            generator.start_plans(plans(args, deployment.vip, start_at))
            sampler.start()
            results = generator.wait(args.ramp + args.seconds + 120)
            sampler.stop()
        finally:
            generator.kill()
            deployment.stop()
            if redis is not None:
                redis.kill()
    print(
        f"{args.calls} calls, {args.frame_ms} ms PCMU frames, {args.seconds:.0f} s each, "
        f"reply turn every {args.turn_every:.0f} s, migrations every "
        f"{args.migrate_every or '-'} s, {args.workers} generator processes, "
        f"{args.store} store; load average {load_average()}"
    )
    print()
    print_results(results, args.calls)
    print()
    steady = 2.0 + args.ramp + 1.0
    print(f"CPU from {steady:.0f} s (all calls up) to the end:")
    print("\n".join(cpu_rss_table(sampler.samples, since=steady)))
    summary = summarize(results)
    return 0 if summary.lost + summary.failed_to_start == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
