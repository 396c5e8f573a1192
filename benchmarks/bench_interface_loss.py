"""Break-before-make under load: Wi-Fi vanishes without warning under many calls (root).

    python benchmarks/bench_interface_loss.py [--calls 20] [--seconds 8] [--drop-at 3]
        [--notice-ms 3000] [--cell-delay-ms 50] [--cell-loss 1] [--seed 1] [--json]

The network namespaces of ``examples/wifi_to_5g.py --netns`` (``specs/netlab.md``): a forwarder
and two backends in the server namespace; in the client namespace one process places
``--calls`` concurrent calls from the Wi-Fi address, each taking an order and streaming 20 ms
reliable uplink frames; at the end the caller barges in on the reply and hangs up.
``--drop-at`` seconds in, ``wifi0`` is deleted without warning (its address and routes go at
once); the application hears of it ``--notice-ms`` later and only
then calls ``migrate(cell)``, as a phone's connectivity callback would. The client library
must keep each call alive in between by itself: its next send from the vanished address fails
and it moves the live connection to the network the kernel now routes through.

Reported per call and summarised: calls lost (a call that did not end with its cart and all
frames), uplink frames sent / delivered (the backend's count in ``bye``), the backend before
and after, resumptions (a new connection; none are expected), the automatic migration's gap
(last packet heard on Wi-Fi to first on cell, as the client measured it) and the longest
pause between uplink frames arriving at the backend (time to recover, as the agent hears it).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FRAME = bytes(640)  # 20 ms of L16/16000 silence: content does not matter here
FRAME_SECONDS = 0.020
ITEM = {"item": "taro milk tea", "size": "large", "milk": "oat"}
RESULT_PREFIX = "RESULT "
CHILD_TIMEOUT = 240.0


def _demo_module() -> Any:
    """``examples/wifi_to_5g.py``, for its process cluster (forwarder + two backends)."""
    spec = importlib.util.spec_from_file_location("wifi_to_5g", ROOT / "examples" / "wifi_to_5g.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["wifi_to_5g"] = module
    spec.loader.exec_module(module)
    return module


# -- the client namespace: many calls, Wi-Fi deleted under them --------------------------------


class WifiDrop:
    """When ``wifi0`` was deleted (event-loop time), once it has been."""

    def __init__(self) -> None:
        self.at: float | None = None


async def one_call(
    vip: tuple[str, int], args: argparse.Namespace, drop: WifiDrop
) -> dict[str, Any]:
    from quicvoice import connect
    from quicvoice.session.events import TurnStarted

    loop = asyncio.get_running_loop()
    result: dict[str, Any] = {"ok": False}
    try:
        async with connect(*vip, local_address=args.wifi, verify=False, timeout=10) as call:
            assert call.session is not None
            result["server_before"] = call.session.server_id
            result["step"] = "order"
            call.send_event("order.add", ITEM)
            await call.wait_event("order.cart", 10)
            result["step"] = "speaking"
            frames = int(args.seconds / FRAME_SECONDS)
            begin = loop.time()
            migrating: asyncio.Task[Any] | None = None
            for index in range(frames):
                await asyncio.sleep(max(0.0, begin + index * FRAME_SECONDS - loop.time()))
                call.send_audio(FRAME)
                if migrating is None and drop.at is not None and args.notice_ms >= 0:
                    if loop.time() >= drop.at + args.notice_ms / 1000:
                        migrating = loop.create_task(call.migrate(args.cell, timeout=5))
            if migrating is not None:
                await migrating
            result["step"] = "reply"
            call.end_audio()
            # The agent answers with the whole utterance at 5x real time; the caller barges
            # in at once, so that many calls ending together measure the fault rather than a
            # burst of reply audio this 2-core machine cannot carry alongside everything else.
            while not isinstance(turn := await asyncio.wait_for(call.receive(), 20), TurnStarted):
                pass
            call.cancel_turn(turn.turn_id)
            result["step"] = "bye"
            delivered = await call.bye(timeout=10)
            result["step"] = "report"
            call.send_event("session.arrivals")
            arrivals = (await call.wait_event("session.arrivals", 10)).data
            call.send_event("session.info")
            info = (await call.wait_event("session.info", 10)).data
            call.send_event("order.list")
            cart = (await call.wait_event("order.cart", 10)).data["items"]
            stats = call.stats()
            result.update(
                frames_sent=stats.uplink_frames_sent,
                frames_delivered=delivered,
                server_after=info["server_id"],
                peer_after=info["peer"],
                cart_intact=[item.get("item") for item in cart] == [ITEM["item"]],
                resumptions=len(call.resumptions),
                migrations=[
                    {"from": m.from_address, "to": m.to_address, "gap_ms": round(m.gap_ms, 1)}
                    for m in stats.migrations
                ],
                longest_pause_ms=round(longest_pause_ms(arrivals["at"]), 1),
            )
            result["ok"] = (
                result["frames_sent"] == delivered
                and result["server_before"] == result["server_after"]
                and result["cart_intact"]
            )
    except Exception as error:  # a lost call is a result, not a crash of the benchmark
        result["error"] = f"{result.get('step', 'connect')}: {error!r}"
    return result


def longest_pause_ms(arrivals: list[float]) -> float:
    """The longest gap between consecutive uplink frames arriving at the backend."""
    times = sorted(arrivals)
    return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0) * 1000


async def client_main(args: argparse.Namespace) -> dict[str, Any]:
    from quicvoice.netlab import WIFI_DEVICE, Namespace

    host, _, port = args.vip.rpartition(":")
    vip = (host, int(port))
    loop = asyncio.get_running_loop()
    drop = WifiDrop()

    async def drop_wifi() -> None:
        await asyncio.sleep(args.drop_at)
        drop.at = loop.time()
        await asyncio.to_thread(Namespace(args.client_ns).delete_link, WIFI_DEVICE)

    calls = [loop.create_task(one_call(vip, args, drop)) for _ in range(args.calls)]
    dropping = loop.create_task(drop_wifi())
    results = await asyncio.gather(*calls)
    await dropping
    return {"calls": results}


# -- the orchestrator ------------------------------------------------------------------------


def run_child(lab: Any, namespace: Any, argv: list[str]) -> dict[str, Any]:
    process = lab.spawn(namespace, argv, stdout=subprocess.PIPE, bufsize=0)
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + CHILD_TIMEOUT
    output = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            process.kill()
            raise RuntimeError(f"the client did not finish within {CHILD_TIMEOUT:.0f} s")
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        output += chunk
    code = process.wait(10)
    for line in output.decode().splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    raise RuntimeError(f"the client in the namespace failed (exit status {code})")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the namespaces and the cluster, run the calls, return the report."""
    from quicvoice.netlab import (
        Lab,
        LineConfig,
        VoiceTopologyConfig,
        build_voice_topology,
        cleanup_stale,
    )

    demo = _demo_module()
    cleanup_stale()
    line = LineConfig(delay_ms=args.cell_delay_ms, loss_percent=args.cell_loss)
    config = VoiceTopologyConfig(cell_uplink=line, cell_downlink=line, seed=args.seed)
    with Lab() as lab:
        topology = build_voice_topology(lab, config)
        with demo.running_cluster(topology.server.name, topology.server_ip) as cluster:
            argv = [
                sys.executable, str(Path(__file__).resolve()), "--client",
                "--vip", f"{cluster.vip[0]}:{cluster.vip[1]}",
                "--wifi", topology.wifi_ip, "--cell", topology.cell_ip,
                "--client-ns", topology.client.name,
                "--calls", str(args.calls), "--seconds", str(args.seconds),
                "--drop-at", str(args.drop_at), "--notice-ms", str(args.notice_ms),
            ]  # fmt: skip
            child = run_child(lab, topology.client, argv)
        lines = topology.delay_line.stop()
    child["delay_line"] = {name: stats.as_dict() for name, stats in lines.items()}
    keys = ("calls", "seconds", "drop_at", "notice_ms", "cell_delay_ms", "cell_loss", "seed")
    child["settings"] = {key: getattr(args, key) for key in keys}
    return child


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    p50 = statistics.median(values)
    p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
    return f"{p50:.0f} / {p95:.0f} / {values[-1]:.0f}"


