"""What the picture shows, computed from the gateways' reports (pure).

Each gateway's Gateway status (Submariner's ``submariner.io/v1`` shape) gives its cluster,
its role (haStatus) and one connection per remote cluster: status, RTT, the IP used and
whether NAT is in the path. A cable is drawn once per side, from the reporting gateway to
the remote gateway it names, since the two sides may see it differently. Byte counters are
not in the Gateway object; they come with a report when its source has them (an agent's
``status.json``).

Every string here may come from a hostile broker: it is kept as text, and only ``dot.py``
turns it into DOT, escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from wgcable.cable.types import Connection, Endpoint, GatewayStatus

# Submariner calls a gateway status older than this stale.
STALE_AFTER = 15.0


@dataclass(frozen=True, slots=True)
class GatewayReport:
    """One gateway's status, as a source found it."""

    status: GatewayStatus
    # Bytes (rx, tx) by remote cluster ID; None when the source has no counters.
    transfer: dict[str, tuple[int, int]] | None = None
    age: float | None = None  # seconds since it was written; None: unknown
    alive: bool | None = None  # whether its agent runs; None: unknown


@dataclass(frozen=True, slots=True)
class GatewayNode:
    key: str  # DOT node ID, made here: never broker text
    cluster_id: str
    hostname: str
    role: str  # "active", "passive", or "unknown" (an Endpoint without a Gateway status)
    private_ip: str = ""
    public_ip: str = ""
    nat_enabled: bool = False
    notes: tuple[str, ...] = ()  # what is wrong or unusual: stale, no status, ...


@dataclass(frozen=True, slots=True)
class Cable:
    tail: str  # node keys: the reporting gateway ...
    head: str  # ... and the remote gateway it connects to
    status: str
    rtt: float | None = None  # average, seconds
    transfer: tuple[int, int] | None = None  # rx, tx bytes as the reporting side counts
    using_ip: str = ""
    using_nat: bool = False
    message: str = ""  # the status message of a cable in error
    stale: bool = False  # the reporting gateway's status is stale


@dataclass(frozen=True, slots=True)
class ClusterBox:
    key: str
    cluster_id: str
    subnets: tuple[str, ...]
    gateways: tuple[GatewayNode, ...]


@dataclass(frozen=True, slots=True)
class Picture:
    title: str
    clusters: tuple[ClusterBox, ...]
    cables: tuple[Cable, ...]
    notes: tuple[str, ...] = field(default=())  # about the whole set: store problems


def _identity(ep: Endpoint) -> tuple[str, str]:
    """Which gateway an Endpoint is: its cable name names it (it holds the private IP);
    a hand-written one without one is known by its hostname."""
    return (ep.cluster_id, ep.cable_name or f"host:{ep.hostname}")


def _is_stale(report: GatewayReport, stale_after: float) -> bool:
    return report.alive is False or (report.age is not None and report.age > stale_after)


class _Builder:
    def __init__(self) -> None:
        self.nodes: dict[tuple[str, str], GatewayNode] = {}
        self.subnets: dict[str, set[str]] = {}

    def add(self, ep: Endpoint, role: str, notes: Sequence[str]) -> GatewayNode:
        ident = _identity(ep)
        node = GatewayNode(
            key=f"g{len(self.nodes)}", cluster_id=ep.cluster_id, hostname=ep.hostname,
            role=role, private_ip=ep.private_ip, public_ip=ep.public_ip,
            nat_enabled=ep.nat_enabled, notes=tuple(notes))
        self.nodes[ident] = node
        self.subnets.setdefault(ep.cluster_id, set()).update(ep.subnets)
        return node

    def remote(self, c: Connection) -> GatewayNode:
        """The node a connection points at; one is made for a gateway nobody reports."""
        found = self.nodes.get(_identity(c.endpoint))
        if found is None:
            found = self.add(c.endpoint, "unknown", ["no Gateway status"])
        return found


def build_picture(
    reports: Sequence[GatewayReport],
    endpoints: Sequence[Endpoint] | None = None,
    *,
    title: str = "",
    notes: Sequence[str] = (),
    stale_after: float = STALE_AFTER,
) -> Picture:
    """The picture of ``reports`` (one per gateway) and, when the source has them, the
    store's ``endpoints``: a gateway that publishes one but reports no status is drawn too,
    and an active gateway whose Endpoint is missing is marked."""
    b = _Builder()
    published = {_identity(ep) for ep in endpoints or ()}
    # Sorted, so that the same set draws the same picture whatever the source's order.
    ordered = sorted(reports, key=lambda r: (r.status.local_endpoint.cluster_id,
                                             r.status.local_endpoint.hostname,
                                             r.status.local_endpoint.cable_name))
    tails: list[tuple[GatewayNode, GatewayReport]] = []
    for r in ordered:
        ep = r.status.local_endpoint
        notes_of: list[str] = []
        if r.alive is False:
            notes_of.append("agent not running")
        if r.age is not None and r.age > stale_after:
            notes_of.append(f"status {r.age:.0f} s old")
        if endpoints is not None and r.status.ha_status == "active" and (
                _identity(ep) not in published):
            notes_of.append("no Endpoint in the store")
        if r.status.status_failure:
            notes_of.append(f"problem: {r.status.status_failure}")
        if _identity(ep) in b.nodes:  # two reports of one gateway: the first is drawn
            continue
        tails.append((b.add(ep, str(r.status.ha_status), notes_of), r))
    for ep in sorted(endpoints or (), key=_identity):
        if _identity(ep) not in b.nodes:
            b.add(ep, "unknown", ["no Gateway status"])
    cables: list[Cable] = []
    for node, r in tails:
        stale = _is_stale(r, stale_after)
        for c in sorted(r.status.connections, key=lambda c: _identity(c.endpoint)):
            head = b.remote(c)
            transfer = None if r.transfer is None else r.transfer.get(c.endpoint.cluster_id)
            cables.append(Cable(
                tail=node.key, head=head.key, status=str(c.status),
                rtt=c.latency_rtt.average if c.latency_rtt else None, transfer=transfer,
                using_ip=c.using_ip, using_nat=c.using_nat,
                message=c.status_message if c.status == "error" else "", stale=stale))
    clusters = []
    for i, cid in enumerate(sorted({n.cluster_id for n in b.nodes.values()})):
        members = tuple(sorted((n for n in b.nodes.values() if n.cluster_id == cid),
                               key=lambda n: (n.role != "active", n.hostname, n.key)))
        clusters.append(ClusterBox(f"cluster_{i}", cid, tuple(sorted(b.subnets[cid])),
                                   members))
    return Picture(title, tuple(clusters), tuple(cables), tuple(notes))
