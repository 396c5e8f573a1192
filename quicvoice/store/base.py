"""The session store contract: records, the ``SessionStore`` protocol and its errors.

A store keeps one record per session (application state as a msgpack blob, a version for
optimistic concurrency and an absolute expiry) and a small key/value area for TLS session
tickets. Every method is a coroutine; an implementation reports every failure, including data it
cannot trust, as ``StoreError`` and never lets another exception out (specs/store.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from quicvoice.errors import StoreError

#: Largest application state blob a store accepts, in octets.
MAX_STATE_LEN = 256 * 1024
#: Longest session ID, in UTF-8 octets (the ``welcome`` message allows 128 characters).
MAX_SESSION_ID_LEN = 128
#: Longest owner tag, in UTF-8 octets.
MAX_OWNER_LEN = 128
#: Longest TLS session ticket label (PSK identity), in octets (RFC 8446 §4.2.11: < 2^16).
MAX_TICKET_LABEL_LEN = 1024
#: Largest encoded TLS session ticket a store accepts, in octets.
MAX_TICKET_LEN = 16 * 1024
#: Largest caller blob (the verified caller's identity, ``quicvoice.auth.encode_caller``).
MAX_CALLER_LEN = 16 * 1024
#: Largest version number (it travels as a signed 64-bit integer in Redis).
MAX_VERSION = 2**63 - 1


class StaleWriteError(StoreError):
    """A compare-and-set lost: the stored version is not the one the writer expected."""

    def __init__(self, session_id: str, expected_version: int, actual_version: int) -> None:
        super().__init__(
            f"session {session_id!r}: stale write, expected version {expected_version}, "
            f"store has {actual_version}"
        )
        #: The session written.
        self.session_id = session_id
        #: The version the writer based its state on (0: the session did not exist).
        self.expected_version = expected_version
        #: The version found in the store (0: no record).
        self.actual_version = actual_version


class StoreUnavailableError(StoreError):
    """The store could not be reached or did not answer in time; retrying may succeed."""


class CorruptRecordError(StoreError):
    """The store returned data that is not a valid record for the key asked; it is not used."""


def check_session_id(session_id: str) -> str:
    """Return ``session_id`` if valid, else raise ``ValueError`` or ``TypeError``."""
    if not isinstance(session_id, str):
        raise TypeError(f"session_id must be a str, not {type(session_id).__name__}")
    encoded = session_id.encode("utf-8")
    if not 0 < len(encoded) <= MAX_SESSION_ID_LEN:
        raise ValueError(f"session_id must be 1 to {MAX_SESSION_ID_LEN} UTF-8 octets")
    if not session_id.isprintable():
        raise ValueError("session_id must be printable")
    return session_id


def check_ticket_label(label: bytes) -> bytes:
    """Return ``label`` if it is a valid ticket label, else raise ``ValueError``/``TypeError``."""
    if not isinstance(label, bytes):
        raise TypeError(f"ticket label must be bytes, not {type(label).__name__}")
    if not 0 < len(label) <= MAX_TICKET_LABEL_LEN:
        raise ValueError(f"ticket label must be 1 to {MAX_TICKET_LABEL_LEN} octets")
    return label


def check_ttl(ttl: float) -> float:
    """Return ``ttl`` (seconds) if it is finite and positive, else raise ``ValueError``."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError("ttl must be a number of seconds")
    if not (math.isfinite(ttl) and ttl > 0):
        raise ValueError(f"ttl must be a positive finite number of seconds, not {ttl!r}")
    return float(ttl)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRecord:
    """One session as the store keeps it; a new version is made with ``successor``."""

    #: The session's ID (printable, 1 to ``MAX_SESSION_ID_LEN`` UTF-8 octets).
    session_id: str
    #: Version, 1 for the first record, +1 for each successful write.
    version: int
    #: Application state: a msgpack blob of at most ``MAX_STATE_LEN`` octets, opaque to the store.
    state: bytes
    #: Absolute expiry, seconds on the store's clock (Unix time by default); gone after it.
    expires_at: float
    #: Who holds the session (e.g. backend and connection); a resume writes its own tag, so an
    #: older holder's next write fails with ``StaleWriteError``. Empty when unused.
    owner: str = ""
    #: Who called: the verified caller (``quicvoice.auth.encode_caller``), opaque to the store,
    #: so a resumed session knows its caller without the original token. Empty: none.
    caller: bytes = b""

    def __post_init__(self) -> None:
        check_session_id(self.session_id)
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise TypeError("version must be an int")
        if not 1 <= self.version <= MAX_VERSION:
            raise ValueError(f"version must be 1 to {MAX_VERSION}, not {self.version}")
        if not isinstance(self.state, bytes):
            raise TypeError("state must be bytes (a msgpack blob)")
        if isinstance(self.expires_at, bool) or not isinstance(self.expires_at, int | float):
            raise TypeError("expires_at must be a number of seconds")
        if not math.isfinite(self.expires_at):
            raise ValueError("expires_at must be finite")
        if not isinstance(self.owner, str):
            raise TypeError("owner must be a str")
        if len(self.owner.encode("utf-8")) > MAX_OWNER_LEN or not self.owner.isprintable():
            raise ValueError(f"owner must be printable, at most {MAX_OWNER_LEN} UTF-8 octets")
        if not isinstance(self.caller, bytes):
            raise TypeError("caller must be bytes")
        if len(self.caller) > MAX_CALLER_LEN:
            raise ValueError(f"caller must be at most {MAX_CALLER_LEN} octets")

    @classmethod
    def new(
        cls,
        session_id: str,
        state: bytes,
        *,
        expires_at: float,
        owner: str = "",
        caller: bytes = b"",
    ) -> SessionRecord:
        """A first record (version 1); save it with ``expected_version=0``."""
        return cls(
            session_id=session_id,
            version=1,
            state=state,
            expires_at=expires_at,
            owner=owner,
            caller=caller,
        )

    def successor(
        self,
        *,
        state: bytes | None = None,
        expires_at: float | None = None,
        owner: str | None = None,
        caller: bytes | None = None,
    ) -> SessionRecord:
        """The next version of this record; save it with ``expected_version=self.version``."""
        return replace(
            self,
            version=self.version + 1,
            state=self.state if state is None else state,
            expires_at=self.expires_at if expires_at is None else expires_at,
            owner=self.owner if owner is None else owner,
            caller=self.caller if caller is None else caller,
        )


