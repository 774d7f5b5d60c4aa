"""`wgcable route-agent`: run on every node; route the remote clusters' CIDRs to the active
gateway over VXLAN (`--cleanup`: remove what it made)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from wgcable.routeagent.config import ConfigError, add_arguments, load
from wgcable.store.base import StoreUnavailableError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "route-agent", help="run the route agent on a node: remote CIDRs to the gateway",
        description="Run the route agent on every node (gateways too). Settings come from "
        "flags, then the environment.")
    add_arguments(p)
    p.set_defaults(handler=run_route_agent_cmd)


def run_route_agent_cmd(args: argparse.Namespace) -> int:
    try:
        cfg, spec, level = load(args, os.environ)
    except ConfigError as e:
        print(f"wgcable route-agent: {e}", file=sys.stderr)
        return 2
    from wgcable.agent.run import setup_logging
    from wgcable.routeagent.agent import RouteAgent
    from wgcable.store.open import open_store

    setup_logging(level)
    try:
        store = open_store(spec)
    except (StoreUnavailableError, OSError, ValueError) as e:
        print(f"wgcable route-agent: {e}", file=sys.stderr)
        return 1
    agent = RouteAgent(cfg, store)
    try:
        if args.cleanup:
            agent.cleanup()
            return 0
        stop = threading.Event()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            stop.set()  # the device and routes stay: a restart drops no traffic

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        agent.run(stop)
        return 0
    finally:
        store.close()
