"""The node part of `wgcable join --uninstall`: the gateway cleanup DaemonSet's container,
run as rendered (its arguments and environment; the pod's field references filled in as
the kubelet would) on a lab gateway whose agent has stopped, removes the device and its
daemon, rule 220 and its routes, our nftables table and the cluster's Endpoint."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from wgcable.deploy.manifests import parse_settings, uninstall_manifests

from .labtools import MakeLab, on_gateway, wait_for

pytestmark = pytest.mark.netns

# Set by the kubelet from the pod; in the lab, the gateway's values and the lab's store.
_FROM_LAB = ("WGCABLE_STORE", "WGCABLE_STATE_DIR", "KUBECONFIG", "BROKER_K8S_REMOTENAMESPACE")


def test_join_uninstall_cleanup_container_removes_the_node_state(make_lab: MakeLab) -> None:
    lab = make_lab(2, connected=False)  # the state is made at connect, before handshakes
    gw = lab.gateway(1)

    def made() -> bool:
        routes = subprocess.run(lab.gateway_cmd(gw, "ip", "route", "show", "table", "220"),
                                capture_output=True, text=True).stdout  # none yet: exit 2
        return (bool(routes.strip()) and "lookup 220" in on_gateway(lab, gw, "ip", "rule")
                and "wgcable_subwg0" in on_gateway(lab, gw, "nft", "list", "tables"))

    wait_for(made, 30, "cluster1's routes, rule and nftables table")
    pods = [s for s in gw.subnets if s.startswith("10.1.")]
    s = parse_settings(cluster_id=gw.cluster_id, cluster_cidrs=pods,
                       service_cidrs=[x for x in gw.subnets if x not in pods])
    gateway_ds, _ = uninstall_manifests(s, "submariner-k8s-broker")
    [container] = gateway_ds["spec"]["template"]["spec"]["initContainers"]
    fields = {"status.hostIP": gw.private_ip, "spec.nodeName": gw.hostname,
              "metadata.namespace": "submariner-operator"}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WGCABLE_", "SUBMARINER_", "CE_IPSEC_", "KUBECONFIG"))}
    for e in container["env"]:
        if e["name"] in _FROM_LAB or "secretKeyRef" in e.get("valueFrom", {}):
            continue
        ref = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        env[e["name"]] = fields[ref] if ref else e["value"]
    env |= {"WGCABLE_STORE": str(lab.store_dir), "WGCABLE_STATE_DIR": str(lab.state_dir(gw))}

    lab.stop_agent(1)  # the agents' DaemonSet is deleted first; SIGTERM keeps the tunnels
    assert "subwg0" in on_gateway(lab, gw, "ip", "-o", "link")
    assert made()
    cmd = lab.gateway_cmd(gw, sys.executable, "-m", "wgcable", *container["args"])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "subwg0" not in on_gateway(lab, gw, "ip", "-o", "link")
    assert "wgcable_subwg0" not in on_gateway(lab, gw, "nft", "list", "tables")
    assert on_gateway(lab, gw, "ip", "route", "show", "table", "220").strip() == ""
    assert "lookup 220" not in on_gateway(lab, gw, "ip", "rule")
    assert not [p for p in (lab.store_dir / "endpoints").iterdir()
                if p.name.startswith("cluster1-")]
