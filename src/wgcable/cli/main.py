"""Entry point of the `wgcable` command: one subcommand per module, registered here."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from wgcable import __version__
from wgcable.wgctrl.errors import WgError

Handler = Callable[[argparse.Namespace], int]


# Which module registers which subcommands, in help order. Only the module of the command
# being run is imported: the agent's start-up does not pay for the lab's imports (it matters
# most under emulation, where every import is a round trip to the host's files).
MODULES: dict[str, tuple[str, ...]] = {
    "keys": ("genkey", "genpsk", "pubkey"),
    "show": ("show",),
    "diagnose": ("diagnose",),
    "agent": ("agent", "cleanup", "handover", "rotate-key"),
    "routeagent": ("route-agent",),
    "lab": ("lab",),
    "demo": ("demo",),
    "broker": ("broker",),
    "join": ("join",),
    "graph": ("graph",),
}


class _Parser(argparse.ArgumentParser):
    """Reports unrecognised arguments with the usage of the (sub)command they were given to.

    argparse hands a subcommand's leftover arguments up to the top-level parser, which then
    prints its own usage: `wgcable agent --bogus-flag` would show `wgcable [-h] ... COMMAND`
    instead of the agent's flags. A subcommand consumes everything after its name, so its
    leftovers can never be its parent's: it may refuse them itself."""

    def parse_known_args(  # type: ignore[override]  # typeshed overloads it on namespace
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _modules_for(argv: Sequence[str]) -> list[str]:
    first = next((a for a in argv if not a.startswith("-")), None)
    wanted = [m for m, commands in MODULES.items() if first in commands]
    return wanted or list(MODULES)  # no command, or an unknown one: all, for help and errors


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="wgcable",
        description="WireGuard cable driver for multi-cluster Kubernetes networking.",
    )
    parser.add_argument("--version", action="version", version=f"wgcable {__version__}")
    # Subcommand parsers (and theirs, as lab's) are of the parser's class: _Parser.
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = list(MODULES) if argv is None else _modules_for(argv)
    for name in names:
        importlib.import_module(f"wgcable.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
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


if __name__ == "__main__":  # `python -m wgcable.cli.main` as well as `python -m wgcable`
    raise SystemExit(main())
