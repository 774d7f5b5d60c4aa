"""What the route agent wants on its node (pure).

On a worker (a node that is not the cluster's active gateway):
- the VXLAN device, its VTEP address and derived MAC, MTU = underlay - 50;
- one FDB entry (the gateway's VTEP MAC -> the gateway's node IP) and one permanent
  neighbour entry (the gateway's VTEP address -> that MAC): no ARP, no flooding;
- a route per remote CIDR via the gateway's VTEP address, on the device, with our protocol,
  in the main table (a gateway's own table 220 is consulted first, by its rule);
- the remote CIDRs in our nftables table, exempt from the CNI's masquerade;
- rp_filter loose on the interface the replies come back on (they come from the gateway
  through the CNI, not through the VXLAN device the routes name), where it is strict.

On the active gateway: the device (it receives the workers' traffic), rp_filter loose on
it (that traffic's sources are routed back through the CNI), and nothing else: the cable
driver's table 220 takes the traffic into the tunnel, and its own nftables table decides
whether the gateway's pods are exempt from SNAT. (A worker's pods always are: masqueraded
to the worker's address, their packets would be outside every allowed IP of the remote.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from wgcable.routeagent import vtep
from wgcable.routing.table import Route
from wgcable.wgctrl import IPAddress, IPNetwork

LINK = "vxlan"
LOOSE = 2


@dataclass(frozen=True, slots=True)
class VxlanLink:
    vni: int
    port: int
    local: IPAddress  # the node's IP: the tunnel's source
    underlay: str  # the interface that holds it
    mtu: int
    mac: str
    vtep: IPAddress  # the device's address, in a /8
    vtep6: IPAddress | None  # its IPv6 address (in a /96), where the node has IPv6


@dataclass(frozen=True, slots=True)
class NodeFacts:
    node_ip: IPAddress
    underlay: str  # the interface with the node IP
    underlay_mtu: int = 1500
    sources: Mapping[int, IPAddress] | None = None  # the node's CNI addresses, by version
    ipv6: bool = True


@dataclass(frozen=True, slots=True)
class Settings:
    device: str = vtep.DEFAULT_DEVICE
    vni: int = vtep.DEFAULT_VNI
    port: int = vtep.DEFAULT_PORT


@dataclass(frozen=True, slots=True)
class NodeState:
    link: Mapping[str, VxlanLink]
    fdb: Mapping[str, IPAddress]  # MAC -> destination node IP
    neigh: Mapping[IPAddress, str]  # VTEP address -> MAC
    routes: Mapping[Route, Route]
    nft_remote: Mapping[IPNetwork, IPNetwork]
    rp_filter: Mapping[str, int]  # interface -> rp_filter wanted (only ever loosened)


def node_state(settings: Settings, facts: NodeFacts, gateway_ip: IPAddress,
               remote: Iterable[IPNetwork]) -> NodeState:
    """The state of a node whose cluster's active gateway is at ``gateway_ip`` (this node
    itself when it is its own IP), routing ``remote`` (accepted remote CIDRs)."""
    link = VxlanLink(settings.vni, settings.port, facts.node_ip, facts.underlay,
                     facts.underlay_mtu - vtep.VXLAN_OVERHEAD, vtep.vtep_mac(facts.node_ip),
                     vtep.vtep_ip(facts.node_ip),
                     vtep.vtep_ip6(facts.node_ip) if facts.ipv6 else None)
    nets = {n: n for n in remote if facts.ipv6 or n.version == 4}
    if gateway_ip == facts.node_ip:
        # The cable driver's own table decides the exemption here (--snat-exemption).
        return NodeState({LINK: link}, {}, {}, {}, {}, {settings.device: LOOSE})
    gw_mac = vtep.vtep_mac(gateway_ip)
    via: dict[int, IPAddress] = {4: vtep.vtep_ip(gateway_ip)}
    if facts.ipv6:
        via[6] = vtep.vtep_ip6(gateway_ip)
    sources = facts.sources or {}
    routes = {Route(n, settings.device, sources.get(n.version), via[n.version]) for n in nets}
    return NodeState({LINK: link}, {gw_mac: gateway_ip}, dict.fromkeys(via.values(), gw_mac),
                     {r: r for r in routes}, nets, {facts.underlay: LOOSE})
