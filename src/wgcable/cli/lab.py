"""`wgcable lab up|status|ping|down|exec|metrics|logs`: simulated clusters on this machine.

Everything a command shows comes from the lab's ``lab.json`` and the agents' status files,
so `lab status`, `lab ping` and `lab down` work from any shell, even after the `lab up` that
started the lab crashed. The shared pieces (waiting with progress, the tables, the ping
matrix, removal) are used by `wgcable demo` too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

from wgcable.cable.godur import format_duration
from wgcable.cable.types import ConnectionStatus
from wgcable.cli.connections import as_json, render, table
from wgcable.cli.format import bytes_human
from wgcable.lab.lab import (
    LAB_ROOT,
    MAX_GATEWAYS,
    METRICS_PORT,
    MTU_RANGE,
    NS_PREFIX,
    STORES,
    GatewayState,
    Lab,
    LabState,
    Pod,
    _check_name,
    end_processes_in,
    is_lab_namespace,
)
from wgcable.lab.netns import LabError, Namespace, delete_namespaces, list_namespaces
from wgcable.lab.topology import MAX_NODES
from wgcable.store.open import KUBERNETES

DEFAULT_NAME = "default"
FRESH = 5.0  # a status file older than this does not count (the lab's own rule)
SWEEP_PREFIX = NS_PREFIX  # `down --all` removes every namespace named so (tests narrow it)


def default_root() -> str:
    # Tests point this elsewhere so they never touch the real /run/wgcable-lab.
    return os.environ.get("WGCABLE_LAB_ROOT") or LAB_ROOT


def add_root_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default=default_root(), help=argparse.SUPPRESS)


def register(sub: Any) -> None:
    lab = sub.add_parser(
        "lab", help="simulated clusters in network namespaces on this machine",
        description="Simulated clusters in network namespaces on this machine, each gateway "
        "running the real `wgcable agent`. Nothing is created in the root namespace.")
    lab.set_defaults(handler=lambda _args: _help(lab))
    cmds = lab.add_subparsers(dest="lab_command", metavar="COMMAND")

    p = cmds.add_parser("up", help="build the clusters and start an agent on each gateway")
    p.add_argument("--clusters", type=int, default=3, metavar="N",
                   help="how many clusters, 2-50 (default: %(default)s)")
    add_nodes_option(p)
    p.add_argument("--gateways", type=int, default=1, metavar="G",
                   help=f"gateway candidates per cluster, 1-{MAX_GATEWAYS}, on nodes 0 to "
                   "G-1 (so at least G nodes); a lease elects the active one "
                   "(default: %(default)s)")
    p.add_argument("--ipv6", action="store_true", help="also give pods IPv6 addresses")
    p.add_argument("--nat", action="store_true",
                   help="put every second gateway behind a NAT router")
    p.add_argument("--snat", action="store_true",
                   help="make each gateway masquerade its pods' traffic, as some CNIs do")
    p.add_argument("--store", choices=STORES, default="directory",
                   help="endpoint store: a shared directory, or kubernetes: a real "
                   "kube-apiserver with etcd in a broker namespace, as Submariner's broker "
                   "(default: %(default)s)")
    add_mtu_option(p)
    p.add_argument("--name", default=DEFAULT_NAME, help="the lab's name (default: %(default)s)")
    p.add_argument("--wait", type=float, default=60, metavar="SECONDS",
                   help="wait this long for all cables; 0: do not wait (default: %(default)s)")
    p.set_defaults(handler=cmd_up)

    p = cmds.add_parser("status", help="clusters, namespaces, agents and their connections")
    _name_option(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_status)

    p = cmds.add_parser(
        "ping", help="all-pairs pod-to-pod reachability, with RTTs",
        description="Ping between every two pods of the lab, on every node of every "
        "cluster. Exit code 0 only when every pair is reachable.")
    _name_option(p)
    p.add_argument("--v6", action="store_true", help="ping over IPv6 instead of IPv4")
    p.add_argument("--count", type=int, default=3, metavar="N",
                   help="pings per pair (default: %(default)s)")
    p.set_defaults(handler=cmd_ping)

    p = cmds.add_parser("down", help="remove the lab: processes, namespaces, files")
    _name_option(p)
    p.add_argument("--all", action="store_true",
                   help=f"remove every lab, and any leftover namespace named {NS_PREFIX}*")
    p.set_defaults(handler=cmd_down)

    p = cmds.add_parser(
        "exec", help="run a command on a gateway (e.g. `lab exec 1 -- wgcable show`)",
        description="Run a command in a gateway's network and mount namespaces. `wgcable` "
        "there is this wgcable, and WGCABLE_STATE_DIR points to the gateway's agent, so "
        "`wgcable show --connections` works. With --node J (1 or more), in worker node J's "
        "network namespace instead (options go before the cluster: "
        "`lab exec --node 1 2 -- ip route`).")
    _name_option(p)
    p.add_argument("cluster", help="cluster number or ID (1, cluster1)")
    _node_option(p)
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...")
    p.set_defaults(handler=cmd_exec)

    p = cmds.add_parser(
        "metrics", help="print a gateway agent's Prometheus metrics",
        description=f"Print a gateway agent's Prometheus metrics. Lab agents serve them on "
        f"http://127.0.0.1:{METRICS_PORT}/metrics inside their gateway namespace; this "
        f"fetches them from there (as `lab exec N -- curl -s "
        f"http://127.0.0.1:{METRICS_PORT}/metrics` would).")
    _name_option(p)
    p.add_argument("cluster", help="cluster number or ID (1, cluster1)")
    p.set_defaults(handler=cmd_metrics)

    p = cmds.add_parser(
        "handover", help="make a cluster's active gateway hand its lease to a standby",
        description="Send the cluster's active gateway agent SIGUSR1 (as `wgcable handover` "
        "does): it releases its lease at once and keeps its tunnels until a standby holds "
        "it. Needs `lab up --gateways 2` or more.")
    _name_option(p)
    p.add_argument("cluster", help="cluster number or ID (1, cluster1)")
    p.set_defaults(handler=cmd_handover)

    p = cmds.add_parser(
        "rotate-key", help="make a cluster's active gateway switch to a new key pair",
        description="Send the cluster's active gateway agent SIGUSR2 (as `wgcable rotate-key` "
        "does): its device switches to a new key, then it publishes the new public key, and "
        "the other clusters replace its peer in place.")
    _name_option(p)
    p.add_argument("cluster", help="cluster number or ID (1, cluster1)")
    p.set_defaults(handler=cmd_rotate_key)

    p = cmds.add_parser("logs", help="print a gateway agent's log (--node J: a route agent's)")
    _name_option(p)
    p.add_argument("cluster", help="cluster number or ID (1, cluster1)")
    _node_option(p)
    p.set_defaults(handler=cmd_logs)

    for p in (lab, *cmds.choices.values()):
        add_root_option(p)


def add_nodes_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=DEFAULT_NODES, metavar="M",
                   help=f"nodes per cluster, {MIN_NODES}-{MAX_NODES}: the gateway node and "
                   "M-1 workers, each with a pod; with workers, a route agent runs on every node "
                   "(default: %(default)s)")


def add_mtu_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mtu", type=int, default=1500, metavar="BYTES",
                   help=f"every link's MTU (underlay, pods), {MTU_RANGE[0]}-{MTU_RANGE[1]}: "
                   "e.g. a cloud's 1400; the tunnels' follows, 60 bytes less "
                   "(default: %(default)s)")


def _node_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", type=int, metavar="J",
                   help="node J of the cluster (0: the gateway node)")


def _name_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help=f"the lab (default: {DEFAULT_NAME!r}, or the only one up)")


def _help(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 0


Handler = Callable[[argparse.Namespace], int]


def _guarded(fn: Handler) -> Handler:
    """LabError (and a missing tool) become `wgcable lab: <message>` and exit 1."""
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (LabError, OSError, subprocess.SubprocessError) as e:
            print(f"wgcable lab: {e}", file=sys.stderr)
            return 1
    run.__doc__ = fn.__doc__
    return run


# --- finding labs ------------------------------------------------------------------------

def lab_names(root: str) -> list[str]:
    base = Path(root)
    if not base.is_dir():
        return []
    return sorted(d.name for d in base.iterdir() if (d / "lab.json").is_file())


def resolve(name: str | None, root: str) -> Lab:
    """The lab ``name``; without one, "default", or else the only lab that is up."""
    if name:
        return Lab.load(name, root)
    names = lab_names(root)
    if not names:
        raise LabError(f"no lab is up (nothing in {root}); start one with "
                       "`wgcable lab up --clusters 3`")
    if DEFAULT_NAME in names:
        return Lab.load(DEFAULT_NAME, root)
    if len(names) == 1:
        return Lab.load(names[0], root)
    raise LabError(f"{len(names)} labs are up ({', '.join(names)}): choose one with --name")


def name_hint(name: str) -> str:
    return "" if name == DEFAULT_NAME else f" --name {name}"


def leftovers(name: str) -> list[str]:
    """Namespaces of a lab called ``name`` that exist without its lab.json."""
    return [n for n in list_namespaces() if is_lab_namespace(NS_PREFIX + name, n)]


MIN_CLUSTERS, MAX_CLUSTERS = 2, 50
MIN_NODES, DEFAULT_NODES = 1, 2


def check_options(clusters: int, wait_flag: str, wait: float, nodes: int = 1,
                  mtu: int = 1500) -> None:
    """The numbers given to `lab up` and `demo`, checked before anything is printed or built.
    Both commands read a wait the same way: seconds to wait for every cable, 0 meaning do
    not wait; a negative (or NaN) wait is refused, naming the flag and its value."""
    if not MIN_CLUSTERS <= clusters <= MAX_CLUSTERS:
        raise LabError(f"--clusters {clusters}: must be {MIN_CLUSTERS}-{MAX_CLUSTERS}")
    if not MIN_NODES <= nodes <= MAX_NODES:
        raise LabError(f"--nodes {nodes}: must be {MIN_NODES}-{MAX_NODES}")
    if not MTU_RANGE[0] <= mtu <= MTU_RANGE[1]:
        raise LabError(f"--mtu {mtu}: must be {MTU_RANGE[0]}-{MTU_RANGE[1]}")
    if not wait >= 0:  # also false for NaN
        raise LabError(f"{wait_flag} {wait:g}: must be 0 or more seconds (0: do not wait)")


def check_can_build(name: str, root: str) -> None:
    _check_name(name)  # first: the name goes into paths below
    if os.geteuid() != 0:
        raise LabError("needs root (it creates network namespaces)")
    missing = [t for t in ("ip", "nsenter", "ping", "nft") if shutil.which(t) is None]
    if missing:
        raise LabError(f"missing tools: {', '.join(missing)} (run scripts/install.sh)")
    if (Path(root) / name / "lab.json").exists():
        raise LabError(f"a lab named {name!r} is already up: see `wgcable lab status"
                       f"{name_hint(name)}`, remove it with `wgcable lab down{name_hint(name)}`")
    left = leftovers(name)
    if left:
        raise LabError(f"namespaces of an earlier lab {name!r} are left ({', '.join(left)}); "
                       f"remove them with `wgcable lab down{name_hint(name)}`")


# --- removing ----------------------------------------------------------------------------

def remove(name: str, root: str) -> tuple[bool, list[str]]:
    """Remove the lab ``name`` whatever state it is in: with its lab.json if there is one,
    else by its namespaces' names. Returns (whether there was anything, problems)."""
    try:
        lab = Lab.load(name, root)
    except (LabError, ValueError, TypeError, KeyError):
        # No (or a damaged) lab.json: a lab that knows only its name still finds its
        # namespaces, the processes in them, and its directory.
        lab = Lab(LabState(name, NS_PREFIX + name, root, False, False, False, 0.0))
    found = lab.dir.exists() or bool(leftovers(name))
    return found, lab.down() if found else []


