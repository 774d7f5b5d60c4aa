"""Kubernetes as the broker, end to end: agents in lab namespaces publish and watch
``submariner.io/v1`` Endpoints on a real kube-apiserver, and real tunnels carry pings."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from loneapi import lone_api_server, skip_without_kube

from integration.labtools import (
    print_agent_logs,
    public_key,
    rotate_under_pings,
    unreachable_pairs,
)
from wgcable.cable.types import ConnectionStatus
from wgcable.lab.kubeapi import LocalAPIServer
from wgcable.lab.lab import Lab
from wgcable.lab.netns import Namespace, list_namespaces
from wgcable.store.crds import GATEWAY_RULES, LEASE_ROLE, LEASE_RULES, render

pytestmark = pytest.mark.kubernetes

NS = "submariner-k8s-broker"
ENDPOINTS = f"/apis/submariner.io/v1/namespaces/{NS}/endpoints"
GATEWAYS = f"/apis/submariner.io/v1/namespaces/{NS}/gateways"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

MakeLab = Callable[..., Lab]


@pytest.fixture(scope="session")
def kube_available() -> None:
    skip_without_kube()


@pytest.fixture
def make_lab(tmp_path: Path, kube_available: None) -> Iterator[MakeLab]:
    labs: list[Lab] = []

    def make(clusters: int, *, wait: bool = True, agent_args: tuple[str, ...] = (),
             **kw: object) -> Lab:
        name = f"k{os.getpid() % 10000}{len(labs)}"
        lab = Lab.up(name, clusters, root=str(tmp_path / "labs"), store="kubernetes",
                     agent_args=["--backend", "userspace", *agent_args],
                     **kw)  # type: ignore[arg-type]
        labs.append(lab)
        if wait:
            wait_for(lab.all_connected, 60, "all cables connected")
        return lab

    yield make
    for lab in labs:
        print_agent_logs(lab, 30)
        assert lab.down() == []
        assert not [n for n in list_namespaces() if n.startswith(f"{lab.state.prefix}-")]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory,
           kube_available: None) -> Iterator[LocalAPIServer]:
    """For the tests of the schema, the manifests and the store by itself."""
    with lone_api_server(f"wglk{os.getpid() % 100000}-apionly",
                         tmp_path_factory.mktemp("broker")) as server:
        yield server


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def api(lab: Lab) -> LocalAPIServer:
    return lab.broker()


def endpoints(lab: Lab) -> dict[str, dict[str, Any]]:
    status, body = api(lab).request("GET", ENDPOINTS)
    assert status == 200, body
    return {o["metadata"]["name"]: o for o in body["items"]}


def endpoint_of(lab: Lab, cluster_id: str) -> dict[str, Any]:
    [obj] = [o for o in endpoints(lab).values() if o["spec"]["cluster_id"] == cluster_id]
    return obj


def foreign_endpoint(name: str, cluster_id: str, subnets: list[str], *,
                     public_key: str = "", private_ip: str = "198.18.0.99") -> dict[str, Any]:
    """An Endpoint as Submariner writes it (empty public_ip included), for a gateway that
    does not exist: the agents must configure it without it ever answering."""
    config = {"natt-discovery-port": "4490", "preferred-server": "false", "udp-port": "5871"}
    if public_key:
        config["publicKey"] = public_key
    return {
        "apiVersion": "submariner.io/v1", "kind": "Endpoint",
        "metadata": {"name": name, "labels": {"submariner-io/clusterID": cluster_id}},
        "spec": {
            "cluster_id": cluster_id, "cable_name": f"submariner-cable-{cluster_id}-x",
            "healthCheckIP": "", "hostname": f"{cluster_id}-gw", "subnets": subnets,
            "private_ip": private_ip, "public_ip": "", "nat_enabled": False,
            "backend": "wireguard", "backend_config": config,
        },
    }


A_KEY = "qH5nQZl2Z6g8mUBu8m3lZtV7rJ3Gk5m3m1N2aKQ0Wn8="  # a valid, unused public key
OTHER_KEY = "mH5nQZl2Z6g8mUBu8m3lZtV7rJ3Gk5m3m1N2aKQ0Wn4="


def on_gateway(lab: Lab, index: int, *args: str) -> str:
    return subprocess.run(lab.gateway_cmd(lab.gateway(index), *args), capture_output=True,
                          text=True, check=True).stdout


def routes(lab: Lab, index: int) -> str:
    return on_gateway(lab, index, "ip", "route", "show", "table", "220")


def connection(lab: Lab, at: int, remote: str) -> Any:
    st = lab.status(at)
    if st is None:
        return None
    return next((c for c in st.gateway.connections if c.endpoint.cluster_id == remote), None)


def status_failure(lab: Lab, at: int) -> str:
    st = lab.status(at)
    return st.gateway.status_failure if st else ""


class Pinger:
    """Continuous pings pod1 -> pod2 (5 per second) in the background; counts losses."""

    def __init__(self, lab: Lab, src: int, dst: int) -> None:
        gw_src, gw_dst = lab.gateway(src), lab.gateway(dst)
        self.proc = subprocess.Popen(
            Namespace(gw_src.pod_ns[0]).cmd("ping", "-n", "-i", "0.2", "-W", "1",
                                            gw_dst.pod_ips[0]),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self) -> tuple[int, int]:
        """(sent, received)."""
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=10)
        for line in out.splitlines():
            if "packets transmitted" in line:
                parts = line.split(", ")
                return int(parts[0].split()[0]), int(parts[1].split()[0])
        raise AssertionError(f"no ping summary in {out[-500:]!r}")


# --- two and three clusters ---------------------------------------------------------------


@pytest.mark.parametrize("clusters", [2, 3])
def test_agents_meet_through_the_api_server_and_pods_reach_pods(
    make_lab: MakeLab, clusters: int,
) -> None:
    lab = make_lab(clusters)
    assert unreachable_pairs(lab) == []
    objs = endpoints(lab)
    assert len(objs) == clusters
    for gw in lab.state.gateways:
        obj = endpoint_of(lab, gw.cluster_id)
        spec = obj["spec"]
        # Submariner's naming, labels and backend config.
        assert obj["metadata"]["name"] == f"{gw.cluster_id}-{spec['cable_name']}"
        assert obj["metadata"]["labels"]["submariner-io/clusterID"] == gw.cluster_id
        assert spec["cable_name"] == (
            f"submariner-cable-{gw.cluster_id}-{gw.private_ip.replace('.', '-')}")
        assert len(spec["backend_config"]["publicKey"]) == 44
        assert spec["private_ip"] == gw.private_ip
        assert sorted(spec["subnets"]) == sorted(gw.subnets)
    # Each agent's Gateway status, through the status subresource.
    status, body = api(lab).request("GET", GATEWAYS)
    assert status == 200, body
    gateways = {o["metadata"]["name"]: o for o in body["items"]}
    assert set(gateways) == {f"cluster{i}-gw{i}" for i in range(1, clusters + 1)}

    def all_reported_connected() -> bool:
        _, body = api(lab).request("GET", GATEWAYS)
        return all(
            len(o.get("status", {}).get("connections", [])) == clusters - 1
            and all(c["status"] == "connected" for c in o["status"]["connections"])
            for o in body["items"])

    wait_for(all_reported_connected, 15, "every Gateway status to show its cables connected")
    gw1 = gateways["cluster1-gw1"]["status"]
    assert gw1["haStatus"] == "active"
    assert gw1["localEndpoint"]["cluster_id"] == "cluster1"


# --- updates and deletions ------------------------------------------------------------------


def test_endpoint_add_update_delete_and_key_rotation_converge(make_lab: MakeLab) -> None:
    lab = make_lab(2)
    server = api(lab)
    # A cluster that exists only in the API: every agent adds its peer and routes.
    status, body = server.request("POST", ENDPOINTS, foreign_endpoint(
        "cluster9-cable", "cluster9", ["10.9.0.0/16"], public_key=A_KEY))
    assert status == 201, body
    wait_for(lambda: "10.9.0.0/16" in routes(lab, 1) and "10.9.0.0/16" in routes(lab, 2), 10,
             "routes to the new cluster")
    assert A_KEY in on_gateway(lab, 1, "wg", "show", "subwg0", "peers")

    # Update: its subnets change; the old route goes, the new one comes.
    obj = body
    obj["spec"]["subnets"] = ["10.19.0.0/16"]
    status, body = server.request("PUT", f"{ENDPOINTS}/cluster9-cable", obj)
    assert status == 200, body
    wait_for(lambda: "10.19.0.0/16" in routes(lab, 1) and "10.9.0.0/16" not in routes(lab, 1),
             10, "routes to follow the update")

    # Deletion: peer and routes go; the real tunnel is untouched throughout.
    status, body = server.request("DELETE", f"{ENDPOINTS}/cluster9-cable")
    assert status == 200, body
    wait_for(lambda: A_KEY not in on_gateway(lab, 1, "wg", "show", "subwg0", "peers")
             and "10.19.0.0/16" not in routes(lab, 1), 10, "the peer and routes to go")
    assert lab.ping(1, 2) is not None

    # Key rotation (`wgcable rotate-key`) while pods ping both ways ten times a second: each
    # new key goes through the broker, the other gateway replaces the peer in place, and no
    # echo is lost, no status says error (the directory store's test says more).
    run = rotate_under_pings(lab, [(1, 3), (2, 1)])
    print(run.summary())
    assert run.lost == [[], []]
    assert "error" not in {status for _, _, status in run.not_connected}, run.not_connected
    for gw in lab.state.gateways:
        assert endpoint_of(lab, gw.cluster_id)["spec"]["backend_config"]["publicKey"] == \
            public_key(lab, gw)


def test_a_deleted_remote_endpoint_tears_its_tunnel_down_and_ours_is_put_back(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(3)
    server = api(lab)
    # cluster3's agent stops (SIGTERM keeps its endpoint published), then an admin deletes
    # its Endpoint: the others drop the cable.
    lab.stop_agent(3)
    name3 = endpoint_of(lab, "cluster3")["metadata"]["name"]
    assert server.request("DELETE", f"{ENDPOINTS}/{name3}")[0] == 200
    wait_for(lambda: connection(lab, 1, "cluster3") is None
             and connection(lab, 2, "cluster3") is None, 15, "cluster3's cable to go")
    assert "10.3.0.0/16" not in routes(lab, 1)
    assert lab.ping(1, 2) is not None

    # cluster2's agent is running: deleting its Endpoint only lasts until it notices.
    name2 = endpoint_of(lab, "cluster2")["metadata"]["name"]
    assert server.request("DELETE", f"{ENDPOINTS}/{name2}")[0] == 200
    wait_for(lambda: name2 in endpoints(lab), 15, "cluster2's agent to republish")
    wait_for(lambda: lab.ping(1, 2) is not None, 15, "cluster1 to reach cluster2 again")


def test_cleanup_withdraws_the_endpoint_and_the_gateway_with_the_agent_s_rights(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(2)
    server = api(lab)
    gw2 = lab.gateway(2)
    lab.stop_agent(2)
    argv = lab.agent_argv(gw2)
    argv[argv.index("agent")] = "cleanup"  # the same settings, as a user would run it
    done = subprocess.run(lab.gateway_cmd(gw2, *argv), capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [o["spec"]["cluster_id"] for o in endpoints(lab).values()] == ["cluster1"]
    status, body = server.request("GET", f"{GATEWAYS}/cluster2-gw2")
    assert status == 404, body
    assert "subwg0" not in on_gateway(lab, 2, "ip", "link", "show")
    wait_for(lambda: connection(lab, 1, "cluster2") is None, 15, "cluster1 to drop the cable")


# --- the API server goes away -----------------------------------------------------------------


def _block_agents(lab: Lab, on: bool) -> None:
    """Refuse (TCP reset) the gateways' connections to the API server; the tests' own
    requests come from inside the broker namespace and stay allowed."""
    ns = Namespace(lab.state.broker_ns)
    if on:
        ns.run("nft", "-f", "-", input="""
