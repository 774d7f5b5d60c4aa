"""`wgcable broker init` and `wgcable join` against a real kube-apiserver: two clusters
join one broker with the credentials their rendered manifests carry, each can publish and
withdraw its own Endpoint and Gateway, and neither can change the other's. What RBAC cannot
forbid (create under an unused name) is pinned here as well, so the README stays true."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from loneapi import lone_api_server

from wgcable.cable.types import Endpoint, GatewayStatus, cable_name_for, gateway_object_name
from wgcable.cli.main import main
from wgcable.lab.kubeapi import LocalAPIServer
from wgcable.store.base import StoreUnavailableError
from wgcable.store.kubernetes import KubernetesStore

pytestmark = pytest.mark.kubernetes

BNS = "wgcable-join-broker"  # not the lab's: init must create it, its Role and its PSK
ENDPOINTS = f"/apis/submariner.io/v1/namespaces/{BNS}/endpoints"
GATEWAYS = f"/apis/submariner.io/v1/namespaces/{BNS}/gateways"
GATEWAYS_OF = {"east": ("gw-e", "198.18.0.1"), "west": ("gw-w", "198.18.0.2")}
MERGE = "application/merge-patch+json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAPIServer]:
    with lone_api_server(f"wglj{os.getpid() % 100000}-join",
                         tmp_path_factory.mktemp("join-broker")) as api:
        yield api


@pytest.fixture(scope="module")
def joined(server: LocalAPIServer,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """`broker init` for east and west, then each one's `join`: cluster -> its manifests."""
    out = tmp_path_factory.mktemp("broker-info")
    gateways = [f"--gateway={c}:{h}={ip}" for c, (h, ip) in GATEWAYS_OF.items()]
    code = server.call(lambda: main([
        "broker", "init", "--kubeconfig", str(server.kubeconfig), "--namespace", BNS,
        "--clusters", "east,west,north", *gateways, "--output", str(out), "--token-days", "30"]))
    assert code == 0
    manifests = {}
    for i, cluster in enumerate(("east", "west", "north"), 1):
        info = out / f"broker-info-{cluster}.yaml"
        assert stat.S_IMODE(info.stat().st_mode) == 0o600
        rendered = out / f"{cluster}.yaml"
        assert main(["join", str(info), "--cluster-id", cluster,
                     "--cluster-cidr", f"10.{i}.0.0/16", "-o", str(rendered)]) == 0
        manifests[cluster] = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
    return manifests


def _kubeconfig(docs: list[dict[str, Any]], where: Path) -> Path:
    [secret] = [d for d in docs if d["kind"] == "Secret"]
    path = where / "kubeconfig"
    path.write_text(base64.b64decode(secret["data"]["kubeconfig"]).decode())
    path.chmod(0o600)
    return path


