"""Entry point of the ``quicvoice-lb`` command."""

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the forwarder (not implemented yet)."""
    print("quicvoice-lb: the forwarder is not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