def remove_all(root: str) -> tuple[list[str], list[str], list[str]]:
    """Every lab under ``root``, then any namespace named wgl* that is left (any root's).
    Returns (labs removed, other namespaces removed, problems)."""
    base = Path(root)
    names = sorted(d.name for d in base.iterdir() if d.is_dir()) if base.is_dir() else []
    problems: list[str] = []
    for name in names:
        problems += remove(name, root)[1]
    swept = [n for n in list_namespaces() if n.startswith(SWEEP_PREFIX)]
    end_processes_in(*swept)
    try:
        delete_namespaces(swept)
    except LabError as e:
        problems.append(str(e))
    return names, swept, problems


# --- waiting for cables ------------------------------------------------------------------

def progress(lab: Lab) -> tuple[int, int, list[str]]:
    """(connected cables, cables wanted, clusters whose agent is not running)."""
    gws = lab.state.gateways
    connected, dead, now = 0, [], time.time()
    for gw in gws:
        if not any(lab.agent_alive(g) for g in lab.candidates(gw.index)):
            dead.append(gw.cluster_id)
            continue
        # With several candidates, the active one's cables (none while none is active).
        active = lab.active(gw.index) if lab.state.standbys else gw
        st = lab.status(active) if active is not None else None
        if st is None or now - st.updated > FRESH:
            continue
        connected += sum(c.status == ConnectionStatus.CONNECTED for c in st.gateway.connections)
    return connected, len(gws) * (len(gws) - 1), dead


