"""The route agent's desired state and VTEP addressing (pure)."""

from __future__ import annotations

import ipaddress

import pytest

from wgcable.routeagent import vtep
from wgcable.routeagent.state import LINK, LOOSE, NodeFacts, Settings, node_state
from wgcable.routing.table import Route

NODE = ipaddress.ip_address("198.18.1.11")
GW = ipaddress.ip_address("198.18.0.1")
REMOTE = [ipaddress.ip_network("10.2.0.0/16"), ipaddress.ip_network("fd00:2::/48")]
FACTS = NodeFacts(NODE, "eth0", 1500, {4: ipaddress.ip_address("10.1.1.1")})


def test_route_agent_vtep_addresses_and_mac_follow_the_node_ip() -> None:
    assert str(vtep.vtep_ip(NODE)) == "240.18.1.11"
    assert str(vtep.vtep_ip6(NODE)) == "fd24:f0::c612:10b"
    assert vtep.vtep_mac(NODE) == "02:77:c6:12:01:0b"
    with pytest.raises(ValueError, match="IPv4"):
        vtep.vtep_ip(ipaddress.ip_address("fd00::1"))


def test_route_agent_worker_routes_every_remote_cidr_via_the_gateway_vtep() -> None:
    s = node_state(Settings(), FACTS, GW, REMOTE)
    link = s.link[LINK]
    assert link.mtu == 1450
    assert (link.vni, link.port, link.local, link.underlay) == (100, 4800, NODE, "eth0")
    assert s.fdb == {"02:77:c6:12:00:01": GW}
    assert s.neigh == {vtep.vtep_ip(GW): "02:77:c6:12:00:01",
                       vtep.vtep_ip6(GW): "02:77:c6:12:00:01"}
    assert set(s.routes) == {
        Route(REMOTE[0], "vx-submariner", ipaddress.ip_address("10.1.1.1"), vtep.vtep_ip(GW)),
        Route(REMOTE[1], "vx-submariner", None, vtep.vtep_ip6(GW))}
    assert s.rp_filter == {"eth0": LOOSE}
    assert set(s.nft_remote) == set(REMOTE)


def test_route_agent_on_the_gateway_node_only_receives() -> None:
    s = node_state(Settings(device="vx0"), FACTS, NODE, REMOTE)
    assert (dict(s.fdb), dict(s.neigh), dict(s.routes)) == ({}, {}, {})
    assert dict(s.nft_remote) == {}  # the driver's --snat-exemption rules the gateway
    assert s.rp_filter == {"vx0": LOOSE}


def test_route_agent_without_ipv6_has_no_ipv6_route_or_vtep() -> None:
    facts = NodeFacts(NODE, "eth0", 1500, None, ipv6=False)
    s = node_state(Settings(), facts, GW, REMOTE)
    assert {r.dst.version for r in s.routes} == {4}
    assert s.link[LINK].vtep6 is None
    assert list(s.neigh) == [vtep.vtep_ip(GW)]


def test_route_agent_route_spec_names_its_next_hop_onlink() -> None:
    r = Route(REMOTE[0], "vx-submariner", None, vtep.vtep_ip(GW))
    assert r.spec(254, 88) == ("10.2.0.0/16 dev vx-submariner table 254 proto 88 via "
                               "240.18.0.1 onlink")
    assert r.text_key() == ("10.2.0.0/16", "vx-submariner", "", "240.18.0.1")


def test_route_agent_rp_filter_request_is_the_kernels_nested_devconf() -> None:
    """rp_filter goes through rtnetlink (a container's /proc/sys is read-only):
    IFLA_AF_SPEC { AF_INET { IFLA_INET_CONF { RP_FILTER(8): u32 } } } on the named link."""
    from wgcable.netlink import attrs, rtnl

    sent: list[tuple[int, bytes]] = []

    class Sock:
        def request(self, msg_type: int, payload: bytes) -> None:
            sent.append((msg_type, payload))

    rtnl.set_ipv4_conf("eth0", rtnl.IPV4_DEVCONF_RP_FILTER, 2, Sock())  # type: ignore[arg-type]
    [(msg_type, payload)] = sent
    assert msg_type == rtnl.RTM_NEWLINK
    found = attrs.by_type(attrs.parse(payload[16:]))
    assert found[rtnl.IFLA_IFNAME].payload.rstrip(b"\0") == b"eth0"
    [inet] = found[rtnl.IFLA_AF_SPEC].nested()
    assert inet.type == rtnl.AF_INET
    [conf] = inet.nested()
    assert conf.type == rtnl.IFLA_INET_CONF
    [value] = conf.nested()
    assert (value.type, value.payload) == (8, (2).to_bytes(4, "little"))
