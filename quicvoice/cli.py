"""The ``quicvoice`` command: ``serve`` a backend, place a ``call``, mint a ``token``, bridge
phone calls through a ``gateway``, or run the ``selfcheck``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from .errors import ConfigurationError
from .version import __version__

if TYPE_CHECKING:
    from .asyncio.config import BackendConfig


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _address(value: str) -> tuple[str, int]:
    from .settings import parse_address

    try:
        return parse_address(value, "address")
    except ConfigurationError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("address: ")) from None


def _listen_address(value: str) -> tuple[str, int]:
    """An address to listen on: like ``_address``, and port 0 means any free port."""
    from .settings import parse_address

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

    serve = commands.add_parser(
        "serve", help="run a backend with a voice application (default: the demo agent)"
    )
    serve.add_argument("--config", help="backend TOML file (the forwarder's file works too)")
    serve.add_argument(
        "--app",
        metavar="MODULE:ATTR",
        help="the application: an App or an async handler, imported from the working "
        "directory, e.g. myagent:app (overrides the config's app; default: "
        "quicvoice.agent:demo)",
    )
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
    serve.add_argument(
        "--loop",
        default="asyncio",
        help="the event loop: asyncio (default) or uvloop (the 'fast' extra)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N backend processes, worker i with server ID base+i on port+i (or its own "
        "[[backends]] address in a forwarder's file); see specs/engine.md",
    )
    serve.add_argument(
        "--ecn",
        choices=["l4s", "classic", "off"],
        help="ECN marking: l4s = ECT(1), classic = ECT(0), off = not-ECT (overrides the config;"
        " default l4s)",
    )
    serve.add_argument(
        "--engine",
        choices=("aioquic", "ngtcp2"),
        help="QUIC engine, overrides the config's engine (ngtcp2: raw QUIC only)",
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="log debug messages")

    call = commands.add_parser("call", help="place a call: stream audio, print a JSON report")
    call.add_argument(
        "target",
        metavar="URL",
        help="quic://HOST[:PORT] (raw QUIC) or https://HOST[:PORT]/PATH (WebTransport), port "
        "443 by default; or IP:PORT, the older form, which checks no certificate unless "
        "--ca-file or --certificate-hash is given",
    )
    call.add_argument(
        "--webtransport", action="store_true", help="with IP:PORT: WebTransport over HTTP/3"
    )
    call.add_argument("--token", help="the caller's credential (e.g. a JWT), sent in the hello")
    call.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metadata for the server's accept hook, sent in the hello (repeatable)",
    )
    call.add_argument(
        "--ca-file",
        "--cafile",
        dest="ca_file",
        metavar="FILE",
        help="trust this PEM CA (or self-signed certificate) instead of the system store",
    )
    call.add_argument(
        "--certificate-hash",
        action="append",
        default=[],
        dest="certificate_hashes",
        metavar="SHA256",
        help="accept the server certificate with this SHA-256 (hex; `serve` prints it), "
        "no CA needed (repeatable)",
    )
    call.add_argument(
        "--server-name", help="the name to check the certificate against (default: the host)"
    )
    call.add_argument(
        "--insecure",
        action="store_true",
        help="do not check the server certificate at all (development only)",
    )
    call.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to get a session (default 5)"
    )
    call.add_argument("--seconds", type=float, default=3.0, help="tone length (default 3)")
    call.add_argument("--wav", help="mono 16-bit WAV at the codec rate, instead of a tone")
    call.add_argument("--local-address", help="local IP to send from")
    call.add_argument("--migrate-after", type=float, metavar="S", help="migrate after S seconds")
    call.add_argument("--migrate-to", metavar="A", help="local IP to migrate to")
    call.add_argument("--realtime", action="store_true", help="datagram uplink")
    call.add_argument("--codec", default="L16/16000", help="NAME/RATE (default L16/16000)")
    call.add_argument("--json", action="store_true", help="print the report as one JSON object")
    call.add_argument(
        "--ecn",
        choices=["l4s", "classic", "off"],
        default="l4s",
        help="ECN marking: l4s = ECT(1) (default), classic = ECT(0), off = not-ECT",
    )

    from .tokencli import add_token_parser

    add_token_parser(commands)
    _add_gateway_parser(commands)
    return parser


def _add_gateway_parser(commands: Any) -> None:
    gateway = commands.add_parser(
        "gateway",
        help="bridge phone calls from a carrier's media-stream WebSocket to voice sessions",
    )
    dialect = gateway.add_mutually_exclusive_group(required=True)
    dialect.add_argument(
        "--twilio", action="store_true", help="speak Twilio Media Streams (<Connect><Stream>)"
    )
    gateway.add_argument(
        "--listen",
        type=_listen_address,
        required=True,
        metavar="HOST:PORT",
        help="where the carrier's WebSocket connects (put TLS in front: specs/gateway.md)",
    )
    gateway.add_argument(
        "--backend",
        required=True,
        metavar="URL",
        help="the voice service: quic://HOST:PORT or https://HOST:PORT/PATH (the forwarder)",
    )
    gateway.add_argument(
        "--token",
        metavar="TOKEN",
        help="one credential for every call (env:NAME reads it from the environment)",
    )
    gateway.add_argument(
        "--token-parameter",
        default="token",
        metavar="NAME",
        help="otherwise the stream's custom parameter holding each call's credential "
        "(default: token)",
    )
    gateway.add_argument(
        "--codec",
        action="append",
        dest="codecs",
        metavar="NAME/RATE",
        help="codec offered to the backend, preferred first (repeatable; default "
        "PCMU/8000 then L16/16000)",
    )
    gateway.add_argument(
        "--ca-file", "--cafile", dest="ca_file", metavar="FILE", help="trust this PEM CA"
    )
    gateway.add_argument(
        "--certificate-hash",
        action="append",
        default=[],
        dest="certificate_hashes",
        metavar="SHA256",
        help="accept the backend certificate with this SHA-256 (repeatable)",
    )
    gateway.add_argument("--server-name", help="the name to check the certificate against")
    gateway.add_argument(
        "--insecure", action="store_true", help="do not check the backend certificate"
    )
    gateway.add_argument("--max-calls", type=int, default=1000, help="calls at once (default 1000)")
    gateway.add_argument("-v", "--verbose", action="store_true", help="log debug messages")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "selfcheck":
            from .selfcheck import run_selfcheck

            return 0 if run_selfcheck(sys.stdout) else 1
        if args.command == "serve":
            return _serve(args, sys.argv[1:] if argv is None else argv)
        if args.command == "call":
            return _call(args, parser)
        if args.command == "token":
            from .tokencli import run_token

            return run_token(args)
        if args.command == "gateway":
            return _gateway(args)
    except ConfigurationError as error:
        print(f"quicvoice {args.command}: {error}", file=sys.stderr)
        return 2
    return 2


def _serve(args: argparse.Namespace, argv: list[str]) -> int:
    from dataclasses import replace
    from pathlib import Path

    from .agent import make_demo
    from .app import DEFAULT_APP, load_app, session_handler
    from .asyncio.config import BackendConfig, check_import_string
    from .asyncio.loops import check_loop, run
    from .asyncio.server import VoiceServer
    from .asyncio.workers import check_worker_count, say_json
    from .quiclb import LoadBalancerConfig
    from .settings import format_address

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
    if args.ecn is not None:
        from .ecn import EcnMode

        config = replace(config, ecn=EcnMode.parse(args.ecn))
    check_loop(args.loop, "--loop")
    if check_worker_count(args.workers) > 1:
        return _serve_workers(args, argv, config)
    record_dir = None
    if args.record_uplink is not None:
        record_dir = Path(args.record_uplink)
        try:
            record_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigurationError(f"--record-uplink: {error}") from None
    if args.app is not None:
        app_spec, what = check_import_string(args.app, "--app"), "--app"
    else:
        app_spec, what = config.app or DEFAULT_APP, "app"
    if app_spec == DEFAULT_APP:
        app = make_demo(record_dir=record_dir)
    elif record_dir is not None:
        raise ConfigurationError("--record-uplink: only the demo agent records its uplink")
    else:
        app = load_app(app_spec, what=what)
    if args.engine is not None:
        config = replace(config, engine=args.engine)
    if config.engine == "ngtcp2":
        from .engine_ngtcp2.backend import serve as serve_ngtcp2

        return serve_ngtcp2(
            config,
            session_handler(app),
            accept=app.accept,
            app_spec=app_spec,
            webtransport=args.web is not None,
            loop=args.loop,
        )

    async def serve() -> None:
        server = VoiceServer(config, session_handler(app), accept=app.accept)
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        host, port = server.address
        fingerprint = server.certificate_sha256.hex() if server.certificate_sha256 else "-"
        say_json(
            {
                "listening": f"{host}:{port}",
                "server_id": config.server_id.hex(),
                "certificate_sha256": fingerprint,
                "app": app_spec,
            }
        )
        if not config.configs:
            logging.warning("no [[configs]]: connection IDs are unroutable (0b111)")
        metrics = server.telemetry.metrics_address
        if metrics is not None:
            say_json({"metrics": f"http://{format_address(metrics)}/metrics"})
        web = None
        if args.web is not None:
            from .asyncio.web import start_web

            web = await start_web(server, args.web, public_address=args.public_address)
            say_json({"web": f"http://{web.address[0]}:{web.address[1]}/"})
        await stop.wait()
        if web is not None:
            web.close()
        await server.aclose()

    run(serve(), args.loop)
    return 0


def _serve_workers(args: argparse.Namespace, argv: list[str], config: BackendConfig) -> int:
    """Check the workers' shared settings, then start and supervise them."""
    from .asyncio.config import BackendConfig
    from .asyncio.workers import (
        WorkerPlan,
        check_shared_keys,
        file_keys,
        run_workers,
        worker_address,
        worker_server_id,
    )

    if args.web is not None:
        raise ConfigurationError("--web: the demo page is served by one backend: use --workers 1")
    if not args.config:
        raise ConfigurationError(
            "--workers: give a --config whose [[configs]] and reset_key the workers share "
            "(a standalone backend draws its keys at random, per process)"
        )
    keys = file_keys(args.config)
    check_shared_keys(keys)
    shared = "backends" in keys and args.listen is None
    plans = []
    for index in range(args.workers):
        server_id = worker_server_id(config.server_id, index)
        if shared:  # each worker's address is its own [[backends]] entry's
            listen = BackendConfig.load(args.config, server_id=server_id).listen
        else:
            listen = worker_address(config.listen, index)
        metrics = None
        if config.metrics is not None:
            metrics = worker_address(config.metrics, index, "metrics")
        plans.append(WorkerPlan(index=index, server_id=server_id, listen=listen, metrics=metrics))
    return run_workers(argv, plans)


