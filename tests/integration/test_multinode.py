"""The route agent in the lab (issue 13): pods on every node reach every other cluster.

A lab of 2 clusters of 3 nodes, with a real `wgcable agent` on each gateway and a
`wgcable route-agent` on every node. These run once `wgcable.routeagent` exists; until
then they are skipped, with the reason.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from wgcable.cli.lab import remove

from .labtools import MakeLab, Pinger, unreachable_pod_pairs, wait_for

pytestmark = pytest.mark.netns


def importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


needs_route_agent = pytest.mark.skipif(not importable("wgcable.routeagent"),
                                       reason="route agent not built yet")


@needs_route_agent
@pytest.mark.parametrize(("snat", "ipv6"), [(False, False), (True, False), (False, True)],
                         ids=["plain", "snat", "ipv6"])
def test_multinode_route_agent_every_pod_reaches_every_pod(
        make_userspace_lab: MakeLab, snat: bool, ipv6: bool) -> None:
    """Worker of cluster 1 <-> worker of cluster 2, gateway-node pods <-> worker pods, and
    every pair inside a cluster: all of them, both ways."""
    lab = make_userspace_lab(2, nodes=3, snat=snat, ipv6=ipv6)
    assert all(lab.route_agent_alive(n.cluster, n.index) for n in lab.state.nodes)
    assert unreachable_pod_pairs(lab, settle=30) == []
    if ipv6:
        assert unreachable_pod_pairs(lab, settle=30, v6=True) == []


@needs_route_agent
def test_multinode_route_agent_sigkill_loses_no_ping(make_userspace_lab: MakeLab) -> None:
    """A worker's route agent killed mid-traffic (5 pings a second, worker to worker across
    clusters): its routes stay, no ping is lost; a new one takes over."""
    lab = make_userspace_lab(2, nodes=2)
    assert unreachable_pod_pairs(lab, settle=30) == []
    with Pinger(lab, 1, 2, interval=0.2, src_node=1, dst_node=1) as ping:
        ping.wait_replies(5, 10, "before the kill")
        lab.stop_route_agent(1, 1, signal.SIGKILL)
        assert not lab.route_agent_alive(1, 1)
        ping.wait_replies(10, 10, "with the route agent dead")
        lab.start_route_agent(1, 1)
        wait_for(lambda: lab.route_agent_alive(1, 1), 10, "the new route agent")
        ping.wait_replies(10, 10, "after the restart")
        sent, lost = ping.stop()
    assert sent >= 25
    assert lost == [], ping.output[-2000:]
    assert lab.ping_pod(1, 1, 2, 1) is not None
    assert lab.ping_pod(2, 1, 1, 1) is not None
    assert unreachable_pod_pairs(lab, settle=10) == []


@needs_route_agent
def test_multinode_route_agent_demo_by_default(tmp_path: Path) -> None:
    """`wgcable demo` as a newcomer runs it: nodes by default, every pod pair reachable,
    each pod's node named."""
    root = tmp_path / "labs"
    name = f"md{os.getpid() % 100000}"
    env = {**os.environ, "WGCABLE_LAB_ROOT": str(root)}
    try:
        r = subprocess.run([sys.executable, "-m", "wgcable", "demo", "--clusters", "2",
                            "--name", name], capture_output=True, text=True, env=env,
                           timeout=180, check=False)
    finally:
        remove(name, str(root))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 clusters of 2 nodes" in r.stderr
    assert "cluster2/node1: 10.2.1.2 on node" in r.stdout
    assert "all 12 pairs reachable" in r.stdout
