"""End to end: real `wgcable agent` processes on simulated gateways sharing one store.

Each test brings up a lab (namespaces, a WireGuard device per gateway, an agent per
gateway) under a temporary root, and tears it all down at the end, pass or fail. Tests
run on both kinds of device: wireguard-go here, the kernel's in the test VM.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from wgcable.cable.types import ConnectionStatus
from wgcable.lab.netns import Namespace
from wgcable.wgctrl import Key

from .labtools import (
    MakeLab,
    connection,
    endpoint_file,
    endpoint_json,
    on_gateway,
    public_key,
    rotate_under_pings,
    unreachable_pairs,
    wait_for,
    write_atomic,
)

pytestmark = pytest.mark.netns


@pytest.mark.parametrize("clusters", [2, 3])
def test_endpoints_appear_tunnels_come_up_pods_reach_pods(
    make_lab: MakeLab, clusters: int
) -> None:
    lab = make_lab(clusters)
    assert unreachable_pairs(lab) == []
    st = lab.status(1)
    assert st is not None
    assert {c.status for c in st.gateway.connections} == {ConnectionStatus.CONNECTED}

    # Latency comes from the health checker pinging the remote's healthCheckIP through the
    # tunnel, which starts after the first handshake.
    def latencies() -> bool:
        s = lab.status(1)
        return s is not None and all(c.latency_rtt is not None for c in s.gateway.connections)

    wait_for(latencies, 10, "RTTs from the health checker")


def test_edited_endpoint_converges(make_lab: MakeLab) -> None:
    lab = make_lab(3)
    gw2 = lab.gateway(2)
    gw2ns = Namespace(gw2.gateway_ns)
    # Cluster 2 moves to a new address and gains a subnet. Its own agent would put its
    # published copy back (an owner restores edits by others): it is stopped, as a gateway
    # being moved would be, and the edited Endpoint stands for what it publishes next.
    lab.stop_agent(2)
    gw2ns.run("ip", "addr", "add", "198.18.0.22/24", "dev", "eth0")
    gw2ns.run("ip", "addr", "add", "10.202.0.1/16", "dev", "cni0")
    path = endpoint_file(lab, "cluster2")
    doc = json.loads(path.read_text())
    doc["spec"]["private_ip"] = "198.18.0.22"
    doc["spec"]["subnets"].append("10.202.0.0/16")
    write_atomic(path, json.dumps(doc))

    def converged() -> bool:
        c = connection(lab, 1, "cluster2")
        return (c is not None and c.using_ip == "198.18.0.22"  # type: ignore[attr-defined]
                and "10.202.0.0/16" in c.endpoint.subnets)  # type: ignore[attr-defined]

    wait_for(converged, 10, "cluster1 to see cluster2's new endpoint")
    assert "10.202.0.0/16 dev subwg0" in on_gateway(lab, lab.gateway(1), "ip", "route", "show",
                                                    "table", "220")
    ping = Namespace(lab.gateway(1).pod_ns[0]).run("ping", "-c", "2", "-W", "2", "10.202.0.1")
    assert " 0% packet loss" in ping
    assert lab.ping(1, 3) is not None


def test_removed_endpoint_tears_its_tunnel_down(make_lab: MakeLab) -> None:
    lab = make_lab(3)
    # Cluster 3 leaves: its agent stops (a running agent publishes its endpoint again when
    # the store lacks it), and its endpoint goes.
    lab.stop_agent(3)
    endpoint_file(lab, "cluster3").unlink()
    wait_for(lambda: connection(lab, 1, "cluster3") is None, 10, "cluster3 to go")
    gw1 = lab.gateway(1)
    dump = on_gateway(lab, gw1, "wg", "show", "subwg0", "dump").splitlines()[1:]
    assert len(dump) == 1
    routes = on_gateway(lab, gw1, "ip", "route", "show", "table", "220")
    assert "10.3.0.0/16" not in routes
    assert "10.2.0.0/16 dev subwg0" in routes
    assert lab.ping(1, 2) is not None
    assert lab.ping(1, 3) is None


def test_garbage_in_the_store_is_reported_and_the_rest_keeps_working(
    make_userspace_lab: MakeLab,
) -> None:
    lab = make_userspace_lab(2)
    eps = lab.store_dir / "endpoints"
    write_atomic(eps / "truncated.json", '{"spec": {"cluster_id": "x", "subn')
    write_atomic(eps / "wrongtypes.json", json.dumps(
        {"cluster_id": "w", "subnets": "10.50.0.0/16", "nat_enabled": "maybe"}))
    write_atomic(eps / "badkey.json", endpoint_json("badkey", "10.51.0.0/16", "not-a-key",
                                               "198.18.0.51"))
    # A flood: 10,000 endpoints of distinct clusters, every one claiming cluster 1's pods.
    t0 = time.monotonic()
    for i in range(10_000):
        key = Key.generate().public_key().base64()
        (eps / f"flood{i}-cable.json").write_text(
            endpoint_json(f"flood{i}", f"10.1.{i % 250}.0/24", key, "198.18.0.200"))
    written = time.monotonic() - t0

    def reported() -> bool:
        st = lab.status(1)
        if st is None:
            return False
        by_id = {c.endpoint.cluster_id: c for c in st.gateway.connections}
        return ("flood9999" in by_id and "badkey" in by_id
                and "truncated" in st.gateway.status_failure)

    t1 = time.monotonic()
    wait_for(reported, 120, "the bad entries to be reported")
    seen = time.monotonic() - t1
    st = lab.status(1)
    assert st is not None
    by_id = {c.endpoint.cluster_id: c for c in st.gateway.connections}
    assert by_id["badkey"].status == ConnectionStatus.ERROR
    assert "publicKey" in by_id["badkey"].status_message
    assert by_id["flood42"].status == ConnectionStatus.ERROR
    assert "overlaps the local cluster" in by_id["flood42"].status_message
    assert "wrongtypes" in st.gateway.status_failure
    assert "subnets" in st.gateway.status_failure
    # The good tunnel is untouched, and the agents are alive.
    assert by_id["cluster2"].status == ConnectionStatus.CONNECTED
    assert lab.ping(1, 2) is not None
    assert lab.agent_alive(1)
    assert lab.agent_alive(2)
    print(f"10,000 endpoint files written in {written:.1f} s, all reported {seen:.1f} s later")


def test_cleanup_removes_everything_the_agent_made(make_lab: MakeLab) -> None:
    lab = make_lab(2)
    gw1 = lab.gateway(1)
    lab.stop_agent(1)  # SIGTERM: the tunnels stay up ...
    assert lab.ping(1, 2) is not None
    argv = lab.agent_argv(gw1)
    cleanup = [argv[0], "-m", "wgcable", "cleanup", *argv[4:], "--remove-key"]
    subprocess.run(lab.gateway_cmd(gw1, *cleanup), check=True, capture_output=True)
    # ... until `wgcable cleanup`: no device, route, rule, endpoint, status or key is left.
    links = on_gateway(lab, gw1, "ip", "-o", "link")
    assert "subwg0" not in links
    assert on_gateway(lab, gw1, "ip", "route", "show", "table", "220").strip() == ""
    assert "lookup 220" not in on_gateway(lab, gw1, "ip", "rule")
    assert "lookup 220" not in on_gateway(lab, gw1, "ip", "-6", "rule")
    assert not [p for p in (lab.store_dir / "endpoints").iterdir()
                if p.name.startswith("cluster1-")]
    gateways = sorted(p.name for p in (lab.store_dir / "gateways").iterdir())
    assert "cluster2-gw2.json" in gateways  # (the other cluster's: the name is right)
    assert not [p for p in gateways if p.startswith("cluster1-")]
    assert sorted(p.name for p in lab.state_dir(gw1).iterdir()) == []
    # The other gateway notices cluster 1 is gone.
    wait_for(lambda: connection(lab, 2, "cluster1") is None, 10, "cluster1 to go from gw2")


def test_key_rotation_loses_no_ping_and_no_cable_turns_error(make_lab: MakeLab) -> None:
    """`wgcable rotate-key` (SIGUSR2), over and over, while pods ping both ways ten times a
    second: the device switches first, then the key is published, and the remote replaces
    the peer in place and initiates at once. No echo is lost, no status says error, the
    remote's routes never change, and the key file holds the new key (no `.next` left)."""
    lab = make_lab(2)
    gw1, gw2 = lab.gateway(1), lab.gateway(2)
    routes = on_gateway(lab, gw2, "ip", "route", "show", "table", "220")
    run = rotate_under_pings(lab, [(1, 5), (2, 1)])
    print(run.summary())
    assert run.lost == [[], []]
    assert "error" not in {status for _, _, status in run.not_connected}, run.not_connected
    assert on_gateway(lab, gw2, "ip", "route", "show", "table", "220") == routes
    assert on_gateway(lab, gw2, "wg", "show", "subwg0", "peers").split() == [
        public_key(lab, gw1)]
    state = lab.state_dir(gw1)
    assert sorted(p.name for p in state.iterdir() if p.name.startswith("subwg0.key")) == \
        ["subwg0.key"]
    assert Key.from_base64((state / "subwg0.key").read_text()).public_key().base64() == \
        public_key(lab, gw1)