def wait_for_cables(lab: Lab, timeout: float, out: TextIO = sys.stderr) -> bool:
    """Wait until every gateway reports every cable connected, showing progress on ``out``:
    one line rewritten in place on a terminal, else a line per change. Raises LabError when
    an agent has exited, since its cables will never come."""
    tty = out.isatty()
    start = time.monotonic()
    last: tuple[int, int] | None = None
    try:
        while True:
            connected, total, dead = progress(lab)
            elapsed = time.monotonic() - start
            if dead:
                raise LabError(
                    f"the agent of {', '.join(dead)} is not running; see `wgcable lab logs"
                    f"{name_hint(lab.state.name)} {dead[0].removeprefix('cluster')}`")
            done = connected == total and lab.all_connected()
            if tty:
                out.write(f"\r\x1b[Kwaiting for cables: {connected}/{total} connected "
                          f"({elapsed:.1f} s)")
                out.flush()
            elif (connected, total) != last:
                print(f"waiting for cables: {connected}/{total} connected", file=out,
                      flush=True)
            last = (connected, total)
            if done or elapsed >= timeout:
                break
            time.sleep(0.2)
    finally:
        if tty:
            out.write("\r\x1b[K")
            out.flush()
    if done:
        print(f"all {total} cables connected in {elapsed:.1f} s", file=out, flush=True)
    else:
        print(f"only {connected}/{total} cables connected after {timeout:g} s", file=out,
              flush=True)
    return done


