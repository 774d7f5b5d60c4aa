"""The route agent in the lab (issue 13): pods on every node reach every other cluster.

Labs of several nodes per cluster, with a real `wgcable agent` on each gateway and a
`wgcable route-agent` on every node.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wgcable.cli.lab import remove

from .labtools import MakeLab, Pinger, unreachable_pod_pairs, wait_for

pytestmark = pytest.mark.netns


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


def test_multinode_route_agent_follows_a_gateway_moved_by_hand(
        make_userspace_lab: MakeLab) -> None:
    """Cluster 1's gateway moves from node 0 to node 1 (agent stopped, `wgcable cleanup`,
    an agent started on node 1 with its address): every node's route agent follows the new
    Endpoint, and every pod pair is reachable again. The time is printed."""
    lab = make_userspace_lab(2, nodes=2)
    assert unreachable_pod_pairs(lab, settle=30) == []
    moved = lab.move_gateway(1, 1)
    t0 = time.monotonic()
    wait_for(lambda: lab.ping_pod(2, 1, 1, 0, timeout=0.5) is not None, 30,
             "cluster 2's worker to reach the old gateway node's pod through the new one")
    print(f"gateway moved in {moved:.1f} s (stop, cleanup, start); pings resumed "
          f"{time.monotonic() - t0:.1f} s after the new agent was started")
    new_gw = lab.node(1, 1)
    assert lab.gateway(1).private_ip == new_gw.node_ip
    dump = subprocess.run(lab.gateway_cmd(lab.gateway(2), "wg", "show", "subwg0", "endpoints"),
                          capture_output=True, text=True, check=True).stdout
    assert f"{new_gw.node_ip}:" in dump  # cluster 2 connects to the new gateway node
    assert unreachable_pod_pairs(lab, settle=30) == []
