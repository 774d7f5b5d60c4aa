"""Kubernetes as the broker: the cost of a real kube-apiserver in the loop.

In a lab with ``--store kubernetes`` (etcd and kube-apiserver in the broker namespace):

- **start**: ``Lab.up`` of 2 clusters, the API server's start included, and the time until
  both cables are connected;
- **convergence**: an Endpoint created through the API (by an admin, from the broker
  namespace) -> the first ping reply from cluster 1's pod to cluster 2's through the new
  tunnel. Cluster 2's agent is stopped (SIGTERM: its tunnel side stays) so that only the
  API object decides; before each run the Endpoint is deleted and cluster 1 has dropped the
  cable (its route to cluster 2 is gone).

Run as root: ``.venv/bin/python -m bench --only broker``, or this file with ``--repeat N``.
Needs the API server that ``scripts/install-k8s.sh`` builds. Prints figures only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench.agent_bench import Pinger, wait_for
from bench.common import Row, pct, row, summary
from wgcable.lab.kubeapi import unavailable_reason
from wgcable.lab.lab import Lab

ENDPOINTS = "/apis/submariner.io/v1/namespaces/submariner-k8s-broker/endpoints"


def _routes(lab: Lab, index: int) -> str:
    return subprocess.run(lab.gateway_cmd(lab.gateway(index), "ip", "route", "show", "table",
                                          "220"), capture_output=True, text=True,
                          check=True).stdout


def run(repeat: int, quick: bool = False) -> dict[str, Any]:
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    root = tempfile.mkdtemp(prefix="wgcable-broker-bench-")
    name = f"b{os.getpid() % 100000}k"
    lab: Lab | None = None
    samples: list[float] = []
    try:
        t0 = time.monotonic()
        lab = Lab.up(name, 2, root=root, store="kubernetes")
        up = time.monotonic() - t0
        wait_for(lab.all_connected, 60, "both cables")
        connected = time.monotonic() - t0
        server = lab.broker()
        gw1, gw2 = lab.gateway(1), lab.gateway(2)
        lab.stop_agent(2)  # its endpoint stays published, its tunnel side stays up
        status, body = server.request("GET", ENDPOINTS)
        [obj] = [o for o in body["items"] if o["spec"]["cluster_id"] == "cluster2"]
        name2 = obj["metadata"]["name"]
        for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields",
                    "generation"):
            obj["metadata"].pop(key, None)
        for i in range(repeat + 1):  # run 0 is an untimed warm-up
            assert server.request("DELETE", f"{ENDPOINTS}/{name2}")[0] == 200
            wait_for(lambda: "10.2.0.0/16" not in _routes(lab, 1), 10,
                     "cluster 1 to drop cluster 2's routes")
            time.sleep(0.3)
            pinger = Pinger(gw1.pod_ns[0], gw2.pod_ips[0])
            try:
                if not pinger.sent.wait(5):
                    raise RuntimeError("ping printed nothing")
                time.sleep(0.1)
                t = time.time()
                status, body = server.request("POST", ENDPOINTS, obj)
                if status != 201:
                    raise RuntimeError(f"creating the Endpoint: HTTP {status}: {body}")
                if not pinger.replied.wait(10):
                    raise RuntimeError(f"run {i}: no ping reply within 10 s")
            finally:
                pinger.stop()
            assert pinger.first_reply is not None
            ms = (pinger.first_reply - t) * 1000
            if i:
                samples.append(ms)
            print(f"  run {i}{' (warm-up)' if not i else ''}: first reply after {ms:.0f} ms",
                  file=sys.stderr, flush=True)
    finally:
        if lab is not None:
            lab.down()
        shutil.rmtree(root, ignore_errors=True)
    rows: list[Row] = [
        row("lab up, 2 clusters (API server start included)", "kubernetes broker", None,
            up * 1000, "ms"),
        row("  ... until both cables connected", "", None, connected * 1000, "ms"),
        row("Endpoint created via the API -> first ping reply", "kubernetes broker", None,
            statistics.median(samples), "ms", p90=pct(samples, 0.9),
            note=f"max {max(samples):.0f} ms over {len(samples)} runs"),
    ]
    return {"rows": rows, "lab_up_ms": up * 1000, "connected_ms": connected * 1000,
            "convergence_ms": summary(samples)}


def plot(result: dict[str, Any], ax: Any) -> None:
    """The figure's panel: the convergence samples, and the lab's start as text."""
    samples = result["convergence_ms"].get("samples", [])
    if samples:
        ax.boxplot([samples], vert=False, widths=0.5)
        ax.plot(samples, [1] * len(samples), ".", alpha=0.5)
    ax.set_yticks([1], ["Endpoint created\nvia the API\n-> first ping reply"], fontsize=7)
    ax.set_xlabel("ms")
    ax.set_title("Kubernetes broker: convergence")
    ax.text(0.98, 0.05, f"lab up (API server start included): {result['lab_up_ms'] / 1000:.1f} s"
            f"\nboth cables connected: {result['connected_ms'] / 1000:.1f} s",
            transform=ax.transAxes, ha="right", va="bottom", fontsize=7)
    ax.grid(True, axis="x", alpha=0.3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Kubernetes broker: start and convergence")
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("broker_bench: needs root", file=sys.stderr)
        return 2
    result = run(args.repeat)
    for r in result["rows"]:
        print(f"{r['metric']:<55} {r['value']:8.1f} {r['unit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
