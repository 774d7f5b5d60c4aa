"""Several nodes per cluster (issue 13): route agents following the gateway, and worker
pods' throughput across clusters against the gateway nodes' own.

One lab of 2 clusters of 2 nodes (``wgcable.lab``: a real `wgcable agent` on each gateway
node, a `wgcable route-agent` on every node, wireguard-go devices). Three parts:

- *throughput*: iperf3 TCP (one stream, ``-O 1``) pod to pod across the clusters, worker
  -> worker (cluster 1 node 1 -> cluster 2 node 1: VXLAN to the gateway node, the tunnel,
  VXLAN to the worker) and gateway node -> gateway node (cluster 1 node 0 -> cluster 2 node
  0: the tunnel only), alternating, every round both. The ratio is worker / gateway node.
- *route agent reaction*: cluster 1's Endpoint file in the directory store is rewritten
  with ``private_ip`` set to the other node's IP (nothing else moves), then restored. From
  each store write until the node that becomes a worker has its route agent's routes
  (``proto 88``) via the gateway node's VTEP (``240.b.c.d`` for node IP ``a.b.c.d``),
  polled with ``ip -j -N route show proto 88`` in that node's namespace. Cluster 1's
  gateway agent is SIGSTOPped (by PID) meanwhile, and SIGCONTed after the restore: it
  owns that Endpoint and would otherwise restore the edit within milliseconds.
- *gateway move*: ``Lab.move_gateway`` moves cluster 1's gateway to the other node
  (stop the agent, `wgcable cleanup`, start it there), back and forth. Measured: the move
  itself, then from the new agent's start until the old gateway node's route agent has
  its routes via the new gateway's VTEP, and until a pod of cluster 2 (node 1) gets a
  reply from the old gateway node's pod (``ping -D`` every 10 ms).

Everything lives in the lab's namespaces under a temporary root; nothing touches the root
network namespace; the lab is torn down on every exit (Ctrl-C and SIGTERM included).
Figures are printed, never asserted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import Row, row, signals_held, summary
from bench.dataplane_bench import NetPath, iperf, iperf_server
from wgcable.lab.lab import Lab, NodeState
from wgcable.lab.netns import Namespace
from wgcable.store.directory import atomic_write

ROUTE_PROTO = "88"  # the route agent's routes (wgcable.routeagent.agent.ROUTE_PROTOCOL)
TARGET_REACTION_S = 0.5  # issue 13: store change -> workers repointed
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from")


def _wait_for(cond: Callable[[], object], timeout: float, what: str,
              step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


@contextlib.contextmanager
def _lab(root: str) -> Iterator[Lab]:
    lab = Lab.up(f"mb{os.getpid() % 100000}", clusters=2, nodes=2, root=root,
                 agent_args=["--backend", "userspace", "--log-level", "info"])
    try:
        yield lab
    finally:
        with signals_held():  # a second Ctrl-C must not interrupt the teardown
            for problem in lab.down():
                print(f"multinode_bench: teardown: {problem}", file=sys.stderr)


def vtep(node_ip: str) -> str:
    """The node's VXLAN tunnel endpoint: its IPv4 address with the first octet 240."""
    return "240." + node_ip.split(".", 1)[1]


def agent_routes(node: NodeState) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-n", node.namespace, "-j", "-N", "route", "show", "proto",
                          ROUTE_PROTO], capture_output=True, text=True, timeout=10,
                         check=True).stdout
    routes: list[dict[str, Any]] = json.loads(out) if out.strip() else []
    return routes


def routed_via(node: NodeState, gateway: NodeState) -> bool:
    """Whether every route agent route of ``node`` (there is at least one) goes through
    ``gateway``'s VTEP."""
    routes = agent_routes(node)
    return bool(routes) and all(r.get("gateway") == vtep(gateway.node_ip) for r in routes)


def _wait_routed(lab: Lab, node: NodeState, gateway: NodeState, timeout: float) -> float:
    """Poll until ``node`` routes via ``gateway``; the wall-clock time it was first seen."""
    deadline = time.monotonic() + timeout
    while not routed_via(node, gateway):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{node.namespace}: no routes via {vtep(gateway.node_ip)} "
                               f"after {timeout:g} s: {agent_routes(node)}; "
                               f"{_route_agent_story(lab, node)}")
        time.sleep(0.005)
    return time.time()