def _gateway(args: argparse.Namespace) -> int:
    try:
        import websockets  # noqa: F401 - only to say which extra is missing
    except ImportError:
        print(
            "quicvoice gateway: needs the websockets package: pip install 'quicvoice[gateway]'",
            file=sys.stderr,
        )
        return 2
    from .asyncio.workers import say_json
    from .gateway.config import DEFAULT_GATEWAY_CODECS, GatewayConfig
    from .gateway.server import Gateway
    from .settings import format_address

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    token = args.token
    if token is not None and token.startswith("env:"):
        token = os.environ.get(token[4:])
        if not token:
            raise ConfigurationError(f"--token: the environment has no {args.token[4:]}")
    config = GatewayConfig(
        backend=args.backend,
        listen=args.listen,
        dialect="twilio",
        token=token,
        token_parameter=args.token_parameter or None,
        codecs=tuple(args.codecs) if args.codecs else DEFAULT_GATEWAY_CODECS,
        ca_file=args.ca_file,
        certificate_hashes=tuple(args.certificate_hashes),
        verify=not args.insecure,
        server_name=args.server_name,
        max_calls=args.max_calls,
    )
    if args.insecure:
        print("quicvoice gateway: backend certificate not verified", file=sys.stderr)

    async def run() -> None:
        gateway = Gateway(config)
        await gateway.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        say_json(
            {
                "listening": format_address(gateway.address),
                "dialect": config.dialect,
                "backend": config.backend,
            }
        )
        await stop.wait()
        await gateway.aclose()

    try:
        asyncio.run(run())
    except OSError as error:
        print(f"quicvoice gateway: cannot listen on {args.listen}: {error}", file=sys.stderr)
        return 1
    return 0


