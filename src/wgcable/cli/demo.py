"""`wgcable demo`: a lab of N clusters, its cables, a pod-to-pod matrix, then teardown.

The lab is called "demo". Whatever happens (an error, Ctrl-C, SIGTERM), the lab is removed
unless `--keep` was given and the run got to the end; during removal SIGINT and SIGTERM are
ignored, so that an impatient second Ctrl-C cannot leave half a lab behind.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType
from typing import Any

from wgcable.cli.graph import check_output, write_picture
from wgcable.cli.lab import (
    add_mtu_option,
    add_nodes_option,
    add_root_option,
    check_can_build,
    check_options,
    connections_table,
    ping_matrix,
    remove,
    wait_for_cables,
)
from wgcable.graph.graphviz import GraphError
from wgcable.graph.sources import from_lab
from wgcable.lab.lab import STORES, Lab
from wgcable.lab.netns import LabError
from wgcable.store.open import KUBERNETES

NAME = "demo"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="connect simulated clusters on this machine and show that pods reach "
        "each other",
        description="Bring up a lab of simulated clusters (named 'demo'), wait for every "
        "cable, print the connections and an all-pairs pod-to-pod reachability matrix, then "
        "remove the lab. Exit code 0 only when every pair is reachable.")
    p.add_argument("--clusters", type=int, default=3, metavar="N",
                   help="how many clusters, 2-50 (default: %(default)s)")
    add_nodes_option(p)
    p.add_argument("--ipv6", action="store_true", help="also check pod-to-pod over IPv6")
    p.add_argument("--nat", action="store_true",
                   help="put every second gateway behind a NAT router")
    p.add_argument("--store", choices=STORES, default="directory",
                   help="endpoint store: a shared directory, or kubernetes: a real "
                   "kube-apiserver with etcd in a broker namespace, as Submariner's broker "
                   "(default: %(default)s)")
    add_mtu_option(p)
    p.add_argument("--keep", action="store_true", help="leave the lab running afterwards")
    p.add_argument("--timeout", type=float, default=60, metavar="SECONDS",
                   help="wait this long for all cables; 0: do not wait, show and ping "
                   "at once, as `lab up --wait 0` (cables take a few seconds: expect "
                   "FAILED) (default: %(default)s)")
    p.add_argument("--graph", metavar="FILE",
                   help="also draw the lab (clusters, gateways, cables) into FILE, as "
                   "`wgcable graph`: .png, .svg (these need Graphviz's dot) or .dot")
    add_root_option(p)
    # Namespace names are machine-wide: tests run their demo under a name of their own.
    p.add_argument("--name", default=NAME, help=argparse.SUPPRESS)
    p.set_defaults(handler=run)


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that removes the lab


def run(args: argparse.Namespace) -> int:
    start = time.monotonic()
    try:
        check_options(args.clusters, "--timeout", args.timeout, args.nodes, args.mtu)
        if args.graph is not None:  # before anything is built: no `dot`, no lab
            if args.graph == "-":
                raise GraphError("--graph needs a file: standard output shows the demo")
            args.graph_format = check_output(args.graph, None)
        check_can_build(args.name, args.root)
    except (LabError, GraphError) as e:
        print(f"wgcable demo: {e}", file=sys.stderr)
        return 1
    old_term = signal.signal(signal.SIGTERM, _sigterm)
    finished = interrupted = False
    code = 1
    try:
        code = _demo(args)
        finished = True
    except LabError as e:
        print(f"wgcable demo: {e}", file=sys.stderr)
    except (KeyboardInterrupt, SystemExit):
        interrupted = True
        raise
    finally:
        if finished and args.keep:
            signal.signal(signal.SIGTERM, old_term)
            n = args.name
            print(f"\nthe lab stays up. Explore it with:\n"
                  f"  wgcable lab status --name {n}\n"
                  f"  wgcable lab ping --name {n}\n"
                  f"  wgcable lab exec --name {n} 1 -- wgcable show\n"
                  f"  wgcable lab exec --name {n} 1 -- wgcable show --connections\n"
                  f"  wgcable lab metrics --name {n} 1\n"
                  f"  wgcable lab logs --name {n} 1\n"
                  f"and remove it with:\n  wgcable lab down --name {n}")
        else:
            _teardown(args.name, args.root, old_term, restore=not interrupted)
        print(f"\ndemo took {time.monotonic() - start:.1f} s", flush=True)
    return code


def _teardown(name: str, root: str, old_term: Any, restore: bool = True) -> None:
    """Remove the lab with SIGINT and SIGTERM ignored. Without ``restore`` (the demo was
    interrupted and is on its way out) they stay ignored: removal takes a fraction of a
    second, so an impatient second Ctrl-C often comes after it, and must not turn the
    exit code 130 into a death by SIGINT."""
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        print("removing the lab...", file=sys.stderr, flush=True)
        t = time.monotonic()
        # By name, not through a Lab object: Lab.up may have been interrupted half-way.
        problems = remove(name, root)[1]
        for p in problems:
            print(f"wgcable demo: could not remove: {p}", file=sys.stderr)
        print(f"lab removed in {time.monotonic() - t:.1f} s", file=sys.stderr, flush=True)
    finally:
        if restore:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)


def _wait_for_rtts(lab: Lab, timeout: float = 5.0) -> None:
    """Give the health checkers, which start at a tunnel's first handshake, a moment to
    measure, so that the table shows RTTs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = [lab.status(g.index) for g in lab.state.gateways]
        if all(st is not None and all(c.latency_rtt for c in st.gateway.connections)
               for st in statuses):
            return
        time.sleep(0.2)


def _demo(args: argparse.Namespace) -> int:
    t = time.monotonic()
    kind = "".join(f", {k}" for k, on in (("IPv6", args.ipv6), ("NAT", args.nat),
                                          ("a Kubernetes broker", args.store == KUBERNETES),
                                          (f"MTU {args.mtu}", args.mtu != 1500))
                   if on)
    print(f"bringing up {args.clusters} clusters of {args.nodes} "
          f"node{'s' if args.nodes > 1 else ''}{kind}...", file=sys.stderr, flush=True)
    lab = Lab.up(args.name, args.clusters, ipv6=args.ipv6, nat=args.nat, root=args.root,
                 store=args.store, nodes=args.nodes, mtu=args.mtu)
    print(f"namespaces and agents up in {time.monotonic() - t:.1f} s", file=sys.stderr,
          flush=True)
    # --timeout 0, as `lab up --wait 0`: do not wait; the table and matrix show what is up.
    connected = wait_for_cables(lab, args.timeout) if args.timeout > 0 else lab.all_connected()
    if connected:
        _wait_for_rtts(lab)
    # Shown even when some cables are missing: the table says which, and why.
    print(f"\nconnections ({len(lab.state.gateways)} gateways):")
    print(connections_table(lab))
    ok = connected
    for v6 in (False, True) if args.ipv6 else (False,):
        text, reachable = ping_matrix(lab, v6=v6)
        print(f"\n{text}", flush=True)
        ok = ok and reachable
    if args.graph is not None:
        try:
            write_picture(from_lab(lab), args.graph, args.graph_format)
            print(f"\nthe lab's graph: {args.graph}")
        except GraphError as e:
            print(f"wgcable demo: --graph: {e}", file=sys.stderr)
            ok = False
    every = "every other pod" if args.nodes > 1 else "every other cluster's pods"
    print(f"\nresult: {'every pod reaches ' + every if ok else 'FAILED'}")
    return 0 if ok else 1
