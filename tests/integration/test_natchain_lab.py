"""The SNAT exemption's NAT chain follows the host's NAT (issue 16, throughput): absent on a
gateway with no NAT of its own (so the pods' flows are not tracked there), loaded within
milliseconds when a CNI-like masquerade appears (and the exemption then works), gone again
when the masquerade goes. A real 2-cluster lab: real agents, nft and wireguard-go.

Lab names start with ``nc``; every lab is taken down in a finally, pass or fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wgcable.lab.lab import GatewayState, Lab
from wgcable.lab.netns import Namespace, list_namespaces
from wgcable.routeagent.state import Settings as RouteAgentSettings
from wgcable.routing.nftables import NAT_CHAIN, NftTable, table_name

from .labtools import MakeLab, print_agent_logs, unreachable_pod_pairs, wait_for
from .test_lab import _peer_seen_by, _seen_from

pytestmark = pytest.mark.netns

DEVICE = "subwg0"
BOUND = 5.0  # seconds: generous (no timing is asserted); the latency measured is printed


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    lab = Lab.up(f"nc{os.getpid() % 10000}", 2, root=str(tmp_path / "labs"),
                 agent_args=["--backend", "userspace"])
    try:
        wait_for(lab.all_connected, 30, "all cables connected")
        yield lab
    finally:
        print_agent_logs(lab)
        assert lab.down() == []
        assert not [n for n in list_namespaces() if n.startswith(f"{lab.state.prefix}-")]


def _has_chain(gw: GatewayState) -> bool:
    nft = NftTable(DEVICE, gw.gateway_ns)
    try:
        return nft.has_chain(NAT_CHAIN)
    finally:
        nft.close()


def _our_table(gw: GatewayState) -> str:
    return Namespace(gw.gateway_ns).run("nft", "list", "table", "inet", f"wgcable_{DEVICE}")


def _tracked(gw: GatewayState, src: str, dst: str) -> list[str]:
    """The gateway's conntrack entries of TCP from ``src`` to ``dst`` (its namespace's)."""
    text = Namespace(gw.gateway_ns).run("cat", "/proc/net/nf_conntrack")
    return [ln for ln in text.splitlines()
            if " tcp " in f" {ln} " and f"src={src} dst={dst} " in ln]


def _masquerade(lab: Lab, gw: GatewayState, load: bool) -> None:
    """The lab's CNI-like masquerade (what ``--snat`` loads at start) in ``gw``'s
    namespace, or its removal."""
    if load:
        lab._snat(gw, gw.gateway_ns)
    else:
        Namespace(gw.gateway_ns).run("nft", "delete", "table", "ip", "wgcable_lab_snat")


def _diagnose_masquerade(lab: Lab, gw: GatewayState) -> dict[str, str]:
    argv = [a if a != "agent" else "diagnose" for a in lab.agent_argv(gw)]
    p = subprocess.run(lab.gateway_cmd(gw, *argv, "--check=masquerade", "--json"),
                       capture_output=True, text=True, timeout=60, check=False)
    [check] = [c for c in json.loads(p.stdout)["checks"] if c["check"] == "masquerade"]
    return dict(check)


def test_nat_chain_follows_the_host_nat(lab: Lab) -> None:
    gw1 = lab.gateway(1)
    pod1, pod2 = gw1.pod_ips[0], lab.gateway(2).pod_ips[0]

    # No NAT on the gateway: our table has its sets and clamps, no NAT chain.
    table = _our_table(gw1)
    assert "maxseg" in table
    assert "set remote4" in table
    assert f"chain {NAT_CHAIN}" not in table, table
    assert "snat" not in table
    assert lab.ping(1, 2, count=2) is not None
    # A pod's TCP connection across is not tracked on the gateway (a tracked one would
    # stay listed, in TIME_WAIT, for minutes).
    assert _peer_seen_by(lab, 1, 2) == (pod1, "hi")
    assert _tracked(gw1, pod1, pod2) == []
    idle = _diagnose_masquerade(lab, gw1)
    assert idle["status"] == "pass", idle
    assert "no NAT on this host" in idle["detail"], idle

    # A CNI masquerades: our chain follows, and the pods keep their own addresses.
    t0 = time.monotonic()
    _masquerade(lab, gw1, True)
    took = wait_for(lambda: _has_chain(gw1), BOUND, "our NAT chain after the masquerade")
    print(f"NAT chain loaded {(time.monotonic() - t0) * 1000:.0f} ms after the masquerade "
          f"table (polled: {took * 1000:.0f} ms)")
    assert "snat ip to ip saddr" in _our_table(gw1)
    assert _peer_seen_by(lab, 1, 2) == (pod1, "hi")
    assert lab.ping(1, 2, count=2) is not None
    assert lab.all_connected()
    assert _diagnose_masquerade(lab, gw1)["status"] == "pass"

    # The masquerade goes: so does our chain.
    t0 = time.monotonic()
    _masquerade(lab, gw1, False)
    took = wait_for(lambda: not _has_chain(gw1), BOUND, "our NAT chain to go")
    print(f"NAT chain removed {(time.monotonic() - t0) * 1000:.0f} ms after the masquerade "
          f"table (polled: {took * 1000:.0f} ms)")
    assert "maxseg" in _our_table(gw1)
    assert lab.ping(1, 2, count=2) is not None
    wait_for(lab.all_connected, 10, "all cables connected")


def test_nat_chain_missing_under_a_masquerade_fails_diagnose(lab: Lab) -> None:
    """The agent stopped (it would load the chain at once), a masquerade loaded: diagnose
    names the exemption as missing, as it did when the chain was always there."""
    gw1 = lab.gateway(1)
    lab.stop_agent(1)
    try:
        _masquerade(lab, gw1, True)
        assert not _has_chain(gw1)
        got = _diagnose_masquerade(lab, gw1)
        assert got["status"] == "fail", got
        assert "wgcable_lab_snat" in got["detail"], got
        assert "missing" in got["detail"], got
    finally:
        lab.start_agent(1)
    took = wait_for(lambda: _has_chain(gw1), 30, "the restarted agent to load its chain")
    print(f"the restarted agent loaded its NAT chain after {took:.2f} s")
    wait_for(lab.all_connected, 30, "all cables connected")
    assert _peer_seen_by(lab, 1, 2) == (gw1.pod_ips[0], "hi")


def _icmp_reply_dst(gw: GatewayState, src: str, dst: str) -> list[str]:
    """The reply tuple's destination of each ICMP entry ``src`` -> ``dst`` in the gateway's
    connection tracking: ``src`` itself unless source NAT rewrote the flow."""
    text = Namespace(gw.gateway_ns).run("cat", "/proc/net/nf_conntrack")
    out = []
    for ln in text.splitlines():
        if " icmp " in ln and f"src={src} dst={dst} " in ln:
            dsts = [w[4:] for w in ln.split() if w.startswith("dst=")]
            out.append(dsts[1] if len(dsts) > 1 else "?")
    return out


def test_flows_masqueraded_before_the_chain_are_unbound(lab: Lab) -> None:
    """The hazard of the milliseconds between a CNI's masquerade and our chain, made long:
    gateway 1's agent is stopped while the masquerade appears and a pod pings across (one
    ICMP identifier: one entry, kept alive by each echo, as the health check's). Once the
    agent runs again its chain is loaded and that entry deleted: the next echo gets our
    null binding, and the remote sees the pod's own address again."""
    gw1 = lab.gateway(1)
    pod1, pod2 = gw1.pod_ips[0], lab.gateway(2).pod_ips[0]
    ping = subprocess.Popen(Namespace(gw1.pod_ns[0]).cmd("ping", "-i", "0.2", "-w", "30",
                                                         pod2),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        os.kill(gw1.agent_pid, signal.SIGSTOP)  # our lab's agent, by its recorded PID
        try:
            _masquerade(lab, gw1, True)
            # Connection tracking is on now, our chain is not there: the next echo's entry
            # is bound by the masquerade.
            wait_for(lambda: any(d != pod1 for d in _icmp_reply_dst(gw1, pod1, pod2)),
                     BOUND, "the ping's entry, masqueraded")
        finally:
            os.kill(gw1.agent_pid, signal.SIGCONT)
        took = wait_for(lambda: _icmp_reply_dst(gw1, pod1, pod2) == [pod1], BOUND,
                        "the ping's entry, with the pod's own address")
        print(f"the masqueraded entry was replaced {took * 1000:.0f} ms after the agent ran")
        assert _has_chain(gw1)
    finally:
        ping.kill()
        ping.wait()
    wait_for(lab.all_connected, 10, "all cables connected")


# --- the route agent's table: the same rule on every node ----------------------------------


def _ra_table(namespace: str) -> str:
    return Namespace(namespace).run("nft", "list", "table", "inet",
                                    table_name(RouteAgentSettings().device))


def test_route_agent_nat_chain_follows_the_nodes_nat(make_userspace_lab: MakeLab) -> None:
    """The route agent's table (null bindings for worker pods' traffic to remote clusters)
    has a NAT chain only on a node with NAT of its own that routes to the gateway: never on
    the gateway node (the driver's table exempts there), on a worker only while a CNI-like
    masquerade is loaded. So a gateway node of a multi-node cluster without NAT tracks no
    pod flow either."""
    lab = make_userspace_lab(2, nodes=2)
    assert unreachable_pod_pairs(lab, settle=30) == []
    gw_node, worker = lab.nodes(1)
    remote = lab.nodes(2)[1]
    gw1 = lab.gateway(1)
    assert "nat hook postrouting" not in _ra_table(gw_node.namespace)
    assert "nat hook postrouting" not in _ra_table(worker.namespace)
    assert "nat hook postrouting" not in _our_table(gw1)
    src, dst = worker.pod_ips[0], remote.pod_ips[0]
    assert _seen_from(worker.pod_ns[0], remote.pod_ns[0], dst) == (src, "hi")
    assert _tracked(gw1, src, dst) == []  # forwarded by the gateway node, untracked

    # A CNI masquerades on every node of cluster 1 (as --snat does).
    t0 = time.monotonic()
    lab._snat(gw1, worker.namespace)
    lab._snat(gw1, gw_node.namespace)
    wait_for(lambda: "nat hook postrouting" in _ra_table(worker.namespace), BOUND,
             "the worker's route agent to load its NAT chain")
    print(f"worker's NAT chain loaded within {(time.monotonic() - t0) * 1000:.0f} ms")
    wait_for(lambda: _has_chain(gw1), BOUND, "the driver's NAT chain")
    assert "snat ip to ip saddr" in _ra_table(worker.namespace)
    assert "nat hook postrouting" not in _ra_table(gw_node.namespace)
    assert _seen_from(worker.pod_ns[0], remote.pod_ns[0], dst) == (src, "hi")
    assert _seen_from(gw_node.pod_ns[0], remote.pod_ns[0], dst) == (gw_node.pod_ips[0], "hi")

    # The masquerade goes from the worker: its chain goes too.
    Namespace(worker.namespace).run("nft", "delete", "table", "ip", "wgcable_lab_snat")
    wait_for(lambda: "nat hook postrouting" not in _ra_table(worker.namespace), BOUND,
             "the worker's NAT chain to go")
    assert _seen_from(worker.pod_ns[0], remote.pod_ns[0], dst) == (src, "hi")
    assert unreachable_pod_pairs(lab, settle=10) == []
