"""The manifests of one cluster, rendered by `wgcable join` (and `join --uninstall`).

One source for every cluster: nothing cluster-specific is written by hand. The gateway
DaemonSet and the route agent reach the broker with the cluster's own credentials (a Secret
holding its broker kubeconfig and the shared PSK); the gateway lease stays on the cluster's
own API server (in-cluster ServiceAccount, ``crds.LEASE_RULES``).

``python -m wgcable.deploy.manifests`` writes the examples in ``deploy/`` (a test keeps them
equal), rendered for a placeholder cluster with a placeholder Secret.
"""

from __future__ import annotations

import base64
import ipaddress
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wgcable import __version__
from wgcable.agent import values
from wgcable.deploy.brokerinfo import BrokerInfo
from wgcable.store.crds import LEASE_ROLE, LEASE_RULES

DEFAULT_NAMESPACE = "submariner-operator"
DEFAULT_IMAGE = f"wgcable:{__version__}"
SECRET = "wgcable-broker"  # noqa: S105 - the Secret's name
SECRET_DIR = "/etc/wgcable/broker"  # noqa: S105 - where it is mounted
GATEWAY = "wgcable-gateway"
ROUTE_AGENT = "wgcable-route-agent"
GATEWAY_LABEL = "submariner.io/gateway"
CLEANED = "/tmp/wgcable-cleaned"  # the cleanup pods are ready once this exists
_IMAGE_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:@")


class JoinError(ValueError):
    """A bad setting; the message names the option and the value."""


@dataclass(frozen=True)
class JoinSettings:
    cluster_id: str
    cluster_cidrs: list[str]
    service_cidrs: list[str] = field(default_factory=list)
    namespace: str = DEFAULT_NAMESPACE
    image: str = DEFAULT_IMAGE
    nat: bool = False
    port: int = 5871
    metrics_port: int = 9898


def parse_settings(*, cluster_id: str, cluster_cidrs: Sequence[str],
                   service_cidrs: Sequence[str] = (), namespace: str = DEFAULT_NAMESPACE,
                   image: str = DEFAULT_IMAGE, nat: bool = False, port: int = 5871,
                   metrics_port: int = 9898) -> JoinSettings:
    """Validated settings, or JoinError naming every bad option and its value."""
    problems: list[str] = []

    def check(option: str, parse: Any, value: object) -> Any:
        try:
            return parse(value)
        except values.Invalid as exc:
            problems.extend(f"{option}: {m}" for m in exc.messages)
            return None

    cid = check("--cluster-id", values.cluster_id, cluster_id)
    pods = check("--cluster-cidr", values.cidrs, list(cluster_cidrs)) or []
    if not pods and not [p for p in problems if p.startswith("--cluster-cidr")]:
        problems.append("--cluster-cidr: at least one pod CIDR is required")
    services = (check("--service-cidr", values.cidrs, list(service_cidrs)) or []
                if service_cidrs else [])
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [*pods, *services]
    for i, a in enumerate(nets):
        for b in nets[i + 1:]:
            if a.version == b.version and a.overlaps(b):
                problems.append(f"--cluster-cidr/--service-cidr: {str(a)!r} overlaps "
                                f"{str(b)!r}")
    check("--namespace", values.namespace, namespace)
    if not image or len(image) > 255 or not set(image) <= _IMAGE_CHARS:
        problems.append(f"--image: {image!r} is not an image reference")
    check("--port", values.port, port)
    check("--metrics-port", values.metrics_port, metrics_port)
    if problems:
        raise JoinError("; ".join(problems))
    return JoinSettings(cid, [str(n) for n in pods], [str(n) for n in services], namespace,
                        image, nat, port, metrics_port)