# --- tables ------------------------------------------------------------------------------

def connections_table(lab: Lab) -> str:
    """Every gateway's cables in one table: a row per (gateway, remote cluster)."""
    now = time.time()
    rows = [["FROM", "TO", "REMOTE IP", "NAT", "STATUS", "RTT avg.", "TRANSFER (rx/tx)"]]
    notes = []
    for gw in lab.candidates():
        st = lab.status(gw)
        if st is None:
            notes.append(f"{gw.label}: no status yet")
            continue
        if now - st.updated > FRESH:
            notes.append(f"{gw.cluster_id}: status is {now - st.updated:.0f} s old")
        for c in st.gateway.connections:
            rtt = format_duration(c.latency_rtt.average) if c.latency_rtt else ""
            rows.append([
                gw.cluster_id, c.endpoint.cluster_id, c.using_ip or c.endpoint.gateway_ip(),
                "yes" if c.using_nat else "no", c.status.value, rtt,
                f"{bytes_human(c.rx_bytes)} / {bytes_human(c.tx_bytes)}"])
            if c.status == ConnectionStatus.ERROR:
                notes.append(f"{gw.cluster_id} -> {c.endpoint.cluster_id}: {c.status_message}")
    text = table(rows) if len(rows) > 1 else "no connections"
    return text + ("\n\n" + "\n".join(notes) if notes else "")


