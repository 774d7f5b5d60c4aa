"""Validation's integer checks (``remote.span``) and the boundary's dotted-quad fast path
decide as ipaddress's own did.

``validate_remote`` compares integer spans instead of calling ``overlaps``, ``in`` and
``broadcast_address`` (issue 19: 1000 endpoints). The reference below is the earlier
validation, check for check, on ipaddress's operations: on random endpoints, hosts and
accepted clusters crowded into a few ranges (so that most checks have something to find),
both accept the same peer or refuse with the same field, value and reason.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from hypothesis import event, given, settings
from hypothesis import strategies as st

from wgcable.cable.remote import (
    canonical_address,
    canonical_network,
    parse_address,
    parse_network,
    parse_remote,
    shown,
    span,
)
from wgcable.cable.types import Endpoint, NATEndpointInfo
from wgcable.cable.wireguard.desired import (
    NOT_REMOTE,
    PUBLIC_KEY,
    EndpointRejectedError,
    RemotePeer,
    validate_remote,
)
from wgcable.cable.wireguard.host import Protected
from wgcable.cable.wireguard.index import PeerIndex
from wgcable.netlink import route as nlroute
from wgcable.wgctrl import IPAddress, IPNetwork, Key, UDPAddr

OWN = Key(bytes(range(1, 33))).public_key()
LOCAL = Endpoint(cluster_id="local", subnets=[], private_ip="192.0.2.1", backend="wireguard")

# Small ranges, so that generated networks and addresses often meet: mostly 10.0.0.0/20 and
# fd00::/116, sometimes loopback and link-local (never a remote's).
V4_BASES = (0x0A000000,) * 3 + (0x7F000000,)
V6_BASES = (0xFD00 << 112,) * 3 + (0xFE80 << 112,)


@st.composite
def addresses(draw: st.DrawFn) -> IPAddress:
    offset = draw(st.integers(0, 2**12 - 1))
    if draw(st.booleans()):
        return ipaddress.IPv4Address(draw(st.sampled_from(V4_BASES)) + offset)
    return ipaddress.IPv6Address(draw(st.sampled_from(V6_BASES)) + offset)


@st.composite
def networks(draw: st.DrawFn) -> IPNetwork:
    addr = draw(addresses())
    if addr.version == 4:
        plen = draw(st.one_of(st.integers(0, 32), st.integers(22, 32), st.integers(22, 32)))
        return ipaddress.IPv4Network((int(addr), plen), strict=False)
    plen = draw(st.one_of(st.integers(0, 128), st.integers(118, 128), st.integers(118, 128)))
    return ipaddress.IPv6Network((int(addr), plen), strict=False)


def endpoint(cid: str, subnets: Sequence[IPNetwork], gw: IPAddress) -> NATEndpointInfo:
    ep = Endpoint(cluster_id=cid, subnets=[str(n) for n in subnets], private_ip=str(gw),
                  backend="wireguard",
                  backend_config={PUBLIC_KEY: Key(cid.encode().ljust(32, b"k")).base64()})
    return NATEndpointInfo(endpoint=ep, use_ip=str(gw), use_nat=False)


def reference(info: NATEndpointInfo, local_subnets: Sequence[IPNetwork], others: PeerIndex,
              local_ips: Iterable[IPAddress], protected: Iterable[Protected]) -> RemotePeer:
    """The validation before integer spans, on ipaddress's own operations."""
    ep = info.endpoint
    remote = parse_remote(ep)
    cid = remote.cluster_id
    if cid == LOCAL.cluster_id:
        raise EndpointRejectedError(cid, "cluster_id", cid, "is the local cluster's own ID")
    key = remote.public_key
    shown_key = shown(ep.backend_config.get(PUBLIC_KEY))
    if key == OWN:
        raise EndpointRejectedError(cid, f"backend_config.{PUBLIC_KEY}", shown_key,
                                    "is this gateway's own key")
    if owner := others.key_owner(key, exclude=cid):
        raise EndpointRejectedError(cid, f"backend_config.{PUBLIC_KEY}", shown_key,
                                    f"already used by cluster {owner!r}")
    ip = parse_address(info.use_ip, "using_ip", cid)
    if ip.is_unspecified or ip.is_multicast:
        raise EndpointRejectedError(cid, "using_ip", str(ip), "not a unicast address")

    def overlaps(a: IPNetwork, b: IPNetwork) -> bool:
        return a.version == b.version and a.overlaps(b)  # type: ignore[arg-type]

    subnets = remote.subnets
    for net in subnets:
        if net.prefixlen == 0:
            raise EndpointRejectedError(cid, "subnets", str(net), "a default route is refused")
        if special := next((n for n in NOT_REMOTE if overlaps(n, net)), None):
            raise EndpointRejectedError(cid, "subnets", str(net),
                                        f"overlaps {special}, which no remote cluster owns")
    if not subnets:
        raise EndpointRejectedError(cid, "subnets", [], "no subnets")
    for x in subnets:
        for y in local_subnets:
            if overlaps(x, y):
                raise EndpointRejectedError(cid, "subnets", str(x),
                                            f"overlaps the local cluster's {y}")
    for net in subnets:
        if what := next((w for p, w in protected if overlaps(p, net)), None):
            raise EndpointRejectedError(cid, "subnets", str(net), f"covers {what}")
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
            cid, "using_ip", str(ip),
            f"is inside {clash[0]} of cluster {clash[1]!r}: this tunnel would route into that "
            "one")
    return RemotePeer(cid, key, UDPAddr(ip, remote.port), subnets, str(ip), info.use_nat)