def check_for_save(record: SessionRecord, expected_version: int, now: float) -> None:
    """Argument and size checks shared by every store's ``save``.

    Raises ``TypeError``/``ValueError`` for a call that can never be right, and ``StoreError``
    for a state blob over ``MAX_STATE_LEN``.
    """
    if not isinstance(record, SessionRecord):
        raise TypeError("record must be a SessionRecord")
    if isinstance(expected_version, bool) or not isinstance(expected_version, int):
        raise TypeError("expected_version must be an int (0: the session must not exist)")
    if expected_version < 0:
        raise ValueError("expected_version must be 0 (create) or a stored version")
    if expected_version and record.version != expected_version + 1:
        raise ValueError(
            f"record.version must be expected_version + 1 ({expected_version + 1}), "
            f"not {record.version}"
        )
    if len(record.state) > MAX_STATE_LEN:
        raise StoreError(
            f"session {record.session_id!r}: state of {len(record.state)} octets exceeds "
            f"{MAX_STATE_LEN}"
        )
    if record.expires_at <= now:
        raise ValueError(f"session {record.session_id!r}: expires_at is not in the future")


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreStatistics:
    """A snapshot of a store's counters since it was opened."""

    #: Operations attempted (each load, save, delete, put_ticket, take_ticket counts one).
    operations: int
    #: Operations that raised ``StoreError`` (stale writes excluded).
    errors: int
    #: Saves refused because the stored version differed.
    stale_writes: int
    #: Records or tickets found corrupt (counted in ``errors`` as well).
    corrupt: int
    #: Saves that succeeded without the configured replicas confirming them (Redis ``WAIT``).
    unreplicated: int = 0
    #: Changes of primary seen (Redis Sentinel failovers).
    failovers: int = 0


@runtime_checkable
class SessionStore(Protocol):
    """Where session records and shared TLS session tickets live (memory or Redis).

    Every method raises ``StoreError`` (or a subclass) when the store fails or returns data it
    cannot trust, ``TypeError``/``ValueError`` for bad arguments, and nothing else.
    """

    async def load(self, session_id: str) -> SessionRecord | None:
        """The session's current record, or ``None`` if there is none or it has expired."""
        ...

    async def save(self, record: SessionRecord, expected_version: int) -> SessionRecord:
        """Write ``record`` if the stored version is ``expected_version`` (0: no record).

        ``record.version`` must be ``expected_version + 1``; a create (``expected_version=0``)
        may use any version, so a record lost from the store is re-created with versions that
        keep increasing (no ABA). The record lives until
        ``record.expires_at``. Raises ``StaleWriteError`` when another writer got there first.
        Returns the record as stored.
        """
        ...

    async def delete(self, session_id: str) -> bool:
        """Remove the session's record; ``True`` if there was one."""
        ...

    async def put_ticket(self, label: bytes, ticket: bytes, ttl: float) -> None:
        """Keep an encoded TLS session ticket under ``label`` for ``ttl`` seconds."""
        ...

    async def take_ticket(self, label: bytes) -> bytes | None:
        """Remove and return the ticket under ``label`` (atomic: one taker wins), or ``None``."""
        ...

    async def generation(self) -> int | None:
        """A number that changes whenever the store may have lost records since it was last
        asked (Redis restarted without persistence, or flushed): checkpointers then write
        their state again. ``None``: the store cannot lose records while this process lives
        (memory), so there is nothing to watch.
        """
        ...

    def statistics(self) -> StoreStatistics:
        """Counters since the store was opened."""
        ...

    async def aclose(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...
