"""Which event loop runs a backend: asyncio's own or uvloop (the optional ``fast`` extra).

The default stays asyncio's loop: uvloop is a compiled dependency some platforms lack, and
the whole test suite runs on asyncio's. Choosing ``uvloop`` (``quicvoice serve --loop uvloop``
or ``loop = "uvloop"`` in the backend's file) cuts the server's CPU per frame (specs/engine.md).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Coroutine
from typing import Any, Final, TypeVar

from ..errors import ConfigurationError

T = TypeVar("T")

#: The loops a backend can run on, and the package each one needs.
LOOP_PACKAGES: Final = {"asyncio": None, "uvloop": "uvloop"}
DEFAULT_LOOP: Final = "asyncio"

__all__ = ["DEFAULT_LOOP", "LOOP_PACKAGES", "check_loop", "run"]


def check_loop(name: object, what: str = "loop") -> str:
    """Return ``name`` if it is a known loop whose package is installed, else a
    ``ConfigurationError`` naming the choices or the missing package."""
    if not isinstance(name, str) or name not in LOOP_PACKAGES:
        choices = ", ".join(LOOP_PACKAGES)
        raise ConfigurationError(f"{what}: {name!r:.60} is not one of {choices}")
    package = LOOP_PACKAGES[name]
    if package is not None:
        try:
            importlib.import_module(package)
        except ImportError:
            raise ConfigurationError(
                f"{what}: {name!r} needs the {package!r} package, which is not installed "
                f"(pip install 'quicvoice[fast]')"
            ) from None
    return name


def run(main: Coroutine[Any, Any, T], loop: str = DEFAULT_LOOP) -> T:
    """Run ``main`` to completion on a new event loop of kind ``loop``."""
    try:
        check_loop(loop)
    except ConfigurationError:
        main.close()
        raise
    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)
