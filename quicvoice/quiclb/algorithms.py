"""The three QUIC-LB connection-ID algorithms of draft-ietf-quic-load-balancers-21 §5.

Each algorithm maps the plaintext block (server ID || nonce) to the octets that follow the
first octet of a CID, and back. They are pure functions of their inputs; the AES contexts
are created once per key and reused for every packet (one ECB block per pass, no state).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

AES_BLOCK_LEN = 16
KEY_LEN = 16


class CidAlgorithm(Protocol):
    """Turns a plaintext block into the CID octets after the first octet, and back."""

    def encrypt(self, plaintext: bytes) -> bytes:
        """Return the transformed block; ``plaintext`` is server ID || nonce."""
        ...

    def server_id(self, block: bytes) -> bytes:
        """Return the server ID from a block of exactly the configured length."""
        ...

    def decrypt(self, block: bytes) -> bytes:
        """Return server ID || nonce from a block of exactly the configured length."""
        ...


def aes_ecb_encryptor(key: bytes) -> CipherContext:
    """Return a reusable AES-128-ECB encryption context (ECB keeps no state between blocks)."""
    return Cipher(algorithms.AES(key), modes.ECB()).encryptor()


def aes_ecb_decryptor(key: bytes) -> CipherContext:
    """Return a reusable AES-128-ECB decryption context."""
    return Cipher(algorithms.AES(key), modes.ECB()).decryptor()


class Plaintext:
    """draft-21 §5.2: no key; the block is server ID || nonce as is."""

    __slots__ = ("_server_id_len",)

    def __init__(self, server_id_len: int) -> None:
        self._server_id_len = server_id_len

    def encrypt(self, plaintext: bytes) -> bytes:
        """Return ``plaintext`` unchanged."""
        return plaintext

    def server_id(self, block: bytes) -> bytes:
        """Return the leading server-ID octets."""
        return block[: self._server_id_len]

    def decrypt(self, block: bytes) -> bytes:
        """Return ``block`` unchanged."""
        return block


class SinglePass:
    """draft-21 §5.4.1: server ID + nonce = 16 octets, one AES-128-ECB block."""

    __slots__ = ("_server_id_len", "encrypt", "decrypt")

    def __init__(self, key: bytes, server_id_len: int) -> None:
        self._server_id_len = server_id_len
        #: Encrypt one 16-octet block (the context's own method: no Python frame per call).
        self.encrypt: Callable[[bytes], bytes] = aes_ecb_encryptor(key).update
        #: Decrypt one 16-octet block.
        self.decrypt: Callable[[bytes], bytes] = aes_ecb_decryptor(key).update

    def server_id(self, block: bytes) -> bytes:
        """Decrypt the block once and return its leading server-ID octets."""
        return self.decrypt(block)[: self._server_id_len]


class FourPass:
    """draft-21 §5.4.2: a four-round Feistel network whose round function is AES-128-ECB.

    The halves are held as integers. For an odd plaintext length the two halves share the
    middle octet: ``left`` keeps its high nibble (its last nibble is always zero) and
    ``right`` its low nibble (its first nibble is always zero).
    """

    __slots__ = (
        "_encryptor",
        "_length",
        "_half",
        "_odd",
        "_server_id_len",
        "_left_mask",
        "_right_mask",
        "_right_bits",
        "_suffix",
    )

    def __init__(self, key: bytes, server_id_len: int, nonce_len: int) -> None:
        length = server_id_len + nonce_len
        half = (length + 1) // 2
        self._encryptor = aes_ecb_encryptor(key)
        self._length = length
        self._half = half
        self._odd = length & 1
        self._server_id_len = server_id_len
        full = (1 << (8 * half)) - 1
        # Odd lengths clear the last nibble of left halves and the first nibble of right ones.
        self._left_mask = full & ~0xF if self._odd else full
        self._right_mask = full >> 4 if self._odd else full
        self._right_bits = 8 * half - 4 if self._odd else 8 * half
        # expand(): input octets, zeros up to octet 14, then length and pass (§5.4.2.2).
        self._suffix = tuple(
            bytes(AES_BLOCK_LEN - 2 - half) + bytes((length, pass_number))
            for pass_number in range(5)
        )

    def _round(self, half_value: int, pass_number: int) -> int:
        block = half_value.to_bytes(self._half, "big") + self._suffix[pass_number]
        return int.from_bytes(self._encryptor.update(block)[: self._half], "big")

    def encrypt(self, plaintext: bytes) -> bytes:
        """Run the four encryption passes over server ID || nonce."""
        value = int.from_bytes(plaintext, "big")
        left = (value >> (8 * self._length - 8 * self._half)) & self._left_mask
        right = value & self._right_mask
        right = (right ^ self._round(left, 1)) & self._right_mask
        left = (left ^ self._round(right, 2)) & self._left_mask
        right = (right ^ self._round(left, 3)) & self._right_mask
        left = (left ^ self._round(right, 4)) & self._left_mask
        return self._join(left, right)

    def _split(self, block: bytes) -> tuple[int, int]:
        value = int.from_bytes(block, "big")
        left = (value >> self._right_bits) << (4 if self._odd else 0)
        return left, value & self._right_mask

    def _join(self, left: int, right: int) -> bytes:
        if self._odd:
            left >>= 4
        return ((left << self._right_bits) | right).to_bytes(self._length, "big")

    def server_id(self, block: bytes) -> bytes:
        """Decrypt with three passes when left_0 holds the whole server ID, four otherwise."""
        left2, right2 = self._split(block)
        left1 = (left2 ^ self._round(right2, 4)) & self._left_mask
        right1 = (right2 ^ self._round(left1, 3)) & self._right_mask
        left0 = (left1 ^ self._round(right1, 2)) & self._left_mask
        if self._server_id_len <= self._length // 2:
            shift = 8 * (self._half - self._server_id_len)
            return (left0 >> shift).to_bytes(self._server_id_len, "big")
        right0 = (right1 ^ self._round(left0, 1)) & self._right_mask
        return self._join(left0, right0)[: self._server_id_len]

    def decrypt(self, block: bytes) -> bytes:
        """Run all four decryption passes and return server ID || nonce."""
        left2, right2 = self._split(block)
        left1 = (left2 ^ self._round(right2, 4)) & self._left_mask
        right1 = (right2 ^ self._round(left1, 3)) & self._right_mask
        left0 = (left1 ^ self._round(right1, 2)) & self._left_mask
        right0 = (right1 ^ self._round(left0, 1)) & self._right_mask
        return self._join(left0, right0)
