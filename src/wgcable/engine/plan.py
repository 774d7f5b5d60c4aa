"""What the engine should connect, from a store snapshot (pure).

One endpoint per remote cluster; the IP to reach it by (public when the remote is behind
NAT, as Submariner's pre-discovery rule does); and what changed since the last pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from wgcable.cable.types import Endpoint, NATEndpointInfo
from wgcable.safetext import safe
from wgcable.store.base import Snapshot


@dataclass(slots=True)
class Plan:
    connect: dict[str, NATEndpointInfo] = field(default_factory=dict)  # by cluster ID
    problems: dict[str, str] = field(default_factory=dict)  # store entry -> what is wrong


def choose_ip(local: Endpoint, remote: Endpoint) -> tuple[str, bool]:
    """(IP to use, whether NAT is in the path) for reaching ``remote`` from ``local``."""
    return static_rule(local.public_ip, remote.private_ip, remote.public_ip,
                       remote.nat_enabled)


def static_rule(local_public_ip: str, private_ip: str, public_ip: str, nat_enabled: bool
                ) -> tuple[str, bool]:
    """Submariner's rule before (or without) NAT discovery: the public IP of a NAT-enabled
    remote, unless both sides share it; else the private IP."""
    if nat_enabled and public_ip:
        if local_public_ip and local_public_ip == public_ip:
            # Behind the same NAT: the private address is the direct path.
            return private_ip, False
        return public_ip, True
    return private_ip or public_ip, False


# Ours, in backend_config (Submariner ignores keys it does not know): the gateway lease's
# transition count when this Endpoint's gateway became its cluster's active one. While a
# cluster has two Endpoints (a new active gateway has published its own and not yet removed
# its predecessor's, or a fenced one's lingers), every reader takes the newest term.
LEASE_TERM = "gateway-lease-term"
_MAX_TERM_DIGITS = 10


def lease_term(ep: Endpoint) -> int:
    """The Endpoint's lease term; -1 without one, or with anything but a short number (it
    is another cluster's text)."""
    text = ep.backend_config.get(LEASE_TERM, "")
    if isinstance(text, str) and text.isascii() and text.isdigit() \
            and len(text) <= _MAX_TERM_DIGITS:
        return int(text)
    return -1


def preferred(entries: list[tuple[str, Endpoint]]) -> list[tuple[str, Endpoint]]:
    """One cluster's Endpoints, the one to use first: the newest lease term, then the first
    by name (the rule before terms, and for Endpoints without one)."""
    return sorted(entries, key=lambda e: (-lease_term(e[1]), e[0]))


def plan(local: Endpoint, snap: Snapshot) -> Plan:
    """The endpoints to connect, one per remote cluster, and the problems found."""
    out = Plan(problems=dict(snap.errors))
    by_cluster: dict[str, list[tuple[str, Endpoint]]] = {}
    for name, ep in snap.endpoints.items():
        if ep.cluster_id == local.cluster_id:
            continue  # our own (or a sibling gateway of our cluster)
        by_cluster.setdefault(ep.cluster_id, []).append((name, ep))
    for cid, entries in by_cluster.items():
        entries = preferred(entries)
        name, ep = entries[0]
        for other, _ in entries[1:]:
            # The cluster ID is the remote's text, not yet validated: short and escaped.
            out.problems[other] = (f"another endpoint of cluster {safe(cid, 64)} ({name}) is "
                                   "in use; this one is ignored")
        use_ip, nat = choose_ip(local, ep)
        out.connect[cid] = NATEndpointInfo(endpoint=ep, use_ip=use_ip, use_nat=nat)
    return out


def changed(before: Mapping[str, NATEndpointInfo], after: Mapping[str, NATEndpointInfo]
            ) -> tuple[list[str], list[str]]:
    """(clusters to (re)connect, clusters to disconnect) between two plans."""
    connect = [cid for cid, info in after.items() if before.get(cid) != info]
    gone = [cid for cid in before if cid not in after]
    return sorted(connect), sorted(gone)
