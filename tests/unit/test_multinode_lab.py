"""The lab's multi-node layout, without building anything: the addresses each node and pod
gets, what lab.json records (and reads back from before nodes), the route agent's command
line, the ping matrix's pairs and exit code, and `--nodes` checked before any output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from wgcable.cli import lab as cli_lab
from wgcable.cli.main import main
from wgcable.lab.lab import GatewayState, Lab, LabState, Pod, is_lab_namespace
from wgcable.lab.netns import LabError, Namespace
from wgcable.lab.topology import ClusterNet, NodeNet


def _cluster(i: int, nat: bool = False, ipv6: bool = True, nodes: int = 3) -> ClusterNet:
    c = ClusterNet(i, f"cluster{i}", Namespace(f"wglx-gw{i}"), ipv6=ipv6, nat=nat)
    c.nodes = [NodeNet(0, c.gateway, c.pods),
               *(NodeNet(j, Namespace(f"wglx-node{i}-{j}")) for j in range(1, nodes))]
    return c


def test_multinode_node0_keeps_the_single_node_addresses() -> None:
    c = _cluster(3)
    assert (c.node_ip(0), c.underlay_ip, c.public_ip) == ("198.18.0.3",) * 3
    assert (c.cni_ip(0), c.gateway_pod_ip) == ("10.3.0.1", "10.3.0.1")
    assert (c.pod_ip(0), c.pod_ip(0, 0), c.pod_ip(1)) == ("10.3.0.2", "10.3.0.2", "10.3.0.3")
    assert (c.node_ip6(0), c.underlay_ip6) == ("fdce:18::3", "fdce:18::3")
    assert (c.cni_ip6(0), c.gateway_pod_ip6, c.pod_ip6(0)) == ("fd00:3::1",) * 2 + ("fd00:3::2",)
    assert (c.pod_cidr(0), c.pod_cidr6(0)) == ("10.3.0.0/24", "fd00:3::/64")
    assert c.subnets == ["10.3.0.0/16", "10.103.0.0/16", "fd00:3::/48", "fd00:103::/48"]


@pytest.mark.parametrize(("node", "ip", "ip6", "cidr", "cidr6", "cni", "pod", "pod6"), [
    (1, "198.18.2.11", "fdce:18::2:1", "10.2.1.0/24", "fd00:2:0:1::/64", "10.2.1.1",
     "10.2.1.2", "fd00:2:0:1::2"),
    (7, "198.18.2.17", "fdce:18::2:7", "10.2.7.0/24", "fd00:2:0:7::/64", "10.2.7.1",
     "10.2.7.2", "fd00:2:0:7::2"),
])
def test_multinode_worker_addresses(node: int, ip: str, ip6: str, cidr: str, cidr6: str,
                                    cni: str, pod: str, pod6: str) -> None:
    c = _cluster(2)
    assert (c.node_ip(node), c.node_ip6(node), c.node_plen()) == (ip, ip6, 16)
    assert (c.pod_cidr(node), c.pod_cidr6(node), c.cni_ip(node)) == (cidr, cidr6, cni)
    assert (c.pod_ip(0, node), c.pod_ip6(0, node)) == (pod, pod6)


def test_multinode_nat_cluster_nodes_share_the_routers_inside_network() -> None:
    c = _cluster(2, nat=True)
    assert (c.node_ip(0), c.node_ip(1), c.node_ip(3), c.node_plen()) == (
        "198.19.2.2", "198.19.2.11", "198.19.2.13", 24)
    assert c.public_ip == "198.18.0.102"
    assert (c.node_ip6(0), c.node_ip6(1)) == ("fdce:19:2::2", "fdce:19:2::11")
    assert c.pod_cidr(1) == "10.2.1.0/24"  # pod CIDRs do not depend on NAT


def test_multinode_every_address_is_distinct_and_underlay_stays_in_198_18_15() -> None:
    import ipaddress

    nodes = [(c, j) for i in range(1, 51) for c in [_cluster(i, nat=i % 2 == 0, nodes=8)]
             for j in range(8)]
    ips = [c.node_ip(j) for c, j in nodes] + [f"198.18.0.{100 + i}" for i in range(1, 51)]
    ips.append("198.18.0.250")  # the broker
    assert len(set(ips)) == len(ips)
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("198.18.0.0/15") for ip in ips)
    ip6s = [c.node_ip6(j) for c, j in nodes]
    assert len(set(ip6s)) == len(ip6s)
    for c, j in nodes:
        cidr = ipaddress.ip_network(c.pod_cidr(j))
        assert cidr.subnet_of(ipaddress.ip_network(c.subnets[0]))  # type: ignore[arg-type]
        assert ipaddress.ip_address(c.pod_ip(0, j)) in cidr
        cidr6 = ipaddress.ip_network(c.pod_cidr6(j))
        assert cidr6.subnet_of(ipaddress.ip_network(c.subnets[2]))  # type: ignore[arg-type]
        assert ipaddress.ip_address(c.pod_ip6(0, j)) in cidr6
    # Node pod CIDRs of one cluster never overlap.
    cidrs = [c.pod_cidr(j) for c, j in nodes]
    assert len(set(cidrs)) == len(cidrs)


@pytest.mark.parametrize(("name", "mine"), [
    ("wglab-node1-2", True), ("wglab-pod1-2-0", True), ("wglab-pod12-7-3", True),
    ("wglab-node1", False), ("wglab-pod1-2-0-1", False), ("wglab-1-node1-2", False),
])
def test_multinode_is_lab_namespace(name: str, mine: bool) -> None:
    assert is_lab_namespace("wglab", name) is mine


def test_multinode_node_state_records_each_node() -> None:
    c = _cluster(1)
    c.nodes[1].pods.append(Namespace("wglx-pod1-1-0"))
    gw, worker = Lab._node_state(c, 0), Lab._node_state(c, 1)
    assert (gw.cluster, gw.index, gw.namespace, gw.hostname) == (1, 0, "wglx-gw1", "gw1")
    assert (worker.index, worker.namespace, worker.hostname) == (1, "wglx-node1-1",
                                                                 "wglx-node1-1")
    assert (worker.node_ip, worker.node_ip6) == ("198.18.1.11", "fdce:18::1:1")
    assert worker.pod_ns == ["wglx-pod1-1-0"]
    assert (worker.pod_ips, worker.pod_ips6) == (["10.1.1.2"], ["fd00:1:0:1::2"])
    assert worker.pod_cidrs == ["10.1.1.0/24", "fd00:1:0:1::/64"]
    assert worker.route_agent_pid == 0


def _gateway(i: int) -> GatewayState:
    return GatewayState(i, f"cluster{i}", f"wglx-gw{i}", [f"wglx-pod{i}-0"], f"198.18.0.{i}",
                        "", False, [f"10.{i}.0.0/16", f"10.{100 + i}.0.0/16"],
                        [f"10.{i}.0.2"], [], f"10.{i}.0.1")


def test_multinode_lab_json_from_before_nodes_reads(tmp_path: Path) -> None:
    state = LabState("x", "wglx", str(tmp_path), False, False, False, 0.0,
                     gateways=[_gateway(1), _gateway(2)])
    doc = json.loads(json.dumps(state.__dict__, default=lambda o: o.__dict__))
    del doc["nodes"], doc["nodes_per_cluster"]  # as written before nodes existed
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "lab.json").write_text(json.dumps(doc))
    lab = Lab.load("x", str(tmp_path))
    assert lab.state.nodes == []
    assert lab.state.nodes_per_cluster == 1
    assert [(n.cluster, n.index, n.namespace) for n in lab.nodes()] == [
        (1, 0, "wglx-gw1"), (2, 0, "wglx-gw2")]
    assert lab.pods() == [
        Pod(1, "cluster1", 0, "wglx-gw1", "wglx-pod1-0", "10.1.0.2", ""),
        Pod(2, "cluster2", 0, "wglx-gw2", "wglx-pod2-0", "10.2.0.2", "")]
    assert lab.node("cluster2", 0).node_ip == "198.18.0.2"
    with pytest.raises(LabError, match="no node 1"):
        lab.node(1, 1)


def _lab_with_nodes(tmp_path: Path, nodes: int = 2) -> Lab:
    lab = Lab(LabState("x", "wglx", str(tmp_path), False, False, False, 0.0,
                       gateways=[_gateway(1), _gateway(2)], nodes_per_cluster=nodes))
    for i in (1, 2):
        c = _cluster(i, ipv6=False, nodes=nodes)
        for node in c.nodes:
            node.pods.append(Namespace(f"wglx-pod{i}-{node.index}-0"))
        lab.state.nodes += [Lab._node_state(c, j) for j in range(nodes)]
    return lab


def test_multinode_route_agent_command_line(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    lab = _lab_with_nodes(tmp_path)
    monkeypatch.delenv("WGCABLE_SLOWNESS", raising=False)
    argv = lab.route_agent_argv(lab.node(2, 1))
    assert argv[1:] == [
        "-m", "wgcable.cli.main", "route-agent", "--store", str(tmp_path / "x" / "store"),
        "--cluster-id", "cluster2", "--node-ip", "198.18.2.11",
        "--hostname", "wglx-node2-1", "--state-dir", str(tmp_path / "x" / "node2-1"),
        "--log-level", "debug", "--check-interval", "5"]
    # Under the test VM's measured slowness, the drift check is as much rarer.
    monkeypatch.setenv("WGCABLE_SLOWNESS", "20")
    argv = lab.route_agent_argv(lab.node(2, 1))
    assert argv[argv.index("--check-interval") + 1] == "100"
    # On the gateway node, the host name is the gateway agent's own.
    gw_argv = lab.route_agent_argv(lab.node(1, 0))
    assert gw_argv[gw_argv.index("--hostname") + 1] == "gw1"
    agent = lab.agent_argv(lab.gateway(1))
    assert agent[agent.index("--hostname") + 1] == "gw1"
    assert lab.route_agent_log(lab.node(2, 1)) == tmp_path / "x" / "node2-1.route-agent.log"


def test_multinode_ping_matrix_names_nodes_and_fails_on_one_pair(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lab = _lab_with_nodes(tmp_path)
    tried: list[tuple[str, str]] = []

    def ping(src: Pod, dst: Pod, **kw: Any) -> float | None:
        tried.append((src.label, dst.label))
        return None if (src.label, dst.label) == ("cluster1/node1", "cluster2/gw") else 0.5

    monkeypatch.setattr(lab, "ping_between", ping)
    text, ok = cli_lab.ping_matrix(lab, count=1)
    labels = ["cluster1/gw", "cluster1/node1", "cluster2/gw", "cluster2/node1"]
    assert sorted(tried) == sorted((a, b) for a in labels for b in labels if a != b)
    assert not ok
    assert text.splitlines()[1].split() == ["FROM", "\\", "TO", *labels]
    assert "  cluster1/node1: 10.1.1.2 on node wglx-node1-1\n" in text
    assert "  cluster2/gw: 10.2.0.2 on node wglx-gw2 (the gateway)\n" in text
    assert text.endswith("1 of 12 pairs unreachable: cluster1/node1 -> cluster2/gw")
    monkeypatch.setattr(cli_lab, "resolve", lambda name, root: lab)
    assert main(["lab", "ping", "--root", str(tmp_path), "--count", "1"]) == 1
    monkeypatch.setattr(lab, "ping_between", lambda src, dst, **kw: 0.5)
    assert main(["lab", "ping", "--root", str(tmp_path), "--count", "1"]) == 0


def test_multinode_single_node_matrix_keeps_cluster_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lab = _lab_with_nodes(tmp_path, nodes=1)
    monkeypatch.setattr(lab, "ping_between", lambda src, dst, **kw: 0.5)
    text, ok = cli_lab.ping_matrix(lab, count=1)
    assert ok
    assert text.splitlines()[1].split() == ["FROM", "\\", "TO", "cluster1", "cluster2"]
    assert "pods:" not in text
    assert text.endswith("all 2 pairs reachable")


@pytest.fixture
def no_build(monkeypatch: pytest.MonkeyPatch) -> None:
    def up(*args: Any, **kwargs: Any) -> Lab:
        raise LabError("reached Lab.up")
    monkeypatch.setattr(Lab, "up", up)


@pytest.mark.usefixtures("no_build")
@pytest.mark.parametrize("nodes", ["0", "9", "-1"])
@pytest.mark.parametrize("argv", [("lab", "up"), ("demo", "--name", "newcomer")])
def test_multinode_nodes_refused_before_any_output(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, nodes: str,
        argv: tuple[str, ...]) -> None:
    code = main([*argv, "--nodes", nodes, "--root", str(tmp_path)])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err == f"wgcable {argv[0]}: --nodes {nodes}: must be 1-8\n"


@pytest.mark.parametrize("nodes", [0, 9])
def test_multinode_lab_up_api_refuses_nodes(tmp_path: Path, nodes: int) -> None:
    with pytest.raises(LabError, match=f"--nodes {nodes}: must be 1-8"):
        Lab.up("x", 2, nodes=nodes, root=str(tmp_path))
    assert not (tmp_path / "x").exists()


@pytest.mark.usefixtures("no_build")
@pytest.mark.parametrize(("argv", "nodes"), [(("lab", "up"), 2), (("demo",), 2),
                                             (("lab", "up", "--nodes", "8"), 8)])
def test_multinode_nodes_default_and_given_reach_lab_up(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        argv: tuple[str, ...], nodes: int) -> None:
    seen: dict[str, Any] = {}

    def up(*args: Any, **kwargs: Any) -> Lab:
        seen.update(kwargs)
        raise LabError("reached Lab.up")

    monkeypatch.setattr(Lab, "up", up)
    monkeypatch.setattr("wgcable.cli.lab.check_can_build", lambda name, root: None)
    monkeypatch.setattr("wgcable.cli.demo.check_can_build", lambda name, root: None)
    monkeypatch.setattr("wgcable.cli.demo.remove", lambda name, root: (False, []))
    assert main([*argv, "--root", str(tmp_path), "--name", "newcomer"]) == 1
    assert seen["nodes"] == nodes
    assert f"of {nodes} nodes" in capsys.readouterr().err
