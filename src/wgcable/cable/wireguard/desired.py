"""What the device and the routing table should hold, from the connected endpoints (pure).

Each remote endpoint is parsed into canonical values (``cable.remote``) and then checked
against the local cluster and the accepted ones, here, once: a refusal names the field and
the value, and only that endpoint's connection is affected.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Re-exported: the driver and the agent's configuration name them through this module.
from wgcable.cable.remote import DEFAULT_PORT as DEFAULT_PORT
from wgcable.cable.remote import INTERFACE_NAME as INTERFACE_NAME
from wgcable.cable.remote import PUBLIC_KEY as PUBLIC_KEY
from wgcable.cable.remote import UDP_PORT as UDP_PORT
from wgcable.cable.remote import EndpointRejectedError as EndpointRejectedError
from wgcable.cable.remote import RemoteEndpoint, Span, parse_address, parse_remote, shown, span
from wgcable.cable.remote import parse_port as parse_port
from wgcable.cable.types import Endpoint, NATEndpointInfo
from wgcable.cable.wireguard.host import Protected, meet
from wgcable.cable.wireguard.index import PeerIndex
from wgcable.routing.table import Route
from wgcable.wgctrl import IPAddress, IPNetwork, Key, Peer, UDPAddr


@dataclass(frozen=True, slots=True)
class RemotePeer:
    """A validated remote cluster: everything needed for its peer and routes."""

    cluster_id: str
    public_key: Key
    endpoint: UDPAddr
    subnets: tuple[IPNetwork, ...]
    using_ip: str
    using_nat: bool


# Ranges that are never a remote cluster's: this host's own (loopback, link-local) or not
# unicast at all. A route for any part of them would take traffic that is not the tunnel's.
NOT_REMOTE: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "fe80::/10", "ff00::/8",
))


_NOT_REMOTE_SPANS: tuple[tuple[Span, IPNetwork], ...] = tuple((span(n), n) for n in NOT_REMOTE)


def check_subnets(cid: str, nets: tuple[IPNetwork, ...]) -> tuple[IPNetwork, ...]:
    """Refuse what no remote cluster may route to us (``nets`` are canonical)."""
    for net in nets:
        if net.prefixlen == 0:
            raise EndpointRejectedError(cid, "subnets", str(net), "a default route is refused")
        s = span(net)
        if special := next((n for ns, n in _NOT_REMOTE_SPANS if meet(ns, s)), None):
            raise EndpointRejectedError(cid, "subnets", str(net),
                                        f"overlaps {special}, which no remote cluster owns")
    if not nets:
        raise EndpointRejectedError(cid, "subnets", [], "no subnets")
    return nets


def validate_remote(
    info: NATEndpointInfo,
    local: Endpoint,
    local_subnets: Iterable[IPNetwork],
    own_public_key: Key,
    others: Mapping[str, RemotePeer] | PeerIndex,
    local_ips: Iterable[IPAddress] = (),
    protected: Iterable[Protected] = (),
) -> RemotePeer:
    """The RemotePeer for ``info``, or EndpointRejectedError naming the field and value.

    ``others`` are the accepted peers; the remote's own entry, if there, is not a conflict.
    ``local_ips`` are this gateway's own addresses: no remote subnet may cover one (nor the
    remote gateway's own address), or the tunnel's own packets would be routed into it.
    ``protected`` are networks of this host no remote subnet may overlap (its neighbours,
    nameservers, the broker, configured CIDRs): rule 220 runs before the main table.

    Every overlap and containment check compares integer spans (``remote.span``), each
    network's computed once here: with a thousand endpoints, ipaddress's own checks cost
    more than the rest of validation.
    """
    if not isinstance(others, PeerIndex):
        index = PeerIndex()
        for p in others.values():
            index.add(p)
        others = index
    ep = info.endpoint
    remote = parse_remote(ep)  # every value below is canonical: none is the remote's text
    cid = remote.cluster_id
    if cid == local.cluster_id:
        raise EndpointRejectedError(cid, "cluster_id", cid, "is the local cluster's own ID")
    key = remote.public_key
    shown_key = shown(ep.backend_config.get(PUBLIC_KEY))
    if key == own_public_key:
        raise EndpointRejectedError(cid, f"backend_config.{PUBLIC_KEY}", shown_key,
                                    "is this gateway's own key")
    if owner := others.key_owner(key, exclude=cid):
        raise EndpointRejectedError(cid, f"backend_config.{PUBLIC_KEY}", shown_key,
                                    f"already used by cluster {owner!r}")
    ip = _using_ip(info, remote)
    if ip.is_unspecified or ip.is_multicast:
        raise EndpointRejectedError(cid, "using_ip", str(ip), "not a unicast address")
    host = _host_spans(local_subnets, local_ips, protected)
    gw = (ip.version, int(ip), int(ip))
    spans = [(net, span(net)) for net in remote.subnets]
    # Nearly every endpoint meets nothing of this host's: then only the checks against the
    # gateway and the other clusters run. Otherwise every check, in its order.
    suspect = not spans or any(host.hit(s) for _, s in spans)
    if suspect:
        _check_subnets_local(cid, spans, host)
    for net, s in spans:
        if suspect:
            _check_fences(cid, net, s, host)
        if meet(gw, s):
            raise EndpointRejectedError(
                cid, "subnets", str(net),
                f"covers the remote gateway's own address {ip}: the tunnel would route into "
                "itself")
        if clash := others.overlap_span(s, exclude=cid):
            raise EndpointRejectedError(
                cid, "subnets", str(net), f"overlaps {clash[0]} of cluster {clash[1]!r}")
        if owned := others.endpoint_in_span(s, exclude=cid):
            addr = (ipaddress.IPv4Address if net.version == 4 else ipaddress.IPv6Address)(
                owned[0])
            raise EndpointRejectedError(
                cid, "subnets", str(net), f"covers {addr}, the gateway address of cluster "
                f"{owned[1]!r}: that cluster's tunnel would route into this one")
    if clash := others.overlap_span(gw, exclude=cid):
        raise EndpointRejectedError(
            cid, "using_ip", str(ip),
            f"is inside {clash[0]} of cluster {clash[1]!r}: this tunnel would route into that "
            "one")
    return RemotePeer(cid, key, UDPAddr(ip, remote.port), remote.subnets, str(ip),
                      info.use_nat)


@dataclass(frozen=True, slots=True)
class _HostSpans:
    """What no remote subnet may meet, as spans, computed once per host state instead of
    once per endpoint; and all of it merged into sorted disjoint intervals per IP version,
    so that a subnet that meets none of it (nearly all) is known so by one bisection."""

    local: tuple[tuple[Span, IPNetwork], ...]
    fences: tuple[tuple[Span, str], ...]
    own_ips: tuple[tuple[int, int, IPAddress], ...]
    starts: Mapping[int, list[int]]
    ends: Mapping[int, list[int]]

    def hit(self, s: Span) -> bool:
        """Whether ``s`` may meet any of it (exact for spans; the checks decide which)."""
        starts = self.starts.get(s[0])
        if not starts:
            return False
        i = bisect.bisect_right(starts, s[2]) - 1
        return i >= 0 and self.ends[s[0]][i] >= s[1]


def _make_host_spans(local_subnets: Iterable[IPNetwork], local_ips: Iterable[IPAddress],
                     protected: Iterable[Protected]) -> _HostSpans:
    local = tuple((span(n), n) for n in local_subnets)
    fences = tuple((span(p), what) for p, what in protected)
    own_ips = tuple((a.version, int(a), a) for a in local_ips)
    every = [s for s, _ in _NOT_REMOTE_SPANS] + [s for s, _ in local] + [
        s for s, _ in fences] + [(v, a, a) for v, a, _ in own_ips]
    starts: dict[int, list[int]] = {}
    ends: dict[int, list[int]] = {}
    for version, first, last in sorted(every):
        st, en = starts.setdefault(version, []), ends.setdefault(version, [])
        if en and first <= en[-1] + 1:
            en[-1] = max(en[-1], last)  # touching or overlapping: one interval
        else:
            st.append(first)
            en.append(last)
    return _HostSpans(local, fences, own_ips, starts, ends)


# The driver passes the same immutable tuples and frozensets for every endpoint until its
# host facts change: their spans are kept, keyed by the objects' identity (each entry holds
# its objects, so no id is reused while it is kept). Anything else is computed per call.
_HOST_CACHE: dict[tuple[int, int, int], tuple[object, object, object, _HostSpans]] = {}
_HOST_CACHE_MAX = 8


def _host_spans(local_subnets: Iterable[IPNetwork], local_ips: Iterable[IPAddress],
                protected: Iterable[Protected]) -> _HostSpans:
    immutable = (tuple, frozenset)
    if not (type(local_subnets) in immutable and type(local_ips) in immutable
            and type(protected) is tuple):
        return _make_host_spans(local_subnets, local_ips, protected)
    key = (id(local_subnets), id(local_ips), id(protected))
    held = _HOST_CACHE.get(key)
    if held is not None and held[0] is local_subnets and held[1] is local_ips \
            and held[2] is protected:
        return held[3]
    spans = _make_host_spans(local_subnets, local_ips, protected)
    if len(_HOST_CACHE) >= _HOST_CACHE_MAX:
        _HOST_CACHE.clear()
    _HOST_CACHE[key] = (local_subnets, local_ips, protected, spans)
    return spans


def _check_subnets_local(cid: str, spans: list[tuple[IPNetwork, Span]], host: _HostSpans
                         ) -> None:
    check_subnets(cid, tuple(net for net, _ in spans))
    for net, s in spans:
        if hit := next((n for ls, n in host.local if meet(ls, s)), None):
            raise EndpointRejectedError(cid, "subnets", str(net),
                                        f"overlaps the local cluster's {hit}")


def _check_fences(cid: str, net: IPNetwork, s: Span, host: _HostSpans) -> None:
    if what := next((w for ps, w in host.fences if meet(ps, s)), None):
        raise EndpointRejectedError(cid, "subnets", str(net), f"covers {what}")
    for version, a, addr in host.own_ips:
        if version == s[0] and s[1] <= a <= s[2]:
            raise EndpointRejectedError(cid, "subnets", str(net),
                                        f"covers this gateway's own address {addr}")


def _using_ip(info: NATEndpointInfo, remote: RemoteEndpoint) -> IPAddress:
    """The canonical form of the address the engine chose: one of the endpoint's own
    (already parsed, and named by its field when bad), else parsed here."""
    ep = info.endpoint
    for text, parsed in ((ep.public_ip, remote.public_ip), (ep.private_ip, remote.private_ip)):
        if parsed is not None and info.use_ip == text:
            return parsed
    return parse_address(info.use_ip, "using_ip", remote.cluster_id)


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
