"""A QUIC-LB configuration (draft-ietf-quic-load-balancers-21 §3, §5) and its codec.

A configuration names the CID layout every server of a pool shares::

    CID = first octet || block || extra
    first octet = config ID (3 bits) || length of the CID minus one, or random (5 bits)
    block = algorithm(server ID || nonce)

``encode`` builds a CID, ``decode`` reads the server ID back and never raises.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .algorithms import AES_BLOCK_LEN, KEY_LEN, CidAlgorithm, FourPass, Plaintext, SinglePass

MAX_CONFIG_ID = 6
#: Config-rotation codepoint that servers without a configuration use (§3.2): never routable.
UNROUTABLE_CONFIG_ID = 0b111
MIN_SERVER_ID_LEN = 1
MIN_NONCE_LEN = 4
#: Server ID and nonce together; QUIC v1 CIDs are at most 20 octets with the first octet.
MAX_BLOCK_LEN = 19
MAX_CID_LEN = 20
LENGTH_BITS_MASK = 0x1F


class Algorithm(Enum):
    """Which of the draft's algorithms a configuration uses."""

    PLAINTEXT = "plaintext"
    SINGLE_PASS = "single-pass"
    FOUR_PASS = "four-pass"


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, not {value}")
    return value


@dataclass(frozen=True)
class LoadBalancerConfig:
    """One QUIC-LB configuration: config ID, field lengths and an optional AES-128 key.

    The cipher contexts it holds are created once, here, and reused by every ``encode`` and
    ``decode``.
    """

    #: The config rotation codepoint, 0 to 6 (0b111 is reserved for unroutable CIDs).
    config_id: int
    #: Length of the server ID in octets (at least 1).
    server_id_len: int
    #: Length of the nonce in octets (at least 4; server ID + nonce at most 19).
    nonce_len: int
    #: 16-octet AES-128 key, or ``None`` for the plaintext algorithm.
    key: bytes | None = field(default=None, repr=False)
    #: Whether the first octet's low five bits carry the CID length minus one (§3.3).
    encode_length: bool = True

    _algorithm: CidAlgorithm = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_int("config_id", self.config_id, 0, MAX_CONFIG_ID)
        _check_int("server_id_len", self.server_id_len, MIN_SERVER_ID_LEN, MAX_BLOCK_LEN)
        _check_int("nonce_len", self.nonce_len, MIN_NONCE_LEN, MAX_BLOCK_LEN)
        if self.server_id_len + self.nonce_len > MAX_BLOCK_LEN:
            raise ValueError(
                f"server_id_len + nonce_len must be at most {MAX_BLOCK_LEN}, "
                f"not {self.server_id_len} + {self.nonce_len}"
            )
        if not isinstance(self.encode_length, bool):
            raise ValueError("encode_length must be a boolean")
        algorithm: CidAlgorithm
        if self.key is None:
            algorithm = Plaintext(self.server_id_len)
        else:
            if not isinstance(self.key, bytes | bytearray) or len(self.key) != KEY_LEN:
                raise ValueError(f"key must be {KEY_LEN} octets")
            object.__setattr__(self, "key", bytes(self.key))
            if self.block_len == AES_BLOCK_LEN:
                algorithm = SinglePass(self.key, self.server_id_len)
            else:
                algorithm = FourPass(self.key, self.server_id_len, self.nonce_len)
        object.__setattr__(self, "_algorithm", algorithm)
        # The forwarder calls decode once per packet: an instance attribute holding a closure
        # specialised for this algorithm saves a method lookup and a nested call (issue #2's
        # budget is 3x one bare AES block).
        object.__setattr__(self, "decode", _make_decoder(self, algorithm))

    @property
    def algorithm(self) -> Algorithm:
        """The algorithm the draft prescribes for these lengths and key."""
        if self.key is None:
            return Algorithm.PLAINTEXT
        return Algorithm.SINGLE_PASS if self.block_len == AES_BLOCK_LEN else Algorithm.FOUR_PASS

    @property
    def block_len(self) -> int:
        """Server ID plus nonce length in octets."""
        return self.server_id_len + self.nonce_len

    @property
    def cid_len(self) -> int:
        """Length of a CID with no extra octets: first octet, server ID and nonce."""
        return 1 + self.block_len

    def encode(
        self, server_id: bytes, nonce: bytes, *, extra: bytes = b"", random_bits: int | None = None
    ) -> bytes:
        """Return the whole CID for ``server_id`` and ``nonce``, first octet included.

        ``extra`` octets, for the server's own use, are appended after the block (§5.3); the
        length bits count them. When the configuration does not encode the length, the five
        low bits of the first octet are ``random_bits`` (fresh random bits when ``None``).
        """
        if len(server_id) != self.server_id_len:
            raise ValueError(f"server_id must be {self.server_id_len} octets, not {len(server_id)}")
        if len(nonce) != self.nonce_len:
            raise ValueError(f"nonce must be {self.nonce_len} octets, not {len(nonce)}")
        length = self.cid_len + len(extra)
        if length > MAX_CID_LEN:
            raise ValueError(f"CID would be {length} octets, more than {MAX_CID_LEN}")
        if self.encode_length:
            low_bits = length - 1
        elif random_bits is None:
            low_bits = secrets.randbits(5)
        else:
            low_bits = random_bits & LENGTH_BITS_MASK
        first_octet = (self.config_id << 5) | low_bits
        block = self._algorithm.encrypt(bytes(server_id) + bytes(nonce))
        return bytes((first_octet,)) + block + bytes(extra)

    def decode(self, cid: bytes) -> bytes | None:
        """Return the server ID in ``cid``, or ``None`` when it is too short or of another config.

        Octets after the block are the server's own and are ignored. Never raises on bytes.
        (Replaced per instance by an equivalent specialised closure, see ``_make_decoder``.)
        """
        if len(cid) <= self.block_len or cid[0] >> 5 != self.config_id:
            return None
        return self._algorithm.server_id(cid[1 : 1 + self.block_len])

    def decode_nonce(self, cid: bytes) -> bytes | None:
        """Return the nonce of ``cid`` (all passes), or ``None`` as ``decode`` would."""
        if len(cid) <= self.block_len or cid[0] >> 5 != self.config_id:
            return None
        return self._algorithm.decrypt(cid[1 : 1 + self.block_len])[self.server_id_len :]

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], where: str = "configs") -> LoadBalancerConfig:
        """Build a configuration from a TOML ``[[configs]]`` table.

        Keys: ``id``, ``server_id_len``, ``nonce_len``, optional ``key`` (32 hex digits) and
        ``encode_length``. Errors raise ``ValueError`` naming ``where`` and the key.
        """
        known = {"id", "server_id_len", "nonce_len", "key", "encode_length"}
        if not isinstance(table, Mapping):
            raise ValueError(f"{where}: must be a table")
        for name in table:
            if name not in known:
                raise ValueError(f"{where}.{name}: unknown key (expected one of {sorted(known)})")
        for name in ("id", "server_id_len", "nonce_len"):
            if name not in table:
                raise ValueError(f"{where}.{name}: missing")
        key: bytes | None = None
        if table.get("key") is not None:
            raw = table["key"]
            try:
                key = bytes.fromhex(raw) if isinstance(raw, str) else None
            except ValueError:
                key = None
            if key is None or len(key) != KEY_LEN:
                raise ValueError(f"{where}.key: must be {2 * KEY_LEN} hex digits")
        arguments = {
            "config_id": ("id", table["id"]),
            "server_id_len": ("server_id_len", table["server_id_len"]),
            "nonce_len": ("nonce_len", table["nonce_len"]),
        }
        for argument, (name, value) in arguments.items():
            try:
                _check_int(argument, value, 0, 255)
            except ValueError as error:
                raise ValueError(f"{where}.{name}: {error}") from None
        encode_length = table.get("encode_length", True)
        if not isinstance(encode_length, bool):
            raise ValueError(f"{where}.encode_length: must be true or false")
        try:
            return cls(
                config_id=table["id"],
                server_id_len=table["server_id_len"],
                nonce_len=table["nonce_len"],
                key=key,
                encode_length=encode_length,
            )
        except ValueError as error:
            message = str(error)
            name = message.split(" ", 1)[0]
            name = {"config_id": "id"}.get(name, name)
            raise ValueError(f"{where}.{name}: {message}") from None


def _make_decoder(
    config: LoadBalancerConfig, algorithm: CidAlgorithm
) -> Callable[[bytes], bytes | None]:
    """Return ``config.decode`` specialised for its algorithm, with every constant bound."""
    config_id = config.config_id
    cid_len = config.cid_len
    server_id_len = config.server_id_len
    server_id_end = 1 + server_id_len

    if isinstance(algorithm, Plaintext):

        def decode_plaintext(cid: bytes) -> bytes | None:
            if len(cid) < cid_len or cid[0] >> 5 != config_id:
                return None
            return cid[1:server_id_end]

        return decode_plaintext

    if isinstance(algorithm, SinglePass):
        decrypt_block = algorithm.decrypt

        def decode_single_pass(cid: bytes) -> bytes | None:
            if len(cid) < cid_len or cid[0] >> 5 != config_id:
                return None
            return decrypt_block(cid[1:cid_len])[:server_id_len]

        return decode_single_pass

    server_id_of = algorithm.server_id

    def decode_four_pass(cid: bytes) -> bytes | None:
        if len(cid) < cid_len or cid[0] >> 5 != config_id:
            return None
        return server_id_of(cid[1:cid_len])

    return decode_four_pass