def _call(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .asyncio.call import CallOptions, run_call
    from .errors import QuicVoiceError
    from .session.messages import Hello

    if (args.migrate_after is None) != (args.migrate_to is None):
        parser.error("--migrate-after and --migrate-to go together")
    pinned = bool(args.certificate_hashes) or args.ca_file is not None
    if args.insecure and pinned:
        parser.error("--insecure contradicts --ca-file / --certificate-hash")
    if args.ca_file is not None and args.certificate_hashes:
        parser.error("give --ca-file or --certificate-hash, not both")
    metadata = {}
    for item in args.metadata:
        key, equals, value = item.partition("=")
        if not equals or not key:
            parser.error(f"--metadata: {item!r} is not KEY=VALUE")
        metadata[key] = value
    try:
        Hello(token=args.token, metadata=metadata)
    except ValueError as error:
        parser.error(f"--token / --metadata: {error}")
    port: int | None = None
    verify = not args.insecure
    if "://" in args.target:
        target = args.target
        if args.webtransport and not target.lower().startswith("https://"):
            parser.error("--webtransport goes with IP:PORT; a URL says it by its scheme")
        webtransport: bool | None = None
    else:
        try:
            target, port = _address(args.target)
        except argparse.ArgumentTypeError as error:
            parser.error(f"{error} (a name goes in a URL: quic://NAME:PORT)")
        webtransport = args.webtransport
        # The older form kept its old default: no check unless asked for one.
        verify = pinned
    options = CallOptions(
        target=target,
        port=port,
        webtransport=webtransport,
        seconds=args.seconds,
        wav=args.wav,
        local_address=args.local_address,
        migrate_after=args.migrate_after,
        migrate_to=args.migrate_to,
        realtime=args.realtime,
        codec=args.codec,
        token=args.token,
        metadata=metadata,
        ca_file=args.ca_file,
        certificate_hashes=tuple(args.certificate_hashes),
        server_name=args.server_name,
        verify=verify,
        timeout=args.timeout,
        ecn=args.ecn,
    )
    if not verify:
        print("quicvoice call: server certificate not verified", file=sys.stderr)
    try:
        report = asyncio.run(run_call(options))
    except ConnectionError as error:
        print(f"quicvoice call: {error}", file=sys.stderr)
        return 1
    except (QuicVoiceError, ValueError) as error:
        # A bad URL, CA file or certificate hash: named in the message.
        print(f"quicvoice call: {error}", file=sys.stderr)
        return 2
    ended = report.pop("error", None)
    if ended is not None:
        # The call was closed under it: say so in one line, and still give the report.
        print(f"quicvoice call: {ended}", file=sys.stderr)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 1 if ended is not None else 0


if __name__ == "__main__":
    sys.exit(main())
