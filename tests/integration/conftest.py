"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .deployment import Deployment


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """A forwarder process with three backends' worth of configuration."""
    deployed = Deployment(tmp_path)
    deployed.start_forwarder()
    try:
        yield deployed
    finally:
        deployed.stop()
