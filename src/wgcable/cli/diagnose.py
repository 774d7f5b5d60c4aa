"""`wgcable diagnose`: check a gateway (with the agent's settings), or every gateway of a lab
(`--lab`), and print one line per check: PASS, WARN or FAIL, each failure with its fix."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from wgcable.agent.config import ConfigError, add_arguments, from_namespace
from wgcable.diagnose.result import CHECKS

LAB_TIMEOUT = 120.0  # seconds for one gateway's diagnose in a lab


def register(sub: Any) -> None:
    p = sub.add_parser(
        "diagnose", help="check this gateway (or every gateway of a lab): one line per check",
        description="Check a gateway as its agent is configured (same flags, environment "
        "and YAML file): WireGuard, the device, key file, peers, handshakes, routes, rule, "
        "our nftables table, MSS clamp, CNI masquerade, rp_filter, UDP reachability and "
        "path MTU of each remote, the store (and the broker's clock and RBAC), subnet "
        "overlaps. Run it where the agent runs. Exit code 1 when any check fails.")
    add_arguments(p)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--check", action="append", metavar="NAME", choices=CHECKS,
                   help="run only this check (repeatable): " + ", ".join(CHECKS))
    p.add_argument("--lab", nargs="?", const="default", metavar="NAME",
                   help="check every gateway of the lab NAME (default: %(const)s) instead")
    p.add_argument("--lab-root", metavar="DIR", help="where the lab's state is (tests)")
    p.set_defaults(handler=run_diagnose_cmd)


def run_diagnose_cmd(args: argparse.Namespace) -> int:
    if args.lab is not None:
        return _run_lab(args)
    try:
        cfg = from_namespace(args, os.environ)
    except ConfigError as e:
        for problem in e.problems:
            print(f"wgcable diagnose: {problem}", file=sys.stderr)
        return 2
    from wgcable.diagnose.gateway import diagnose  # its imports only when it runs
    from wgcable.diagnose.result import exit_code

    results = diagnose(cfg, frozenset(args.check) if args.check else None)
    if args.json:
        print(json.dumps({"gateway": cfg.hostname, "cluster": cfg.cluster_id,
                          "checks": [r.to_json() for r in results]}, indent=1))
    else:
        print("\n".join(r.line() for r in results))
    return exit_code(results)


def _run_lab(args: argparse.Namespace) -> int:
    from wgcable.lab.lab import LAB_ROOT, Lab
    from wgcable.lab.netns import LabError

    try:
        lab = Lab.load(args.lab, root=args.lab_root or LAB_ROOT)
        gateways = [*lab.state.gateways, *lab.state.standbys]
        only = [f"--check={c}" for c in args.check or ()]
        argvs = [[a if a != "agent" else "diagnose" for a in lab.agent_argv(gw)] + only
                 for gw in gateways]
        procs = [subprocess.Popen(lab.gateway_cmd(gw, *argv, "--json"), text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for gw, argv in zip(gateways, argvs, strict=True)]
    except (LabError, OSError) as e:
        print(f"wgcable diagnose: lab {args.lab!r}: {e}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {}
    failed = False
    for gw, proc in zip(gateways, procs, strict=True):
        try:
            out, err = proc.communicate(timeout=LAB_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        try:
            doc = json.loads(out)
            report[gw.label] = doc["checks"]
        except (ValueError, KeyError, TypeError):
            report[gw.label] = [{"check": "diagnose", "status": "fail",
                                 "detail": f"exit {proc.returncode}: {err.strip()[-500:]}",
                                 "fix": "run `wgcable diagnose` on the gateway by hand"}]
        failed = failed or any(c.get("status") == "fail" for c in report[gw.label])
    if args.json:
        print(json.dumps({"lab": args.lab, "gateways": report}, indent=1))
    else:
        from wgcable.diagnose.result import Level, Result

        for label, results in report.items():
            print(f"== {label}")
            for c in results:
                r = Result(str(c["check"]), Level(str(c["status"]).upper()), str(c["detail"]),
                           str(c.get("fix", "")))
                print(r.line())
    return 1 if failed else 0