table inet wgcable_test_partition {
    chain input {
        type filter hook input priority 0;
        iifname "eth0" tcp dport 6443 reject with tcp reset
    }
}
""")
    else:
        ns.run("nft", "delete", "table", "inet", "wgcable_test_partition")


def test_api_server_outage_keeps_tunnels_and_the_agents_catch_up(make_lab: MakeLab) -> None:
    lab = make_lab(3)
    server = api(lab)
    pinger = Pinger(lab, 1, 2)
    try:
        time.sleep(1)
        server.stop_apiserver()
        lab.record_broker(server)
        # Down: agents stay up, tunnels carry traffic, and the status says why.
        wait_for(lambda: all("store" in status_failure(lab, i) for i in (1, 2, 3)), 30,
                 "every agent to report the store problem")
        assert all(lab.agent_alive(i) for i in (1, 2, 3))
        # An agent restarted during the outage keeps the tunnels it adopts (it must not
        # drop peers it cannot confirm).
        lab.stop_agent(2, signal.SIGKILL)
        lab.start_agent(2)
        time.sleep(3)
        assert lab.agent_alive(2)
        assert lab.ping(3, 2) is not None
        assert lab.ping(2, 1) is not None

        # Back, but still out of the agents' reach: change things they have not seen.
        _block_agents(lab, True)
        server.start_apiserver()
        lab.record_broker(server)
        name3 = endpoint_of(lab, "cluster3")["metadata"]["name"]
        assert server.request("DELETE", f"{ENDPOINTS}/{name3}")[0] == 200
        status, body = server.request("POST", ENDPOINTS, foreign_endpoint(
            "cluster9-cable", "cluster9", ["10.9.0.0/16"], public_key=A_KEY))
        assert status == 201, body
        lab.stop_agent(3)  # or it would republish its endpoint as soon as it can
        time.sleep(2)
        assert "10.9.0.0/16" not in routes(lab, 1)  # not seen yet

        # Reachable again: they catch up.
        _block_agents(lab, False)
        wait_for(lambda: all("10.9.0.0/16" in routes(lab, i) for i in (1, 2)), 30,
                 "the agents to see the Endpoint created meanwhile")
        wait_for(lambda: all(connection(lab, i, "cluster3") is None for i in (1, 2)), 30,
                 "the agents to see the Endpoint deleted meanwhile")
        wait_for(lambda: "store" not in status_failure(lab, 1), 15, "the store problem to clear")
    finally:
        sent, received = pinger.stop()
    assert sent > 30
    assert sent - received <= 1, f"lost {sent - received} of {sent} pings"  # 1: the last one


class StatusSampler:
    """Reads each agent's status.json every 0.1 s in the background and keeps every
    distinct ``updated`` time (epoch seconds, written by the agent)."""

    def __init__(self, lab: Lab, gateways: tuple[int, ...]) -> None:
        self.lab = lab
        self.updated: dict[int, set[float]] = {i: set() for i in gateways}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for i, seen in self.updated.items():
                st = self.lab.status(i)
                if st is not None:
                    seen.add(st.updated)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def max_gap(self, i: int, start: float, end: float) -> float:
        """The longest time in [start, end] that agent ``i``'s status went unrefreshed."""
        times = sorted(t for t in self.updated[i] if start <= t <= end)
        points = [start, *times, end]
        return max(b - a for a, b in itertools.pairwise(points))


