"""Entry point of the ``quicvoice-lb`` command.

``quicvoice-lb --config lb.toml [--workers N] [--python-path [--batch]]``

Exit status: 0 after SIGTERM/SIGINT, 2 for a bad argument or configuration (one line on
stderr naming the key, no traceback), 1 when the sockets cannot be bound.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from quicvoice.errors import ConfigurationError

from .config import load_config
from .forwarder import Supervisor
from .log import JsonLogger

PROGRAM = "quicvoice-lb"
MAX_WORKERS = 256
EXIT_BAD_CONFIG = 2
EXIT_BIND_FAILED = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigurationError(f"{message} (see {PROGRAM} --help)")


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers: {text!r} is not an integer") from None
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"--workers: must be between 1 and {MAX_WORKERS}")
    return value


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line; errors raise ``ConfigurationError``."""
    parser = _Parser(
        prog=PROGRAM,
        description="Stateless QUIC-LB forwarder: routes QUIC datagrams by their connection ID.",
    )
    parser.add_argument("--config", required=True, type=Path, help="the TOML configuration file")
    parser.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="worker process pairs sharing the ports with SO_REUSEPORT (default 1)",
    )
    parser.add_argument(
        "--python-path",
        action="store_true",
        help="route on the Python path even where the native one (lb._native: batched, the "
        "common datagram decided in C) is available (specs/forwarder.md)",
    )
    parser.add_argument(
        "--batch",
        action="store_true",
        help="on the Python path: recvmmsg/sendmmsg batches instead of one recvfrom/sendto per "
        "datagram, fewer CPU-seconds under heavy load, more latency when lightly loaded "
        "(Linux only). The native path always batches, adaptively",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the forwarder until SIGTERM or SIGINT; return the exit status."""
    try:
        arguments = parse_arguments(argv)
        config = load_config(arguments.config)
    except ConfigurationError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    logger = JsonLogger(config.log_level, program=PROGRAM)
    try:
        supervisor = Supervisor(
            arguments.config,
            config,
            arguments.workers,
            logger,
            batch=arguments.batch,
            native=not arguments.python_path,
        )
        return supervisor.run()
    except ConfigurationError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return EXIT_BIND_FAILED
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