def _meta(name: str, namespace: str | None = None, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = labels
    return meta


def _field(path: str) -> dict[str, Any]:
    return {"valueFrom": {"fieldRef": {"fieldPath": path}}}


def _env(pairs: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": k, **(v if isinstance(v, dict) else {"value": v})} for k, v in pairs]


def broker_secret(info: BrokerInfo, namespace: str) -> dict[str, Any]:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(SECRET, namespace),
            "data": {"kubeconfig": b64(info.kubeconfig()), "psk": b64(info.psk)}}


def _store_env(s: JoinSettings, broker_namespace: str) -> list[tuple[str, Any]]:
    return [
        ("WGCABLE_STORE", "kubernetes"),
        ("KUBECONFIG", f"{SECRET_DIR}/kubeconfig"),  # the cluster's own broker credentials
        ("BROKER_K8S_REMOTENAMESPACE", broker_namespace),
        ("SUBMARINER_CLUSTERID", s.cluster_id),
        ("WGCABLE_HOSTNAME", _field("spec.nodeName")),
        ("WGCABLE_STATE_DIR", "/var/lib/wgcable"),
    ]


def _gateway_env(s: JoinSettings, broker_namespace: str) -> list[dict[str, Any]]:
    pairs = [
        *_store_env(s, broker_namespace),
        ("SUBMARINER_CLUSTERCIDR", ",".join(s.cluster_cidrs)),
        *([("SUBMARINER_SERVICECIDR", ",".join(s.service_cidrs))] if s.service_cidrs else []),
        ("SUBMARINER_NATENABLED", "true" if s.nat else "false"),
        ("WGCABLE_PRIVATE_IP", _field("status.hostIP")),
        ("CE_IPSEC_NATTPORT", str(s.port)),
        ("CE_IPSEC_PSK", {"valueFrom": {"secretKeyRef": {"name": SECRET, "key": "psk"}}}),
        ("WGCABLE_LEASE_NAMESPACE", _field("metadata.namespace")),
        ("WGCABLE_METRICS_PORT", str(s.metrics_port)),
        ("WGCABLE_METRICS_ADDRESS", _field("status.hostIP")),
    ]
    return _env(pairs)


def _route_agent_env(s: JoinSettings, broker_namespace: str) -> list[dict[str, Any]]:
    return _env([*_store_env(s, broker_namespace), ("WGCABLE_NODE_IP", _field("status.hostIP"))])


def _security(*caps: str) -> dict[str, Any]:
    return {"privileged": False, "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"], "add": list(caps)}}


def _host_path(name: str, path: str, kind: str = "DirectoryOrCreate") -> dict[str, Any]:
    return {"name": name, "hostPath": {"path": path, "type": kind}}


_SECRET_VOLUME: dict[str, Any] = {"name": "broker", "secret": {
    "secretName": SECRET, "defaultMode": 0o400,
    "items": [{"key": "kubeconfig", "path": "kubeconfig"}]}}
_GATEWAY_MOUNTS: list[dict[str, Any]] = [
    {"name": "state", "mountPath": "/var/lib/wgcable"},
    {"name": "wireguard-run", "mountPath": "/var/run/wireguard"},
    {"name": "tun", "mountPath": "/dev/net/tun"},
    {"name": "broker", "mountPath": SECRET_DIR, "readOnly": True},
    {"name": "tmp", "mountPath": "/tmp"},
]
_GATEWAY_VOLUMES: list[dict[str, Any]] = [
    _host_path("state", "/var/lib/wgcable"),
    _host_path("wireguard-run", "/var/run/wireguard"),
    _host_path("tun", "/dev/net/tun", "CharDevice"),
    _SECRET_VOLUME,
    {"name": "tmp", "emptyDir": {}},
]
_NODE_MOUNTS = [_GATEWAY_MOUNTS[0], _GATEWAY_MOUNTS[3], _GATEWAY_MOUNTS[4]]
_NODE_VOLUMES = [_GATEWAY_VOLUMES[0], _SECRET_VOLUME, _GATEWAY_VOLUMES[4]]
_ON_GATEWAYS = {GATEWAY_LABEL: "true"}
_OFF_GATEWAYS = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
    "nodeSelectorTerms": [{"matchExpressions": [
        {"key": GATEWAY_LABEL, "operator": "NotIn", "values": ["true"]}]}]}}}


def _daemonset(name: str, namespace: str, pod: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": _meta(name, namespace, app=name),
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {
                "hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet",
                "tolerations": [{"operator": "Exists"}], **pod}},
        },
    }


def gateway_daemonset(s: JoinSettings, broker_namespace: str) -> dict[str, Any]:
    return _daemonset(GATEWAY, s.namespace, {
        "serviceAccountName": GATEWAY,
        "nodeSelector": _ON_GATEWAYS,
        "terminationGracePeriodSeconds": 10,
        "containers": [{
            "name": "agent", "image": s.image, "imagePullPolicy": "IfNotPresent",
            "args": ["agent"],
            "env": _gateway_env(s, broker_namespace),
            "ports": [
                {"name": "metrics", "containerPort": s.metrics_port, "protocol": "TCP"},
                {"name": "tunnel", "containerPort": s.port, "protocol": "UDP"},
                {"name": "natt-discovery", "containerPort": 4490, "protocol": "UDP"},
            ],
            "securityContext": _security("NET_ADMIN", "NET_RAW"),
            "readinessProbe": {"httpGet": {"path": "/metrics", "port": "metrics"},
                               "periodSeconds": 10},
            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                          "limits": {"memory": "256Mi"}},
            "volumeMounts": _GATEWAY_MOUNTS,
        }],
        "volumes": _GATEWAY_VOLUMES,
    })