def ping_matrix(lab: Lab, *, v6: bool = False, count: int = 3) -> tuple[str, bool]:
    """Ping from every pod to every other (in parallel): across clusters, and between the
    nodes of one cluster. Returns the matrix (rows ping columns, RTT in ms) and whether
    every pair answered. A pod is named by its cluster when every cluster has one node (as
    before nodes), else by cluster and node (``cluster1/gw``, ``cluster1/node2``), and a
    legend says where each one is."""
    pods = lab.pods()
    one_node = len({p.cluster for p in pods}) == len(pods)

    def name(p: Pod) -> str:
        return p.cluster_id if one_node else p.label

    pairs = [(a, b) for a in pods for b in pods if a is not b]
    with ThreadPoolExecutor(max_workers=min(16, len(pairs) or 1)) as pool:
        rtts = dict(zip(pairs, pool.map(
            lambda ab: lab.ping_between(*ab, count=count, v6=v6), pairs), strict=True))
    rows = [["FROM \\ TO", *(name(p) for p in pods)]]
    for a in pods:
        row = [name(a)]
        for b in pods:
            rtt = rtts.get((a, b))
            row.append("-" if a is b else "FAIL" if rtt is None else f"{rtt:.2f}")
        rows.append(row)
    failed = [f"{name(a)} -> {name(b)}" for (a, b), rtt in rtts.items() if rtt is None]
    head = f"pod-to-pod over IPv{'6' if v6 else '4'} (RTT in ms, each row pings each column):"
    legend = "" if one_node else "pods:\n" + "".join(
        f"  {p.label}: {p.ip6 if v6 else p.ip} on node {p.node_ns}"
        f"{' (the gateway)' if p.node == 0 else ''}\n" for p in pods)
    if failed:
        tail = f"{len(failed)} of {len(pairs)} pairs unreachable: {', '.join(failed)}"
    else:
        tail = f"all {len(pairs)} pairs reachable"
    return f"{head}\n{table(rows)}\n{legend}{tail}", not failed


# --- commands ----------------------------------------------------------------------------

