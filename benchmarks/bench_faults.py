"""Fault injection under load: forwarder, backend and Redis killed while 100 calls go on.

    python benchmarks/bench_faults.py [--calls 100] [--down-s 1] [--workers 2]
                                      [--scenarios forwarder,backend,redis] [--liveness 1]

Each scenario builds a fresh deployment of processes on loopback (``benchmarks/load/``): a
redis-server (no persistence, temporary directory), a ``quicvoice-lb`` forwarder with health
probes (0.2 s, 1 s timeout) and three ``quicvoice serve`` backends sharing the Redis
``session_store``; then ``--calls`` calls from ``--workers`` generator processes. Each call
orders an item, talks in spurts of ``--talk`` seconds of 60 ms PCMU frames (the demo agent
echoes each spurt back, five times faster than real time) separated by ``--listen`` seconds of
silence carrying a small silence-descriptor frame every ``--sid-every`` seconds (as Opus DTX
does), orders a second item mid-call, and ends with ``bye``. 100 calls sending 60 ms frames
without pause and echoed in full saturate this 2-core machine (55 % of frames later than
150 ms, ``benchmarks/loadgen.py``); the spurts halve the traffic. Once every call is up and
has run for ``--warm`` seconds:

- ``forwarder``: SIGKILL the forwarder (its pumps die with it), start a new one from the same
  file ``--down-s`` seconds later;
- ``backend``: SIGKILL one backend; its calls must resume on the others with their cart (the
  forwarder's probes find it silent and answer its packets with stateless resets; the
  clients resume with their token);
- ``redis``: SIGKILL redis-server, restart it empty ``--down-s`` seconds later, wait
  ``--settle`` seconds, then SIGKILL one backend: its calls can only resume if their state
  was written to the new, empty Redis in the meantime.

Per scenario: calls lost (started, but never got their goodbye and cart back), uplink frames
sent / delivered (counted by the backends' applications, see ``benchmarks/load/calls.py``),
frames later than 150 ms after capture, the affected calls (every call for the forwarder, the
killed backend's otherwise) and their time to recover: for the first uplink frame captured
after the fault, from the later of the fault and its capture to its arrival at the serving
backend's application (the same figure 2 s before the fault, over every call, is the baseline);
carts intact, and sessions still open on the backends after every call ended (polled up to
45 s: a stale session is closed by its 30 s idle timeout). Exit status 1 if a call, a cart or a
frame was lost.

``--hold-events`` makes the generator hold application events while the client reconnects
(``CallPlan.hold_events``), a workaround for clients older than the fix of that bug.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.load.calls import CallPlan, CallResult  # noqa: E402
from benchmarks.load.deploy import SERVER_IDS, Deployment, RedisProcess  # noqa: E402
from benchmarks.load.generator import LoadGenerator, sampled_processes  # noqa: E402
from benchmarks.load.procstat import Sampler, load_average, udp_drops  # noqa: E402
from benchmarks.load.report import (  # noqa: E402
    backend_at,
    cpu_rss_table,
    recovery_ms,
    spread,
    summarize,
)

SCENARIOS = ("forwarder", "backend", "redis")
PREFIX = "faults:"


@dataclass
class Outcome:
    """One scenario's results."""

    name: str
    results: list[CallResult]
    #: Unix times of what was done, by name ("fault" is the one recovery is measured from).
    events: dict[str, float]
    notes: list[str] = field(default_factory=list)
    cpu: list[str] = field(default_factory=list)
    leaked: int = 0
    load: str = ""
    #: UDP datagrams dropped for lack of buffer space during the scenario, machine-wide.
    udp_drops: int = 0
    #: Warnings and errors the backends logged (quicvoice loggers), counted by message.
    backend_warnings: dict[str, int] = field(default_factory=dict)
    #: The backend killed (backend and redis scenarios).
    victim: str | None = None

    def affected(self) -> list[CallResult]:
        """The calls the fault hit: all for the forwarder, the victim's for a backend kill."""
        fault = self.events["fault"]
        if self.name == "forwarder":
            return [r for r in self.results if r.started]
        return [
            r for r in self.results if r.started and backend_at(r, fault - 0.001) == self.victim
        ]


