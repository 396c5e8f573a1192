"""Fixtures of the store tests: a fake clock (``redis_server`` comes from tests/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest


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