@_guarded
def cmd_up(args: argparse.Namespace) -> int:
    check_options(args.clusters, "--wait", args.wait, args.nodes, args.mtu)
    check_can_build(args.name, args.root)
    hint = name_hint(args.name)
    kind = "".join(f", {k}" for k, on in (("IPv6", args.ipv6), ("NAT", args.nat),
                                          ("SNAT", args.snat),
                                          ("Kubernetes broker", args.store == KUBERNETES),
                                          (f"MTU {args.mtu}", args.mtu != 1500)) if on)
    print(f"building lab {args.name!r}: {args.clusters} clusters of {args.nodes} "
          f"node{'s' if args.nodes > 1 else ''}{kind}...", file=sys.stderr, flush=True)
    lab = Lab.up(args.name, args.clusters, ipv6=args.ipv6, nat=args.nat, snat=args.snat,
                 root=args.root, store=args.store, nodes=args.nodes, gateways=args.gateways,
                 mtu=args.mtu)
    ok = True
    if args.wait > 0:
        try:
            ok = wait_for_cables(lab, args.wait)
        except KeyboardInterrupt:
            print(f"interrupted; lab {args.name!r} stays up: `wgcable lab down{hint}` "
                  "removes it", file=sys.stderr)
            return 130
    print(f"lab {args.name!r} is up ({lab.dir / 'lab.json'})")
    print(f"  wgcable lab status{hint}\n  wgcable lab ping{hint}\n"
          f"  wgcable lab exec{hint} 1 -- wgcable show\n  wgcable lab metrics{hint} 1\n"
          f"  wgcable lab down{hint}")
    if not ok:
        print(f"wgcable lab: not all cables connected; see `wgcable lab status{hint}` and "
              f"`wgcable lab logs{hint} N`", file=sys.stderr)
        return 1
    return 0


def status_json(lab: Lab) -> dict[str, Any]:
    now, present = time.time(), set(list_namespaces())
    clusters = []
    for gw in lab.state.gateways:
        st = lab.status(gw.index)
        clusters.append({
            "index": gw.index, "clusterID": gw.cluster_id,
            "gatewayNamespace": gw.gateway_ns, "podNamespaces": gw.pod_ns,
            "privateIP": gw.private_ip, "publicIP": gw.public_ip or gw.private_ip,
            "nat": gw.nat, "subnets": gw.subnets, "podIPs": gw.pod_ips,
            "podIPs6": gw.pod_ips6, "agentPID": gw.agent_pid,
            "agentAlive": lab.agent_alive(gw.index),
            "status": as_json(st, now) if st else None,
            "gateways": [{
                "node": g.node, "hostname": g.hostname, "namespace": g.gateway_ns,
                "privateIP": g.private_ip, "agentPID": g.agent_pid,
                "agentAlive": lab.agent_alive(g), "haStatus": ha_status(lab, g, now),
            } for g in lab.candidates(gw.index)],
        })
    names = _recorded_namespaces(lab)
    names += [n for n in lab.namespaces_present() if n not in names]  # made, not recorded
    return {
        "name": lab.state.name, "root": lab.state.root, "created": lab.state.created,
        "build": lab.build_state(), "clustersWanted": lab.state.clusters or len(clusters),
        "ipv6": lab.state.ipv6, "nat": lab.state.nat, "snat": lab.state.snat,
        "store": lab.state.store, "nodesPerCluster": lab.state.nodes_per_cluster,
        "mtu": lab.state.mtu,
        "namespaces": {n: n in present for n in names},
        "allConnected": lab.all_connected(),
        "clusters": clusters,
        "nodes": [{
            "cluster": n.cluster, "index": n.index, "gateway": n.index == 0,
            "namespace": n.namespace, "hostname": n.hostname, "nodeIP": n.node_ip,
            "nodeIP6": n.node_ip6, "podNamespaces": n.pod_ns, "podIPs": n.pod_ips,
            "podIPs6": n.pod_ips6, "podCIDRs": n.pod_cidrs,
            "routeAgentPID": n.route_agent_pid,
            "routeAgentAlive": lab.route_agent_alive(n.cluster, n.index),
        } for n in lab.nodes()],
    }


def ha_status(lab: Lab, gw: GatewayState, now: float) -> str:
    """"active" or "passive" as the candidate's running agent last said; "down" when its
    agent is not running, "unknown" without a fresh status."""
    if not lab.agent_alive(gw):
        return "down"
    st = lab.status(gw)
    if st is None or now - st.updated > FRESH:
        return "unknown"
    return str(st.gateway.ha_status)


def _recorded_namespaces(lab: Lab) -> list[str]:
    s = lab.state
    names = [*s.extra_namespaces, *(n for g in s.gateways for n in (g.gateway_ns, *g.pod_ns))]
    return names + [x for n in lab.nodes() for x in (n.namespace, *n.pod_ns) if x not in names]


