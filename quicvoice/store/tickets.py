"""TLS session tickets shared through the store, so a client can resume (0-RTT) on any backend.

aioquic asks for tickets through synchronous callbacks (``session_ticket_handler`` when it
issues one, ``session_ticket_fetcher`` with the PSK identity of a ClientHello), while the store
is asynchronous. ``TicketCache`` bridges them (specs/store.md, "Ticket sharing"):

- ``handle`` keeps the ticket in a bounded in-process cache and queues a ``put_ticket``;
- ``fetch`` answers from that cache only, removing the entry (single use) and queueing a
  ``take_ticket`` so no other backend accepts it later;
- ``prefetch(label)`` moves a ticket from the store into the cache; the I/O shell calls it
  *before* handing a new connection's ClientHello to aioquic when it can read the PSK identity.

Tickets cross the store as an explicit msgpack encoding, validated field by field on the way
back: never pickle, so a store returning garbage can do no more than refuse a resumption.

    [1, ticket: bin, age_add: u32, cipher_suite: u16, not_valid_before_ms: int,
     not_valid_after_ms: int, resumption_secret: bin, server_name: str | nil,
     max_early_data_size: u32 | nil, other_extensions: [[u16, bin], ...]]
"""

from __future__ import annotations

import asyncio
import datetime
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
from aioquic.tls import CipherSuite, SessionTicket

from quicvoice.errors import StoreError

from .background import cancel_and_wait
from .base import MAX_TICKET_LABEL_LEN, MAX_TICKET_LEN, SessionStore

#: Encoding format written by this version.
TICKET_FORMAT = 1
#: Fields of a format-1 ticket.
TICKET_FIELDS = 10
#: Longest resumption secret (SHA-384 output is 48 octets).
MAX_SECRET_LEN = 64
#: Longest server name (DNS limit).
MAX_SERVER_NAME_LEN = 255
#: Most extensions kept with a ticket, and the largest one.
MAX_EXTENSIONS = 32
MAX_EXTENSION_LEN = 4096
#: Longest lifetime given to a ticket in the store, in seconds (RFC 8446 §4.6.1: 7 days max;
#: aioquic issues 1 day).
MAX_TICKET_TTL = 86_400.0
#: Tickets kept in the in-process cache.
DEFAULT_CAPACITY = 4096
#: Store operations queued at most; the oldest is dropped beyond it.
DEFAULT_MAX_QUEUED = 1024
#: Bound on one store call, in seconds.
DEFAULT_CALL_TIMEOUT = 0.5
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
#: Latest instant a datetime can hold (9999-12-31T23:59:59.999Z), in Unix milliseconds.
_MAX_MS = 253_402_300_799_999
_ALLOWED_SUITES = frozenset(
    {
        CipherSuite.AES_128_GCM_SHA256,
        CipherSuite.AES_256_GCM_SHA384,
        CipherSuite.CHACHA20_POLY1305_SHA256,
    }
)


def encode_ticket(ticket: SessionTicket) -> bytes:
    """The format-1 encoding of ``ticket``; ``ValueError`` if a field is out of bounds."""
    body: bytes = msgpack.packb(
        [
            TICKET_FORMAT,
            bytes(ticket.ticket),
            int(ticket.age_add),
            int(ticket.cipher_suite),
            _to_ms(ticket.not_valid_before),
            _to_ms(ticket.not_valid_after),
            bytes(ticket.resumption_secret),
            ticket.server_name,
            ticket.max_early_data_size,
            [[int(kind), bytes(value)] for kind, value in ticket.other_extensions],
        ],
        use_bin_type=True,
    )
    # Validate by decoding: what we write must be what we accept.
    decode_ticket(body, bytes(ticket.ticket))
    return body