def route_agent_daemonset(s: JoinSettings, broker_namespace: str) -> dict[str, Any]:
    return _daemonset(ROUTE_AGENT, s.namespace, {
        "serviceAccountName": ROUTE_AGENT,
        "terminationGracePeriodSeconds": 5,
        "containers": [{
            "name": "route-agent", "image": s.image, "imagePullPolicy": "IfNotPresent",
            "args": ["route-agent"],
            "env": _route_agent_env(s, broker_namespace),
            "securityContext": _security("NET_ADMIN"),
            "resources": {"requests": {"cpu": "10m", "memory": "48Mi"},
                          "limits": {"memory": "128Mi"}},
            "volumeMounts": _NODE_MOUNTS,
        }],
        "volumes": _NODE_VOLUMES,
    })


def local_rbac(namespace: str) -> list[dict[str, Any]]:
    """The ServiceAccounts, and the gateway lease's Role on this cluster (not the broker)."""
    rbac = "rbac.authorization.k8s.io/v1"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(GATEWAY, namespace)},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": _meta(ROUTE_AGENT, namespace)},
        {"apiVersion": rbac, "kind": "Role", "metadata": _meta(LEASE_ROLE, namespace),
         "rules": LEASE_RULES},
        {"apiVersion": rbac, "kind": "RoleBinding", "metadata": _meta(LEASE_ROLE, namespace),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": LEASE_ROLE},
         "subjects": [{"kind": "ServiceAccount", "name": GATEWAY, "namespace": namespace}]},
    ]


def join_manifests(info: BrokerInfo, s: JoinSettings) -> list[dict[str, Any]]:
    if info.cluster_id != s.cluster_id:
        raise JoinError(f"--cluster-id: {s.cluster_id!r}, but the broker info file is "
                        f"cluster {info.cluster_id!r}'s (each cluster has its own)")
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(s.namespace)},
        broker_secret(info, s.namespace),
        *local_rbac(s.namespace),
        gateway_daemonset(s, info.namespace),
        route_agent_daemonset(s, info.namespace),
    ]


def _cleanup_pod(name: str, s: JoinSettings, env: list[dict[str, Any]], args: list[str],
                 mounts: list[dict[str, Any]], caps: tuple[str, ...]) -> dict[str, Any]:
    # The work is an init container: the pod turns ready only once it succeeded, so
    # `kubectl rollout status` waits for every node; a failure restarts it, visibly.
    return {
        "initContainers": [{
            "name": "cleanup", "image": s.image, "imagePullPolicy": "IfNotPresent",
            "args": args, "env": env, "securityContext": _security(*caps),
            "volumeMounts": mounts}],
        "containers": [{
            "name": "done", "image": s.image, "imagePullPolicy": "IfNotPresent",
            "command": ["/bin/sh", "-c", f"touch {CLEANED} && exec sleep infinity"],
            "securityContext": _security(),
            "readinessProbe": {"exec": {"command": ["cat", CLEANED]}, "periodSeconds": 2},
            "resources": {"requests": {"cpu": "1m", "memory": "8Mi"},
                          "limits": {"memory": "16Mi"}},
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}],
        "terminationGracePeriodSeconds": 1,
    }


def uninstall_manifests(s: JoinSettings, broker_namespace: str) -> list[dict[str, Any]]:
    """Two cleanup DaemonSets, to apply once the agents' DaemonSets are deleted (and while
    the namespace, its ServiceAccounts and the Secret still exist): on gateway nodes
    `wgcable cleanup` (device, wireguard-go, peers, rule 220 and its routes, the nftables
    table, the Endpoint and Gateway on the broker, the route agent's VXLAN device); on the
    other nodes `wgcable route-agent --cleanup`."""
    gw = _cleanup_pod(f"{GATEWAY}-cleanup", s, _gateway_env(s, broker_namespace),
                      ["cleanup"], _GATEWAY_MOUNTS, ("NET_ADMIN",))
    nodes = _cleanup_pod(f"{ROUTE_AGENT}-cleanup", s, _route_agent_env(s, broker_namespace),
                         ["route-agent", "--cleanup"], _NODE_MOUNTS, ("NET_ADMIN",))
    return [
        _daemonset(f"{GATEWAY}-cleanup", s.namespace,
                   {"serviceAccountName": GATEWAY, "nodeSelector": _ON_GATEWAYS,
                    "volumes": _GATEWAY_VOLUMES, **gw}),
        _daemonset(f"{ROUTE_AGENT}-cleanup", s.namespace,
                   {"serviceAccountName": ROUTE_AGENT, "affinity": _OFF_GATEWAYS,
                    "volumes": _NODE_VOLUMES, **nodes}),
    ]


