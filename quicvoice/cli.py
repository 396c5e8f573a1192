"""The ``quicvoice`` command."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``quicvoice`` command."""
    parser = argparse.ArgumentParser(
        prog="quicvoice", description="Voice sessions over QUIC with connection migration."
    )
    parser.add_argument("--version", action="version", version=f"quicvoice {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("selfcheck", help="issue and decode QUIC-LB connection IDs in every mode")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "selfcheck":
        from .selfcheck import run_selfcheck

        return 0 if run_selfcheck(sys.stdout) else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