def summary(report: dict[str, Any]) -> tuple[str, bool]:
    """The markdown row of the report, and whether every call survived intact."""
    calls = report["calls"]
    lost = [call for call in calls if not call.get("ok")]
    sent = sum(call.get("frames_sent", 0) for call in calls)
    delivered = sum(call.get("frames_delivered", 0) for call in calls)
    gaps = [
        call["migrations"][0]["gap_ms"] for call in calls if call.get("migrations")
    ]
    pauses = [call["longest_pause_ms"] for call in calls if "longest_pause_ms" in call]
    resumed = sum(call.get("resumptions", 0) for call in calls)
    settings = report["settings"]
    header = (
        "| calls | notice ms | calls lost | uplink frames sent / delivered | resumptions | "
        "migration gap ms p50 / p95 / max | longest uplink pause ms p50 / p95 / max |\n"
        "|---:|---:|---:|---:|---:|---:|---:|"
    )
    row = (
        f"| {len(calls)} | {settings['notice_ms']} | {len(lost)} | {sent} / {delivered} | "
        f"{resumed} | {percentiles(gaps)} | {percentiles(pauses)} |"
    )
    return f"{header}\n{row}", not lost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=8.0, help="uplink audio per call")
    parser.add_argument("--drop-at", type=float, default=3.0, help="s after the calls start")
    parser.add_argument(
        "--notice-ms", type=int, default=3000, help="app calls migrate() this late (-1: never)"
    )
    parser.add_argument("--cell-delay-ms", type=float, default=50.0)
    parser.add_argument("--cell-loss", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    child = parser.add_argument_group("internal: the client process in its namespace")
    child.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    child.add_argument("--vip", help=argparse.SUPPRESS)
    child.add_argument("--wifi", help=argparse.SUPPRESS)
    child.add_argument("--cell", help=argparse.SUPPRESS)
    child.add_argument("--client-ns", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.calls < 1 or args.seconds <= args.drop_at or args.drop_at < 1:
        parser.error("need --calls >= 1 and 1 <= --drop-at < --seconds")
    if args.client:
        print(RESULT_PREFIX + json.dumps(asyncio.run(client_main(args))), flush=True)
        return 0
    if os.geteuid() != 0:
        print("bench_interface_loss: needs root (network namespaces)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="quicvoice-ifloss-"):
        report = run(args)
    table, intact = summary(report)
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"Wi-Fi deleted without warning {args.drop_at:g} s into {args.calls} calls; cell "
            f"link {args.cell_delay_ms:g} ms each way, {args.cell_loss:g} % loss; the app "
            f"calls migrate(cell) {args.notice_ms} ms later"
        )
        print()
        print(table)
        for call in report["calls"]:
            if not call.get("ok"):
                print("lost:", json.dumps(call))
    return 0 if intact else 1


if __name__ == "__main__":
    sys.exit(main())