def test_hung_api_server_never_freezes_the_status_and_is_named(make_lab: MakeLab) -> None:
    # A SIGSTOPped API server accepts connections (the kernel does) and never answers:
    # the agents' requests hang until their timeout. The status must keep its interval.
    interval, timeout = 1.0, 4.0  # the lab's --status-interval; our --store-timeout
    lab = make_lab(2, agent_args=("--store-timeout", f"{timeout:g}"))
    server = api(lab)
    pinger = Pinger(lab, 1, 2)
    sampler = StatusSampler(lab, (1, 2))
    stopped_at = 0.0
    try:
        wait_for(lambda: all(status_failure(lab, i) == "" for i in (1, 2)), 15, "a clean start")
        os.kill(server.apiserver_pid, signal.SIGSTOP)
        stopped_at = time.time()
        # Named within one status interval plus the request timeout (and slack).
        wait_for(lambda: all("store unavailable" in status_failure(lab, i) for i in (1, 2)),
                 2 * (interval + timeout), "every agent to name the hung store")
        named_after = time.time() - stopped_at
        failure = status_failure(lab, 1)
        assert "kubernetes API" in failure, failure
        show = subprocess.run(
            [sys.executable, "-m", "wgcable", "show", "--connections", "--state-dir",
             str(lab.state_dir(lab.gateway(1)))], capture_output=True, text=True, check=True)
        assert "store problems: store unavailable: kubernetes API" in show.stdout, show.stdout
        assert "cluster2" in show.stdout
        # Held long enough for several requests to time out, one after another.
        time.sleep(max(0.0, stopped_at + 3 * timeout - time.time()))
        assert all(lab.agent_alive(i) for i in (1, 2))
        assert lab.ping(1, 2) is not None
        assert lab.ping(2, 1) is not None
        hung_until = time.time()
        gaps = {i: sampler.max_gap(i, stopped_at, hung_until) for i in (1, 2)}
        # Before, a status waited for each hung request: gaps of a whole timeout or more.
        assert all(gap < timeout for gap in gaps.values()), gaps
        print(f"hung API server: failure named after {named_after:.1f} s; longest "
              f"status.json gap {max(gaps.values()):.1f} s (interval {interval:g} s, "
              f"store timeout {timeout:g} s)")
    finally:
        if stopped_at:
            os.kill(server.apiserver_pid, signal.SIGCONT)
        sampler.stop()
        sent, received = pinger.stop()
    wait_for(lambda: all(status_failure(lab, i) == "" for i in (1, 2)),
             2 * (interval + timeout), "the store problem to clear")
    assert sent > 30
    assert sent - received <= 1, f"lost {sent - received} of {sent} pings"  # 1: the last one


