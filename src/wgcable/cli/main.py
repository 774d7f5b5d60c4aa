"""Entry point of the `wgcable` command: one subcommand per module, registered here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from wgcable import __version__
from wgcable.cli import agent, demo, keys, lab, show
from wgcable.wgctrl.errors import WgError

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wgcable",
        description="WireGuard cable driver for multi-cluster Kubernetes networking.",
    )
    parser.add_argument("--version", action="version", version=f"wgcable {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (keys, show, agent, lab, demo):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return handler(args)
    except WgError as e:
        print(f"wgcable {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
