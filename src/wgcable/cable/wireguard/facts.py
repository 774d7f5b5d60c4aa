"""What the driver reads from the host: the underlay's MTU and family, the routes' source
addresses, IPv6 on or off, this host's own addresses and what no remote may cover.

Read at start-up and on every resync, not on every change: that would cost subprocesses
per endpoint.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from wgcable.cable.types import Endpoint
from wgcable.cable.wireguard import desired, host
from wgcable.cable.wireguard.host import Protected
from wgcable.routing import IPRoute
from wgcable.wgctrl import IPAddress, IPNetwork

log = logging.getLogger(__name__)

IPV6_MIN_MTU = 1280  # RFC 8200: a link below it cannot carry IPv6


@dataclass(frozen=True, slots=True)
class HostFacts:
    underlay_mtu: int = 1500
    underlay_v6: bool = False  # the local endpoint's address is IPv6: 20 more bytes
    underlay_link: str | None = None  # the link of the published IP; None: not on this host
    ipv6: bool = True  # IPv6 on for the device: without it no IPv6 routes or rules exist
    sources: Mapping[int, IPAddress] = field(default_factory=dict)  # route src by version
    local_ips: frozenset[IPAddress] = frozenset()  # no remote subnet may cover one of these
    protected: tuple[Protected, ...] = ()  # nor overlap these


def read_facts(ip: IPRoute, local: Endpoint, local_subnets: tuple[IPNetwork, ...],
               device: str, configured: tuple[Protected, ...], resolv_conf: str) -> HostFacts:
    addresses = ip.addresses()
    mtu, v6_underlay, underlay = 1500, False, None
    published = {local.private_ip, *local.private_ips}
    for ifname, addr, _ in addresses:
        if addr in published:
            link = ip.link(ifname)
            mtu = int(link["mtu"]) if link else 1500
            v6_underlay, underlay = ipaddress.ip_address(addr).version == 6, ifname
            break
    local_ips: set[IPAddress] = {ipaddress.ip_address(addr) for ifname, addr, _ in addresses
                                 if ifname != device}
    for text in (local.private_ip, local.public_ip, *local.private_ips, *local.public_ips):
        with contextlib.suppress(ValueError):
            local_ips.add(ipaddress.ip_address(text))
    try:
        resolv = Path(resolv_conf).read_text(errors="replace")
    except OSError as e:
        log.debug("no nameservers to protect from %s: %s", resolv_conf, e)
        resolv = ""
    return HostFacts(
        underlay_mtu=mtu,
        underlay_v6=v6_underlay,
        underlay_link=underlay,
        ipv6=ip.ipv6_enabled(device),
        sources=desired.local_sources(addresses, local_subnets, device),
        local_ips=frozenset(local_ips),
        protected=(*configured, *host.connected_networks(addresses, device),
                   *host.nameservers(resolv)),
    )


def mtu_warnings(facts: HostFacts, private_ip: str, device: str) -> list[str]:
    """What a device MTU derived from ``facts`` cannot know or cannot do: a wrong one
    fragments every large packet on the underlay, or loses IPv6."""
    said = []
    if facts.underlay_link is None:
        said.append(f"the published IP {private_ip} is on no link of this host: the device "
                    "MTU assumes a 1500-byte underlay; set --mtu if the path is smaller")
    mtu = desired.mtu_for(facts.underlay_mtu, facts.underlay_v6)
    if facts.ipv6 and mtu < IPV6_MIN_MTU:
        said.append(f"underlay MTU {facts.underlay_mtu} leaves {device} an MTU of {mtu}, "
                    f"below IPv6's minimum of {IPV6_MIN_MTU}: IPv6 cannot cross the cable")
    return said