def make_plans(
    name: str, args: argparse.Namespace, vip: tuple[str, int], start_at: float
) -> list[CallPlan]:
    """Calls spread over ``--ramp`` s, each long enough to outlast the scenario."""
    faulting = {"forwarder": args.down_s + 1.0, "backend": 0.0, "redis": args.down_s + args.settle}
    duration = args.ramp + args.warm + faulting[name] + args.after
    return [
        CallPlan(
            call_id=i,
            vip=vip,
            start_at=start_at + args.ramp * i / args.calls,
            duration=duration,
            frame_ms=args.frame_ms,
            turn_every=args.turn_every,
            talk_s=args.talk,
            listen_s=args.listen,
            sid_every=args.sid_every,
            migrate_every=args.migrate_every,
            orders=2,
            liveness_timeout=args.liveness,
            keep_arrivals=True,
            hold_events=args.hold_events,
        )
        for i in range(args.calls)
    ]


def sleep_until(instant: float) -> None:
    """Sleep until Unix time ``instant``."""
    time.sleep(max(0.0, instant - time.time()))


def inject(
    name: str, args: argparse.Namespace, deployment: Deployment, redis: RedisProcess
) -> tuple[dict[str, float], list[str], str | None]:
    """Do the scenario's fault now; return when what happened, notes, and the backend killed."""
    events: dict[str, float] = {}
    notes: list[str] = []
    victim = None
    if name == "forwarder":
        events["fault"] = time.time()
        deployment.kill_forwarder()
        time.sleep(args.down_s)
        events["restart"] = time.time()
        up = deployment.start_forwarder()
        notes.append(f"forwarder down {time.time() - events['fault']:.2f} s "
                     f"(restart to metrics answering: {up:.2f} s)")  # fmt: skip
    elif name == "backend":
        victim = busiest_backend(deployment, notes)
        events["fault"] = time.time()
        deployment.kill_backend(victim)
    else:
        events["redis_kill"] = time.time()
        live = redis.count_keys(f"{PREFIX}s:*")
        redis.kill()
        time.sleep(args.down_s)
        redis.start()
        events["redis_up"] = time.time()
        notes.append(f"{live} session records before the Redis kill")
        notes.append(resaved(redis, live, events["redis_up"], args.settle))
        sleep_until(events["redis_up"] + args.settle)
        victim = busiest_backend(deployment, notes)
        events["fault"] = time.time()
        deployment.kill_backend(victim)
    return events, notes, victim


def busiest_backend(deployment: Deployment, notes: list[str]) -> str:
    """The backend with the most open sessions: the one to kill. A fixed one could hold no
    call at all (12 calls hash onto one of 3 backends with none on it in 0.8 % of runs)."""
    sessions = deployment.open_sessions(timeout=2.0)
    victim = max(SERVER_IDS, key=lambda sid: sessions.get(sid, -1))
    notes.append(f"killed backend {victim}, the busiest: sessions per backend {sessions}")
    return victim


def resaved(redis: RedisProcess, expected: int, since: float, limit: float) -> str:
    """Watch the new Redis fill up again with session records for ``limit`` seconds."""
    count, full_at = 0, None
    while time.time() < since + limit:
        count = redis.count_keys(f"{PREFIX}s:*")
        if count >= expected and full_at is None:
            full_at = time.time()
        time.sleep(0.05)
    when = f"all back {full_at - since:.2f} s after restart" if full_at else "never all back"
    return f"session records in the new Redis {limit:.0f} s after its restart: {count} ({when})"


