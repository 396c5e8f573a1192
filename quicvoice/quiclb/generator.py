"""Connection-ID generation for a QUIC-LB server, and stateless-reset tokens any replica can make.

A server installs one generator on its endpoint configuration; every CID it issues, the first
and each NEW_CONNECTION_ID, comes from ``generate()``. The generator never repeats a nonce
under one configuration: nonces count up from a random start and exhaustion is an error.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from ..errors import NonceExhaustedError
from .algorithms import KEY_LEN, FourPass
from .config import MAX_CID_LEN, UNROUTABLE_CONFIG_ID, LoadBalancerConfig

STATELESS_RESET_TOKEN_LEN = 16
#: The shortest QUIC-LB CID: first octet, one octet of server ID, four of nonce.
MIN_CID_LEN = 6
#: Unroutable CIDs should carry seven random octets after the first (draft-21 §3.2).
UNROUTABLE_CID_LEN = 8
MIN_RESET_KEY_LEN = 16

RandomSource = Callable[[int], bytes]


def stateless_reset_token(reset_key: bytes, cid: bytes) -> bytes:
    """Return the RFC 9000 §10.3 stateless-reset token for ``cid``: HMAC-SHA256, truncated.

    Every backend and forwarder that holds ``reset_key`` computes the same token, so any of
    them can reset a connection whose backend is gone.
    """
    return hmac.new(reset_key, cid, hashlib.sha256).digest()[:STATELESS_RESET_TOKEN_LEN]


@runtime_checkable
class ConnectionIdGenerator(Protocol):
    """What a QUIC endpoint needs to issue its own connection IDs."""

    @property
    def cid_length(self) -> int:
        """The length of every CID this generator returns; constant for its lifetime."""
        ...

    def generate(self) -> bytes:
        """Return a fresh connection ID."""
        ...

    def validate(self, cid: bytes) -> bool:
        """Return whether ``cid`` could have been issued by this generator (cheap, no state)."""
        ...

    def stateless_reset_token(self, cid: bytes) -> bytes:
        """Return the stateless-reset token that goes with ``cid``."""
        ...


class _NonceCounter:
    """Nonces from a counter that starts at a random value and stops before it wraps."""

    __slots__ = ("_next", "_remaining", "_modulus", "_length", "_permute")

    def __init__(self, length: int, random: RandomSource, permute: FourPass | None) -> None:
        self._length = length
        self._modulus = 1 << (8 * length)
        self._next = int.from_bytes(random(length), "big")
        self._remaining = self._modulus
        self._permute = permute

    @property
    def remaining(self) -> int:
        return self._remaining

    def take(self) -> bytes:
        if self._remaining == 0:
            raise NonceExhaustedError(
                f"all {self._modulus} nonces of {self._length} octets are used; rotate the config"
            )
        value = self._next
        self._next = (value + 1) % self._modulus
        self._remaining -= 1
        nonce = value.to_bytes(self._length, "big")
        # Plaintext CIDs show the nonce: pass the counter through a keyed permutation so that
        # consecutive CIDs look unrelated while staying unique (draft-21 §5.3).
        return self._permute.encrypt(nonce) if self._permute is not None else nonce


class QuicLbConnectionIdGenerator:
    """Issues QUIC-LB CIDs of one fixed length for one server, with config rotation.

    With no configuration it issues unroutable CIDs (config bits 0b111, length
    self-encoded, random otherwise). CIDs shorter than ``cid_length`` under a configuration
    are padded with random octets for the server's own use (draft-21 §5.3), so the
    length stays constant across rotations.
    """

    def __init__(
        self,
        server_id: bytes,
        config: LoadBalancerConfig | None,
        reset_key: bytes,
        *,
        cid_length: int | None = None,
        random: RandomSource = os.urandom,
    ) -> None:
        if not isinstance(reset_key, bytes | bytearray) or len(reset_key) < MIN_RESET_KEY_LEN:
            raise ValueError(f"reset_key must be at least {MIN_RESET_KEY_LEN} octets")
        if cid_length is None:
            cid_length = config.cid_len if config is not None else UNROUTABLE_CID_LEN
        if not MIN_CID_LEN <= cid_length <= MAX_CID_LEN:
            raise ValueError(f"cid_length must be between {MIN_CID_LEN} and {MAX_CID_LEN}")
        self._cid_length = cid_length
        self._reset_key = bytes(reset_key)
        self._random = random
        self._server_ids: dict[int, bytes] = {}
        self._configs: dict[int, LoadBalancerConfig] = {}
        self._active: LoadBalancerConfig | None = None
        self._counter: _NonceCounter | None = None
        if config is not None:
            self.rotate(config, server_id)

    @property
    def cid_length(self) -> int:
        """The length of every CID this generator returns."""
        return self._cid_length

    @property
    def active_config(self) -> LoadBalancerConfig | None:
        """The configuration new CIDs use, or ``None`` when they are unroutable."""
        return self._active

    @property
    def server_id(self) -> bytes | None:
        """This server's ID under the active configuration."""
        return self._server_ids.get(self._active.config_id) if self._active else None

    @property
    def nonces_remaining(self) -> int | None:
        """How many CIDs the active configuration can still issue."""
        return self._counter.remaining if self._counter is not None else None

    def rotate(self, config: LoadBalancerConfig, server_id: bytes) -> None:
        """Issue new CIDs under ``config`` from now on; CIDs of older configs stay valid.

        Call ``retire(config_id)`` once no connection uses an old configuration's CIDs.
        """
        if not isinstance(config, LoadBalancerConfig):
            raise TypeError(f"expected LoadBalancerConfig, not {type(config).__name__}")
        if len(server_id) != config.server_id_len:
            raise ValueError(
                f"server_id must be {config.server_id_len} octets for config {config.config_id}"
            )
        if config.cid_len > self._cid_length:
            raise ValueError(
                f"config {config.config_id} needs {config.cid_len}-octet CIDs, "
                f"more than this generator's {self._cid_length}"
            )
        permute = None
        if config.key is None:
            permute = FourPass(
                self._random(KEY_LEN), config.nonce_len // 2, -(-config.nonce_len // 2)
            )
        self._configs[config.config_id] = config
        self._server_ids[config.config_id] = bytes(server_id)
        self._active = config
        self._counter = _NonceCounter(config.nonce_len, self._random, permute)

    def retire(self, config_id: int) -> None:
        """Stop accepting CIDs of ``config_id``; retiring the active one makes CIDs unroutable."""
        self._configs.pop(config_id, None)
        self._server_ids.pop(config_id, None)
        if self._active is not None and self._active.config_id == config_id:
            self._active = None
            self._counter = None

    def generate(self) -> bytes:
        """Return a fresh CID of ``cid_length`` octets."""
        config = self._active
        if config is None or self._counter is None:
            first_octet = (UNROUTABLE_CONFIG_ID << 5) | (self._cid_length - 1)
            return bytes((first_octet,)) + self._random(self._cid_length - 1)
        extra_len = self._cid_length - config.cid_len
        random_bits = None if config.encode_length else self._random(1)[0]
        return config.encode(
            self._server_ids[config.config_id],
            self._counter.take(),
            extra=self._random(extra_len) if extra_len else b"",
            random_bits=random_bits,
        )

    def validate(self, cid: bytes) -> bool:
        """Return whether ``cid`` has our length and decodes to our server ID under a live config.

        Unroutable CIDs (0b111) of our length are accepted: a server issues them when it has
        no configuration, and they decode to no one.
        """
        if len(cid) != self._cid_length:
            return False
        config_id = cid[0] >> 5
        if config_id == UNROUTABLE_CONFIG_ID:
            return True
        config = self._configs.get(config_id)
        if config is None:
            return False
        return config.decode(cid) == self._server_ids[config_id]

    def stateless_reset_token(self, cid: bytes) -> bytes:
        """Return the stateless-reset token for ``cid`` under the shared reset key."""
        return stateless_reset_token(self._reset_key, cid)