# --- bad objects --------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("cluster_id", "Not_A_Label"),
    ("subnets", ["not-a-cidr"]),
    ("nat_enabled", "yes"),
    ("private_ip", 42),
    ("backend_config", {"udp-port": 5871}),
])
def test_the_crd_schema_refuses_malformed_endpoints(
    broker: LocalAPIServer, field: str, value: object,
) -> None:
    obj = foreign_endpoint("bad-cable", "bad", ["10.9.0.0/16"])
    obj["spec"][field] = value
    status, body = broker.request("POST", ENDPOINTS, obj)
    assert status == 422, body
    assert f"spec.{field}" in body["message"]


def test_the_crd_schema_requires_submariner_s_fields(broker: LocalAPIServer) -> None:
    obj = foreign_endpoint("bad-cable", "bad", ["10.9.0.0/16"])
    del obj["spec"]["hostname"]
    status, body = broker.request("POST", ENDPOINTS, obj)
    assert status == 422, body
    assert "hostname" in body["message"]


def test_the_crd_schema_takes_what_submariner_writes(broker: LocalAPIServer) -> None:
    # Empty strings, false, dual-stack lists, extra backend_config keys: all as Submariner's
    # gateways write them; and the Gateway's status subresource.
    obj = foreign_endpoint("sub-cable", "sub", ["10.9.0.0/16", "fd00:9::/48"])
    obj["spec"] |= {"private_ips": ["198.18.0.99", "fdce:18::99"], "public_ips": [],
                    "healthCheckIPs": ["10.9.0.1"]}
    obj["spec"]["backend_config"]["using-loadbalancer"] = "false"
    status, body = broker.request("POST", ENDPOINTS, obj)
    assert status == 201, body
    assert body["spec"] == obj["spec"]  # nothing pruned or changed
    assert broker.request("DELETE", f"{ENDPOINTS}/sub-cable")[0] == 200


