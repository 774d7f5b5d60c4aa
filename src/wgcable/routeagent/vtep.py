"""VXLAN tunnel endpoint addresses, derived from a node's IPv4 address (pure).

Submariner's layout: the VTEP address is the node IP with its first octet replaced by 240,
as a /8 (240.0.0.0/4 is reserved, never routed). The device's MAC is derived too, so a node
knows every other node's VTEP MAC from its IP alone: a worker needs a static neighbour entry
and one FDB entry for its gateway, and no ARP or flooding across the VXLAN.
"""

from __future__ import annotations

import ipaddress

from wgcable.wgctrl import IPAddress

VTEP_PREFIX = 8
# IPv6 routes need an IPv6 next hop (the kernel refuses ``via inet`` for them): the node's
# IPv4 address in a ULA /96 serves as its IPv6 VTEP address.
VTEP6_NET = ipaddress.IPv6Network("fd24:f0::/96")
DEFAULT_DEVICE = "vx-submariner"
DEFAULT_VNI = 100
DEFAULT_PORT = 4800
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14


def _v4(node_ip: IPAddress) -> ipaddress.IPv4Address:
    if not isinstance(node_ip, ipaddress.IPv4Address):
        raise ValueError(f"node IP {node_ip}: the VXLAN underlay needs an IPv4 address")
    return node_ip


def vtep_ip(node_ip: IPAddress) -> ipaddress.IPv4Address:
    """240.b.c.d for node a.b.c.d."""
    return ipaddress.IPv4Address((240 << 24) | (int(_v4(node_ip)) & 0xFFFFFF))


def vtep_ip6(node_ip: IPAddress) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(int(VTEP6_NET.network_address) | int(_v4(node_ip)))


def vtep_mac(node_ip: IPAddress) -> str:
    """A locally administered unicast MAC: 02:77 ("w") and the node's four bytes."""
    raw = _v4(node_ip).packed
    return ":".join(f"{b:02x}" for b in (0x02, 0x77, *raw))
