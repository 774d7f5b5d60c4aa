"""`wgcable graph`: the cluster set as a picture (GraphViz DOT, SVG or PNG), as Kilo's
`kgctl graph`: clusters, their gateways (active or passive), and each side's view of every
cable (status, RTT, transfer, NAT)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from wgcable.cli.lab import add_root_option, resolve
from wgcable.graph.dot import render_dot
from wgcable.graph.graphviz import FORMATS, GraphError, dot_command, format_for, render
from wgcable.graph.model import Picture
from wgcable.graph.sources import from_lab, from_store
from wgcable.lab.netns import LabError
from wgcable.safetext import safe
from wgcable.store.open import DEFAULT_NAMESPACE, DEFAULT_STORE_TIMEOUT, StoreSpec


def add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="-", metavar="FILE",
                   help="where to write it; its suffix (.dot/.gv, .svg, .png) gives the "
                   "format (default: DOT on standard output)")
    p.add_argument("--format", choices=FORMATS,
                   help="dot, or svg or png (these need Graphviz's dot, Debian package "
                   "graphviz)")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "graph", help="draw the cluster set: clusters, gateways, cables (DOT, SVG, PNG)",
        description="Draw the clusters, their gateways (active or passive) and every cable "
        "as each side reports it: status, RTT, the address used and NAT; transfer (bytes) "
        "when the source has it (a lab's agents, not the Gateway objects of a store).")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--lab", nargs="?", const="", metavar="NAME",
                        help="a lab on this machine (default: 'default', or the only one up)")
    source.add_argument("--store",
                        help="the store's Gateway objects and Endpoints: a directory, or "
                        "kubernetes (a broker API server)")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG") or None,
                   help="kubeconfig of the broker (kubernetes store; default: $KUBECONFIG, "
                   "else the in-cluster service account)")
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE,
                   help="broker namespace (kubernetes store; default: %(default)s)")
    p.add_argument("--state-dir", action="append", default=[], metavar="DIR",
                   help="with --store: an agent's state directory on this host, whose "
                   "status file adds its gateway's bytes (a Gateway object has none); "
                   "repeatable")
    p.add_argument("--store-timeout", type=float, default=DEFAULT_STORE_TIMEOUT,
                   metavar="SECONDS", help="seconds a store request may take "
                   "(default: %(default)s)")
    add_output_options(p)
    add_root_option(p)
    p.set_defaults(handler=run)


def check_output(output: str, fmt: str | None) -> str:
    """The format to write, checked before any work: GraphError when it cannot be made here
    (no `dot` for SVG or PNG) or would go to a terminal as binary."""
    chosen = format_for(output, fmt)
    if chosen != "dot":
        dot_command()
    if chosen == "png" and output == "-" and sys.stdout.isatty():
        raise GraphError("PNG is not written to a terminal: give -o FILE.png")
    return chosen


def write_picture(picture: Picture, output: str, fmt: str) -> None:
    """Render and write; a file is replaced whole (never left half-written)."""
    data = render(render_dot(picture), fmt)
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    target = Path(output)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            # It shows what the Gateway statuses publish anyway; no secret is drawn.
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise GraphError(f"cannot write {safe(output, 200)}: {exc.strerror or exc}") from None


def run(args: argparse.Namespace) -> int:
    try:
        fmt = check_output(args.output, args.format)
        if args.store is not None:
            if args.store_timeout <= 0:
                raise GraphError(f"--store-timeout {args.store_timeout}: must be positive")
            picture = from_store(StoreSpec(args.store, kubeconfig=args.kubeconfig,
                                           namespace=args.namespace,
                                           timeout=args.store_timeout), args.state_dir)
        else:
            if args.state_dir:
                raise GraphError("--state-dir goes with --store: a lab's status files are "
                                 "read anyway")
            picture = from_lab(resolve(args.lab or None, args.root))
        write_picture(picture, args.output, fmt)
    except (GraphError, LabError) as exc:
        print(f"wgcable graph: {exc}", file=sys.stderr)
        return 1
    if args.output != "-":
        print(f"wrote {args.output} ({fmt}): {len(picture.clusters)} clusters, "
              f"{len(picture.cables)} cable reports", file=sys.stderr)
    return 0