def test_schema_valid_but_unusable_endpoints_are_reported_and_change_nothing(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(2)
    server = api(lab)
    before = routes(lab, 1)
    bad = {
        "steal-cable": foreign_endpoint("steal-cable", "steal", ["10.1.0.0/16"],
                                        public_key=A_KEY),  # cluster1's own pod CIDR
        "default-cable": foreign_endpoint("default-cable", "default", ["0.0.0.0/0"],
                                          public_key=A_KEY),
        "dup-cable": foreign_endpoint("dup-cable", "dup", ["10.2.0.0/16"],  # cluster2's
                                      public_key=A_KEY),
        "nokey-cable": foreign_endpoint("nokey-cable", "nokey", ["10.9.0.0/16"],
                                        public_key="not a key"),
        "noip-cable": foreign_endpoint("noip-cable", "noip", ["10.8.0.0/16"],
                                       public_key=A_KEY, private_ip="not-an-ip"),
        # cluster2's gateway address: its tunnel's own packets would be captured.
        "gwsteal-cable": foreign_endpoint("gwsteal-cable", "gwsteal", ["198.18.0.2/32"],
                                          public_key=OTHER_KEY),
    }
    pinger = Pinger(lab, 1, 2)
    try:
        for name, obj in bad.items():
            status, body = server.request("POST", ENDPOINTS, obj)
            assert status == 201, (name, body)

        def reported() -> bool:
            st = lab.status(1)
            if st is None:
                return False
            errors = {c.endpoint.cluster_id: c.status_message for c in st.gateway.connections
                      if c.status == ConnectionStatus.ERROR}
            text = st.gateway.status_failure + json.dumps(errors)
            return all(cid in text
                       for cid in ("steal", "default", "dup", "nokey", "noip", "gwsteal"))

        wait_for(reported, 15, "every bad endpoint to be reported")
        time.sleep(1)
    finally:
        sent, received = pinger.stop()
    assert lab.agent_alive(1)
    assert lab.agent_alive(2)
    assert sent - received <= 1, f"lost {sent - received} of {sent} pings"
    after = routes(lab, 1)
    assert after == before, f"routes changed:\n{before}\n->\n{after}"
    assert "default" not in after
    assert connection(lab, 1, "cluster2").status == ConnectionStatus.CONNECTED


# --- deploy/ ------------------------------------------------------------------------------------


def test_deploy_manifests_are_accepted_by_the_api_server(broker: LocalAPIServer) -> None:
    server = broker
    docs = [d for d in yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text()) if d]
    docs += [d for d in yaml.safe_load_all((DEPLOY / "route-agent.yaml").read_text()) if d]
    daemonset = yaml.safe_load((DEPLOY / "daemonset.yaml").read_text())
    paths = {
        "Namespace": "/api/v1/namespaces",
        "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
        "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
        "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
        "DaemonSet": "/apis/apps/v1/namespaces/{ns}/daemonsets",
    }
    for doc in [*docs, daemonset]:
        ns = doc["metadata"].get("namespace", "")
        # Server-side dry run: full validation and admission, nothing stored.
        path = paths[doc["kind"]].format(ns=ns) + "?dryRun=All"
        if doc["kind"] == "Namespace" or ns == NS:
            path = path.removesuffix("?dryRun=All")  # real: later ones live in them
        status, body = server.request("POST", path, doc)
        # 409: the lab made the broker namespace, Role and binding already.
        assert status in (200, 201, 409), (doc["kind"], body.get("message", body))
    status, body = server.request(
        "GET", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles/wgcable-gateway")
    assert status == 200, body
    assert body["rules"] == GATEWAY_RULES


def test_deploy_files_match_the_code() -> None:
    # No API server needed: the checked-in manifests are what the code generates and uses.
    assert (DEPLOY / "crds.yaml").read_text() == render()
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]): d
             for d in yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text())
             if d and d["kind"] == "Role"}
    assert set(roles) == {(NS, "wgcable-gateway"), ("submariner-operator", LEASE_ROLE)}
    assert roles[NS, "wgcable-gateway"]["rules"] == GATEWAY_RULES
    # The lease is the gateway's own cluster's, in the agent's namespace: not the broker's.
    assert roles["submariner-operator", LEASE_ROLE]["rules"] == LEASE_RULES
    bindings = [d for d in yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text())
                if d and d["kind"] == "RoleBinding" and d["roleRef"]["name"] == LEASE_ROLE]
    assert [b["subjects"] for b in bindings] == [[{
        "kind": "ServiceAccount", "name": "wgcable-gateway", "namespace": "submariner-operator"}]]


