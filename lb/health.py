"""Backend health without a protocol of its own: probes that backends answer with a reset.

Every ``health_interval`` the supervisor sends each backend, through the backend socket, an
encapsulated short-header packet whose DCID carries that backend's server ID and a random
nonce, "from" a reserved client address (``PROBE_CLIENT``). A live backend owns no connection
for that CID and answers with a stateless reset (RFC 9000 §10.3), encapsulated back to the
forwarder and addressed to ``PROBE_CLIENT``; the downlink pump recognises the header, records
the time in a table shared by the pumps (shared memory, inherited across ``fork``) and drops
it. The uplink pump treats a backend unheard of for ``health_timeout`` as down: out of the
first-flight hash, its packets answered with resets (or dropped) as for ``down = true``.
No backend change is needed: any QUIC-LB backend that sends stateless resets answers probes.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Sequence

from quicvoice.encapsulation import wrap
from quicvoice.quiclb import LoadBalancerConfig
from quicvoice.settings import Address

from .config import Backend

#: The client address probes claim to come from: 0.0.0.0 is never a real peer's source.
PROBE_CLIENT: Address = ("0.0.0.0", 9)
#: The encapsulation header of a reply addressed to ``PROBE_CLIENT``.
PROBE_REPLY_HEADER = wrap(PROBE_CLIENT, b"")
#: Octets of random payload after the DCID: a reset must be smaller than its trigger and at
#: least 21 octets, so the probe carries enough for the backend to answer.
PROBE_PADDING = 40


def probe_packet(config: LoadBalancerConfig, backend: Backend) -> bytes:
    """An encapsulated short-header packet to a CID of ``backend`` that no connection owns."""
    nonce = os.urandom(config.nonce_len)
    cid = config.encode(backend.server_id, nonce)
    first = 0x40 | (os.urandom(1)[0] & 0x3F)
    return wrap(PROBE_CLIENT, bytes((first,)) + cid + os.urandom(PROBE_PADDING))


class HealthTable:
    """When each backend (by index in the configuration) last answered a probe.

    Lives in shared memory so that the downlink pump writes and the uplink pump reads it.
    A backend counts as alive until ``timeout`` has passed since the table was (re)set.
    """

    def __init__(self, size: int, timeout: float) -> None:
        self.timeout = timeout
        self._last = multiprocessing.RawArray("d", max(size, 1))
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

    def heard(self, index: int) -> None:
        """Record a probe answer from backend ``index``."""
        if 0 <= index < len(self._last):
            self._last[index] = time.monotonic()

    def dead(self, count: int) -> frozenset[int]:
        """Indexes (below ``count``) of backends unheard of for longer than the timeout."""
        limit = time.monotonic() - self.timeout
        return frozenset(i for i in range(min(count, len(self._last))) if self._last[i] < limit)


def probes(configs: Sequence[LoadBalancerConfig], backends: Sequence[Backend]) -> list[bytes]:
    """One probe per backend, under the configuration that new CIDs use (the last)."""
    config = configs[-1]
    return [probe_packet(config, backend) for backend in backends]
