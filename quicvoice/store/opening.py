"""``open_store``: the session store a ``session_store`` URL names.

Kept apart from ``config`` so that the configuration module imports no store: ``redis`` (and
the Redis store's module, which needs ``StoreConfig``) is imported only when a ``redis://`` or
``redis+sentinel://`` URL is opened.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from quicvoice.errors import ConfigurationError

from .base import SessionStore
from .config import DEFAULT_URL, SETTING, StoreConfig


def open_store(url: str = DEFAULT_URL, *, clock: Callable[[], float] = time.time) -> SessionStore:
    """The store named by a ``session_store`` URL; nothing is connected until first use.

    ``clock`` (seconds, Unix time, shared by all backends) decides expiry. Raises
    ``ConfigurationError`` naming ``session_store`` for a bad URL, or when a Redis store is
    asked for and the ``redis`` package is not installed.
    """
    config = StoreConfig.from_url(url)
    if config.kind == "memory":
        from .memory import MemoryStore

        return MemoryStore(clock=clock)
    try:
        from .redis import RedisStore
    except ImportError as exc:
        raise ConfigurationError(
            f"{SETTING}: Redis needs the redis package (pip install 'quicvoice[redis]')"
        ) from exc
    return RedisStore(config, clock=clock)