def decode_ticket(blob: object, label: bytes) -> SessionTicket:
    """The ticket in ``blob``, which must be the one stored under ``label``.

    Raises ``StoreError`` for anything else: type, size, format, field bounds, label mismatch.
    """
    if not isinstance(blob, bytes) or not 0 < len(blob) <= MAX_TICKET_LEN:
        raise StoreError("ticket entry is not a bounded byte string")
    try:
        fields = msgpack.unpackb(
            blob,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=MAX_TICKET_LEN,
            max_str_len=MAX_SERVER_NAME_LEN * 4,
            max_array_len=max(TICKET_FIELDS, MAX_EXTENSIONS),
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types for garbage; none may escape
        raise StoreError("ticket entry is not msgpack") from exc
    if not (isinstance(fields, list) and len(fields) == TICKET_FIELDS):
        raise StoreError("ticket entry has the wrong shape")
    (fmt, ident, age_add, suite, before_ms, after_ms, secret, server_name, early, exts) = fields
    if type(fmt) is not int or fmt != TICKET_FORMAT:
        raise StoreError(f"unknown ticket format {fmt!r}")
    if not isinstance(ident, bytes) or ident != label:
        raise StoreError("ticket entry belongs to another label")
    if not _uint(age_add, 32) or not _uint(suite, 16) or suite not in _ALLOWED_SUITES:
        raise StoreError("ticket age_add or cipher suite out of range")
    if not (_uint(before_ms, 63) and _uint(after_ms, 63) and before_ms <= after_ms <= _MAX_MS):
        raise StoreError("ticket validity period is invalid")
    if not isinstance(secret, bytes) or not 0 < len(secret) <= MAX_SECRET_LEN:
        raise StoreError("ticket resumption secret is invalid")
    if server_name is not None and (
        not isinstance(server_name, str) or len(server_name) > MAX_SERVER_NAME_LEN
    ):
        raise StoreError("ticket server name is invalid")
    if early is not None and not _uint(early, 32):
        raise StoreError("ticket max_early_data_size is invalid")
    if not isinstance(exts, list) or len(exts) > MAX_EXTENSIONS:
        raise StoreError("ticket extensions are invalid")
    extensions: list[tuple[int, bytes]] = []
    for ext in exts:
        if not (
            isinstance(ext, list)
            and len(ext) == 2
            and _uint(ext[0], 16)
            and isinstance(ext[1], bytes)
            and len(ext[1]) <= MAX_EXTENSION_LEN
        ):
            raise StoreError("ticket extension is invalid")
        extensions.append((ext[0], ext[1]))
    return SessionTicket(
        age_add=age_add,
        cipher_suite=CipherSuite(suite),
        not_valid_after=_from_ms(after_ms),
        not_valid_before=_from_ms(before_ms),
        resumption_secret=secret,
        # aioquic's server side records None when the client sent no SNI; it never reads it.
        server_name=server_name if server_name is not None else "",
        ticket=ident,
        max_early_data_size=early,
        other_extensions=extensions,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class TicketStatistics:
    """A snapshot of a ticket cache's counters."""

    #: Tickets issued here (``handle``).
    issued: int
    #: ``fetch`` calls answered from the cache.
    hits: int
    #: ``fetch`` calls with no ticket in the cache (the client does a full handshake).
    misses: int
    #: Tickets moved from the store by ``prefetch``.
    prefetched: int
    #: Store entries refused as invalid.
    corrupt: int
    #: Store calls that failed.
    store_errors: int
    #: Queued store operations dropped because the queue was full.
    dropped: int
    #: Store operations queued now.
    queued: int


class TicketCache:
    """aioquic's ticket callbacks backed by an in-process cache and the shared store."""

    def __init__(
        self,
        store: SessionStore,
        *,
        clock: Callable[[], float] = time.time,
        capacity: int = DEFAULT_CAPACITY,
        max_queued: int = DEFAULT_MAX_QUEUED,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
    ) -> None:
        if capacity < 1 or max_queued < 1:
            raise ValueError("capacity and max_queued must be at least 1")
        if not (math.isfinite(call_timeout) and call_timeout > 0):
            raise ValueError("call_timeout must be a positive number of seconds")
        self._store = store
        self._clock = clock
        self._capacity = capacity
        self._call_timeout = call_timeout
        self._cache: OrderedDict[bytes, SessionTicket] = OrderedDict()
        self._queue: deque[tuple[bytes, bytes | None, float]] = deque(maxlen=max_queued)
        self._task: asyncio.Task[None] | None = None
        self._counts = {
            "issued": 0, "hits": 0, "misses": 0, "prefetched": 0,
            "corrupt": 0, "store_errors": 0, "dropped": 0,
        }  # fmt: skip

    def handle(self, ticket: SessionTicket) -> None:
        """aioquic's ``session_ticket_handler``: keep a ticket this backend issued and share it."""
        try:
            blob = encode_ticket(ticket)
        except (StoreError, ValueError, TypeError, OverflowError):
            self._counts["corrupt"] += 1
            return
        label = bytes(ticket.ticket)
        if not 0 < len(label) <= MAX_TICKET_LABEL_LEN:
            return
        ttl = self._ttl_of(ticket)
        if ttl is None:
            return
        self._counts["issued"] += 1
        self._remember(label, ticket)
        self._enqueue(label, blob, ttl)

    def has(self, label: bytes) -> bool:
        """Whether the ticket for ``label`` is in this process already (no prefetch needed)."""
        return label in self._cache

    def fetch(self, label: bytes) -> SessionTicket | None:
        """aioquic's ``session_ticket_fetcher``: the ticket for a PSK identity, used once."""
        ticket = self._cache.pop(label, None)
        if ticket is None or self._ttl_of(ticket) is None:
            self._counts["misses"] += 1
            return None
        self._counts["hits"] += 1
        if 0 < len(label) <= MAX_TICKET_LABEL_LEN:
            self._enqueue(label, None, 0.0)
        return ticket

    async def prefetch(self, label: bytes) -> bool:
        """Move the ticket for ``label`` from the store into the cache; ``True`` if found.

        Store failures and invalid entries are counted and give ``False``: the client then
        does a full handshake, nothing worse.
        """
        if not isinstance(label, bytes) or not 0 < len(label) <= MAX_TICKET_LABEL_LEN:
            return False
        if label in self._cache:
            return True
        try:
            async with asyncio.timeout(self._call_timeout):
                blob = await self._store.take_ticket(label)
        except (StoreError, TimeoutError):
            self._counts["store_errors"] += 1
            return False
        if blob is None:
            return False
        try:
            ticket = decode_ticket(blob, label)
        except StoreError:
            self._counts["corrupt"] += 1
            return False
        if self._ttl_of(ticket) is None:
            return False
        self._counts["prefetched"] += 1
        self._remember(label, ticket)
        return True

    async def flush(self) -> None:
        """Perform the queued store operations now (failures are counted, not raised)."""
        while self._queue:
            label, blob, ttl = self._queue.popleft()
            try:
                async with asyncio.timeout(self._call_timeout):
                    if blob is None:
                        await self._store.take_ticket(label)
                    else:
                        await self._store.put_ticket(label, blob, ttl)
            except (StoreError, TimeoutError):
                self._counts["store_errors"] += 1

    def statistics(self) -> TicketStatistics:
        """Counters since the cache was made."""
        return TicketStatistics(**self._counts, queued=len(self._queue))

    async def aclose(self) -> None:
        """Stop the background flush (queued operations are dropped)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    def _remember(self, label: bytes, ticket: SessionTicket) -> None:
        self._cache[label] = ticket
        self._cache.move_to_end(label)
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)

    def _enqueue(self, label: bytes, blob: bytes | None, ttl: float) -> None:
        if self._queue.maxlen is not None and len(self._queue) == self._queue.maxlen:
            self._counts["dropped"] += 1
        self._queue.append((label, blob, ttl))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (sans-I/O use): ``flush`` performs the queue
        if self._task is None or self._task.done():
            self._task = loop.create_task(self.flush())

    def _ttl_of(self, ticket: SessionTicket) -> float | None:
        remaining = _to_ms(ticket.not_valid_after) / 1000 - self._clock()
        if remaining <= 0:
            return None
        return min(remaining, MAX_TICKET_TTL)


def _uint(value: Any, bits: int) -> bool:
    return type(value) is int and 0 <= value < (1 << bits)


def _to_ms(moment: datetime.datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return (moment - _EPOCH) // datetime.timedelta(milliseconds=1)


def _from_ms(ms: int) -> datetime.datetime:
    return _EPOCH + datetime.timedelta(milliseconds=ms)
