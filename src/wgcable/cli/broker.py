"""`wgcable broker init` and `wgcable broker add-cluster`: set up a broker API server and
give each cluster its own credentials, in a broker-info file per cluster (a secret, 0600)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from wgcable.agent import values
from wgcable.store.open import DEFAULT_NAMESPACE


def register(sub: Any) -> None:
    p = sub.add_parser(
        "broker", help="set up a broker API server and its clusters' credentials",
        description="Set up the broker: the Kubernetes API server where the clusters' "
        "gateways publish their Endpoints.")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    init = verbs.add_parser(
        "init", help="create the broker namespace, CRDs, shared Role and PSK; and clusters",
        description="Create the CRDs, the broker namespace, the gateways' shared Role and "
        "the clusters' preshared key on the broker, and the clusters given (as add-cluster).")
    _common(init)
    init.add_argument("--clusters", default="", metavar="ID,...",
                      help="clusters to add now, comma-separated")
    init.add_argument("--gateway", action="append", default=[], metavar="ID:HOST=IP",
                      help="a gateway node of cluster ID (its node name and private IP); "
                      "repeat for each")
    init.set_defaults(handler=run_init)
    add = verbs.add_parser(
        "add-cluster", help="give a cluster its own broker credentials (or renew them)",
        description="Create (or update) the cluster's ServiceAccount and Role on the broker, "
        "issue a token and write the cluster's broker-info file. Its Role lets it change "
        "only the Endpoints and Gateways of the gateways given (node name and private IP): "
        "list them all; run again to change the list.")
    _common(add)
    add.add_argument("cluster_id", metavar="CLUSTER-ID")
    add.add_argument("--gateway", action="append", default=[], metavar="HOST=IP",
                     help="a gateway node (its node name and private IP); repeat for each")
    add.set_defaults(handler=run_add_cluster)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", required=True,
                   help="the broker's administrator kubeconfig (never written anywhere)")
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE,
                   help="the broker namespace (default: %(default)s)")
    p.add_argument("--server", default=None, metavar="URL",
                   help="the broker's URL as the clusters reach it (default: the "
                   "kubeconfig's)")
    p.add_argument("--output", default=".", metavar="DIR",
                   help="where broker-info-<cluster>.yaml files go (default: %(default)s)")
    p.add_argument("--token-days", type=int, default=365, metavar="N",
                   help="days a cluster's token lasts (default: %(default)s)")


class UsageError(ValueError):
    pass


def parse_gateways(items: list[str], cluster: str | None = None) -> dict[str, dict[str, str]]:
    """``HOST=IP`` (for ``cluster``) or ``ID:HOST=IP`` items: cluster -> host -> IP."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        cid, host_ip = (cluster, item) if cluster else item.partition(":")[::2]
        host, _, ip = host_ip.partition("=")
        form = "HOST=IP" if cluster else "ID:HOST=IP"
        try:
            values.cluster_id(cid)
            values.hostname(host)
            address = values.endpoint_address(ip)
        except values.Invalid as exc:
            raise UsageError(f"--gateway: {item!r} is not {form}: {exc}") from None
        out.setdefault(str(cid), {})[host] = str(address)
    return out


def _cluster_ids(text: str) -> list[str]:
    ids = [c.strip() for c in text.split(",") if c.strip()]
    for cid in ids:
        try:
            values.cluster_id(cid)
        except values.Invalid as exc:
            raise UsageError(f"--clusters: {exc}") from None
    return ids


def run_init(args: argparse.Namespace) -> int:
    try:
        gateways = parse_gateways(args.gateway)
        clusters = _cluster_ids(args.clusters)
        if unknown := sorted(set(gateways) - set(clusters)):
            raise UsageError(f"--gateway: cluster {unknown[0]!r} is not in --clusters")
        _check_common(args)
    except UsageError as exc:
        print(f"wgcable broker init: {exc}", file=sys.stderr)
        return 2
    if not _client_available("init"):
        return 1
    from wgcable.deploy.broker import init_broker
    from wgcable.deploy.kubeclient import Kube, KubeError

    try:
        kube = Kube(args.kubeconfig)
        init_broker(kube, args.namespace)
        print(f"broker namespace {args.namespace}: CRDs, shared Role and PSK ready")
        for cid in clusters:
            _add(kube, args, cid, gateways.get(cid, {}))
    except (KubeError, OSError) as exc:
        print(f"wgcable broker init: {exc}", file=sys.stderr)
        return 1
    return 0


def run_add_cluster(args: argparse.Namespace) -> int:
    try:
        try:
            cid = values.cluster_id(args.cluster_id)
        except values.Invalid as exc:
            raise UsageError(f"CLUSTER-ID: {exc}") from None
        gateways = parse_gateways(args.gateway, cid).get(cid, {})
        _check_common(args)
    except UsageError as exc:
        print(f"wgcable broker add-cluster: {exc}", file=sys.stderr)
        return 2
    if not _client_available("add-cluster"):
        return 1
    from wgcable.deploy.kubeclient import Kube, KubeError

    try:
        _add(Kube(args.kubeconfig), args, cid, gateways)
    except (KubeError, OSError) as exc:
        print(f"wgcable broker add-cluster: {exc}", file=sys.stderr)
        return 1
    return 0


def _client_available(verb: str) -> bool:
    try:
        import kubernetes  # noqa: F401  # the optional dependency, as the store's
    except ImportError as exc:
        print(f"wgcable broker {verb}: needs the 'kubernetes' Python package (pip install "
              f"'wgcable[kubernetes]'): {exc}", file=sys.stderr)
        return False
    return True


def _check_common(args: argparse.Namespace) -> None:
    try:
        values.namespace(args.namespace)
    except values.Invalid as exc:
        raise UsageError(f"--namespace: {exc}") from None
    if not 1 <= args.token_days <= 3650:
        raise UsageError(f"--token-days: {args.token_days} is out of range (1-3650)")
    if args.server is not None and not args.server.startswith("https://"):
        raise UsageError(f"--server: {args.server!r} is not an https:// URL")
    if not Path(args.output).is_dir():
        raise UsageError(f"--output: {args.output!r} is not a directory")


def _add(kube: Any, args: argparse.Namespace, cid: str, gateways: dict[str, str]) -> None:
    from wgcable.deploy.broker import ClusterSpec, add_cluster

    info = add_cluster(kube, args.namespace, ClusterSpec(cid, gateways), server=args.server,
                       token_days=args.token_days)
    path = Path(args.output) / f"broker-info-{cid}.yaml"
    info.write(path)
    hosts = ", ".join(f"{h} ({ip})" for h, ip in sorted(gateways.items())) or (
        "none: it can create its Endpoint but not update or withdraw it; "
        "add-cluster again with --gateway")
    print(f"cluster {cid}: credentials in {path} (a secret, 0600); gateways: {hosts}")
