"""Run a client process whose resolver reads a private ``/etc/hosts`` (root, ``unshare``).

``ip netns``-free: the process gets its own mount namespace in which ``/etc/hosts`` maps
``localhost`` to both ``::1`` and ``127.0.0.1`` and ``nsswitch.conf`` says ``hosts: files``,
so names resolve through the real resolver to both families and no DNS query leaves.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOSTS = "::1 localhost\n127.0.0.1 localhost\n"
NSSWITCH = "hosts: files\n"

needs_private_hosts = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="a private /etc/hosts needs a mount namespace: root and unshare (CI runs as root)",
)


class ClientProcess:
    """A client process that prints JSON lines and ends when its stdin closes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def report(self, timeout: float = 15.0) -> dict[str, object]:
        """The next JSON line the process prints."""
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            assert self.process.stderr is not None
            raise AssertionError((await self.process.stderr.read()).decode())
        report: dict[str, object] = json.loads(line)
        return report

    async def hang_up(self) -> None:
        """Close stdin and wait for the process (killed after 10 s)."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


@asynccontextmanager
async def with_private_hosts(
    directory: Path, module: str, *args: str
) -> AsyncIterator[ClientProcess]:
    """Run ``python -m module args...`` in a mount namespace with the private hosts file."""
    hosts = directory / "hosts"
    hosts.write_text(HOSTS)
    nsswitch = directory / "nsswitch.conf"
    nsswitch.write_text(NSSWITCH)
    process = await asyncio.create_subprocess_exec(
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        'mount --bind "$0" /etc/hosts && mount --bind "$1" /etc/nsswitch.conf '
        '&& shift && exec "$@"',
        str(hosts),
        str(nsswitch),
        sys.executable,
        "-m",
        module,
        *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    running = ClientProcess(process)
    try:
        yield running
    finally:
        if process.returncode is None:
            await running.hang_up()