def _route_agent_story(lab: Lab, node: NodeState) -> str:
    """What the node's route agent says (its status file, its log's last lines), for an
    error message."""
    status = lab.node_dir(node) / "route-agent.json"
    parts = [f"route agent alive: {lab.route_agent_alive(node.cluster, node.index)}"]
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads(status.read_text())
        parts.append(f"status: gateway {doc.get('gateway')}, problem {doc.get('problem')!r}")
    with contextlib.suppress(OSError):
        lines = lab.route_agent_log(node).read_text(errors="replace").splitlines()
        parts.append("log: " + " | ".join(lines[-6:]))
    return "; ".join(parts)


class _Pinger:
    """``ping -D`` every 10 ms from one pod to an address; reply times (epoch) collected."""

    def __init__(self, ns: str, target: str) -> None:
        self.replies: list[float] = []
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            Namespace(ns).cmd("ping", "-D", "-n", "-i", "0.01", "-W", "1", target),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if m := _REPLY.match(line):
                with self._lock:
                    self.replies.append(float(m.group(1)))

    def first_after(self, since: float) -> float | None:
        with self._lock:
            return next((t for t in self.replies if t > since), None)

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()  # our child, by PID (ip netns exec execs ping in place)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._reader.join(5)


# --- the three parts -----------------------------------------------------------------------


def _wg_pids(lab: Lab) -> list[int]:
    pids = []
    for gw in lab.state.gateways:
        with contextlib.suppress(OSError, ValueError):
            pids.append(int((lab.state_dir(gw) / "subwg0.wireguard-go.pid").read_text()))
    return pids


def throughput(lab: Lab, repeat: int, seconds: int) -> dict[str, list[dict[str, Any]]]:
    """iperf3 TCP worker -> worker and gateway node -> gateway node, alternating; the
    order flips every round so that neither always runs first."""
    paths = []
    for key, label, node in (("workers", "worker -> worker (node 1 -> node 1)", 1),
                             ("gateways", "gateway node -> gateway node (node 0 -> node 0)",
                              0)):
        src, dst = lab.node(1, node), lab.node(2, node)
        paths.append(NetPath(key, label, dst.pod_ns[0], src.pod_ns[0], dst.pod_ips[0],
                             lambda: _wg_pids(lab), udp=False))
    runs: dict[str, list[dict[str, Any]]] = {p.key: [] for p in paths}
    for r in range(repeat):
        for p in (paths if r % 2 == 0 else paths[::-1]):
            with iperf_server(p.server_ns):
                runs[p.key].append(iperf(p, seconds, udp=False))
            print(f"  multinode throughput round {r + 1}/{repeat}: {p.label}: "
                  f"{runs[p.key][-1]['mbps']:.0f} Mbit/s", file=sys.stderr, flush=True)
    return runs


def _endpoint_file(lab: Lab, cluster_id: str) -> Path:
    for f in sorted((lab.store_dir / "endpoints").glob("*.json")):
        if json.loads(f.read_text())["spec"]["cluster_id"] == cluster_id:
            return f
    raise RuntimeError(f"no Endpoint file of {cluster_id} in {lab.store_dir}")


def _published(lab: Lab, cluster_id: str, private_ip: str) -> float:
    """When the cluster's Endpoint with this private_ip was written into the store: its
    file's mtime (the store writes a temp file and renames it)."""
    for f in (lab.store_dir / "endpoints").glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            spec = json.loads(f.read_text())["spec"]
            if spec["cluster_id"] == cluster_id and spec["private_ip"] == private_ip:
                return f.stat().st_mtime
    raise RuntimeError(f"no Endpoint of {cluster_id} with private_ip {private_ip} in the store")


