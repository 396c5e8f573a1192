"""Types of the extension module lb._native (lb/_native.c); see lb/native_path.py."""

from collections.abc import Sequence

ABI_VERSION: int
AESNI: int
MAX_BATCH: int
PROBE_EVERY: int
IDLE: int
INTERRUPTED: int
TICK: int
SLOW: int
PLAINTEXT: int
SINGLE_PASS: int
FOUR_PASS: int

class Tables:
    """The fast path's tables of one Router: configurations, backends, counters."""

    aes: bool
    def __init__(
        self,
        configs: Sequence[tuple[int, int, int, bytes | None] | None],
        backends: Sequence[tuple[bytes, bytes]],
        sources: Sequence[bytes],
        probe: bytes,
    ) -> None: ...
    def uplink(self, datagram: bytes, port: int) -> int: ...
    def downlink(self, datagram: bytes, source: bytes) -> int: ...
    def decode(self, cid: bytes) -> bytes | None: ...
    def fold(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]: ...
    def decode_cost(self, cid: bytes, rounds: int) -> float: ...
    def aes_cost(self, config_bits: int, rounds: int) -> float: ...

class Relay:
    """One pump's batched receive, decide and send loop (IPv4 sockets)."""

    def __init__(
        self,
        receive_fd: int,
        send_fd: int,
        reply_fd: int,
        tables: Tables,
        uplink: bool,
        *,
        batch: int = ...,
        gso: bool = ...,
    ) -> None: ...
    def use(self, tables: Tables) -> None: ...
    def run(self, deadline: float) -> int: ...
    def pending(self) -> list[tuple[int, bytes, tuple[str, int]]]: ...
    def resolve(
        self, index: int, address: tuple[str, int], datagram: bytes, reply: bool
    ) -> None: ...
    def flush(self) -> None: ...
    def take_dropped(self) -> int: ...
    def errors(self) -> dict[int, int]: ...
    def statistics(self) -> tuple[int, int, int, int, int, int]: ...