def run_scenario(name: str, args: argparse.Namespace) -> Outcome:
    """One fresh deployment, the calls, the fault, the results."""
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        redis = RedisProcess(directory)
        redis.start()
        deployment = Deployment(directory, session_store=redis.url(PREFIX))
        generator = LoadGenerator(directory, args.workers)

        sampler = Sampler(sampled_processes(deployment, generator, redis), 1.0)
        drops = udp_drops()
        try:
            deployment.start()
            start_at = time.time() + 3.0
            plans = make_plans(name, args, deployment.vip, start_at)
            generator.start_plans(plans)
            sampler.start()
            sleep_until(start_at + args.ramp + args.warm)
            load = load_average()
            events, notes, victim = inject(name, args, deployment, redis)
            results = generator.wait(plans[0].duration + args.ramp + 120)
            sampler.stop()
            drops = udp_drops() - drops
            leaked, waited = deployment.sessions_left(45.0)
            notes.append(f"sessions open on live backends after the last call: {leaked} "
                         f"(polled {waited:.0f} s)")  # fmt: skip
            warnings = backend_warnings(deployment)
            if args.keep_logs:
                keep = Path(args.keep_logs) / name
                keep.mkdir(parents=True, exist_ok=True)
                for sid in deployment.backends:
                    (keep / f"backend-{sid}.log").write_text(deployment.backend_log(sid))
        finally:
            generator.kill()
            deployment.stop()
            redis.kill()
    steady = (start_at - sampler.started_unix) + args.ramp + 1.0
    outcome = Outcome(
        name, results, events, notes, leaked=leaked, load=load, udp_drops=drops, victim=victim
    )
    outcome.backend_warnings = warnings
    outcome.cpu = cpu_rss_table(
        [s for s in sampler.samples if s.at <= steady + args.warm - 1.0], since=steady
    )
    return outcome


def backend_warnings(deployment: Deployment) -> dict[str, int]:
    """quicvoice warnings and errors in the backends' logs, by message (numbers blanked)."""
    counts: dict[str, int] = {}
    for sid in deployment.backends:
        for line in deployment.backend_log(sid).splitlines():
            parts = line.split(" ", 4)
            if len(parts) == 5 and parts[2] in ("WARNING", "ERROR") and "quicvoice" in parts[3]:
                message = re.sub(r"\b[0-9a-f]{16}\b|\d+", "N", f"{parts[3]}: {parts[4]}")[:120]
                counts[message] = counts.get(message, 0) + 1
    return counts


def recovery(outcome: Outcome) -> tuple[list[float], int, list[float]]:
    """Times to recover of the affected calls (and how many could not be measured), and the
    same figure 2 s before the fault over every call (the no-fault baseline)."""
    fault = outcome.events["fault"]
    measured = [recovery_ms(r, fault) for r in outcome.affected()]
    baseline = [recovery_ms(r, fault - 2.0) for r in outcome.results if r.started]
    values = [v for v in measured if v is not None]
    return values, len(measured) - len(values), [v for v in baseline if v is not None]


def row(outcome: Outcome) -> str:
    """The scenario's markdown row."""
    summary = summarize(outcome.results)
    affected = outcome.affected()
    measured, unknown, baseline = recovery(outcome)
    return (
        f"| {outcome.name} | {summary.calls} | {summary.lost + summary.failed_to_start} | "
        f"{summary.sent} / {summary.delivered} ({summary.audio_lost}) | "
        f"{summary.late_share:.1%} | {len(affected)} ({sum(bool(r.resumes) for r in affected)}) "
        f"| {spread(measured)}{f' ({unknown} unmeasured)' if unknown else ''} | "
        f"{spread(baseline)} | {summary.carts_intact}/{summary.calls} | {outcome.leaked} |"
    )


