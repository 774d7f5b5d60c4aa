"""Gateway high availability with the Kubernetes store (issue 14): the lease is a real
``coordination.k8s.io/v1`` Lease (each cluster's in a namespace of its own, with
deploy/rbac.yaml's lease Role), the Endpoints and Gateways are the broker's objects. A lab of
2 clusters of 3 nodes, candidates on nodes 0 and 1: handover, then node death."""

from __future__ import annotations

import time

import pytest
from test_broker import (  # noqa: F401 (kube_available, make_lab: fixtures)
    GATEWAYS,
    MakeLab,
    api,
    endpoints,
    kube_available,
    make_lab,
    wait_for,
)

from integration.labtools import Pinger, unreachable_pod_pairs
from wgcable.lab.kubeapi import lease_namespace
from wgcable.lab.lab import GatewayState, Lab

pytestmark = pytest.mark.kubernetes

DEADLINE = 30


def active(lab: Lab, cluster: int) -> GatewayState:
    gw = lab.active(cluster)
    assert gw is not None, f"cluster{cluster} has no single active gateway"
    return gw


def lease_holder(lab: Lab, cluster: int) -> str:
    path = (f"/apis/coordination.k8s.io/v1/namespaces/{lease_namespace(f'cluster{cluster}')}"
            "/leases/submariner-gateway-lock")
    status, body = api(lab).request("GET", path)
    assert status == 200, body
    holder: str = body["spec"]["holderIdentity"]
    return holder


def cluster_endpoints(lab: Lab, cluster: int) -> list[str]:
    return sorted(n for n in endpoints(lab) if n.startswith(f"cluster{cluster}-"))


def own_endpoint(lab: Lab, gw: GatewayState) -> str:
    st = lab.status(gw)
    assert st is not None
    return st.gateway.local_endpoint.object_name()


def test_failover_kube_handover_then_node_death(make_lab: MakeLab) -> None:  # noqa: F811
    lab = make_lab(2, nodes=3, gateways=2, wait=False)
    wait_for(lab.all_connected, 60, "all cables connected")
    for c in (1, 2):
        gw = active(lab, c)
        assert lease_holder(lab, c) == f"{gw.hostname}-submariner-gateway"
        wait_for(lambda c=c, gw=gw: cluster_endpoints(lab, c) == [own_endpoint(lab, gw)],
                 DEADLINE, f"one Endpoint of cluster{c}")
    # Each candidate's Gateway object says its role, under a name with its cluster.
    def roles() -> dict[str, str]:
        _, body = api(lab).request("GET", GATEWAYS)
        return {o["metadata"]["name"]: o.get("status", {}).get("haStatus")
                for o in body["items"]}

    wait_for(lambda: len(roles()) == 4, DEADLINE, "every candidate's Gateway object")
    assert sorted(roles()) == ["cluster1-gw1", "cluster1-gw1-1", "cluster2-gw2",
                               "cluster2-gw2-1"]
    assert sorted(roles().values()) == ["active", "active", "passive", "passive"]
    assert unreachable_pod_pairs(lab, settle=30) == []

    # Handover, worker to worker at 10 pings/s: make before break (the target of at most
    # one lost is the bench's to check; see test_handover_makes_before_it_breaks).
    old = active(lab, 1)
    with Pinger(lab, 2, 1, src_node=2, dst_node=2) as ping:
        ping.wait_replies(10, DEADLINE, "before the handover")
        lab.handover(1)
        wait_for(lambda: lab.active(1) not in (None, old), DEADLINE, "the standby active")
        ping.wait_replies(15, DEADLINE, "after the handover")
        sent, lost = ping.stop()
    print(f"kubernetes handover: {len(lost)} of {sent} lost")
    assert len(lost) <= 3, ping.output[-2000:]
    new = active(lab, 1)
    assert lease_holder(lab, 1) == f"{new.hostname}-submariner-gateway"
    wait_for(lambda: cluster_endpoints(lab, 1) == [own_endpoint(lab, new)], DEADLINE,
             "the old active's Endpoint gone")

    # Node death of the new active: the old one (now passive) takes over.
    with Pinger(lab, 2, 1, src_node=2, dst_node=2) as ping:
        ping.wait_replies(5, DEADLINE, "before the node dies")
        n = ping.replies()
        t0 = time.monotonic()
        lab.kill_node(1, new.node)
        wait_for(lambda: ping.replies() > n + 1, DEADLINE, "pings through the new gateway")
        took = time.monotonic() - t0
        ping.stop()
    print(f"kubernetes node death to pings through the new gateway: {took:.2f} s")
    assert lab.active(1) is old
    assert lease_holder(lab, 1) == f"{old.hostname}-submariner-gateway"
    wait_for(lambda: cluster_endpoints(lab, 1) == [own_endpoint(lab, old)], DEADLINE,
             "the dead gateway's Endpoint gone")
