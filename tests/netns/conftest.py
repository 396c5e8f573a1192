"""Fixtures of the network-lab tests: root is required (CI runs them as root), never skipped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from quicvoice.netlab import Lab, NetlabError, cleanup_stale, require_root


@pytest.fixture
def root() -> None:
    """Fail, with the reason, where namespaces cannot be made: CI has root, so must this run."""
    try:
        require_root()
    except NetlabError as error:
        pytest.fail(f"tests/netns need root and iproute2 (CI runs them as root): {error}")
    cleanup_stale()


@pytest.fixture
def lab(root: None) -> Iterator[Lab]:
    with Lab() as built:
        yield built


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False
