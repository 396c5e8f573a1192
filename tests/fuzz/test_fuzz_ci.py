"""The bounded fuzzing run of CI, and the replay of every corpus input.

``QUICVOICE_FUZZ_SECONDS`` (default 60) is the total time given to atheris, split evenly over
the targets; set it higher for a longer campaign inside pytest, or use
``python -m tests.fuzz.run TARGET --seconds 600``, which also grows the corpus.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .run import CORPUS, campaign
from .targets import TARGETS

FUZZ_SECONDS = float(os.environ.get("QUICVOICE_FUZZ_SECONDS", "60"))
#: The corpus is committed: keep it small (new inputs are only added by a coverage merge).
MAX_CORPUS_OCTETS = 2 * 1024 * 1024


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_corpus_replays_without_a_crash(target: str) -> None:
    files = sorted((CORPUS / target).iterdir())
    assert files, f"no seeds for {target}: run python -m tests.fuzz.make_corpus"
    for path in files:
        TARGETS[target](path.read_bytes())


def test_corpus_stays_small() -> None:
    size = sum(path.stat().st_size for path in CORPUS.rglob("*") if path.is_file())
    assert size < MAX_CORPUS_OCTETS, size


@pytest.mark.timeout(FUZZ_SECONDS + 600)
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_bounded_fuzzing_finds_no_crash(target: str, tmp_path: Path) -> None:
    figures = campaign(target, FUZZ_SECONDS / len(TARGETS), save=False, artifacts=tmp_path)
    crashes = figures["crashes"]
    assert not crashes and figures["exit_code"] == 0, (
        f"{target}: {crashes}\n{figures['tail']}\n"
        f"replay: python -m tests.fuzz.run {target} --replay <crash file>"
    )
    assert isinstance(figures["executions"], int) and figures["executions"] > 0, figures
