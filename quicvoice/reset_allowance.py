"""Which short headers for unknown CIDs a backend answers with a stateless reset (sans-I/O).

RFC 9000 §10.3 asks an endpoint to bound the stateless resets it sends: strangers' packets
share ``RESETS_PER_SECOND``. The forwarder's authenticated health probes
(``quicvoice.healthprobe``) are answered from an allowance of their own, so no flood of
unknown short headers can starve them and the forwarder never marks a live backend down.
Every engine's backend holds one ``ResetAllowance``; times are passed in.
"""

from __future__ import annotations

from .healthprobe import ProbeVerifier

#: Stateless resets per second sent at most to strangers (RFC 9000 §10.3 asks for a bound).
RESETS_PER_SECOND = 100
#: Answers per second to the forwarder's authenticated health probes, an allowance of their
#: own that strangers' unknown short headers cannot use up.
PROBE_ANSWERS_PER_SECOND = 100


class ResetAllowance:
    """Token buckets for stateless resets: one for strangers, one for authentic probes."""

    def __init__(self, reset_key: bytes) -> None:
        self._probe_verifier = ProbeVerifier(reset_key)
        self._reset_budget = float(RESETS_PER_SECOND)
        self._reset_budget_at = 0.0
        self._probe_budget = float(PROBE_ANSWERS_PER_SECOND)
        self._probe_budget_at = 0.0

    def answer_probe(self, packet: bytes, dcid_len: int, now: float, wall: float) -> bool:
        """Whether ``packet`` is an authentic, fresh health probe that may be answered now
        (``now``: monotonic seconds, ``wall``: the wall clock the probe's timestamp is on)."""
        if not self._probe_verifier.verify(packet, dcid_len, wall):
            return False
        self._probe_budget = min(
            float(PROBE_ANSWERS_PER_SECOND),
            self._probe_budget + (now - self._probe_budget_at) * PROBE_ANSWERS_PER_SECOND,
        )
        self._probe_budget_at = now
        if self._probe_budget < 1:
            return False
        self._probe_budget -= 1
        return True

    def allow_stranger(self, now: float) -> bool:
        """Whether a stranger's packet may be answered with a reset at monotonic ``now``
        (seconds); takes one from the strangers' allowance when it may."""
        self._reset_budget = min(
            float(RESETS_PER_SECOND),
            self._reset_budget + (now - self._reset_budget_at) * RESETS_PER_SECOND,
        )
        self._reset_budget_at = now
        if self._reset_budget < 1:
            return False
        self._reset_budget -= 1
        return True
