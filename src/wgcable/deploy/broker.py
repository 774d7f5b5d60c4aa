"""`wgcable broker init` and `add-cluster`: the broker namespace, the CRDs, the shared Role,
and per cluster a ServiceAccount on the broker, its own Role and a token.

What a cluster's credentials can do is what Kubernetes RBAC can enforce (docs: README,
"Deploying to clusters"): create, list and watch cannot be narrowed by name, so every
cluster reads every Endpoint and may create Endpoints and Gateways of unused names; update,
patch and delete are narrowed (``resourceNames``) to its own gateways' objects, whose names
come from the cluster ID, the gateways' host names and private IPs: these must be given.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from typing import Any

from wgcable.deploy.brokerinfo import BrokerInfo
from wgcable.deploy.kubeclient import Kube, KubeError
from wgcable.store.crds import GATEWAY_RULES, SHARED_ROLE, all_crds, cluster_rbac

RBAC = "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}"
PSK_SECRET = "wgcable-psk"  # noqa: S105 - a name; the clusters' shared PSK, on the broker only
DEFAULT_TOKEN_DAYS = 365


@dataclass(frozen=True)
class ClusterSpec:
    cluster_id: str
    gateways: dict[str, str]  # host name -> private IP


def service_account(cluster_id: str) -> str:
    return f"{SHARED_ROLE}-{cluster_id}"


def init_broker(kube: Kube, namespace: str) -> None:
    """The CRDs (replaced: a newer wgcable may widen the schema), the namespace, the shared
    Role and the PSK Secret (kept once made: every cluster must use the same)."""
    for crd in all_crds():
        _apply(kube, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    kube.ensure("/api/v1/namespaces", {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    _apply(kube, RBAC.format(ns=namespace) + "/roles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": SHARED_ROLE, "namespace": namespace}, "rules": GATEWAY_RULES})
    # As subctl makes it: 48 random bytes, base64; the tunnels' key is its SHA-256.
    psk = base64.b64encode(secrets.token_bytes(48)).decode()
    kube.ensure(f"/api/v1/namespaces/{namespace}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": PSK_SECRET, "namespace": namespace},
        "data": {"psk": base64.b64encode(psk.encode()).decode()}})


def add_cluster(kube: Kube, namespace: str, spec: ClusterSpec, *, server: str | None = None,
                token_days: int = DEFAULT_TOKEN_DAYS) -> BrokerInfo:
    """The cluster's ServiceAccount, its Role (replaced: the gateways given are the list)
    and bindings, and a new token for it; returns its broker info."""
    sa = service_account(spec.cluster_id)
    kube.ensure(f"/api/v1/namespaces/{namespace}/serviceaccounts", {
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": sa, "namespace": namespace,
                     "labels": {"submariner-io/clusterID": spec.cluster_id}}})
    subject = {"kind": "ServiceAccount", "name": sa, "namespace": namespace}
    for doc in cluster_rbac(spec.cluster_id, spec.gateways, namespace, subject):
        _apply(kube, RBAC.format(ns=namespace) + f"/{doc['kind'].lower()}s", doc)
    status, reply = kube.request(
        "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{sa}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
         "spec": {"expirationSeconds": token_days * 86400}})
    if status not in (200, 201) or not isinstance(reply, dict):
        raise KubeError(f"token for ServiceAccount {sa!r} (TokenRequest): HTTP {status}: "
                        f"{reply}")
    secret = kube.get(f"/api/v1/namespaces/{namespace}/secrets/{PSK_SECRET}")
    if secret is None:
        raise KubeError(f"no Secret {PSK_SECRET!r} in {namespace!r}: run `wgcable broker "
                        "init` first")
    default_server, ca = kube.server_and_ca()
    return BrokerInfo(server or default_server, ca, namespace, spec.cluster_id,
                      str(reply["status"]["token"]),
                      base64.b64decode(secret["data"]["psk"]).decode())


def _apply(kube: Kube, collection: str, body: dict[str, Any]) -> None:
    """Create, or replace what exists (with its resourceVersion: some kinds, CRDs among
    them, refuse an unconditional update)."""
    name = body["metadata"]["name"]
    status, reply = kube.request("POST", collection, body)
    if status == 409:
        current = kube.get(f"{collection}/{name}")
        if current is not None:
            version = current["metadata"]["resourceVersion"]
            body = {**body, "metadata": {**body["metadata"], "resourceVersion": version}}
        status, reply = kube.request("PUT", f"{collection}/{name}", body)
    if status not in (200, 201):
        raise KubeError(f"{body['kind']} {name!r}: HTTP {status}: {reply}")