def outcome(f: object, *args: object) -> object:
    try:
        return f(*args)  # type: ignore[operator]
    except EndpointRejectedError as e:
        return (e.field, e.value, e.reason, str(e))


@settings(max_examples=150, deadline=None)
@given(clusters=st.lists(st.tuples(st.lists(networks(), max_size=3), addresses()),
                         min_size=1, max_size=8),
       local_subnets=st.lists(networks(), max_size=1),
       local_ips=st.lists(addresses(), max_size=2),
       protected=st.lists(networks(), max_size=1))
def test_integer_validation_decides_as_ipaddress_did(
        clusters: list[tuple[list[IPNetwork], IPAddress]], local_subnets: list[IPNetwork],
        local_ips: list[IPAddress], protected: list[IPNetwork]) -> None:
    fences: list[Protected] = [(p, f"protected {p}") for p in protected]
    index = PeerIndex()
    # The same objects for every cluster, as the driver passes them: their spans are kept.
    host = (tuple(local_subnets), tuple(local_ips), tuple(fences))
    for i, (subnets, gw) in enumerate(clusters):
        info = endpoint(f"c{i}", subnets, gw)
        fast = outcome(validate_remote, info, LOCAL, host[0], OWN, index, host[1], host[2])
        slow = outcome(reference, info, local_subnets, index, local_ips, fences)
        assert fast == slow
        event(" ".join(str(fast[2]).split()[:2]) if isinstance(fast, tuple) else "accepted")
        if isinstance(fast, RemotePeer):
            index.add(fast)


@settings(max_examples=300, deadline=None)
@given(networks(), addresses())
def test_span_is_the_network_s_first_and_broadcast_address(net: IPNetwork,
                                                           addr: IPAddress) -> None:
    version, first, last = span(net)
    assert (version, first, last) == (net.version, int(net.network_address),
                                      int(net.broadcast_address))
    assert (addr.version == version and first <= int(addr) <= last) == (addr in net)


# --- the dotted-quad fast path of the boundary (remote.parse_address, parse_network) ---------


def reference_network(text: str) -> IPNetwork:
    """The earlier parse_network: ipaddress for every text."""
    if "%" in text:
        raise EndpointRejectedError("c", "subnets", text,
                                    "a zone is not allowed on another cluster's network")
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise EndpointRejectedError("c", "subnets", text, "not a CIDR") from None
    return canonical_network(net)


def reference_address(text: str) -> IPAddress:
    if "%" in text:
        raise EndpointRejectedError("c", "private_ip", text,
                                    "a zone is not allowed on another cluster's address")
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise EndpointRejectedError("c", "private_ip", text, "not an IP address") from None
    return canonical_address(addr)


def parsed(f: object, *args: object) -> object:
    value = outcome(f, *args)
    return value if isinstance(value, tuple) else (type(value), str(value))


OCTETS = st.one_of(st.integers(0, 299).map(str), st.sampled_from(
    ["00", "01", "007", "0x1", "1e2", "", " 1", "1 ", "٣", "²", "+1", "-1", "1_0"]))
QUADS = st.builds(lambda parts, sep, plen: sep.join(parts) + plen,
                  st.lists(OCTETS, min_size=3, max_size=5),
                  st.sampled_from([".", ".", ".", ":", ".."]),
                  st.one_of(st.just(""), st.integers(0, 40).map(lambda p: f"/{p}"),
                            st.sampled_from(["/024", "/", "/255.255.255.0", "/0.0.0.255",
                                             "/24\n", "%eth0", "/24%x", "/ 24"])))


@settings(max_examples=300, deadline=None)
@given(st.one_of(QUADS, st.text(alphabet="0123456789./%:abcdefx \n", max_size=24)))
def test_dotted_quad_fast_path_parses_as_ipaddress(text: str) -> None:
    assert parsed(parse_network, text, "subnets", "c") == parsed(reference_network, text)
    assert parsed(parse_address, text, "private_ip", "c") == parsed(reference_address, text)


# --- route requests: the IPv4 fast path of netlink/route.encode_route ------------------------


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["add", "replace", "del"]), st.integers(0, 2**32 - 1),
       st.integers(0, 32), st.integers(1, 2**31), st.integers(0, 2**32 - 1),
       st.integers(0, 255), st.one_of(st.none(), st.integers(0, 2**32 - 1)))
def test_ipv4_route_request_is_the_attribute_by_attribute_encoding(
        verb: str, addr: int, plen: int, oif: int, table: int, protocol: int,
        src: int | None) -> None:
    dst = ipaddress.IPv4Network((addr, plen), strict=False)
    source = None if src is None else ipaddress.IPv4Address(src)
    payload = nlroute.encode_route(verb, dst, oif, table, protocol, source)[2]
    head = payload[:nlroute._RTMSG.size]
    assert payload == head + nlroute._attributes(dst, oif, table, source, None)
