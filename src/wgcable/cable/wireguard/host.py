"""What on this host no remote subnet may cover (pure; the driver reads the inputs).

Rule 220 is consulted before the main table, so a remote that claims a subnet covering a
neighbour of ours, our DNS server or the broker would capture that traffic into its tunnel.
Each entry carries what it is, for the refusal's message.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from wgcable.cable.remote import Span, span
from wgcable.wgctrl import IPNetwork

Protected = tuple[IPNetwork, str]  # a network, and what it is ("nameserver 10.96.0.10")


def connected_networks(addresses: Iterable[tuple[str, str, int]], device: str
                       ) -> list[Protected]:
    """The networks of the host's addresses (``ip -j addr``'s interface, address, prefix
    length), except on our own WireGuard device: traffic to them goes out directly."""
    out: list[Protected] = []
    for ifname, addr, plen in addresses:
        if ifname == device:
            continue
        try:
            net = ipaddress.ip_network(f"{addr.partition('%')[0]}/{plen}", strict=False)
        except ValueError:
            continue
        out.append((net, f"the directly connected network {net} on {ifname}"))
    return out


def nameservers(resolv_conf: str) -> list[Protected]:
    """The ``nameserver`` lines of a resolv.conf text, as host networks."""
    out: list[Protected] = []
    for line in resolv_conf.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                ip = ipaddress.ip_address(words[1].partition("%")[0])
            except ValueError:
                continue
            out.append((ipaddress.ip_network(ip), f"the nameserver {ip}"))
    return out


def overlaps(a: IPNetwork, b: IPNetwork) -> bool:
    """``a.overlaps(b)`` for networks of either family, compared as integers: ipaddress's
    own costs microseconds, and validation checks each subnet against many networks."""
    return meet(span(a), span(b))


def meet(a: Span, b: Span) -> bool:
    """Whether two spans (``remote.span``) share an address: same family, and each starts
    before the other ends."""
    return a[0] == b[0] and a[1] <= b[2] and b[1] <= a[2]


def covered(net: IPNetwork, protected: Iterable[Protected]) -> str | None:
    """What of ``protected`` the remote subnet ``net`` overlaps (any overlap: a more
    specific route would take part of it), or None."""
    s = span(net)
    for p, what in protected:
        if meet(span(p), s):
            return what
    return None
