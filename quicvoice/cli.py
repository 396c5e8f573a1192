"""The ``quicvoice`` command: ``serve`` a backend, place a ``call``, or run the ``selfcheck``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from typing import NoReturn

from . import __version__
from .errors import ConfigurationError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _address(value: str) -> tuple[str, int]:
    from lb.config import parse_address

    try:
        return parse_address(value, "address")
    except ConfigurationError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("address: ")) from None


def _listen_address(value: str) -> tuple[str, int]:
    """An address to listen on: like ``_address``, and port 0 means any free port."""
    from lb.config import parse_address

    try:
        return parse_address(value, "address", allow_port_zero=True)
    except ConfigurationError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("address: ")) from None


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``quicvoice`` command."""
    parser = _Parser(
        prog="quicvoice", description="Voice sessions over QUIC with connection migration."
    )
    parser.add_argument("--version", action="version", version=f"quicvoice {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("selfcheck", help="issue and decode QUIC-LB connection IDs in every mode")

    serve = commands.add_parser("serve", help="run a backend with the demo voice agent")
    serve.add_argument("--config", help="backend TOML file (the forwarder's file works too)")
    serve.add_argument("--listen", type=_address, help="HOST:PORT, overrides the config")
    serve.add_argument("--server-id", help="hex server ID, overrides the config")
    serve.add_argument(
        "--session-store",
        metavar="URL",
        help="memory:// (default) or redis://HOST:PORT/DB, overrides the config",
    )
    serve.add_argument(
        "--web",
        type=_address,
        metavar="HOST:PORT",
        help="also serve the browser demo page over HTTP here",
    )
    serve.add_argument(
        "--public-address",
        type=_address,
        metavar="HOST:PORT",
        help="the address browsers reach for WebTransport (the forwarder's VIP; default: listen)",
    )
    serve.add_argument(
        "--record-uplink",
        metavar="DIR",
        help="write each realtime session's uplink, as the agent's jitter buffer played it, "
        "to DIR/<session_id>.wav (and its playout report to DIR/<session_id>.json)",
    )
    serve.add_argument(
        "--metrics",
        type=_listen_address,
        metavar="HOST:PORT",
        help="serve Prometheus text metrics at http://HOST:PORT/metrics (overrides the config)",
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="log debug messages")

    call = commands.add_parser("call", help="place a call: stream audio, print a JSON report")
    call.add_argument("address", type=_address, metavar="HOST:PORT")
    call.add_argument("--webtransport", action="store_true", help="WebTransport over HTTP/3")
    call.add_argument("--seconds", type=float, default=3.0, help="tone length (default 3)")
    call.add_argument("--wav", help="mono 16-bit WAV at the codec rate, instead of a tone")
    call.add_argument("--local-address", help="local IP to send from")
    call.add_argument("--migrate-after", type=float, metavar="S", help="migrate after S seconds")
    call.add_argument("--migrate-to", metavar="A", help="local IP to migrate to")
    call.add_argument("--realtime", action="store_true", help="datagram uplink")
    call.add_argument("--codec", default="L16/16000", help="NAME/RATE (default L16/16000)")
    call.add_argument("--cafile", help="verify the server against this CA (default: no check)")
    call.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "selfcheck":
            from .selfcheck import run_selfcheck

            return 0 if run_selfcheck(sys.stdout) else 1
        if args.command == "serve":
            return _serve(args)
        if args.command == "call":
            return _call(args, parser)
    except ConfigurationError as error:
        print(f"quicvoice {args.command}: {error}", file=sys.stderr)
        return 2
    return 2


def _serve(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from functools import partial
    from pathlib import Path

    from lb.config import format_address

    from .agent import demo_agent
    from .asyncio.config import BackendConfig
    from .asyncio.server import VoiceServer
    from .quiclb import LoadBalancerConfig

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    server_id = None
    if args.server_id is not None:
        try:
            server_id = bytes.fromhex(args.server_id)
        except ValueError:
            raise ConfigurationError(f"--server-id: {args.server_id!r} is not hex") from None
    if args.config:
        config = BackendConfig.load(args.config, server_id=server_id, listen=args.listen)
    else:
        # Standalone: single-pass QUIC-LB CIDs under a key of this process only.
        config = BackendConfig(configs=(LoadBalancerConfig(0, 4, 12, os.urandom(16)),))
        if args.listen is not None:
            config = replace(config, listen=args.listen)
        if server_id is not None:
            config = replace(config, server_id=server_id)
    if args.session_store is not None:
        config = replace(config, session_store=args.session_store)
    if args.metrics is not None:
        config = replace(config, metrics=args.metrics)
    record_dir = None
    if args.record_uplink is not None:
        record_dir = Path(args.record_uplink)
        try:
            record_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigurationError(f"--record-uplink: {error}") from None

    async def serve() -> None:
        server = VoiceServer(config, partial(demo_agent, record_dir=record_dir))
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        host, port = server.address
        fingerprint = server.certificate_sha256.hex() if server.certificate_sha256 else "-"
        print(
            json.dumps(
                {
                    "listening": f"{host}:{port}",
                    "server_id": config.server_id.hex(),
                    "certificate_sha256": fingerprint,
                }
            ),
            flush=True,
        )
        if not config.configs:
            logging.warning("no [[configs]]: connection IDs are unroutable (0b111)")
        metrics = server.telemetry.metrics_address
        if metrics is not None:
            print(json.dumps({"metrics": f"http://{format_address(metrics)}/metrics"}), flush=True)
        web = None
        if args.web is not None:
            from .asyncio.web import start_web

            web = await start_web(server, args.web, public_address=args.public_address)
            print(json.dumps({"web": f"http://{web.address[0]}:{web.address[1]}/"}), flush=True)
        await stop.wait()
        if web is not None:
            web.close()
        await server.aclose()

    asyncio.run(serve())
    return 0


def _call(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .asyncio.call import CallOptions, run_call

    if (args.migrate_after is None) != (args.migrate_to is None):
        parser.error("--migrate-after and --migrate-to go together")
    host, port = args.address
    options = CallOptions(
        host=host,
        port=port,
        webtransport=args.webtransport,
        seconds=args.seconds,
        wav=args.wav,
        local_address=args.local_address,
        migrate_after=args.migrate_after,
        migrate_to=args.migrate_to,
        realtime=args.realtime,
        codec=args.codec,
        cafile=args.cafile,
    )
    if args.cafile is None:
        print("quicvoice call: server certificate not verified (no --cafile)", file=sys.stderr)
    try:
        report = asyncio.run(run_call(options))
    except ConnectionError as error:
        print(f"quicvoice call: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
