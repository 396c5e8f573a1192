"""Session state that survives the network and the backend (specs/store.md).

``open_store(url)`` gives a ``SessionStore``: ``memory://`` (default), ``redis://HOST:PORT/DB`` or
``redis+sentinel://HOST:PORT,.../SERVICE/DB`` (the primary that Redis Sentinel names).
``redis`` is imported only when a Redis store is opened; ``quicvoice.store.tickets`` (aioquic's
ticket callbacks) is imported on demand by the I/O shell.
"""

from __future__ import annotations

from .base import (
    MAX_STATE_LEN,
    CorruptRecordError,
    SessionRecord,
    SessionStore,
    StaleWriteError,
    StoreStatistics,
    StoreUnavailableError,
)
from .checkpoint import (
    AsyncCheckpointer,
    CheckpointConflicted,
    Checkpointer,
    CheckpointEvent,
    CheckpointFailed,
    CheckpointStatistics,
    CheckpointWritten,
    MonitorStatistics,
    StoreMonitor,
)
from .codec import pack_state, unpack_state
from .config import DEFAULT_URL, StoreConfig
from .memory import MemoryStore
from .opening import open_store
from .tokens import RefusalReason, ResumeRefused, ResumeTokenIssuer

__all__ = [
    "DEFAULT_URL",
    "MAX_STATE_LEN",
    "AsyncCheckpointer",
    "CheckpointConflicted",
    "CheckpointEvent",
    "CheckpointFailed",
    "CheckpointStatistics",
    "CheckpointWritten",
    "Checkpointer",
    "CorruptRecordError",
    "MemoryStore",
    "MonitorStatistics",
    "RefusalReason",
    "ResumeRefused",
    "ResumeTokenIssuer",
    "SessionRecord",
    "SessionStore",
    "StaleWriteError",
    "StoreConfig",
    "StoreMonitor",
    "StoreStatistics",
    "StoreUnavailableError",
    "open_store",
    "pack_state",
    "unpack_state",
]
