"""Many UDP datagrams per system call (recvmmsg, sendmmsg): quicvoice/_udpbatch.c."""

ABI_VERSION: int
MAX_BATCH: int

Address = tuple[str, int] | tuple[str, int, int, int]

def receive(fd: int, limit: int, /) -> list[tuple[bytes, Address]]:
    """Up to ``limit`` datagrams waiting on the non-blocking socket ``fd`` (one recvmmsg)."""

def send(
    fd: int, family: int, datagrams: list[tuple[bytes, tuple[str, int]]], /
) -> tuple[int, int]:
    """Send ``datagrams`` with sendmmsg; (sent, failed)."""