class _Dumper(yaml.SafeDumper):
    # Shared parts (volumes, mounts) are written out in full: no YAML anchors for people.
    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(docs: list[dict[str, Any]], header: str = "") -> str:
    return header + yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, explicit_start=True)


# --- the examples in deploy/ -----------------------------------------------------------------

EXAMPLE = JoinSettings("cluster1", ["10.244.0.0/16"], ["10.96.0.0/12"])
_EXAMPLE_HEADER = """\
# An example, rendered by `python -m wgcable.deploy.manifests` for cluster `cluster1`:
# do not edit. Render your cluster's with `wgcable join BROKER-INFO --cluster-id ...`
# (README, "Deploying to clusters"), which also writes the Secret `wgcable-broker` (the
# cluster's broker kubeconfig and the PSK) that this file only refers to.
#
"""
DAEMONSET_NOTES = """\
# The gateway agent on every node labelled submariner.io/gateway=true.
#
# - hostNetwork: the WireGuard device, routes and rules belong to the node.
# - NET_ADMIN for the device, routes, rules and nftables; NET_RAW for the health pings.
#   No privileged mode. The kernel's WireGuard module is used when the node has it loaded
#   (modprobe wireguard); otherwise the image's wireguard-go runs, which needs /dev/net/tun.
# - /var/lib/wgcable on the host keeps the key pair (0600) across pod restarts, so peers
#   never see a new key because a pod was rescheduled on the same node.
# - A rolling update (or any restart of the pod) with the kernel module drops no traffic:
#   SIGTERM leaves the device, peers and routes in place and the new pod adopts them.
#   With wireguard-go it does drop traffic: the daemon is a process of this container and
#   dies with it, and its TUN device (with the routes through it) goes with it. The new
#   pod starts a new daemon with the same key; the tunnels are back after its first
#   handshakes, so the outage is the time between the old pod's end and the new one's
#   start (image pull included), plus a round trip. Load the kernel module where it
#   matters. /var/run/wireguard on the host holds the daemon's UAPI socket, so that `wg
#   show` on the node works.
# - `wgcable join --uninstall` renders the cleanup DaemonSets that remove everything.
# - Label two or more nodes: a Lease (submariner-gateway-lock, in this pod's namespace, on
#   this cluster's API server: the wgcable-gateway-lease Role) elects the active gateway;
#   the others wait warm. `kubectl exec <pod> -- wgcable handover` before draining the
#   active one's node moves it, losing a packet or two at most.
# - Metrics (no authentication) listen on the node's IP only: on the host network, 0.0.0.0
#   would also answer on the addresses that remote clusters reach through the tunnel.
#   Prometheus scrapes <node IP>:9898, and so does the kubelet's readiness probe (a
#   host-network pod's IP is the node's). 127.0.0.1 (the agent's default) would fail both.
# - The broker is reached with the cluster's own credentials: KUBECONFIG from the Secret.
"""
ROUTE_AGENT_NOTES = """\
# The route agent on every node, gateways included (docs: README, "Multi-node clusters").
#
# Every node sends the remote clusters' CIDRs to the cluster's active gateway over the
# VXLAN device vx-submariner (VNI 100, UDP 4800); the gateway node takes that traffic into
# the cable. The agent reads the Endpoints the gateway agents publish and writes nothing
# to the broker; it uses the cluster's broker credentials (the Secret), which could write.
#
# - hostNetwork: the VXLAN device, its FDB and neighbour entries and the routes (protocol
#   88, main table) belong to the node.
# - NET_ADMIN only, not privileged: where a node ships strict rp_filter, the agent loosens
#   it on the VXLAN device (gateway) or the interface replies come back on (other nodes)
#   through rtnetlink, which a read-only /proc/sys does not stop.
# - SIGTERM leaves the device and routes (a rolling update drops no traffic: all kernel
#   state); `wgcable route-agent --cleanup` removes them and restores rp_filter.
# - The VXLAN port (UDP 4800) must be open between the nodes, as for Submariner.
"""


def examples() -> dict[str, str]:
    """deploy/'s example files, by name."""
    from wgcable.store.open import DEFAULT_NAMESPACE as BROKER_NS

    s = EXAMPLE
    return {
        "daemonset.yaml": render([gateway_daemonset(s, BROKER_NS)],
                                 _EXAMPLE_HEADER + DAEMONSET_NOTES),
        "route-agent.yaml": render(
            [local_rbac(s.namespace)[1], route_agent_daemonset(s, BROKER_NS)],
            _EXAMPLE_HEADER + ROUTE_AGENT_NOTES),
    }


def _main(argv: list[str]) -> int:
    target = Path(argv[0]) if argv else Path("deploy")
    for name, text in examples().items():
        (target / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