def nodes_table(lab: Lab) -> str:
    """A row per node: where it is, its pods, and its route agent."""
    rows = [["CLUSTER", "NODE", "NAMESPACE", "NODE IP", "POD CIDR", "POD IP", "ROUTE AGENT"]]
    for n in lab.nodes():
        pid = n.route_agent_pid
        if pid:
            agent = f"pid {pid} {'up' if lab.route_agent_alive(n.cluster, n.index) else 'DEAD'}"
        else:  # a cluster of one node needs none
            agent = "none (one node)" if lab.state.nodes_per_cluster == 1 else "not started"
        rows.append([lab.gateway(n.cluster).cluster_id,
                     f"{n.index} (gateway)" if n.index == 0 else str(n.index), n.namespace,
                     ", ".join(filter(None, (n.node_ip, n.node_ip6))),
                     ", ".join(n.pod_cidrs) or "-", ", ".join(n.pod_ips + n.pod_ips6), agent])
    return table(rows)


def status_text(lab: Lab) -> str:
    s, now, present = lab.state, time.time(), set(list_namespaces())
    opts = [k for k, on in (("IPv6", s.ipv6), ("NAT", s.nat), ("SNAT", s.snat),
                            ("Kubernetes broker", s.store == KUBERNETES),
                            (f"MTU {s.mtu}", s.mtu != 1500)) if on]
    age = format_duration(round(now - s.created))
    build = lab.build_state()
    nodes = f" of {s.nodes_per_cluster} nodes" if s.nodes_per_cluster > 1 else ""
    lines = [f"lab {s.name}: {len(s.gateways)} clusters{nodes}"
             f"{', ' + ', '.join(opts) if opts else ''};"
             f" up {age} ({lab.dir / 'lab.json'})", ""]
    if build != "built":
        # Half a lab: say so first, with every namespace it has, recorded or not.
        wanted = f"{len(s.gateways)} of {s.clusters} clusters recorded"
        if build == "building":
            head = f"lab {s.name}: being built by `lab up` (pid {s.builder_pid}): {wanted}"
        else:
            head = (f"lab {s.name}: its build was INTERRUPTED (`lab up`, pid {s.builder_pid}, "
                    f"is gone): {wanted}; remove it with `wgcable lab down{name_hint(s.name)}`")
        existing = lab.namespaces_present()
        lines = [head, f"namespaces that exist: {', '.join(existing) or '-'}", ""]
    rows = [["CLUSTER", "GATEWAY NS", "POD NS", "PRIVATE IP", "PUBLIC IP", "POD IP", "AGENT",
             "HA"]]
    for gw in lab.candidates():
        alive = lab.agent_alive(gw)
        agent = f"pid {gw.agent_pid} {'running' if alive else 'DEAD'}" if gw.agent_pid \
            else "not started"
        rows.append([gw.label, gw.gateway_ns, ", ".join(gw.pod_ns), gw.private_ip,
                     gw.public_ip or "-", ", ".join(gw.pod_ips + gw.pod_ips6), agent,
                     ha_status(lab, gw, now)])
    lines.append(table(rows))
    lines.append(f"\nnodes ({s.nodes_per_cluster} per cluster):")
    lines.append(nodes_table(lab))
    missing = [n for n in _recorded_namespaces(lab) if n not in present]
    lines.append(f"\nother namespaces: {', '.join(s.extra_namespaces) or '-'}")
    if missing:
        lines.append(f"MISSING namespaces: {', '.join(missing)}")
    for gw in lab.candidates():
        lines.append(f"\n== {gw.label} (gateway {gw.gateway_ns})")
        st = lab.status(gw)
        if st is None:
            lines.append("no status yet: the agent has not written one")
            continue
        if not lab.agent_alive(gw):
            lines.append(f"the agent is not running; this status is {now - st.updated:.0f} s old")
        lines.append(render(st, now))
    return "\n".join(lines)


