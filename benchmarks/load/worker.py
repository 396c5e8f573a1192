"""A load-generator process: ``python -m benchmarks.load.worker JOB.json RESULTS.jsonl``.

The job is either ``{"plans": [CallPlan, ...]}`` (each call starts at its ``start_at``) or
``{"churn": Churn}`` (``slots`` calls kept running until ``until``, each of a random length,
replaced as it ends). One JSON line per finished call is appended to the results file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .calls import CallPlan, CallResult, run_call


@dataclass(frozen=True, slots=True)
class Churn:
    """Keep ``slots`` calls running until ``until`` (Unix time), replacing each as it ends."""

    slots: int
    #: Unix time at which the first calls start (spread over ``ramp`` seconds).
    start_at: float
    ramp: float
    #: No call runs past this Unix time.
    until: float
    min_duration: float
    max_duration: float
    #: Call IDs: ``first_id + n * id_stride`` for the n-th call of this worker.
    first_id: int
    id_stride: int
    #: Every other field of the calls.
    template: CallPlan


def plan_to_json(plan: CallPlan) -> dict[str, Any]:
    """A ``CallPlan`` as JSON."""
    return dataclasses.asdict(plan)


def plan_from_json(data: dict[str, Any]) -> CallPlan:
    """The inverse of ``plan_to_json``."""
    data = dict(data)
    data["vip"] = (data["vip"][0], int(data["vip"][1]))
    data["local_addresses"] = tuple(data["local_addresses"])
    return CallPlan(**data)


def churn_from_json(data: dict[str, Any]) -> Churn:
    """A ``Churn`` from JSON (its template a ``CallPlan``)."""
    data = dict(data)
    data["template"] = plan_from_json(data["template"])
    return Churn(**data)


def _emit(out: IO[str], result: CallResult) -> None:
    out.write(json.dumps(result.to_json()) + "\n")
    out.flush()


async def run_plans(plans: list[CallPlan], out: IO[str]) -> None:
    """Every planned call, concurrently."""

    async def one(plan: CallPlan) -> None:
        _emit(out, await run_call(plan))

    await asyncio.gather(*(one(plan) for plan in plans))


async def run_churn(churn: Churn, out: IO[str]) -> None:
    """``slots`` calls at a time until ``churn.until``."""
    ids = iter(range(churn.first_id, 1 << 62, churn.id_stride))
    rng = random.Random(churn.first_id)

    async def slot(index: int) -> None:
        start_at = churn.start_at + churn.ramp * index / max(1, churn.slots)
        while True:
            room = churn.until - max(start_at, time.time()) - 5.0  # time to say goodbye
            if room < churn.min_duration:
                return
            duration = min(room, rng.uniform(churn.min_duration, churn.max_duration))
            plan = dataclasses.replace(
                churn.template, call_id=next(ids), start_at=start_at, duration=duration
            )
            _emit(out, await run_call(plan))
            start_at = time.time()

    await asyncio.gather(*(slot(i) for i in range(churn.slots)))


def main(argv: list[str]) -> int:
    """Run the job in ``argv[0]``, appending results to ``argv[1]``."""
    job = json.loads(Path(argv[0]).read_text())
    # The generator's own pauses must not pass for the system's: keep what is loaded out of
    # the collector's way and collect the young generations less often (measured: full
    # collections of 150-200 ms every few seconds with 50 calls in a process otherwise).
    gc.freeze()
    gc.set_threshold(20_000, 50, 1000)
    with open(argv[1], "a", encoding="utf-8") as out:
        if "plans" in job:
            asyncio.run(run_plans([plan_from_json(p) for p in job["plans"]], out))
        else:
            asyncio.run(run_churn(churn_from_json(job["churn"]), out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
