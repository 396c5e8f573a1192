"""Types of the ngtcp2 extension (quicvoice/_ngtcp2.c)."""

from collections.abc import Callable

Address = tuple[str, int]

ABI_VERSION: int
NGTCP2_VERSION: str
ERR_DRAINING: int
ERR_CLOSING: int
ERR_DROP_CONN: int
ERR_IDLE_CLOSE: int

class ServerContext:
    def __init__(self, certificate: bytes, private_key: bytes, alpn: bytes) -> None: ...

class Connection:
    def __init__(
        self,
        context: ServerContext,
        client_dcid: bytes,
        client_scid: bytes,
        scid: bytes,
        reset_token: bytes,
        version: int,
        local: Address,
        remote: Address,
        now: int,
        cid_factory: Callable[[int], tuple[bytes, bytes]],
        cid_retired: Callable[[bytes], None],
        idle_timeout_ms: int,
    ) -> None: ...
    def receive(
        self, datagram: bytes, remote: Address, now: int
    ) -> tuple[int, list[tuple[int, bytes, bool]]]: ...
    def flush(self, now: int) -> tuple[int, list[tuple[bytes, Address]]]: ...
    def handle_expiry(self, now: int) -> int: ...
    def open_uni_stream(self) -> int: ...
    def open_bidi_stream(self) -> int: ...
    def send_stream(self, stream_id: int, data: bytes, fin: bool = False) -> bool: ...
    def close(self, now: int, error_code: int | None = None) -> list[tuple[bytes, Address]]: ...
    @property
    def expiry(self) -> int | None: ...
    @property
    def source_cids(self) -> list[bytes]: ...
    @property
    def handshake_completed(self) -> bool: ...
    @property
    def closed(self) -> bool: ...

def client(
    alpn: bytes,
    server_name: str,
    local: Address,
    remote: Address,
    now: int,
    cid_factory: Callable[[int], tuple[bytes, bytes]],
    cid_retired: Callable[[bytes], None],
    idle_timeout_ms: int,
) -> Connection: ...
def accept(datagram: bytes) -> tuple[int, bytes, bytes] | None: ...
def stateless_reset(token: bytes, size: int) -> bytes: ...
def strerror(code: int) -> str: ...
