"""The ``dualchannel`` command line: ``serve``, ``demo``, ``bench``, ``tail``.

Each sub-command lives in its own module and registers itself through an
``add_parser(subparsers)`` function that sets ``func`` (which returns an exit status).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dualchannel",
        description="LiveKit data over two channels, merged exactly once, in order.",
    )
    parser.add_argument("--version", action="version", version=f"dualchannel {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Sub-commands register here, one import each.
    from .cli import bench as bench_cli

    bench_cli.add_parser(subparsers)
    __import__("dualchannel.cli.serve", fromlist=["add_parser"]).add_parser(subparsers)
    __import__("dualchannel.cli.demo", fromlist=["add_parser"]).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    status: int = func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
