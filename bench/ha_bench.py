"""Gateway high availability (issue 14): node death and handover, in a lab of 2 clusters of
3 nodes with gateway candidates on nodes 0 and 1 (``wgcable lab up --gateways 2``).

- *node death*: cluster 1's active gateway node dies (``Lab.kill_node``: its agent, its
  wireguard-go and its route agent SIGKILLed by PID, its links down). Measured from the
  kill until the first reply (``ping -D`` every 10 ms) from a cluster 2 pod to the pod of
  every surviving node of cluster 1: the new gateway's and the plain worker's. The dead node
  is revived (it comes back passive) before the next round, whose victim is the new active.
  With the lab's lease (1.5 s, renew deadline 1 s, retry 0.2 s) and with the defaults
  (6 s, 4 s, 1 s).
- *handover*: `wgcable handover` (SIGUSR1) of cluster 1's active gateway while a worker of
  cluster 2 pings a worker of cluster 1 ten times a second: pings lost, and the time from
  the signal until the standby reports active.
- *renew*: how long one lease renewal takes (the figure the default renew deadline must
  leave room for): on the lease file, and on a real kube-apiserver when one is built.

Figures are printed, never asserted; everything lives in the lab's namespaces and a temp
directory and is removed on every exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import Row, row, signals_held, summary
from bench.multinode_bench import _Pinger, _wait_for
from wgcable.ha.filelease import FileLease
from wgcable.ha.lease import LeaseBackend, LeaseRecord
from wgcable.lab.lab import LAB_LEASE, GatewayState, Lab
from wgcable.lab.netns import Namespace

DEFAULTS = ("--lease-duration", "6", "--lease-renew-deadline", "4", "--lease-retry", "1")
TARGET_DEATH_S = 3.0  # issue 14, lab lease settings
TARGET_LOST = 1  # issue 14, handover at 10 pings/s


@contextlib.contextmanager
def _lab(root: str, extra: tuple[str, ...]) -> Iterator[Lab]:
    lab = Lab.up(f"hb{os.getpid() % 100000}", clusters=2, nodes=3, gateways=2, root=root,
                 agent_args=["--backend", "userspace", "--log-level", "info", *extra])
    try:
        _wait_for(lab.all_connected, 60, "all cables connected", step=0.1)
        yield lab
    finally:
        with signals_held():
            for problem in lab.down():
                print(f"ha_bench: teardown: {problem}", file=sys.stderr)


def node_death(lab: Lab, rounds: int, extra: tuple[str, ...]) -> list[dict[str, float]]:
    """Kill the active gateway's node of cluster 1, ``rounds`` times; seconds until a
    cluster 2 pod gets replies from each surviving node's pod."""
    out: list[dict[str, float]] = []
    for _ in range(rounds):
        _wait_for(lambda: lab.active(1) is not None and lab.active(2) is not None, 30,
                  "one active gateway per cluster")
        victim = lab.active(1)
        assert victim is not None
        survivors = [n for n in lab.nodes(1) if n.index != victim.node]
        src = lab.node(2, 2).pod_ns[0]
        pingers = {n.index: _Pinger(src, n.pod_ips[0]) for n in survivors}
        try:
            def replying(ps: dict[int, _Pinger] = pingers) -> bool:
                return all(p.replies for p in ps.values())
            _wait_for(replying, 30, "replies before")
            t0 = time.time()
            lab.kill_node(1, victim.node)
            def through_new(ps: dict[int, _Pinger] = pingers, t0: float = t0) -> bool:
                return all(p.first_after(t0 + 0.05) for p in ps.values())
            _wait_for(through_new, 60, "replies through the new gateway")
            took = {f"node{j}": (p.first_after(t0 + 0.05) or t0) - t0
                    for j, p in pingers.items()}
        finally:
            for p in pingers.values():
                p.stop()
        took["all"] = max(took.values())
        out.append(took)
        lab.revive_node(1, victim.node, ["--backend", "userspace", "--log-level", "info",
                                         *extra])
        def revived(v: GatewayState = victim) -> bool:
            s = lab.status(v)
            return s is not None and s.pid == v.agent_pid
        _wait_for(revived, 30, "the revived agent's status")
    return out