@_guarded
def cmd_handover(args: argparse.Namespace) -> int:
    lab = resolve(args.name, args.root)
    gw = lab.handover(args.cluster)
    print(f"{gw.label}: asked to hand over its lease (agent pid {gw.agent_pid})")
    return 0


@_guarded
def cmd_rotate_key(args: argparse.Namespace) -> int:
    lab = resolve(args.name, args.root)
    gw = lab.rotate_key(args.cluster)
    print(f"{gw.label}: asked to rotate its key pair (agent pid {gw.agent_pid})")
    return 0


@_guarded
def cmd_status(args: argparse.Namespace) -> int:
    lab = resolve(args.name, args.root)
    if args.json:
        print(json.dumps(status_json(lab), indent=2))
    else:
        print(status_text(lab))
    return 0


@_guarded
def cmd_ping(args: argparse.Namespace) -> int:
    lab = resolve(args.name, args.root)
    if args.v6 and not lab.state.ipv6:
        raise LabError(f"lab {lab.state.name!r} has no IPv6; bring one up with --ipv6")
    if args.count < 1:
        raise LabError("--count must be at least 1")
    text, ok = ping_matrix(lab, v6=args.v6, count=args.count)
    print(text)
    return 0 if ok else 1


@_guarded
def cmd_down(args: argparse.Namespace) -> int:
    if args.all:
        if args.name:
            raise LabError("--all and --name: choose one")
        labs, swept, problems = remove_all(args.root)
        print(f"removed {len(labs)} labs{': ' + ', '.join(labs) if labs else ''}")
        if swept:
            print(f"removed leftover namespaces: {', '.join(swept)}")
    else:
        if not args.name and not lab_names(args.root):
            raise LabError(f"no lab is up (nothing in {args.root}); for leftovers of a lost "
                           "one give its --name, or use --all")
        name = args.name or resolve(None, args.root).state.name
        found, problems = remove(name, args.root)
        if not found:
            raise LabError(f"no lab {name!r} (nothing in {Path(args.root) / name}, "
                           "no namespaces)")
        print(f"lab {name!r} removed")
    for p in problems:
        print(f"wgcable lab: could not remove: {p}", file=sys.stderr)
    return 1 if problems else 0


@_guarded
def cmd_exec(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise LabError("give a command: `wgcable lab exec 1 -- wgcable show`")
    lab = resolve(args.name, args.root)
    gw = lab.gateway(args.cluster)
    if cmd[0] == "wgcable":  # this wgcable, wherever it is installed
        cmd = [sys.executable, "-m", "wgcable", *cmd[1:]]
    if args.node:  # a worker: its network namespace is all there is to it
        node = lab.node(gw.index, args.node)
        env = {**os.environ, "WGCABLE_STATE_DIR": str(lab.node_dir(node))}
        return subprocess.run(Namespace(node.namespace).cmd(*cmd), env=env,
                              check=False).returncode
    env = {**os.environ, "WGCABLE_STATE_DIR": str(lab.state_dir(gw))}
    return subprocess.run(lab.gateway_cmd(gw, *cmd), env=env, check=False).returncode


@_guarded
def cmd_metrics(args: argparse.Namespace) -> int:
    lab = resolve(args.name, args.root)
    sys.stdout.write(lab.metrics(args.cluster))
    return 0


@_guarded
def cmd_logs(args: argparse.Namespace) -> int:
    lab = resolve(args.name, args.root)
    gw = lab.gateway(args.cluster)
    log = lab.log_file(gw) if args.node is None else \
        lab.route_agent_log(lab.node(gw.index, args.node))
    try:
        data = log.read_bytes()
    except FileNotFoundError:
        raise LabError(f"no log yet at {log}") from None
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0