def _token(kubeconfig: Path) -> str:
    return str(yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"])


def _endpoint(cluster: str) -> Endpoint:
    host, ip = GATEWAYS_OF[cluster]
    return Endpoint(cluster_id=cluster, cable_name=cable_name_for(cluster, ip), hostname=host,
                    subnets=["10.9.0.0/16"], private_ip=ip, public_ip="", backend="wireguard",
                    backend_config={"udp-port": "5871"})


def test_join_clusters_change_their_own_objects_only(
    server: LocalAPIServer, joined: dict[str, list[dict[str, Any]]], tmp_path: Path,
) -> None:
    stores: dict[str, KubernetesStore] = {}
    tokens: dict[str, str] = {}
    for cluster, docs in joined.items():
        (tmp_path / cluster).mkdir()
        kubeconfig = _kubeconfig(docs, tmp_path / cluster)
        tokens[cluster] = _token(kubeconfig)
        # The agent's own store, with nothing but the rendered kubeconfig (CA inline).
        stores[cluster] = server.call(lambda k=kubeconfig: KubernetesStore(BNS, str(k)))
    try:
        for cluster, store in stores.items():
            if cluster == "north":
                continue
            ep = _endpoint(cluster)
            server.call(lambda s=store, e=ep: s.publish(e))
            server.call(lambda s=store, e=ep: s.write_status(
                gateway_object_name(e.cluster_id, e.hostname), GatewayStatus(local_endpoint=e)))
        west = _endpoint("west").object_name()
        west_ep = server.request("GET", f"{ENDPOINTS}/{west}")[1]
        # East may not change, replace or delete west's Endpoint, nor touch its Gateway.
        for verb, body, kind in (
                ("PATCH", {"spec": {"private_ip": "198.18.0.66"}}, MERGE),
                ("PUT", west_ep, "application/json"), ("DELETE", None, "application/json")):
            status, reply = server.request(verb, f"{ENDPOINTS}/{west}", body,
                                           content_type=kind, token=tokens["east"])
            assert status == 403, (verb, reply)
        status, _ = server.request("PATCH", f"{GATEWAYS}/west-gw-w/status",
                                   {"status": {"statusFailure": "forged"}},
                                   content_type=MERGE, token=tokens["east"])
        assert status == 403
        assert server.request("DELETE", f"{GATEWAYS}/west-gw-w", token=tokens["east"])[0] == 403
        # Through the agent's own code path too: withdrawing west's is refused, by name.
        with pytest.raises(StoreUnavailableError, match="403"):
            server.call(lambda: stores["east"].withdraw(_endpoint("west")))
        # North, added with no gateway listed, may change nobody's (to RBAC, an empty
        # list of names would be every name).
        for verb, body, kind in (("PATCH", {"spec": {"private_ip": "198.18.0.66"}}, MERGE),
                                 ("DELETE", None, "application/json")):
            status, reply = server.request(verb, f"{ENDPOINTS}/{west}", body,
                                           content_type=kind, token=tokens["north"])
            assert status == 403, (verb, reply)
        # Nor read the PSK or any Secret of the broker namespace.
        assert server.request("GET", f"/api/v1/namespaces/{BNS}/secrets",
                              token=tokens["east"])[0] == 403
        # What RBAC cannot narrow (create): an unused name, even one claiming west. Its
        # Role names only its own objects, so once made east cannot change it either.
        forged = dict(west_ep, metadata={"name": "west-forged"})
        status, _ = server.request("POST", ENDPOINTS, forged, token=tokens["east"])
        assert status == 201
        assert server.request("DELETE", f"{ENDPOINTS}/west-forged",
                              token=tokens["east"])[0] == 403
        assert server.request("DELETE", f"{ENDPOINTS}/west-forged")[0] == 200
        # Each withdraws its own, as `wgcable cleanup` does.
        for cluster, store in stores.items():
            if cluster == "north":
                continue
            ep = _endpoint(cluster)
            server.call(lambda s=store, e=ep: s.withdraw(e))
            server.call(lambda s=store, e=ep: s.remove_status(
                gateway_object_name(e.cluster_id, e.hostname)))
        assert server.request("GET", ENDPOINTS)[1]["items"] == []
        assert server.request("GET", GATEWAYS)[1]["items"] == []
    finally:
        for store in stores.values():
            store.close()
    # The token lasts what --token-days said (a JWT: its claims are readable).
    claims = json.loads(base64.urlsafe_b64decode(tokens["east"].split(".")[1] + "=="))
    assert claims["exp"] - claims["iat"] == 30 * 86400


def test_join_add_cluster_again_changes_the_gateways_and_keeps_the_psk(
    server: LocalAPIServer, joined: dict[str, list[dict[str, Any]]], tmp_path: Path,
) -> None:
    code = server.call(lambda: main([
        "broker", "add-cluster", "east", "--kubeconfig", str(server.kubeconfig),
        "--namespace", BNS, "--gateway", "gw-e=198.18.0.1", "--gateway", "gw-e2=198.18.0.3",
        "--server", "https://broker.example:6443", "--output", str(tmp_path)]))
    assert code == 0
    status, role = server.request(
        "GET", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{BNS}/roles/wgcable-gateway-east")
    assert status == 200
    assert role["rules"][0]["resourceNames"] == sorted(
        f"east-{cable_name_for('east', ip)}" for ip in ("198.18.0.1", "198.18.0.3"))
    info = yaml.safe_load((tmp_path / "broker-info-east.yaml").read_text())
    assert info["server"] == "https://broker.example:6443"
    [secret] = [d for d in joined["east"] if d["kind"] == "Secret"]
    assert base64.b64decode(secret["data"]["psk"]).decode() == info["psk"]


def test_join_manifests_are_accepted_by_the_api_server(
    server: LocalAPIServer, joined: dict[str, list[dict[str, Any]]], tmp_path: Path,
) -> None:
    info = tmp_path / "info.yaml"
    # Any broker info will do for the uninstall set (it carries no credentials).
    [secret] = [d for d in joined["east"] if d["kind"] == "Secret"]
    assert secret["type"] == "Opaque"
    out = tmp_path / "uninstall.yaml"
    from wgcable.deploy.brokerinfo import BrokerInfo

    BrokerInfo("https://x:6443", "Q0E=", BNS, "east", "t", "p").write(info)
    assert main(["join", str(info), "--cluster-cidr", "10.1.0.0/16", "--uninstall",
                 "-o", str(out)]) == 0
    docs = [*joined["east"], *yaml.safe_load_all(out.read_text())]
    paths = {
        "Namespace": "/api/v1/namespaces",
        "Secret": "/api/v1/namespaces/{ns}/secrets",
        "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
        "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
        "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
        "DaemonSet": "/apis/apps/v1/namespaces/{ns}/daemonsets",
    }
    for doc in docs:
        ns = doc["metadata"].get("namespace", "")
        # The namespace for real (the rest is created in it); the rest a server-side dry
        # run: full validation and admission, nothing stored.
        path = paths[doc["kind"]].format(ns=ns)
        if doc["kind"] != "Namespace":
            path += "?dryRun=All"
        status, body = server.request("POST", path, doc)
        assert status in (200, 201, 409), (doc["kind"], body)
