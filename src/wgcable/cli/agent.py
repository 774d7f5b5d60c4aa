"""`wgcable agent` (the gateway agent), `wgcable cleanup` (remove everything it made),
`wgcable handover` (make the active gateway hand its lease to a standby) and `wgcable
rotate-key` (make the agent switch to a new key pair)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from wgcable.agent.config import AgentConfig, ConfigError, add_arguments, from_namespace
from wgcable.cable.wireguard.config import DEFAULT_STATE_DIR
from wgcable.store.base import StoreUnavailableError

if TYPE_CHECKING:
    from wgcable.agent.statusfile import AgentStatus

# What can go wrong before the agent runs, each with a message that says what failed.
STARTUP_ERRORS = (RuntimeError, OSError, ValueError, StoreUnavailableError)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "agent", help="run the gateway agent: publish our endpoint, build cables to the others",
        description="Run the gateway agent. Settings come from flags, then the environment, "
        "then the YAML file (--config).")
    add_arguments(p)
    p.set_defaults(handler=run_agent_cmd)
    p = sub.add_parser(
        "cleanup", help="remove the device, peers, routes, rules and our endpoint",
        description="Remove everything the agent created. Takes the agent's settings.")
    add_arguments(p)
    p.add_argument("--remove-key", action="store_true",
                   help="also delete the key pair (the next start publishes a new key)")
    p.set_defaults(handler=run_cleanup_cmd)
    p = sub.add_parser(
        "handover", help="make this node's active gateway hand its lease to a standby",
        description="Ask the gateway agent running with this state directory to release its "
        "lease now (SIGUSR1), e.g. before draining the node. It keeps its tunnels until a "
        "standby holds the lease, then becomes passive.")
    p.add_argument("--state-dir", default=os.environ.get("WGCABLE_STATE_DIR", DEFAULT_STATE_DIR),
                   help="the agent's state directory (default: %(default)s)")
    p.set_defaults(handler=run_handover_cmd)
    p = sub.add_parser(
        "rotate-key", help="make this node's gateway agent switch to a new key pair",
        description="Ask the gateway agent running with this state directory to rotate its "
        "key pair (SIGUSR2): its device switches to a new key, then it publishes the new "
        "public key, and remote gateways replace its peer in place: no packet is lost. "
        "Refused by the agent while its store is in trouble (remotes could not learn the "
        "key). Waits until the agent reports its new key.")
    p.add_argument("--state-dir", default=os.environ.get("WGCABLE_STATE_DIR", DEFAULT_STATE_DIR),
                   help="the agent's state directory (default: %(default)s)")
    p.add_argument("--wait", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the agent to report its new key; 0: do not wait "
                   "(default: %(default)g)")
    p.set_defaults(handler=run_rotate_key_cmd)


def _config(args: argparse.Namespace) -> AgentConfig | None:
    try:
        return from_namespace(args, os.environ)
    except ConfigError as e:
        for problem in e.problems:
            print(f"wgcable {args.command}: {problem}", file=sys.stderr)
        return None


def run_agent_cmd(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if cfg is None:
        return 2
    from wgcable.agent.run import run_agent, setup_logging  # heavy imports only when running

    setup_logging(cfg.log_level)
    try:
        return run_agent(cfg)
    except STARTUP_ERRORS as e:
        # Start-up failed (no WireGuard at all, a taken device name, a bad key file, ...):
        # one clear line, not a traceback. Nothing of the device was half-made.
        print(f"wgcable agent: {e}", file=sys.stderr)
        return 1


def run_cleanup_cmd(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if cfg is None:
        return 2
    from wgcable.agent.run import cleanup, setup_logging

    setup_logging(cfg.log_level)
    try:
        return cleanup(cfg, remove_key=args.remove_key)
    except STARTUP_ERRORS as e:
        print(f"wgcable cleanup: {e}", file=sys.stderr)
        return 1


def _running_agent(command: str, state_dir: str) -> AgentStatus | None:
    """The status of the agent running with ``state_dir``; None (said why) if there is none."""
    from wgcable.agent.statusfile import read_status_file
    from wgcable.cable.wireguard.userspace import process_running

    try:
        st = read_status_file(state_dir)
    except (OSError, ValueError) as e:
        print(f"wgcable {command}: no agent status in {state_dir}: {e}", file=sys.stderr)
        return None
    if not (st.pid > 0 and process_running(st.pid)):
        print(f"wgcable {command}: the agent of {state_dir} (pid {st.pid}) is not running",
              file=sys.stderr)
        return None
    return st


def run_handover_cmd(args: argparse.Namespace) -> int:
    import signal

    st = _running_agent("handover", args.state_dir)
    if st is None:
        return 1
    if st.gateway.ha_status != "active":
        print(f"wgcable handover: this gateway is {st.gateway.ha_status}, not active: "
              "nothing to hand over", file=sys.stderr)
        return 1
    os.kill(st.pid, signal.SIGUSR1)
    print(f"asked the active gateway (pid {st.pid}) to hand its lease over")
    return 0


def run_rotate_key_cmd(args: argparse.Namespace) -> int:
    import signal
    import time

    from wgcable.agent.statusfile import read_status_file
    from wgcable.cable.wireguard.desired import PUBLIC_KEY

    st = _running_agent("rotate-key", args.state_dir)
    if st is None:
        return 1
    old = st.gateway.local_endpoint.backend_config.get(PUBLIC_KEY, "")
    os.kill(st.pid, signal.SIGUSR2)
    if args.wait <= 0:
        print(f"asked the gateway agent (pid {st.pid}) to rotate its key pair")
        return 0
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        time.sleep(0.1)
        try:
            new = read_status_file(args.state_dir).gateway.local_endpoint.backend_config.get(
                PUBLIC_KEY, "")
        except (OSError, ValueError):
            continue  # (a status file is replaced whole: a read may fall between)
        if new and new != old:
            where = "the agent publishes it" if st.gateway.ha_status == "active" else \
                "a passive gateway publishes it when it becomes active"
            print(f"rotated: public key {new} (was {old}); {where}")
            return 0
    print(f"wgcable rotate-key: the agent (pid {st.pid}) has not reported a new key within "
          f"{args.wait:g} s; its log says why (it refuses while its store is in trouble)",
          file=sys.stderr)
    return 1
