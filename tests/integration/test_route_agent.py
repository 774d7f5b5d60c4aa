"""The route agent on real nodes (namespaces), without WireGuard: one cluster's nodes on a
shared network, host-gw pod routing between them, and a "remote cluster" address on the
gateway nodes' loopback standing in for the far side of the cable.

    pod (10.1.2.2) -- cni0 worker (198.18.200.2) --+-- gw1 (198.18.200.1), 10.2.0.1 on lo
                                                    +-- gw2 (198.18.200.3), 10.2.0.1 on lo

rp_filter is strict on every node (as some distributions ship it): the route agent must
loosen it where replies come back on another interface than the routes name, or nothing
gets through. Every test here is named ``route_agent``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from wgcable.lab.netns import Namespace, delete_namespaces, list_namespaces, veth_pair
from wgcable.wgctrl import Key

from .labtools import Pinger, wait_for, write_atomic

pytestmark = pytest.mark.netns

NODES = {"gw1": ("198.18.200.1", 1), "worker": ("198.18.200.2", 2), "gw2": ("198.18.200.3", 3)}
REMOTE = "10.2.0.1"
DEVICE = "vx-submariner"


def endpoint(cluster: str, ip: str, subnets: list[str]) -> str:
    return json.dumps({
        "apiVersion": "submariner.io/v1", "kind": "Endpoint",
        "metadata": {"name": f"{cluster}-cable"},
        "spec": {"cluster_id": cluster, "cable_name": "cable", "hostname": f"{cluster}-gw",
                 "subnets": subnets, "private_ip": ip, "public_ip": "", "nat_enabled": False,
                 "backend": "wireguard",
                 "backend_config": {"publicKey": Key.generate().public_key().base64()}},
    })


@dataclass
class Nodes:
    prefix: str
    store: Path
    state: Path
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def ns(self, node: str) -> Namespace:
        return Namespace(f"{self.prefix}-{node}")

    def start(self, node: str) -> None:
        ip, _ = NODES[node]
        log = open(self.state / f"{node}.log", "ab")  # noqa: SIM115  # the agent's, kept open
        self.agents[node] = subprocess.Popen(
            self.ns(node).cmd(sys.executable, "-m", "wgcable.cli.main", "route-agent",
                              "--store", str(self.store), "--cluster-id", "cluster1",
                              "--node-ip", ip, "--hostname", node, "--state-dir",
                              str(self.state / node), "--log-level", "debug"),
            stdout=log, stderr=log, start_new_session=True)
        log.close()

    def stop(self, node: str, sig: int = signal.SIGTERM) -> None:
        p = self.agents.pop(node, None)
        if p is not None and p.poll() is None:
            p.send_signal(sig)
            p.wait(10)

    def status(self, node: str) -> dict[str, object]:
        try:
            data = json.loads((self.state / node / "route-agent.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def routes(self, node: str) -> list[dict[str, object]]:
        out = self.ns(node).run("ip", "-j", "-N", "route", "show", "proto", "88")
        return list(json.loads(out or "[]"))

    def ifindex(self, node: str) -> int:
        return int(json.loads(self.ns(node).run("ip", "-j", "link", "show", DEVICE))[0]
                   ["ifindex"])

    def publish(self, name: str, text: str) -> None:
        write_atomic(self.store / "endpoints" / f"{name}.json", text)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    prefix = f"wgra{os.getpid() % 10000}"
    n = Nodes(prefix, tmp_path / "store", tmp_path / "state")
    (n.store / "endpoints").mkdir(parents=True)
    (n.store / "gateways").mkdir()
    n.state.mkdir()
    hub = Namespace(f"{prefix}-hub").create()
    try:
        hub.ip("link add br0 type bridge", "link set br0 up")
        for node, (ip, j) in NODES.items():
            ns = n.ns(node).create()
            ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=1",
                   "net.ipv4.conf.default.rp_filter=1")
            veth_pair(ns, "eth0", hub, node, b_then=[f"link set {node} master br0"],
                      a_then=[f"addr add {ip}/24 dev eth0", "link add cni0 type bridge",
                              f"addr add 10.1.{j}.1/24 dev cni0", "link set cni0 up",
                              # host-gw: the other nodes' pod CIDRs via their node IPs
                              *(f"route add 10.1.{k}.0/24 via {kip}"
                                for other, (kip, k) in NODES.items() if other != node)])
            if node.startswith("gw"):
                ns.ip(f"addr add {REMOTE}/32 dev lo")  # the far side of the cable
        pod = n.ns("pod").create()
        veth_pair(n.ns("worker"), "vpod0", pod, "eth0", a_then=["link set vpod0 master cni0"],
                  b_then=["addr add 10.1.2.2/24 dev eth0", "route add default via 10.1.2.1"])
        n.publish("cluster1-cable", endpoint("cluster1", NODES["gw1"][0], ["10.1.0.0/16"]))
        n.publish("cluster2-cable", endpoint("cluster2", "198.18.201.1", ["10.2.0.0/16"]))
        yield n
    finally:
        for node in list(n.agents):
            n.stop(node, signal.SIGKILL)
        for log in sorted(n.state.glob("*.log")):  # shown by pytest for a failed test
            print(f"--- {log.name}", *log.read_text(errors="replace").splitlines()[-30:],
                  sep="\n")
        delete_namespaces([x for x in list_namespaces() if x.startswith(f"{prefix}-")])


def pod_ping(n: Nodes, count: int = 2) -> bool:
    done = subprocess.run(n.ns("pod").cmd("ping", "-n", "-c", str(count), "-i", "0.2", "-W",
                                           "2", REMOTE), capture_output=True, check=False)
    return done.returncode == 0


def via(n: Nodes, node: str) -> set[str]:
    return {str(r.get("gateway")) for r in n.routes(node)}


def test_route_agent_worker_reaches_the_remote_through_the_gateway_and_follows_a_move(
        nodes: Nodes) -> None:
    n = nodes
    assert not pod_ping(n, 1)  # nothing routes the remote CIDR yet: no false pass below
    for node in NODES:
        n.start(node)
    wait_for(lambda: via(n, "worker") == {"240.18.200.1"}, 15, "the worker's route to gw1")
    assert n.routes("gw1") == []  # the gateway's own cable carries it, not the VXLAN
    wait_for(lambda: (n.status("gw1").get("gateway") or {}).get("this_node") is True, 15,
             "gw1 to know it is the gateway")
    assert pod_ping(n)
    # rp_filter: loosened where replies come back on another interface, and only there.
    sysctl = "net.ipv4.conf.{}.rp_filter"
    assert n.ns("worker").run("sysctl", "-n", sysctl.format("eth0")).strip() == "2"
    assert n.ns("worker").run("sysctl", "-n", sysctl.format("cni0")).strip() == "1"
    assert n.ns("gw1").run("sysctl", "-n", sysctl.format(DEVICE)).strip() == "2"
    index = n.ifindex("worker")

    # The gateway moves to gw2: a new Endpoint address for the cluster.
    t0 = time.monotonic()
    n.publish("cluster1-cable", endpoint("cluster1", NODES["gw2"][0], ["10.1.0.0/16"]))
    wait_for(lambda: via(n, "worker") == {"240.18.200.3"}, 5, "the worker to follow gw2")
    print(f"worker repointed {1000 * (time.monotonic() - t0):.0f} ms after the Endpoint "
          "was written (store event to route, through inotify and one pass)")
    assert n.ifindex("worker") == index  # changed in place, not re-created
    fdb = n.ns("worker").run("bridge", "fdb", "show", "dev", DEVICE)
    assert "198.18.200.3" in fdb  # the new gateway's entries went in before the routes
    neigh = n.ns("worker").run("ip", "neigh", "show", "dev", DEVICE)
    assert "240.18.200.3" in neigh
    # The old gateway's go right after the routes moved (the same pass): no stale entry.
    wait_for(lambda: "198.18.200.1" not in n.ns("worker").run("bridge", "fdb", "show",
                                                                "dev", DEVICE)
             and "240.18.200.1" not in n.ns("worker").run("ip", "neigh", "show", "dev",
                                                           DEVICE),
             5, "the old gateway's FDB and neighbour entries to go")
    # gw1, a worker now, follows too (it routes nothing here: the stand-in remote address
    # on its own loopback makes cluster2's subnet one it refuses, as covering its own).
    wait_for(lambda: (n.status("gw1").get("gateway") or {}).get("ip") == "198.18.200.3", 5,
             "gw1, now a worker, to follow")
    assert "198.18.200.3" in n.ns("gw1").run("bridge", "fdb", "show", "dev", DEVICE)
    assert n.routes("gw2") == []
    assert pod_ping(n)

    # A hostile remote Endpoint is refused by name; the others' routes stay.
    n.publish("cluster3-cable", endpoint("cluster3", "198.18.202.1", ["0.0.0.0/0"]))
    wait_for(lambda: "cluster3" in (n.status("worker").get("refused") or {}), 5,
             "the hostile endpoint to be refused")
    assert {str(r["dst"]) for r in n.routes("worker")} == {"10.2.0.0/16"}
    assert pod_ping(n)

    # Cleanup takes away what the route agent made, and only that.
    n.stop("worker")
    assert n.routes("worker")  # a stopped agent leaves its routes: restarts drop nothing
    n.ns("worker").run(sys.executable, "-m", "wgcable.cli.main", "route-agent", "--cleanup",
                       "--store", str(n.store), "--cluster-id", "cluster1", "--node-ip",
                       NODES["worker"][0], "--state-dir", str(n.state / "worker"))
    assert n.ns("worker").run("ip", "link", "show", DEVICE, check=False) == ""
    assert n.routes("worker") == []
    assert n.ns("worker").run("sysctl", "-n", sysctl.format("eth0")).strip() == "1"
    assert "wgcable" not in n.ns("worker").run("nft", "list", "tables")


def test_route_agent_sigkill_mid_traffic_loses_no_ping_and_the_restart_adopts(
        nodes: Nodes) -> None:
    n = nodes
    for node in ("gw1", "worker"):
        n.start(node)
    wait_for(lambda: via(n, "worker") == {"240.18.200.1"}, 15, "the worker's route to gw1")
    wait_for(lambda: (n.status("gw1").get("gateway") or {}).get("this_node") is True, 15,
             "gw1's device to be ready")
    index = n.ifindex("worker")
    with Pinger(None, n.ns("pod").name, REMOTE, interval=0.2) as ping:
        ping.wait_replies(5, 15, "before the kill")
        n.stop("worker", signal.SIGKILL)
        ping.wait_replies(5, 15, "with the route agent dead")
        n.start("worker")
        wait_for(lambda: n.status("worker").get("pid") == n.agents["worker"].pid, 15,
                 "the restarted agent's first pass")
        ping.wait_replies(5, 15, "after the restart")
        sent, lost = ping.stop()
    assert sent >= 15
    assert lost == []
    assert n.ifindex("worker") == index  # adopted, not re-created
    assert via(n, "worker") == {"240.18.200.1"}


def test_route_agent_leaves_a_device_it_does_not_own_alone(nodes: Nodes) -> None:
    """A VXLAN device of our name that is not ours (Submariner's own vx-submariner, say)
    is neither changed nor removed; the agent says why."""
    n = nodes
    n.ns("worker").ip(f"link add {DEVICE} type vxlan id 7 dstport 4789 dev eth0")
    n.start("worker")
    wait_for(lambda: any("not the route agent's" in line for line in
                         (n.state / "worker.log").read_text().splitlines()), 15,
             "the refusal in the log")
    info = json.loads(n.ns("worker").run("ip", "-j", "-d", "link", "show", DEVICE))[0]
    assert info["linkinfo"]["info_data"]["id"] == 7
    assert n.routes("worker") == []


def test_route_agent_puts_back_what_someone_else_removed(nodes: Nodes) -> None:
    """Drift is healed by the periodic check (every 5 s), not only at the 30 s resync:
    a deleted route, neighbour entry or even the whole device comes back."""
    n = nodes
    for node in ("gw1", "worker"):
        n.start(node)
    wait_for(lambda: via(n, "worker") == {"240.18.200.1"}, 15, "the worker's route to gw1")
    worker = n.ns("worker")
    worker.run("ip", "route", "del", "10.2.0.0/16", "proto", "88")
    worker.run("ip", "neigh", "del", "240.18.200.1", "dev", DEVICE)
    wait_for(lambda: via(n, "worker") == {"240.18.200.1"} and "240.18.200.1" in
             worker.run("ip", "neigh", "show", "dev", DEVICE), 12,
             "the route and the neighbour entry to come back")
    worker.run("ip", "link", "del", DEVICE)
    wait_for(lambda: via(n, "worker") == {"240.18.200.1"}, 12, "the device and route back")
    assert pod_ping(n)
