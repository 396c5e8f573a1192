"""Fixtures of the store tests: a fake clock and Redis Sentinel groups (``redis_server`` comes
from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..redis_sentinel import SentinelGroup, started_group


@dataclass
class FakeClock:
    """A clock that moves only when told to (seconds, Unix-like)."""

    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def sentinel_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    """One primary, replica and three sentinels for the session; tests isolate by key prefix
    and must not kill or freeze anything."""
    yield from started_group(tmp_path_factory.mktemp("sentinel"))


@pytest.fixture
def own_sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    """A Sentinel group for one test, which it may kill and freeze."""
    yield from started_group(tmp_path)
