"""Connection tracking entries whose source NAT rewrote local-to-remote traffic, found and
deleted through ctnetlink (NETLINK_NETFILTER, NFNL_SUBSYS_CTNETLINK).

NAT is decided once per connection, at its first packet. When a CNI's masquerade appears
on a host without NAT, flows that send in the milliseconds before our exemption's chain
follows it get the masquerade's binding, and keep it as long as they live: the health
check's pings (one ICMP identifier per remote, sent every second) would never expire.
Deleting those entries after the chain is loaded makes their next packet start a new entry,
which our null binding then keeps. Only entries with a source NAT that changed the address
(``IPS_SRC_NAT``, the reply not addressed to the original source) from a local network to
a remote one are deleted.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from wgcable.netlink import attrs
from wgcable.netlink import message as nlmsg
from wgcable.netlink.message import NetlinkError
from wgcable.netlink.nfnetlink import NFGENMSG, msg_type
from wgcable.netlink.socket import NETLINK_NETFILTER, NetlinkSocket

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_STATUS = 3
CTA_ZONE = 18
CTA_TUPLE_IP = 1
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
IPS_SRC_NAT = 1 << 4
_BE32 = struct.Struct("!I")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Entry:
    """What deciding and deleting one entry needs."""

    family: int  # AF_INET, AF_INET6
    src: Address  # the original direction's
    dst: Address
    reply_dst: Address | None  # where replies go: the source after NAT
    status: int
    tuple_attr: bytes  # CTA_TUPLE_ORIG as received, sent back to delete it
    zone_attr: bytes  # CTA_ZONE as received, or b""


def _addresses(tuple_attr: attrs.Attr) -> tuple[Address, Address] | None:
    ip = attrs.first(tuple_attr.nested(), CTA_TUPLE_IP)
    if ip is None:
        return None
    found = attrs.by_type(ip.nested())
    for src, dst in ((CTA_IP_V4_SRC, CTA_IP_V4_DST), (CTA_IP_V6_SRC, CTA_IP_V6_DST)):
        if src in found and dst in found:
            return (ipaddress.ip_address(found[src].payload),
                    ipaddress.ip_address(found[dst].payload))
    return None


def _raw(a: attrs.Attr) -> bytes:
    """The attribute re-encoded as received (the nested flag kept)."""
    return attrs.encode(a.type, a.payload, nested=a.is_nested)


def parse_entry(msg: nlmsg.Message) -> Entry | None:
    """One IPCTNL_MSG_CT_NEW message of a dump; None when it lacks what is needed."""
    if len(msg.payload) < NFGENMSG.size:
        return None
    family = msg.payload[0]
    found = attrs.by_type(attrs.iter_attrs(msg.payload[NFGENMSG.size:]))
    orig, reply, status = found.get(CTA_TUPLE_ORIG), found.get(CTA_TUPLE_REPLY), \
        found.get(CTA_STATUS)
    if orig is None or status is None or len(status.payload) != 4:
        return None
    addrs = _addresses(orig)
    if addrs is None:
        return None
    back = _addresses(reply) if reply is not None else None
    zone = found.get(CTA_ZONE)
    return Entry(family, addrs[0], addrs[1], back[1] if back else None,
                 _BE32.unpack(status.payload)[0], _raw(orig), _raw(zone) if zone else b"")


def masqueraded(entry: Entry, local: Sequence[Network], remote: Sequence[Network]) -> bool:
    """Whether source NAT rewrote this local-to-remote entry (a null binding does not)."""
    if not entry.status & IPS_SRC_NAT or entry.reply_dst == entry.src:
        return False
    return (any(entry.src in n for n in local if n.version == entry.src.version)
            and any(entry.dst in n for n in remote if n.version == entry.dst.version))


def _type(msg: int) -> int:
    return msg_type(NFNL_SUBSYS_CTNETLINK, msg)


def delete_masqueraded(local: Sequence[Network], remote: Sequence[Network],
                       sock: NetlinkSocket | None = None) -> int:
    """Delete every masqueraded local-to-remote entry of the socket's namespace (a new
    NETLINK_NETFILTER socket here when none is given); how many were deleted."""
    own = sock is None
    s = sock or NetlinkSocket(NETLINK_NETFILTER)
    try:
        try:
            dump = s.request(_type(IPCTNL_MSG_CT_GET), NFGENMSG.pack(socket.AF_UNSPEC, 0, 0),
                             dump=True)
        except NetlinkError as e:
            if e.errno in (errno.ENOENT, errno.EOPNOTSUPP, errno.EPROTONOSUPPORT):
                return 0  # no connection tracking here at all
            raise
        doomed = [ent for m in dump if (m.type & 0xFF) == IPCTNL_MSG_CT_NEW
                  and (ent := parse_entry(m)) is not None and masqueraded(ent, local, remote)]
        if not doomed:
            return 0
        errors = s.batch([(_type(IPCTNL_MSG_CT_DELETE), 0,
                           NFGENMSG.pack(ent.family, 0, 0) + ent.tuple_attr
                           + ent.zone_attr) for ent in doomed])
        # Gone meanwhile (ENOENT) is as good as deleted.
        return sum(1 for err in errors if err is None or err.errno == errno.ENOENT)
    finally:
        if own:
            s.close()
