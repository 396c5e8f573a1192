"""Run a coverage-guided fuzzing campaign on one target with atheris (libFuzzer).

    .venv/bin/python -m tests.fuzz.run TARGET --seconds 600      # a long campaign
    .venv/bin/python -m tests.fuzz.run all --seconds 60          # every target, split evenly
    .venv/bin/python -m tests.fuzz.run TARGET --seconds 5 --no-save

The campaign starts from ``tests/fuzz/corpus/TARGET/`` and writes new inputs to a scratch
directory; at the end a libFuzzer merge adds to the corpus only the inputs that reach new
coverage (so the corpus stays small), unless ``--no-save``. A crash is saved as
``tests/fuzz/crashes/TARGET-crash-<sha1>`` (or under ``--artifacts``), replayable with
``python -m tests.fuzz.run TARGET --replay FILE``. Prints one JSON line per target:
executions, coverage (libFuzzer's ``cov``/``ft`` counters), corpus size, crashes.

Only quicvoice, lb and (for the targets that reach it) aioquic are instrumented.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
CRASHES = HERE / "crashes"
ROOT = HERE.parent.parent
_STATS = re.compile(r"#(\d+)\s+(?:DONE|pulse|NEW|REDUCE|INITED)?.*?cov: (\d+) ft: (\d+)")


def _worker(target_name: str, libfuzzer_args: list[str]) -> None:
    """Run inside the fuzzing process: instrument, then hand over to libFuzzer (never returns)."""
    import atheris  # type: ignore[import-untyped]

    # aioquic's code is only reached (and worth the instrumenting time) by these targets.
    uses_aioquic = target_name in {"psk_identity", "voice_server", "voice_client"}
    packages = ["quicvoice", "lb", "tests.fuzz", *(["aioquic"] if uses_aioquic else [])]
    with atheris.instrument_imports(include=packages):
        from tests.fuzz.targets import TARGETS
    # libFuzzer's merge re-runs argv[0] through the shell: make it the command that gets here.
    itself = f"{sys.executable} -m tests.fuzz.run {target_name} --worker --"
    atheris.Setup([itself, *libfuzzer_args], TARGETS[target_name])
    atheris.Fuzz()


def _libfuzzer(target: str, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tests.fuzz.run", target, "--worker", "--", *args]
    return subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )


def campaign(
    target: str, seconds: float, *, save: bool = True, artifacts: Path | None = None
) -> dict[str, object]:
    """Fuzz ``target`` for ``seconds``; return the figures (and crash files, if any)."""
    from tests.fuzz.targets import MAX_LEN

    corpus = CORPUS / target
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts = artifacts or CRASHES
    artifacts.mkdir(parents=True, exist_ok=True)
    before = set(artifacts.iterdir())
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as scratch:
        result = _libfuzzer(
            target,
            [
                f"-max_total_time={max(1, int(seconds))}",
                f"-max_len={MAX_LEN[target]}",
                "-timeout=10",
                "-rss_limit_mb=2048",
                "-print_final_stats=1",
                f"-artifact_prefix={artifacts}/{target}-",
                scratch,
                str(corpus),
            ],
            timeout=seconds + 120,
        )
        stats = _STATS.findall(result.stderr)
        executions = int(stats[-1][0]) if stats else 0
        coverage = int(stats[-1][1]) if stats else 0
        features = int(stats[-1][2]) if stats else 0
        added = 0
        if save and result.returncode == 0:
            old = set(corpus.iterdir())
            merge = _libfuzzer(
                target, ["-merge=1", f"-max_len={MAX_LEN[target]}", str(corpus), scratch], 600
            )
            if merge.returncode != 0:
                raise RuntimeError(f"corpus merge failed:\n{merge.stderr[-2000:]}")
            added = len(set(corpus.iterdir()) - old)
    crashes = sorted(str(path) for path in set(artifacts.iterdir()) - before)
    return {
        "target": target,
        "seconds": seconds,
        "executions": executions,
        "cov": coverage,
        "ft": features,
        "corpus": len(list(corpus.iterdir())),
        "added": added,
        "exit_code": result.returncode,
        "crashes": crashes,
        "tail": "" if result.returncode == 0 else result.stderr[-4000:],
    }


def main() -> int:
    if sys.argv[2:4] == ["--worker", "--"]:
        _worker(sys.argv[1], sys.argv[4:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("target", help="a target of tests/fuzz/targets.py, or 'all'")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--no-save", action="store_true", help="leave the corpus unchanged")
    parser.add_argument("--artifacts", type=Path, help="where crash inputs go")
    parser.add_argument("--replay", type=Path, help="run the target once on this file")
    options = parser.parse_args()
    from tests.fuzz.targets import TARGETS

    if options.replay is not None:
        TARGETS[options.target](options.replay.read_bytes())
        print("no crash")
        return 0
    names = list(TARGETS) if options.target == "all" else [options.target]
    failed = False
    for name in names:
        figures = campaign(
            name,
            options.seconds / len(names),
            save=not options.no_save,
            artifacts=options.artifacts,
        )
        failed |= bool(figures["crashes"]) or figures["exit_code"] != 0
        print(json.dumps(figures), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