def reaction(lab: Lab, rounds: int, timeout: float = 10) -> dict[str, list[float]]:
    """Seconds from a store write of cluster 1's Endpoint to the new worker's routes via the
    new gateway node: ``edit`` (private_ip -> node 1, node 0 becomes the worker) and
    ``restore`` (back to node 0, node 1 the worker again)."""
    gw = lab.gateway(1)
    n0, n1 = lab.node(1, 0), lab.node(1, 1)
    if gw.private_ip != n0.node_ip:
        raise RuntimeError("cluster 1's gateway is not on node 0")
    path = _endpoint_file(lab, gw.cluster_id)
    original = path.read_bytes()
    doc = json.loads(original)
    doc["spec"]["private_ip"] = n1.node_ip
    edited = json.dumps(doc, indent=2).encode()
    out: dict[str, list[float]] = {"edit": [], "restore": []}
    _wait_routed(lab, n1, n0, timeout)
    pid = gw.agent_pid
    os.kill(pid, signal.SIGSTOP)  # our lab's agent, by PID; SIGCONT in the finally
    try:
        for r in range(rounds):
            time.sleep(0.3)  # let the previous change settle
            t0 = time.time()
            atomic_write(path.parent, path.name, edited)
            out["edit"].append(_wait_routed(lab, n0, n1, timeout) - t0)
            time.sleep(0.3)
            t0 = time.time()
            atomic_write(path.parent, path.name, original)
            out["restore"].append(_wait_routed(lab, n1, n0, timeout) - t0)
            print(f"  multinode route agent round {r + 1}/{rounds}: edit -> node 0 repointed "
                  f"{out['edit'][-1] * 1000:.0f} ms, restore -> node 1 repointed "
                  f"{out['restore'][-1] * 1000:.0f} ms", file=sys.stderr, flush=True)
    finally:
        if path.read_bytes() != original:
            atomic_write(path.parent, path.name, original)
        os.kill(pid, signal.SIGCONT)
    return out


def _answers(lab: Lab, src_cluster: int, src_node: int, dst_cluster: int,
             dst_node: int) -> bool:
    return lab.ping_pod(src_cluster, src_node, dst_cluster, dst_node, timeout=1) is not None


def _replied_since_ago(pinger: _Pinger, seconds: float) -> bool:
    return pinger.first_after(time.time() - seconds) is not None


def moves(lab: Lab, rounds: int, timeout: float = 30) -> dict[str, list[float]]:
    """Move cluster 1's gateway ``rounds`` times, to the other node each time."""
    out: dict[str, list[float]] = {"move": [], "routes": [], "ping": [], "published": [],
                                   "published_to_routes": []}
    for r in range(rounds):
        gw = lab.gateway(1)
        old = next(n for n in lab.nodes(1) if n.node_ip == gw.private_ip)
        new = lab.node(1, 1 - old.index)
        pinger = _Pinger(lab.node(2, 1).pod_ns[0], old.pod_ips[0])
        try:
            _wait_for(partial(_replied_since_ago, pinger, 0.5), 10, "pings before the move")
            moved = lab.move_gateway(1, new.index)
            started = time.time()
            routed = _wait_routed(lab, old, new, timeout)
            published = _published(lab, gw.cluster_id, new.node_ip)
            _wait_for(partial(pinger.first_after, started), timeout,
                      "a ping reply through the new gateway")
            first = pinger.first_after(started)
            assert first is not None
        finally:
            pinger.stop()
        out["move"].append(moved)
        out["routes"].append(routed - started)
        out["published"].append(published - started)
        out["published_to_routes"].append(routed - published)
        out["ping"].append(first - started)
        print(f"  multinode move {r + 1}/{rounds}: node {old.index} -> {new.index}: moved in "
              f"{moved * 1000:.0f} ms; then Endpoint published {out['published'][-1] * 1000:.0f} "
              f"ms, routes {out['routes'][-1] * 1000:.0f} ms, "
              f"first reply {out['ping'][-1] * 1000:.0f} ms", file=sys.stderr, flush=True)
    return out


# --- the section ---------------------------------------------------------------------------


