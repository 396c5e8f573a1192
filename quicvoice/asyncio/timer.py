"""One asyncio timer per QUIC connection, re-armed lazily.

Every transmit moves aioquic's next deadline (ACK, loss detection, idle). Cancelling and
re-creating an asyncio ``TimerHandle`` each time costs a heap push per packet and leaves the
loop's heap full of cancelled handles. Here the timer is moved only when the deadline comes
*earlier*; when it fires before the current deadline it simply re-arms.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aioquic.quic.connection import QuicConnection


class ConnectionTimer:
    """Calls ``on_expire(now)`` when ``quic.get_timer()`` is due."""

    __slots__ = ("_quic", "_on_expire", "_loop", "_handle", "_at")

    def __init__(self, quic: QuicConnection, on_expire: Callable[[float], None]) -> None:
        self._quic = quic
        self._on_expire = on_expire
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0

    def update(self) -> None:
        """Make sure the timer fires no later than the connection's next deadline."""
        at = self._quic.get_timer()
        if at is None:
            return
        if self._handle is not None:
            if at >= self._at:
                return
            self._handle.cancel()
        self._at = at
        self._handle = self._loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._handle = None
        at = self._quic.get_timer()
        if at is None:
            return
        now = self._loop.time()
        if at <= now:
            self._on_expire(max(at, now))
        else:
            self.update()

    def cancel(self) -> None:
        """Stop the timer (the connection is gone)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
