"""The forwarder's I/O shell, in three parts; this module names them.

- ``lb.supervisor``: ``Supervisor`` (sockets, pump processes, signals, metrics, health probes)
  and ``open_socket``;
- ``lb.pump``: ``Pump``, one direction of one worker in its own process (ticks, reloads,
  health, counters);
- the pumps' loops: ``lb.native_path`` (the extension ``lb._native``: batched, the common
  datagram decided in C) and ``lb.python_path`` (where the native path cannot run).

Every decision is the Router's (lb/router.py): the loops' tables come from it, and whatever
their fast paths do not take goes through it.
"""

from __future__ import annotations

from .pump import DOWNLINK, UPLINK, Pump, Stopped
from .supervisor import Supervisor, open_socket

__all__ = ["DOWNLINK", "UPLINK", "Pump", "Stopped", "Supervisor", "open_socket"]
