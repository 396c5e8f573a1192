"""Backend health without a protocol of its own: probes that backends answer with a reset.

Every ``health_interval`` the supervisor sends each backend, through the backend socket, an
encapsulated short-header packet whose DCID carries that backend's server ID and a random
nonce, "from" a reserved client address (``PROBE_CLIENT``). A live backend owns no connection
for that CID and answers with a stateless reset (RFC 9000 §10.3), encapsulated back to the
forwarder and addressed to ``PROBE_CLIENT``; the downlink pump recognises the header, records
the time in a table shared by the pumps (shared memory, inherited across ``fork``) and drops
it. The uplink pump treats a backend unheard of for ``health_timeout`` as down: out of the
first-flight hash, its packets answered with resets (or dropped) as for ``down = true``.

A dead backend process on a live host is found sooner: its kernel answers the next datagram
with ICMP port unreachable, which the pumps read from the backend socket's error queue
(lb/errqueue.py). That makes the backend a suspect and sends it a probe at once; when the kernel
refuses that probe too (its ICMP message quotes the probe) it is down, and so it is after
``DEFAULT_CONFIRM_TIMEOUT`` without an answer. A host that died sends no ICMP: probes find it.

With a shared ``reset_key`` the probes are authenticated (quicvoice/healthprobe.py): they carry
a timestamp and an HMAC under a key derived from it, and a quicvoice backend answers them
outside the allowance of resets it keeps for strangers, so a stranger's flood of unknown short
headers cannot starve them. Without a key, any QUIC-LB backend that sends stateless resets
answers probes, from that allowance.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Sequence

from quicvoice.encapsulation import wrap
from quicvoice.healthprobe import PROBE_CLIENT, probe_key, probe_trailer
from quicvoice.quiclb import LoadBalancerConfig

from .config import Backend

__all__ = ["PROBE_CLIENT", "PROBE_REPLY_HEADER", "HealthTable", "probe_packet", "probes"]

#: The encapsulation header of a reply addressed to ``PROBE_CLIENT``.
PROBE_REPLY_HEADER = wrap(PROBE_CLIENT, b"")
#: Octets of random payload after the DCID: a reset must be smaller than its trigger and at
#: least 21 octets, so the probe carries enough for the backend to answer.
PROBE_PADDING = 40
#: Seconds a backend reported unreachable (ICMP) has to answer a probe before it is down, when
#: no refused probe has confirmed the report sooner.
DEFAULT_CONFIRM_TIMEOUT = 0.5


def probe_packet(
    config: LoadBalancerConfig, backend: Backend, key: bytes | None = None, now: float = 0.0
) -> bytes:
    """An encapsulated short-header packet to a CID of ``backend`` that no connection owns,
    authenticated with the probe ``key`` (``healthprobe.probe_key``) at wall-clock ``now``."""
    nonce = os.urandom(config.nonce_len)
    cid = config.encode(backend.server_id, nonce)
    first = 0x40 | (os.urandom(1)[0] & 0x3F)
    trailer = b"" if key is None else probe_trailer(key, cid, now)
    return wrap(PROBE_CLIENT, bytes((first,)) + cid + trailer + os.urandom(PROBE_PADDING))


class HealthTable:
    """When each backend (by index in the configuration) last answered a probe, and when an
    ICMP error last made it a suspect.

    Lives in shared memory so that the downlink pump writes and the uplink pump reads it.
    A backend counts as alive until ``timeout`` has passed since the table was set or it joined.

    An ICMP port unreachable is only believed of a backend that has answered a probe since the
    table was set (start-up) or since it joined in a reload: before that its port may simply not
    be bound yet, and the timeout decides. A believed report makes the backend a suspect, and
    the pump probes it at once. A suspect is down when the kernel refuses one of the forwarder's
    own authenticated probes (``confirm``: the ICMP message quotes a probe, which no off-path
    forger can know), or when it has answered no probe for ``confirm_timeout`` (deployments
    without a shared key, or ICMP rate-limited on the way). A forged report costs one probe,
    never the backend, and a live backend slow to answer under load has ``confirm_timeout``.
    """

    def __init__(
        self, size: int, timeout: float, confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT
    ) -> None:
        self.timeout = timeout
        self.confirm_timeout = confirm_timeout
        self._last = multiprocessing.RawArray("d", max(size, 1))
        self._answered = multiprocessing.RawArray("d", max(size, 1))
        self._suspect = multiprocessing.RawArray("d", max(size, 1))
        self._refused = multiprocessing.RawArray("d", max(size, 1))
        self.reset(len(self._last))

    @property
    def size(self) -> int:
        """How many backends the table tracks."""
        return len(self._last)

    def reset(self, count: int) -> None:
        """Give every backend a fresh grace period (start-up, reload)."""
        now = time.monotonic()
        for index in range(min(count, len(self._last))):
            self._last[index] = now
            self._answered[index] = 0.0
            self._suspect[index] = 0.0
            self._refused[index] = 0.0

    def carry_over(self, before: Sequence[Backend], after: Sequence[Backend]) -> None:
        """Re-index the table for a reloaded backend list: a backend still configured (same
        server ID and address) keeps what is known of it, wherever it now is in the list; a new
        one gets a fresh grace period. A reload must not give a backend found dead a second
        life (its first flights would be lost for a whole ``health_timeout``)."""
        columns = (self._last, self._answered, self._suspect, self._refused)
        kept = {
            (backend.server_id, backend.address): tuple(column[index] for column in columns)
            for index, backend in enumerate(before[: len(self._last)])
        }
        self.reset(len(after))
        for index, backend in enumerate(after[: len(self._last)]):
            entry = kept.get((backend.server_id, backend.address))
            if entry is not None:
                for column, value in zip(columns, entry, strict=True):
                    column[index] = value

    def heard(self, index: int) -> None:
        """Record a probe answer from backend ``index``."""
        if 0 <= index < len(self._last):
            now = time.monotonic()
            self._last[index] = now
            self._answered[index] = now

    def suspect(self, index: int) -> bool:
        """Record that backend ``index``'s port was reported unreachable; ``True`` when this
        starts a suspicion (the caller then probes it at once), ``False`` when one is open or
        the report is not believed (the backend has not answered since the table was set)."""
        if not 0 <= index < len(self._last) or self._answered[index] == 0.0:
            return False
        if self._suspect[index] > self._last[index]:
            return False
        self._suspect[index] = time.monotonic()
        return True

    def confirm(self, index: int) -> None:
        """Record that the kernel refused one of the forwarder's own probes to backend
        ``index``: down until it answers a probe again (if it has answered one since the table
        was set; before, the timeout decides)."""
        if 0 <= index < len(self._last) and self._answered[index] != 0.0:
            now = time.monotonic()
            if self._suspect[index] <= self._last[index]:
                self._suspect[index] = now
            self._refused[index] = now

    def next_confirmation(self, count: int) -> float | None:
        """When the earliest open suspicion (below ``count``) times out, if no probe is
        answered (``time.monotonic()`` seconds), or ``None``: the uplink pump ticks then."""
        last, suspected = self._last, self._suspect
        due = [
            suspected[i] + self.confirm_timeout
            for i in range(min(count, len(last)))
            if suspected[i] > last[i]
        ]
        return min(due) if due else None

    def dead(self, count: int) -> frozenset[int]:
        """Indexes (below ``count``) of backends unheard of for longer than the timeout, and
        suspects that the kernel refused a probe to or that answered none in time."""
        now = time.monotonic()
        limit = now - self.timeout
        timed_out = now - self.confirm_timeout
        last, suspected, refused = self._last, self._suspect, self._refused
        return frozenset(
            i
            for i in range(min(count, len(last)))
            if last[i] < limit
            or (last[i] < suspected[i] and (refused[i] > last[i] or suspected[i] <= timed_out))
        )


def probes(
    configs: Sequence[LoadBalancerConfig],
    backends: Sequence[Backend],
    reset_key: bytes | None = None,
) -> list[bytes]:
    """One probe per backend, under the configuration that new CIDs use (the last),
    authenticated when the deployment shares a ``reset_key``."""
    config = configs[-1]
    key = None if reset_key is None else probe_key(reset_key)
    now = time.time()
    return [probe_packet(config, backend, key, now) for backend in backends]
