"""Find an application from an import string, ``package.module:attribute`` (as uvicorn does)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from ..asyncio.config import check_import_string
from ..errors import ConfigurationError
from .session import App

#: The demo agent, run when no application is named.
DEFAULT_APP = "quicvoice.agent:demo"


def load_app(spec: str, *, app_dir: str | Path | None = ".", what: str = "app") -> App:
    """Import the application ``spec`` names; ``app_dir`` goes first on ``sys.path``.

    The attribute is an :class:`App` or an async handler ``async def app(session)``.
    Anything else (a module that does not import, a missing attribute, something that
    is not an async function of one argument) is a ``ConfigurationError`` naming it.
    """
    check_import_string(spec, what)
    module_name, _, attribute = spec.partition(":")
    if app_dir is not None:
        directory = str(Path(app_dir).resolve())
        if directory not in sys.path:
            sys.path.insert(0, directory)
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigurationError(f"{what}: cannot import {module_name!r}: {error}") from None
    except Exception as error:  # the module's own code failed: report it, no traceback
        raise ConfigurationError(
            f"{what}: importing {module_name!r} failed: {type(error).__name__}: {error}"
        ) from None
    for name in attribute.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise ConfigurationError(
                f"{what}: {spec!r} not found (no attribute {name!r})"
            ) from None
    if isinstance(target, App):
        return target
    try:
        return App(handler=target)  # type: ignore[arg-type]
    except TypeError as error:
        raise ConfigurationError(f"{what}: {spec!r} is not an application: {error}") from None
