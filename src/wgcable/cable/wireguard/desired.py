"""What the device and the routing table should hold, from the connected endpoints (pure).

Validation happens here, once, for each remote endpoint: a refusal names the field and the
value, and only that endpoint's connection is affected.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from wgcable.cable.types import Endpoint, NATEndpointInfo
from wgcable.cable.wireguard.index import PeerIndex
from wgcable.routing.table import Route
from wgcable.safetext import plain, safe
from wgcable.wgctrl import IPAddress, IPNetwork, Key, Peer, UDPAddr

PUBLIC_KEY = "publicKey"
INTERFACE_NAME = "interface-name"
UDP_PORT = "udp-port"
DEFAULT_PORT = 5871  # the fixed port of the original 2020 driver


class EndpointRejectedError(ValueError):
    """A remote endpoint we refuse; ``field`` and ``value`` say what is wrong."""

    def __init__(self, cluster_id: str, field: str, value: object, reason: str) -> None:
        self.cluster_id = cluster_id
        self.field = field
        self.value = value
        self.reason = reason
        # Every part may be a remote's text: short and escaped (it is published in our status).
        super().__init__(f"endpoint of cluster {safe(cluster_id, 64)}: {plain(field, 64)}="
                         f"{safe(value)}: {plain(reason, 200)}")


@dataclass(frozen=True, slots=True)
class RemotePeer:
    """A validated remote cluster: everything needed for its peer and routes."""

    cluster_id: str
    public_key: Key
    endpoint: UDPAddr
    subnets: tuple[IPNetwork, ...]
    using_ip: str
    using_nat: bool


def parse_port(value: str | None, field: str, cluster_id: str, default: int) -> int:
    if value is None or value == "":
        return default
    # ASCII digits only: str.isdigit() also accepts "²" (int() fails) and "٣" (int() = 3);
    # and int() fails on thousands of digits, hence the length check.
    digits = value.isascii() and value.isdigit() and len(value.lstrip("0")) <= 5
    if not digits or not 0 < int(value) < 65536:
        raise EndpointRejectedError(cluster_id, field, value, "must be a port number 1-65535")
    return int(value)


# Ranges that are never a remote cluster's: this host's own (loopback, link-local) or not
# unicast at all. A route for any part of them would take traffic that is not the tunnel's.
NOT_REMOTE: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "fe80::/10", "ff00::/8",
))


def parse_subnets(ep: Endpoint) -> tuple[IPNetwork, ...]:
    nets: list[IPNetwork] = []
    for s in ep.subnets:
        try:
            net = ipaddress.ip_network(s, strict=False)
        except ValueError:
            raise EndpointRejectedError(ep.cluster_id, "subnets", s, "not a CIDR") from None
        if net.prefixlen == 0:
            raise EndpointRejectedError(ep.cluster_id, "subnets", s, "a default route is refused")
        if special := next((n for n in NOT_REMOTE
                            if n.version == net.version and n.overlaps(net)), None):
            raise EndpointRejectedError(ep.cluster_id, "subnets", s,
                                        f"overlaps {special}, which no remote cluster owns")
        if net not in nets:
            nets.append(net)
    if not nets:
        raise EndpointRejectedError(ep.cluster_id, "subnets", ep.subnets, "no subnets")
    return tuple(nets)


def _overlap(a: Iterable[IPNetwork], b: Iterable[IPNetwork]) -> tuple[IPNetwork, IPNetwork] | None:
    bl = list(b)
    for x in a:
        for y in bl:
            if x.version == y.version and x.overlaps(y):
                return x, y
    return None


def validate_remote(
    info: NATEndpointInfo,
    local: Endpoint,
    local_subnets: Iterable[IPNetwork],
    own_public_key: Key,
    others: Mapping[str, RemotePeer] | PeerIndex,
    local_ips: Iterable[IPAddress] = (),
) -> RemotePeer:
    """The RemotePeer for ``info``, or EndpointRejectedError naming the field and value.

    ``others`` are the accepted peers; the remote's own entry, if there, is not a conflict.
    ``local_ips`` are this gateway's own addresses: no remote subnet may cover one (nor the
    remote gateway's own address), or the tunnel's own packets would be routed into it.
    """
    if not isinstance(others, PeerIndex):
        index = PeerIndex()
        for p in others.values():
            index.add(p)
        others = index
    ep = info.endpoint
    cid = ep.cluster_id
    if not cid:
        raise EndpointRejectedError(cid, "cluster_id", cid, "empty")
    if cid == local.cluster_id:
        raise EndpointRejectedError(cid, "cluster_id", cid, "is the local cluster's own ID")
    raw_key = ep.backend_config.get(PUBLIC_KEY)
    if not raw_key:
        raise EndpointRejectedError(cid, f"backend_config.{PUBLIC_KEY}", raw_key, "missing")
    try:
        key = Key.from_base64(raw_key, f"backend_config.{PUBLIC_KEY}")
    except ValueError as e:  # InvalidKeyError, or non-ASCII text (b64decode's own ValueError)
        raise EndpointRejectedError(cid, f"backend_config.{PUBLIC_KEY}", raw_key, str(e)) \
            from None
    if key == own_public_key:
        raise EndpointRejectedError(cid, f"backend_config.{PUBLIC_KEY}", raw_key,
                                    "is this gateway's own key")
    if owner := others.key_owner(key, exclude=cid):
        raise EndpointRejectedError(cid, f"backend_config.{PUBLIC_KEY}", raw_key,
                                    f"already used by cluster {owner!r}")
    try:
        ip: IPAddress = ipaddress.ip_address(info.use_ip)
    except ValueError:
        raise EndpointRejectedError(cid, "using_ip", info.use_ip, "not an IP address") from None
    if ip.is_unspecified or ip.is_multicast:
        raise EndpointRejectedError(cid, "using_ip", info.use_ip, "not a unicast address")
    port = parse_port(ep.backend_config.get(UDP_PORT), f"backend_config.{UDP_PORT}", cid,
                      DEFAULT_PORT)
    subnets = parse_subnets(ep)
    if hit := _overlap(subnets, local_subnets):
        raise EndpointRejectedError(cid, "subnets", str(hit[0]),
                                    f"overlaps the local cluster's {hit[1]}")
    for net in subnets:
        for addr in local_ips:
            if addr in net:
                raise EndpointRejectedError(cid, "subnets", str(net),
                                            f"covers this gateway's own address {addr}")
        if ip in net:
            raise EndpointRejectedError(
                cid, "subnets", str(net),
                f"covers the remote gateway's own address {ip}: the tunnel would route into "
                "itself")
        if clash := others.overlap(net, exclude=cid):
            raise EndpointRejectedError(
                cid, "subnets", str(net), f"overlaps {clash[0]} of cluster {clash[1]!r}")
        if gw := others.endpoint_in(net, exclude=cid):
            addr = (ipaddress.IPv4Address if net.version == 4 else ipaddress.IPv6Address)(gw[0])
            raise EndpointRejectedError(
                cid, "subnets", str(net), f"covers {addr}, the gateway address of cluster "
                f"{gw[1]!r}: that cluster's tunnel would route into this one")
    if clash := others.overlap(ipaddress.ip_network(ip), exclude=cid):
        raise EndpointRejectedError(
            cid, "using_ip", info.use_ip,
            f"is inside {clash[0]} of cluster {clash[1]!r}: this tunnel would route into that "
            "one")
    return RemotePeer(cid, key, UDPAddr(ip, port), subnets, info.use_ip, info.use_nat)


def desired_peer(peer: RemotePeer, keepalive: int, psk: Key | None) -> Peer:
    return Peer(
        public_key=peer.public_key,
        preshared_key=psk,
        endpoint=peer.endpoint,
        persistent_keepalive=keepalive,
        allowed_ips=list(peer.subnets),
    )


def desired_routes(
    peers: Iterable[RemotePeer], device: str, sources: Mapping[int, IPAddress]
) -> set[Route]:
    """One route per remote subnet through the device; ``sources`` maps IP version to the
    local address replies should come back to."""
    return {Route(n, device, sources.get(n.version)) for p in peers for n in p.subnets}


# Preshared keys anyone could guess protect nothing: refuse them.
WELL_KNOWN_PSKS = frozenset(
    {
        bytes(32),
        hashlib.sha256(b"").digest(),
        hashlib.sha256(b"default").digest(),
        hashlib.sha256(b"default psk").digest(),
    }
)


def check_psk(key: Key, source: str) -> Key:
    raw = key.raw
    if raw in WELL_KNOWN_PSKS or len(set(raw)) == 1:
        raise ValueError(f"{source}: preshared key refused: empty or well-known")
    return key


def mtu_for(underlay_mtu: int, ipv6_underlay: bool) -> int:
    """WireGuard overhead: outer IP (20 or 40) + UDP 8 + WireGuard header and tag 32."""
    return underlay_mtu - (80 if ipv6_underlay else 60)


def local_sources(
    addresses: Iterable[tuple[str, str, int]], subnets: Iterable[IPNetwork], device: str
) -> dict[int, IPAddress]:
    """The first local address (per IP version) inside the local cluster's subnets: the
    source for routes, so replies from the remote come back through the tunnel."""
    nets = list(subnets)
    found: dict[int, IPAddress] = {}
    for ifname, addr, _ in addresses:
        if ifname == device:
            continue
        ip = ipaddress.ip_address(addr)
        if ip.version not in found and any(ip in n for n in nets if n.version == ip.version):
            found[ip.version] = ip
    return found