def test_store_watch_resumes_from_the_api_server_directly(broker: LocalAPIServer) -> None:
    """The store on its own, from a thread in the broker namespace: list + watch, a change
    while disconnected (410 or resume), and close() ending the watch at once."""
    from wgcable.store.kubernetes import KubernetesStore

    server = broker
    store = server.call(lambda: KubernetesStore(NS, str(server.kubeconfig), backoff_max=1.0))
    changes = threading.Event()
    stop = threading.Event()
    watcher = threading.Thread(
        target=lambda: server.call(lambda: store.watch(changes.set, stop)), daemon=True)
    watcher.start()
    try:
        assert changes.wait(10), "the watch never called back after its first list"
        changes.clear()
        assert server.request("POST", ENDPOINTS, foreign_endpoint(
            "cluster9-cable", "cluster9", ["10.9.0.0/16"], public_key=A_KEY))[0] == 201
        assert changes.wait(10)
        assert "cluster9-cable" in server.call(store.snapshot).endpoints
        server.stop_apiserver()
        snap = server.call(store.snapshot)  # served from the cache while the server is away
        assert "cluster9-cable" in snap.endpoints
        server.start_apiserver()
        changes.clear()
        assert server.request("DELETE", f"{ENDPOINTS}/cluster9-cable")[0] == 200
        wait_for(lambda: "cluster9-cable" not in server.call(store.snapshot).endpoints, 20,
                 "the deletion made while the watch was down to arrive")
        assert store.problem == ""
    finally:
        t = time.monotonic()
        store.close()
        watcher.join(10)
        assert not watcher.is_alive()
        assert time.monotonic() - t < 5, "close() did not end the watch promptly"


# --- wgcable graph against the broker ---------------------------------------------------------


