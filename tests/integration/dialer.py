"""A client process for the dual-stack tests: ``connect`` to a URL, print one JSON line (who
answered, from which local address, how long it took), hold the call until stdin closes.

The tests run it in a mount namespace whose ``/etc/hosts`` maps ``localhost`` to both ``::1``
and ``127.0.0.1``, so the name really resolves to both families, through the real resolver.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from quicvoice.asyncio.client import connect


async def dial(url: str, ca_file: str, timeout: float) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    try:
        async with connect(url, ca_file=ca_file, timeout=timeout) as client:
            assert client.session is not None
            report = {
                "ok": True,
                "elapsed_ms": (time.monotonic() - started) * 1000,
                "server_id": client.session.server_id,
                "session_id": client.session.session_id,
                "local_host": client.local_address[0],
            }
            print(json.dumps(report), flush=True)
            await loop.run_in_executor(None, sys.stdin.readline)
            return report
    except Exception as error:
        report = {
            "ok": False,
            "elapsed_ms": (time.monotonic() - started) * 1000,
            "error": type(error).__name__,
            "message": str(error),
        }
        print(json.dumps(report), flush=True)
        return report


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--ca-file", required=True)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    report = asyncio.run(dial(args.url, args.ca_file, args.timeout))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
