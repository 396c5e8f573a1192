"""The load generator: calls spread over K worker processes (``benchmarks.load.worker``)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .calls import CallPlan, CallResult
from .deploy import Deployment, RedisProcess
from .worker import Churn, plan_to_json

ROOT = Path(__file__).resolve().parents[2]


class LoadGenerator:
    """Starts worker processes with their share of the calls and collects the results."""

    def __init__(self, directory: Path, workers: int) -> None:
        if workers < 1:
            raise ValueError("at least one worker process")
        self.directory = directory
        self.workers = workers
        self.processes: list[subprocess.Popen[bytes]] = []
        self._outputs: list[Path] = []

    def start_plans(self, plans: list[CallPlan]) -> None:
        """Deal the planned calls round-robin to the workers and start them."""
        for index in range(self.workers):
            share = [plan_to_json(p) for p in plans[index :: self.workers]]
            if share:
                self._spawn(index, {"plans": share})

    def start_churn(self, churn: Churn) -> None:
        """Split ``churn.slots`` over the workers, each replacing its calls as they end."""
        for index in range(self.workers):
            slots = churn.slots // self.workers + (index < churn.slots % self.workers)
            if slots == 0:
                continue
            share = dataclasses.replace(
                churn, slots=slots, first_id=churn.first_id + index, id_stride=self.workers
            )
            job = dataclasses.asdict(share)
            job["template"] = plan_to_json(share.template)
            self._spawn(index, {"churn": job})

    def _spawn(self, index: int, job: dict[str, object]) -> None:
        job_path = self.directory / f"worker{index}.json"
        out_path = self.directory / f"worker{index}.jsonl"
        job_path.write_text(json.dumps(job))
        out_path.write_text("")
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("QV_EXTRA_PATH")])),
        )
        self.processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.load.worker", str(job_path), str(out_path)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
        )
        self._outputs.append(out_path)

    def process_groups(self) -> dict[str, list[int]]:
        """Worker PIDs by name, for sampling."""
        return {f"generator {i}": [p.pid] for i, p in enumerate(self.processes) if p.poll() is None}

    def results_so_far(self) -> list[CallResult]:
        """Calls finished so far."""
        results = []
        for path in self._outputs:
            for line in path.read_text().splitlines():
                if line.endswith("}"):
                    results.append(CallResult.from_json(json.loads(line)))
        return results

    def wait(self, timeout: float) -> list[CallResult]:
        """Wait for every worker (killing those still running after ``timeout``); results."""
        deadline = time.monotonic() + timeout
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        return self.results_so_far()

    def kill(self) -> None:
        """SIGKILL every worker still running (by PID)."""
        for process in self.processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()


def sampled_processes(
    deployment: Deployment, generator: LoadGenerator, redis: RedisProcess | None
) -> Callable[[], dict[str, list[int]]]:
    """What a ``Sampler`` watches in a load run: the deployment, the generator, and Redis."""

    def groups() -> dict[str, list[int]]:
        found = deployment.process_groups() | generator.process_groups()
        if redis is not None:
            found["redis"] = redis.pids
        return found

    return groups