def test_graph_of_the_broker_s_gateway_objects(broker: LocalAPIServer,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`wgcable graph --store kubernetes`, as an operator points it at the broker: an active
    gateway whose cable is in error, its passive standby, and a gateway that publishes an
    Endpoint but writes no Gateway object (as a gateway that has not started yet)."""
    from wgcable.cable.types import Connection, Endpoint, GatewayStatus, HAStatus
    from wgcable.cli.main import main as cli_main
    from wgcable.store.kubernetes import KubernetesStore

    def ep(cid: str, host: str, ip: str) -> Endpoint:
        cable = f"submariner-cable-{cid}-{ip.replace('.', '-')}"
        return Endpoint(cluster_id=cid, cable_name=cable, hostname=host,
                        subnets=[f"10.{cid[-1]}.0.0/16"], private_ip=ip, backend="wireguard")

    active, standby = ep("graph1", "gw1", "198.18.0.1"), ep("graph1", "gw1-1", "198.18.1.11")
    remote = ep("graph2", "gw2", "198.18.0.2")
    to_remote = Connection(endpoint=remote, status=ConnectionStatus.ERROR,
                           status_message="no handshake for 130 s", using_ip="198.18.0.2")
    store = broker.call(lambda: KubernetesStore(NS, str(broker.kubeconfig)))
    try:
        broker.call(lambda: (
            store.publish(active), store.publish(remote),
            store.write_status("graph1-gw1", GatewayStatus(
                local_endpoint=active, ha_status=HAStatus.ACTIVE, connections=[to_remote])),
            store.write_status("graph1-gw1-1", GatewayStatus(local_endpoint=standby))))
        # The command itself, in-process (a new Python importing the client costs 2 s),
        # on a thread in the broker's namespace.
        argv = ["graph", "--store", "kubernetes", "--kubeconfig", str(broker.kubeconfig),
                "--namespace", NS]
        assert broker.call(lambda: cli_main(argv)) == 0
        dot = capsys.readouterr().out
        for shown in ("<B>graph1</B>", "<B>graph2</B>", "<B>gw1</B><BR/>active",
                      "<B>gw1-1</B><BR/>passive", "<B>gw2</B><BR/>unknown", "no Gateway status",
                      "<B>gw1</B> to <B>gw2</B>: ", ">error</B>", "no handshake for 130 s",
                      f"store: kubernetes namespace {NS}"):
            assert shown in dot, shown
        assert "rx " not in dot  # a Gateway object carries no byte counters
    finally:
        for plural, name in (("gateways", "graph1-gw1"), ("gateways", "graph1-gw1-1"),
                             ("endpoints", active.object_name()),
                             ("endpoints", remote.object_name())):
            broker.request("DELETE", f"/apis/submariner.io/v1/namespaces/{NS}/{plural}/{name}")
        store.close()


# --- ownership: who may change what -----------------------------------------------------------


def _token_of(lab: Lab, cluster_id: str) -> str:
    gw = lab.gateway(cluster_id)
    path = api(lab).cluster_kubeconfig(cluster_id, {f"gw{gw.index}": gw.private_ip})
    return str(yaml.safe_load(path.read_text())["users"][0]["user"]["token"])


def test_ownership_rbac_a_gateway_changes_only_its_own_cluster_s_objects(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(2)
    server = api(lab)
    as2 = _token_of(lab, "cluster2")
    mine, theirs = endpoint_of(lab, "cluster2"), endpoint_of(lab, "cluster1")
    patch = {"metadata": {"annotations": {"test": "x"}}}
    merge = "application/merge-patch+json"
    for verb, body, kind in (("PATCH", patch, merge), ("PUT", theirs, "application/json"),
                             ("DELETE", None, "application/json")):
        status, reply = server.request(verb, f"{ENDPOINTS}/{theirs['metadata']['name']}",
                                       body, content_type=kind, token=as2)
        assert status == 403, (verb, reply)
    status, reply = server.request("PATCH", f"{GATEWAYS}/cluster1-gw1/status",
                                   {"status": {"statusFailure": "forged"}},
                                   content_type=merge, token=as2)
    assert status == 403, reply
    assert server.request("DELETE", f"{GATEWAYS}/cluster1-gw1", token=as2)[0] == 403
    # Its own objects it may change (a dry run: nothing is stored).
    status, reply = server.request("PATCH", f"{ENDPOINTS}/{mine['metadata']['name']}"
                                   "?dryRun=All", patch, content_type=merge, token=as2)
    assert status == 200, reply
    status, reply = server.request("DELETE", f"{GATEWAYS}/cluster2-gw2?dryRun=All", token=as2)
    assert status == 200, reply
    assert lab.ping(1, 2) is not None


def test_ownership_the_owner_restores_its_endpoint_edited_by_someone_else(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(2)
    server = api(lab)
    original = endpoint_of(lab, "cluster1")
    name = original["metadata"]["name"]
    edited = json.loads(json.dumps(original))
    edited["spec"]["backend_config"]["publicKey"] = A_KEY  # traffic to someone else's key
    edited["spec"]["private_ip"] = "198.18.0.66"
    status, reply = server.request("PUT", f"{ENDPOINTS}/{name}", edited)
    assert status == 200, reply
    wait_for(lambda: endpoint_of(lab, "cluster1")["spec"] == original["spec"], 15,
             "cluster1's agent to restore its Endpoint")
    wait_for(lambda: lab.ping(2, 1) is not None, 15, "cluster2 to reach cluster1")


# --- wgcable diagnose: the broker checks --------------------------------------------------------


def test_diagnose_broker_reachable_clock_and_rbac(broker: LocalAPIServer,
                                                   tmp_path: Path) -> None:
    """`wgcable diagnose`'s broker checks against the real API server: reachable, its Date
    header against our clock, RBAC by dry-run writes (nothing is stored)."""
    from wgcable.cable.types import Endpoint, cable_name_for, gateway_object_name
    from wgcable.diagnose.broker import checks
    from wgcable.store.kubernetes import load_api_client

    kubeconfig = str(broker.cluster_kubeconfig("diag1", {"diag1-gw": "198.18.0.61"}))

    def endpoint(cluster: str, ip: str) -> Endpoint:
        return Endpoint(cluster_id=cluster, cable_name=cable_name_for(cluster, ip),
                        hostname=f"{cluster}-gw", subnets=["10.61.0.0/16"], private_ip=ip,
                        backend="wireguard", backend_config={"udp-port": "5871"})

    def run(ep: Endpoint, skew: float = 0.0, config: str = kubeconfig) -> dict[str, Any]:
        def go() -> dict[str, Any]:
            api_client = load_api_client(config)
            try:
                results = checks(api_client, NS, ep, gateway_object_name(ep.cluster_id,
                                                                         ep.hostname),
                                 5.0, wall=lambda: time.time() + skew)
            finally:
                api_client.close()
            return {r.check: r for r in results}
        return broker.call(go)

    ours = run(endpoint("diag1", "198.18.0.61"))
    assert [r.level.value for r in ours.values()] == ["PASS"] * 3, ours
    assert "dry-run writes allowed" in ours["rbac"].detail
    # Nothing was stored by the dry runs.
    status, _ = broker.request("GET", f"{ENDPOINTS}/diag1-{cable_name_for('diag1', '198.18.0.61')}")
    assert status == 404
    # Another cluster's objects: its Role does not reach them.
    theirs = run(endpoint("diag2", "198.18.0.62"))
    assert theirs["rbac"].level.value == "FAIL"
    assert "patch Endpoint diag2-" in theirs["rbac"].detail
    assert "403" in theirs["rbac"].detail
    # A clock 30 s ahead of the server's.
    skewed = run(endpoint("diag1", "198.18.0.61"), skew=30.0)
    assert skewed["clock-skew"].level.value == "FAIL"
    assert "ahead of the API server's" in skewed["clock-skew"].detail
    # The command, with the agent's flags, where the agent would run (the API server's
    # namespace here): the store read through the broker, and the same checks.
    argv = [sys.executable, "-m", "wgcable", "diagnose", "--store", "kubernetes",
            "--kubeconfig", kubeconfig, "--namespace", NS, "--cluster-id", "diag1",
            "--cluster-cidr", "10.61.0.0/16", "--private-ip", "198.18.0.61",
            "--hostname", "diag1-gw", "--state-dir", str(tmp_path), "--json",
            *(f"--check={c}" for c in ("store", "subnet-overlap", "broker", "clock-skew",
                                       "rbac"))]
    p = subprocess.run(Namespace(broker.ns).cmd(*argv), capture_output=True, text=True,
                       timeout=60, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert {c["check"]: c["status"] for c in json.loads(p.stdout)["checks"]} == {
        "store": "pass", "subnet-overlap": "pass", "broker": "pass", "clock-skew": "pass",
        "rbac": "pass"}
    # Nothing listens there: named, and nothing else is tried.
    nowhere = tmp_path / "nowhere.kubeconfig"
    nowhere.write_text(Path(kubeconfig).read_text().replace(broker.url, "https://127.0.0.1:1"))
    gone = run(endpoint("diag1", "198.18.0.61"), config=str(nowhere))
    assert list(gone) == ["broker"], {k: v.detail for k, v in gone.items()}
    assert gone["broker"].level.value == "FAIL"
    assert "https://127.0.0.1:1" in gone["broker"].detail