def handovers(lab: Lab, rounds: int) -> list[dict[str, float]]:
    out: list[dict[str, float]] = []
    for _ in range(rounds):
        _wait_for(lambda: lab.active(1) is not None, 30, "an active gateway")
        old = lab.active(1)
        src, dst = lab.node(2, 2).pod_ns[0], lab.node(1, 2).pod_ips[0]
        ping = subprocess.Popen(Namespace(src).cmd("ping", "-n", "-i", "0.1", "-W", "1", dst),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(1.0)  # ten echoes before
            t0 = time.monotonic()
            lab.handover(1)
            def standby_active(o: GatewayState | None = old) -> bool:
                return lab.active(1) not in (None, o)
            _wait_for(standby_active, 30, "the standby active")
            took = time.monotonic() - t0
            time.sleep(1.5)  # fifteen after
        finally:
            ping.send_signal(signal.SIGINT)
            text, _ = ping.communicate(timeout=10)
        replies = {int(x.split("icmp_seq=")[1].split()[0]) for x in text.splitlines()
                   if " bytes from " in x}
        sent = max(replies) if replies else 0
        lost = len([n for n in range(1, sent) if n not in replies])
        out.append({"lost": float(lost), "sent": float(sent), "active_after_s": took})
    return out


def _renewals(lease: LeaseBackend, count: int) -> list[float]:
    """Seconds of each of ``count`` renewals of a new lease: a read and a conditional write,
    as the elector does."""
    rec = lease.write(LeaseRecord("a", 6.0, time.time(), time.time(), 0), None)
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        now = lease.read()
        rec = lease.write(LeaseRecord("a", 6.0, rec.acquire_time, time.time(), 0), now)
        samples.append(time.perf_counter() - t0)
    return samples


def renew_latency(root: Path, count: int) -> dict[str, Any]:
    """Seconds per renewal (a read and a conditional write, as the elector does)."""
    result: dict[str, Any] = {"file": summary(_renewals(FileLease(root, "bench"), count))}
    kube = _kube_renew(root, count)
    if kube is not None:
        result["kubernetes"] = kube
    return result


def _kube_renew(root: Path, count: int) -> dict[str, float] | None:
    from wgcable.ha.kubelease import KubeLease
    from wgcable.lab.kubeapi import LocalAPIServer, unavailable_reason
    from wgcable.store.kubernetes import load_api_client

    if (why := unavailable_reason()) is not None:
        print(f"ha_bench: no kube-apiserver renew figures: {why}", file=sys.stderr)
        return None
    ns = Namespace(f"hbk{os.getpid() % 100000}").create()
    ns.ip("link set lo up")
    api = LocalAPIServer(ns.name, root / "api", "127.0.0.1")
    try:
        api.start()
        api.request("POST", "/api/v1/namespaces", {
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "submariner-operator"}})
        from wgcable.netlink.netns import call_in_netns

        def measure() -> list[float]:
            return _renewals(KubeLease(load_api_client(str(api.kubeconfig)),
                                       "submariner-operator", "submariner-gateway-lock", 5.0),
                             count)

        return summary(call_in_netns(ns.name, measure))
    finally:
        with signals_held():
            api.stop()
            ns.delete()


def run(repeat: int, quick: bool = False) -> dict[str, Any]:
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    root = tempfile.mkdtemp(prefix="wgcable-ha-bench-")
    try:
        with _lab(root, ()) as lab:
            death = node_death(lab, repeat, ())
            hand = handovers(lab, 2 * repeat)
        default_rounds = 1 if quick else max(1, repeat // 2)
        with _lab(root, DEFAULTS) as lab:
            death_defaults = node_death(lab, default_rounds, DEFAULTS)
        renew = renew_latency(Path(root), 50 if quick else 200)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return result_of(death, death_defaults, hand, renew)


def result_of(death: list[dict[str, float]], death_defaults: list[dict[str, float]],
              hand: list[dict[str, float]], renew: dict[str, Any]) -> dict[str, Any]:
    lab_lease = "/".join(f"{t:g}" for t in LAB_LEASE)
    d = summary([x["all"] for x in death])
    dd = summary([x["all"] for x in death_defaults])
    lost = summary([x["lost"] for x in hand])
    took = summary([x["active_after_s"] for x in hand])
    rows: list[Row] = [
        row("node death -> pings from every surviving node", f"lease {lab_lease} s", None,
            d["median"] * 1000, "ms", p90=d["p90"] * 1000,
            note=f"target <= {TARGET_DEATH_S:g} s; max {d['max']:.2f} s"),
        row("node death -> pings from every surviving node", "lease 6/4/1 s (defaults)",
            None, dd["median"] * 1000, "ms", p90=dd["p90"] * 1000,
            note=f"max {dd['max']:.2f} s; Submariner's 15/10/2 s: about 15 s before it "
            "starts reconnecting"),
        row("handover: pings lost at 10/s", f"lease {lab_lease} s", None, lost["median"], "",
            note=f"max {lost['max']:g} (target <= {TARGET_LOST})"),
        row("handover: signal -> standby reports active", f"lease {lab_lease} s", None,
            took["median"] * 1000, "ms", p90=took["p90"] * 1000),
    ]
    for where, s in renew.items():
        rows.append(row("lease renewal (read + conditional write)", where, None,
                         s["median"] * 1000, "ms", p90=s["p90"] * 1000,
                         note=f"max {s['max'] * 1000:.1f} ms"))
    return {"rows": rows, "node_death": death, "node_death_defaults": death_defaults,
            "handover": hand, "renew": renew}
