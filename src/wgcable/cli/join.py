"""`wgcable join BROKER-INFO`: the manifests of one cluster, its broker credentials
included (`--uninstall`: the cleanup DaemonSets that remove everything from the nodes)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from wgcable.deploy.manifests import DEFAULT_IMAGE, DEFAULT_NAMESPACE


def register(sub: Any) -> None:
    p = sub.add_parser(
        "join", help="render one cluster's manifests (kubectl apply -f), credentials included",
        description="Render the manifests that join this cluster to the broker: namespace, "
        "the Secret with its broker kubeconfig and the PSK, ServiceAccounts and the lease "
        "Role, the gateway DaemonSet and the route agent. Their output holds the cluster's "
        "broker token: keep it as secret as the broker-info file.")
    p.add_argument("broker_info", metavar="BROKER-INFO",
                   help="this cluster's file from `wgcable broker init/add-cluster`")
    p.add_argument("--cluster-id", default=None,
                   help="this cluster's ID (default: the broker-info file's; must match it)")
    p.add_argument("--cluster-cidr", action="append", default=[], metavar="CIDR",
                   help="pod CIDRs (required; comma-separated or repeated)")
    p.add_argument("--service-cidr", action="append", default=[], metavar="CIDR",
                   help="service CIDRs (comma-separated or repeated)")
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE,
                   help="this cluster's namespace for the agents (default: %(default)s)")
    p.add_argument("--image", default=DEFAULT_IMAGE,
                   help="the agent image (scripts/build-image.sh; default: %(default)s)")
    p.add_argument("--nat", action="store_true",
                   help="a NAT sits between this cluster's gateways and the others")
    p.add_argument("--port", type=int, default=5871, help="tunnel UDP port (default: 5871)")
    p.add_argument("--output", "-o", default="-", metavar="FILE",
                   help="write here (0600) instead of standard output")
    p.add_argument("--uninstall", action="store_true",
                   help="render instead the cleanup DaemonSets (apply after deleting the "
                   "agents' DaemonSets; README, 'Deploying to clusters')")
    p.set_defaults(handler=run_join)


def run_join(args: argparse.Namespace) -> int:
    from wgcable.deploy.brokerinfo import BrokerInfo, BrokerInfoError, write_private
    from wgcable.deploy.manifests import (
        JoinError,
        join_manifests,
        parse_settings,
        render,
        uninstall_manifests,
    )

    try:
        info = BrokerInfo.read(Path(args.broker_info))
        s = parse_settings(
            cluster_id=args.cluster_id if args.cluster_id is not None else info.cluster_id,
            cluster_cidrs=args.cluster_cidr, service_cidrs=args.service_cidr,
            namespace=args.namespace, image=args.image, nat=args.nat, port=args.port)
        if args.uninstall:
            text = render(uninstall_manifests(s, info.namespace),
                          f"# wgcable cleanup for cluster {s.cluster_id}: apply after "
                          "deleting the agents' DaemonSets.\n")
        else:
            text = render(join_manifests(info, s),
                          f"# wgcable for cluster {s.cluster_id}: a secret (the Secret holds "
                          "its broker token and the PSK).\n")
    except (BrokerInfoError, JoinError) as exc:
        print(f"wgcable join: {exc}", file=sys.stderr)
        return 2
    if args.output == "-":
        sys.stdout.write(text)
    else:
        try:
            write_private(Path(args.output), text)
        except OSError as exc:
            print(f"wgcable join: --output {args.output!r}: {exc.strerror}", file=sys.stderr)
            return 1
    return 0
