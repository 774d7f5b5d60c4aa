"""Benchmark: two gateways that learn of each other at the same instant.

Run as root from the repository root::

    .venv/bin/python -m bench.firstcontact_bench [--repeat 20]

Two clusters of namespaces, each with a wireguard cable driver on a wireguard-go device
(no agents: the drivers are driven from here). Each round, both drivers connect each other
at one instant (a barrier between two threads), as two agents do when they start together,
and the time until a ping has gone each way is measured. Each driver runs in a process of
its own, as each agent does. Rounds alternate between the
driver as shipped (the greater key answers first: ``cable/wireguard/firstcontact.py``) and
the same driver with that off (``answer_first_wait`` 0: both initiate at once). Crossed
initiations cost WireGuard's 5 s retry; wireguard-go's race costs 15 s in one direction.

Everything lives in namespaces under a temporary prefix; they are removed on every exit.
Figures are printed, never asserted. ``run()`` is importable by ``python -m bench``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import row
from wgcable.cable import Endpoint, NATEndpointInfo
from wgcable.cable.remote import PUBLIC_KEY
from wgcable.cable.wireguard.config import DEFAULT_ANSWER_FIRST_WAIT, WireGuardConfig
from wgcable.cable.wireguard.driver import WireGuardDriver
from wgcable.lab.netns import LabError
from wgcable.lab.topology import ClusterNet, Topology
from wgcable.wgctrl import Key, write_key_file

GIVE_UP = 20.0  # seconds: a round that never pings both ways (not seen)


class _Gateway:
    def __init__(self, net: ClusterNet, state_dir: Path) -> None:
        self.net = net
        self.endpoint = Endpoint(
            cluster_id=net.cluster_id, cable_name=f"submariner-cable-{net.cluster_id}",
            hostname=f"gw{net.index}", subnets=list(net.subnets), private_ip=net.underlay_ip,
            public_ip="", nat_enabled=False, backend="wireguard", backend_config={})
        # The key is made here, so that each gateway's process knows the other's.
        state_dir.mkdir(mode=0o700, parents=True)
        key = Key.generate()
        write_key_file(state_dir / "subwg0.key", key)
        self.endpoint.backend_config[PUBLIC_KEY] = key.public_key().base64()
        # Set up in the gateway's own process (_serve), which drives it from then on.
        self.driver = WireGuardDriver(self.endpoint, WireGuardConfig(
            netns=net.gateway.name, state_dir=str(state_dir), backend="userspace",
            resolv_conf=os.devnull))

    def info(self) -> NATEndpointInfo:
        return NATEndpointInfo(endpoint=self.endpoint, use_ip=self.endpoint.private_ip,
                               use_nat=False)

    def pings(self, other: _Gateway) -> bool:
        try:
            self.net.pods[0].run("ping", "-c", "1", "-W", "0.2", other.net.pod_ip())
        except LabError:
            return False
        return True


def _serve(g: _Gateway, other: _Gateway, gate: Any, cmds: Any, done: Any) -> None:
    """A gateway's own process, as an agent is: connects on each command, after the
    barrier, so that the two gateways act at one instant in parallel (not under one GIL)."""
    g.driver.init()
    done.put("up")
    while True:
        cmd, wait = cmds.get()
        first = g.driver._peer_res.first  # a benchmark's switch, not a setting
        if cmd == "stop":
            g.driver.cleanup(remove_key=True)
            done.put("stopped")
            return
        if cmd == "connect":
            first.wait = wait
            first.removed.clear()  # each round a first contact
            gate.wait()
            g.driver.connect_to_endpoint(other.info())
        else:
            g.driver.disconnect_from_endpoint(other.endpoint)
        done.put(cmd)


def _round(a: _Gateway, b: _Gateway, workers: list[tuple[Any, Any]], gate: Any,
           wait: float) -> float:
    """Seconds from both connecting at once to a ping each way."""
    for cmds, _ in workers:
        cmds.put(("connect", wait))
    gate.wait()
    t0 = time.monotonic()
    for _, done in workers:
        done.get(timeout=30)
    ab = ba = False
    while not (ab and ba) and time.monotonic() - t0 < GIVE_UP:
        ab = ab or a.pings(b)
        ba = ba or b.pings(a)
    took = time.monotonic() - t0
    for cmds, done in workers:
        cmds.put(("disconnect", 0.0))
        done.get(timeout=30)
    time.sleep(0.2)  # the daemons settle
    return took


def run(repeat: int) -> dict[str, Any]:
    topo = Topology(f"wgfc{os.getpid() % 10000}")
    root = tempfile.mkdtemp(prefix="wgcable-firstcontact-bench-")
    on: list[float] = []
    off: list[float] = []
    ctx = multiprocessing.get_context("fork")
    procs: list[Any] = []
    workers: list[tuple[Any, Any]] = []
    try:
        topo.build_underlay()
        nets = [topo.add_cluster(i) for i in (1, 2)]
        a, b = (_Gateway(n, Path(root) / f"gw{n.index}") for n in nets)
        gate = ctx.Barrier(3, timeout=30)
        for g, o in ((a, b), (b, a)):
            cmds, done = ctx.Queue(), ctx.Queue()
            p = ctx.Process(target=_serve, args=(g, o, gate, cmds, done), daemon=True)
            p.start()
            procs.append(p)
            workers.append((cmds, done))
        for _, done in workers:
            done.get(timeout=30)  # both devices up
        for i in range(repeat):
            for wait, into in ((DEFAULT_ANSWER_FIRST_WAIT, on), (0.0, off)):
                into.append(_round(a, b, workers, gate, wait))
            print(f"  round {i + 1}: answer first {on[-1] * 1000:6.0f} ms, both initiate "
                  f"{off[-1] * 1000:6.0f} ms", file=sys.stderr, flush=True)
    finally:
        for (cmds, done), p in zip(workers, procs, strict=True):
            with contextlib.suppress(Exception):
                cmds.put(("stop", 0.0))
                done.get(timeout=30)
            p.join(10)
            if p.is_alive():
                p.kill()  # our own child, by its PID
        topo.destroy()
        shutil.rmtree(root, ignore_errors=True)
    return result_of(on, off)


def result_of(on: list[float], off: list[float]) -> dict[str, Any]:
    def crossed(xs: list[float]) -> int:
        return sum(1 for x in xs if x > 4.0)  # a 5 s retry (or worse) happened

    result: dict[str, Any] = {"repeat": float(len(on)), "on_s": on, "off_s": off}
    rows = []
    for label, xs in (("greater key answers first (as shipped)", on),
                      ("both initiate at once (answer_first_wait 0)", off)):
        rows.append(row("two gateways meet at once -> a ping each way", label, None,
                        statistics.median(xs) * 1000, "ms",
                        p90=sorted(xs)[math.ceil(0.9 * len(xs)) - 1] * 1000,  # nearest rank
                        note=f"max {max(xs) * 1000:.0f} ms; {crossed(xs)} of {len(xs)} "
                             "rounds over 4 s"))
    result["rows"] = rows
    return result


def plot(result: dict[str, Any], ax: Any) -> None:
    """Every round's time, answer-first against both-initiate."""
    data = [[x * 1000 for x in result["on_s"]], [x * 1000 for x in result["off_s"]]]
    ax.boxplot(data, vert=False, labels=["answer first", "both initiate"])
    ax.set_xlabel("ms from both connecting to a ping each way")
    ax.set_title(f"first contact ({result['repeat']:.0f} rounds each)")
    ax.grid(True, axis="x", alpha=0.3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--repeat", type=int, default=20, help="rounds of each (default 20)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("firstcontact_bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    for tool in ("ip", "wireguard-go", "ping", "nft"):
        if shutil.which(tool) is None:
            print(f"firstcontact_bench: {tool} not found; run scripts/install.sh",
                  file=sys.stderr)
            return 2
    result = run(args.repeat)
    print("| first contact | median | p90 | max | rounds over 4 s |")
    print("|---|---|---|---|---|")
    for r in result["rows"]:
        p90 = r.get("p90")
        print(f"| {r['impl']} | {r['value']:.0f} ms | "
              f"{'' if p90 is None else f'{p90:.0f} ms'} | {r.get('note', '')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