HEADER = (
    "| scenario | calls | calls lost | uplink frames sent / delivered (lost) | late > 150 ms | "
    "affected calls (resumed) | time to recover ms, p50 / p95 / max | same, 2 s before the "
    "fault | carts intact | sessions left |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def describe(args: argparse.Namespace) -> str:
    """What the calls did, in one paragraph."""
    if args.talk > 0:
        speech = (f"talk spurts of {args.talk:g} s (the agent's echo asked at each end) and "
                  f"{args.listen:g} s of silence with a silence descriptor every "
                  f"{args.sid_every:g} s")  # fmt: skip
    else:
        speech = f"frames without pause, a reply turn every {args.turn_every:g} s"
    return (
        f"{args.calls} calls through the forwarder, 3 backends, Redis store; {args.frame_ms} ms "
        f"PCMU frames, {speech}; 2 orders per call; migrations every "
        f"{args.migrate_every or '-'} s; client liveness {args.liveness:g} s; "
        f"{'app events held by the generator while reconnecting; ' if args.hold_events else ''}"
        f"{args.workers} generator processes; down time {args.down_s:g} s"
    )  # fmt: skip


def details(outcome: Outcome) -> list[str]:
    """The lines printed under the table for one scenario."""
    summary = summarize(outcome.results)
    lines = [f"{outcome.name}: load average at the fault {outcome.load}; UDP receive-buffer "
             f"drops during the scenario (machine-wide) {outcome.udp_drops}"]  # fmt: skip
    lines += [f"  {note}" for note in outcome.notes]
    lines.append(f"  late > 150 ms: {summary.late} of {summary.delivered} frames; sends more "
                 f"than a frame behind schedule: {summary.send_late} (max lag "
                 f"{summary.max_send_lag_ms:.0f} ms)")  # fmt: skip
    reasons: dict[str, int] = {}
    for result in outcome.results:
        for resume in result.resumes:
            reason = re.sub(r"[0-9.]+ s", "N s", resume["reason"])
            reasons[reason] = reasons.get(reason, 0) + 1
    lines += [f"  resumed ({count}): {reason}" for reason, count in sorted(reasons.items())]
    lines += [f"  error: {error}" for error in summary.errors]
    lines += [f"  backend log ({n}x): {m}" for m, n in sorted(outcome.backend_warnings.items())]
    lines.append("  CPU while all calls ran, before the fault:")
    lines += [f"  {line}" for line in outcome.cpu]
    return lines


def failed(outcome: Outcome) -> bool:
    """A call, a cart or a frame was lost."""
    summary = summarize(outcome.results)
    return bool(
        summary.lost + summary.failed_to_start
        or summary.carts_intact < summary.calls
        or summary.audio_lost
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (tests build their arguments with it too)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--calls", type=int, default=100)
    add("--workers", type=int, default=2, help="generator processes")
    add("--down-s", type=float, default=1.0, help="forwarder/Redis downtime")
    add("--settle", type=float, default=3.0, help="redis: its restart to the backend kill, s")
    add("--scenarios", default=",".join(SCENARIOS))
    add("--frame-ms", type=int, default=60, choices=(20, 40, 60))
    add("--talk", type=float, default=3.0, help="talk spurts, s (0: no pause)")
    add("--listen", type=float, default=3.0, help="silence between spurts, s")
    add("--sid-every", type=float, default=0.4, help="silence descriptor interval, s")
    add("--turn-every", type=float, default=5.0, help="with --talk 0: a reply every S s")
    add("--migrate-every", type=float, default=0.0)
    add("--liveness", type=float, default=1.0, help="client liveness_timeout")
    add("--hold-events", action="store_true",
        help="hold app events while the client reconnects (clients before the fix)")  # fmt: skip
    add("--ramp", type=float, default=5.0, help="seconds to start all calls")
    add("--warm", type=float, default=5.0, help="seconds before the fault")
    add("--after", type=float, default=10.0, help="seconds after the fault")
    add("--json", help="also write every call's result to this file")
    add("--keep-logs", help="copy the backends' logs (stderr) into this directory")
    args = parser.parse_args(argv)
    if unknown := {n for n in args.scenarios.split(",") if n} - set(SCENARIOS):
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    outcomes = []
    for name in [n for n in args.scenarios.split(",") if n]:
        outcomes.append(run_scenario(name, args))
        print(f"[{name} done, load average {load_average()}]", file=sys.stderr, flush=True)
    print(describe(args))
    print()
    print(HEADER)
    for outcome in outcomes:
        print(row(outcome))
    print()
    for outcome in outcomes:
        print("\n".join(details(outcome)))
    if args.json:
        dump = {o.name: {"events": o.events, "calls": [r.to_json() for r in o.results]}
                for o in outcomes}  # fmt: skip
        Path(args.json).write_text(json.dumps(dump))
    return 1 if any(failed(o) for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
