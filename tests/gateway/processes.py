"""Real processes for the gateway's end-to-end tests: ``quicvoice serve`` backends running
``tests.gateway.phone_app`` and a ``quicvoice gateway``, each printing JSON lines that the
test awaits (no polling, no sleeps)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0


class Process:
    """A child process whose stdout is JSON lines, kept in order and awaitable."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self.records: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, name: str, *args: str, env: dict[str, str] | None = None) -> Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "quicvoice.cli", *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        started = cls(name, process)
        await started.wait_for(lambda r: "listening" in r, START_TIMEOUT)
        return started

    async def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        while line := await stdout.readline():
            try:
                self.records.append(json.loads(line))
            except ValueError:
                continue
            self._changed.set()
        self._changed.set()

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        """The first record (old or new) for which ``predicate`` holds."""
        async with asyncio.timeout(timeout):
            while True:
                for record in self.records:
                    if predicate(record):
                        return record
                if self._reader.done():
                    raise AssertionError(f"{self.name} exited: {await self.stderr()}")
                self._changed.clear()
                await self._changed.wait()

    def find(self, kind: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
        return lambda r: r.get("phone") == kind and all(r.get(k) == v for k, v in fields.items())

    async def stderr(self) -> str:
        if self.process.returncode is None or self.process.stderr is None:
            return "(running)"
        return (await self.process.stderr.read()).decode(errors="replace")[-3000:]

    def kill(self) -> None:
        """SIGKILL, by PID."""
        if self.process.returncode is None:
            os.kill(self.process.pid, signal.SIGKILL)

    async def stop(self) -> str:
        """SIGTERM (SIGKILL after 10 s); return the end of stderr."""
        if self.process.returncode is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.kill()
                await self.process.wait()
        await self._reader
        return await self.stderr()


async def serve_backend(config: Path, server_id: str, env: dict[str, str]) -> Process:
    return await Process.start(
        f"backend {server_id}", "serve", "--config", str(config), "--server-id", server_id,
        "--app", "tests.gateway.phone_app:app", env=env,
    )  # fmt: skip


async def run_gateway(backend_url: str, *extra: str) -> tuple[Process, str]:
    """``quicvoice gateway --twilio`` on a free port; returns it and its ws:// URL."""
    gateway = await Process.start(
        "gateway", "gateway", "--twilio", "--listen", "127.0.0.1:0", "--backend", backend_url,
        *extra,
    )  # fmt: skip
    listening = gateway.records[0]["listening"]
    return gateway, f"ws://{listening}/twilio"