def run(repeat: int, quick: bool = False) -> dict[str, Any]:
    """``repeat`` throughput rounds (both paths each) and gateway moves, 2 x ``repeat``
    route agent reaction rounds (each an edit and a restore)."""
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    seconds = 2 if quick else 5
    root = tempfile.mkdtemp(prefix="wgcable-multinode-bench-")
    try:
        with _lab(root) as lab:
            _wait_for(lab.all_connected, 60, "all cables connected", step=0.1)
            for a, b, c, d in ((1, 1, 2, 1), (1, 0, 2, 0), (2, 1, 1, 0)):
                _wait_for(partial(_answers, lab, a, b, c, d), 30,
                          f"a ping cluster {a} node {b} -> cluster {c} node {d}", step=0.1)
            tcp = throughput(lab, repeat, seconds)
            react = reaction(lab, 2 * repeat)
            move = moves(lab, repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return result_of(tcp, react, move, seconds)


def result_of(tcp: dict[str, list[dict[str, Any]]], react: dict[str, list[float]],
              move: dict[str, list[float]], seconds: int) -> dict[str, Any]:
    mbps = {k: summary([x["mbps"] for x in v]) for k, v in tcp.items()}
    ratio = mbps["workers"]["median"] / mbps["gateways"]["median"]
    busy = statistics.median(x["machine_busy_pct"] for v in tcp.values() for x in v)
    both = react["edit"] + react["restore"]
    result: dict[str, Any] = {
        "seconds": seconds,
        "tcp": {k: {"mbps": mbps[k], "runs": tcp[k]} for k in tcp},
        "ratio": ratio,
        "reaction": {k: summary(v) for k, v in {**react, "all": both}.items()},
        "move": {k: summary(v) for k, v in move.items()},
    }
    rows: list[Row] = []
    for key, label in (("workers", "worker -> worker"),
                       ("gateways", "gateway node -> gateway node")):
        m = mbps[key]
        note = (f"{len(m['samples'])} runs of {seconds} s, min {m['min']:.0f}, max "
                f"{m['max']:.0f}; machine busy {busy:.0f}% (median of all runs)")
        if key == "workers":
            note += f"; ratio to gateway nodes {ratio:.2f}"
        rows.append(row("iperf3 TCP pod to pod across clusters, 1 stream",
                        f"{label} (lab, 2 nodes)", None, m["median"], "Mbit/s",
                        floor=mbps["gateways"]["median"] if key == "workers" else None,
                        floor_impl="gateway node -> gateway node" if key == "workers" else "",
                        note=note))
    r = result["reaction"]["all"]
    rows.append(row("Endpoint private_ip rewritten -> worker's routes via the new gateway",
                    "wgcable route-agent", None, r["median"] * 1000, "ms",
                    p90=r["p90"] * 1000,
                    note=f"max {r['max'] * 1000:.0f} ms over {len(both)} store writes "
                    f"({len(react['edit'])} edits, as many restores; routes polled every ~10 "
                    f"ms); target {TARGET_REACTION_S * 1000:.0f} ms"))
    for key, what in (("move", "gateway moved (agent stopped, cleanup, started elsewhere)"),
                      ("published", "new agent started -> its Endpoint in the store"),
                      ("published_to_routes", "its Endpoint in the store -> old gateway node "
                       "routed via the new"),
                      ("routes", "new agent started -> old gateway node routed via the new"),
                      ("ping", "new agent started -> cluster 2 pod's reply from old gateway "
                       "node's pod")):
        s = result["move"][key]
        rows.append(row(what, "lab.move_gateway + route agents", None, s["median"] * 1000,
                        "ms", note=f"max {s['max'] * 1000:.0f} ms over "
                        f"{len(s['samples'])} moves"))
    result["rows"] = rows
    return result


def plot(result: dict[str, Any], ax: Any) -> None:
    """Left: medians in ms (reaction, move parts); the title has the throughput ratio."""
    labels = ["store write ->\nworker repointed", "move itself", "agent start ->\nroutes",
              "agent start ->\nfirst reply"]
    vals = [result["reaction"]["all"]["median"] * 1000] + [
        result["move"][k]["median"] * 1000 for k in ("move", "routes", "ping")]
    maxes = [result["reaction"]["all"]["max"] * 1000] + [
        result["move"][k]["max"] * 1000 for k in ("move", "routes", "ping")]
    bars = ax.barh(range(len(vals)), vals, color=["C0", "C1", "C1", "C1"],
                   xerr=[[0] * len(vals), [m - v for m, v in zip(maxes, vals, strict=True)]])
    for b, v in zip(bars, vals, strict=True):
        ax.annotate(f" {v:.0f}", (v, b.get_y() + b.get_height() / 2), va="center",
                    fontsize=7)
    ax.set_yticks(range(len(vals)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms (median, bar to max)")
    w, g = (result["tcp"][k]["mbps"]["median"] for k in ("workers", "gateways"))
    ax.set_title(f"Multinode: route agents; TCP worker {w:.0f} / gateway node {g:.0f} "
                 f"Mbit/s", fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)
