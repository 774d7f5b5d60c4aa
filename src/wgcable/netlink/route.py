"""rtnetlink routes and policy rules: pure encoding and decoding (rtmsg, fib_rule_hdr).

Addresses travel as their packed bytes and names as ifindexes: nothing here is text that a
parser on the other side could misread. I/O is in ``routeops.py``.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from wgcable.netlink import attrs
from wgcable.netlink import message as nlmsg

# include/uapi/linux/rtnetlink.h
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTM_NEWRULE = 32
RTM_DELRULE = 33
RTM_GETRULE = 34
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PREFSRC = 7
RTA_TABLE = 15
RTA_VIA = 18
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255
RT_TABLE_COMPAT = 252  # rtm_table when the real table (RTA_TABLE) does not fit in a u8
RTNH_F_ONLINK = 4
AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6
# include/uapi/linux/fib_rules.h
FRA_PRIORITY = 6
FRA_TABLE = 15
FRA_PROTOCOL = 21
FR_ACT_TO_TBL = 1

_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol,
# scope, type, flags
_FIBHDR = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, res1, res2,
# action, flags

NEW = "add"  # create, fail if the destination exists (NLM_F_EXCL)
REPLACE = "replace"  # create or take over the destination (NLM_F_REPLACE)
DELETE = "del"


def family_of(version: int) -> int:
    return AF_INET if version == 4 else AF_INET6


@dataclass(frozen=True, slots=True)
class RouteMsg:
    """A route as a dump reports it, in the kernel's own terms (ifindex, packed bytes)."""

    family: int
    dst: bytes  # packed network address; b"" for a default route
    dst_len: int
    table: int
    protocol: int
    type: int
    oif: int  # 0: none (a multipath or blackhole route)
    prefsrc: bytes = b""
    gateway: bytes = b""  # packed; of the via family when that differs
    gateway_family: int = 0

    def dst_text(self) -> str:
        """As ``ip -j route show`` prints it: a host route without its /32 or /128."""
        addr = socket.inet_ntop(self.family, self.dst)
        full = 32 if self.family == AF_INET else 128
        return addr if self.dst_len == full else f"{addr}/{self.dst_len}"

    def prefsrc_text(self) -> str:
        return socket.inet_ntop(self.family, self.prefsrc) if self.prefsrc else ""

    def gateway_text(self) -> str:
        if not self.gateway:
            return ""
        return socket.inet_ntop(self.gateway_family or self.family, self.gateway)


def _rtmsg(family: int, dst_len: int, table: int, protocol: int, scope: int, rtype: int,
           flags: int = 0) -> bytes:
    small = table if table < 256 else RT_TABLE_COMPAT
    return _RTMSG.pack(family, dst_len, 0, 0, small, protocol, scope, rtype, flags)


def encode_dump_routes(family: int, table: int) -> bytes:
    """A dump request for one family's routes; with strict checking (NETLINK_GET_STRICT_CHK)
    the kernel filters by table itself, otherwise the caller does."""
    return _rtmsg(family, 0, 0, 0, 0, 0) + attrs.u32(RTA_TABLE, table)


def encode_route(verb: str, dst: ipaddress.IPv4Network | ipaddress.IPv6Network, oif: int,
                 table: int, protocol: int,
                 src: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
                 via: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
                 ) -> tuple[int, int, bytes]:
    """(message type, flags, payload) of one route add, replace or delete. A delete names
    our device and protocol, so that it never removes another owner's route."""
    family = family_of(dst.version)
    if verb == DELETE:
        msg_type, flags = RTM_DELROUTE, 0
        head = _rtmsg(family, dst.prefixlen, table, protocol, RT_SCOPE_NOWHERE, 0)
    elif verb in (NEW, REPLACE):
        msg_type = RTM_NEWROUTE
        flags = nlmsg.NLM_F_CREATE | (nlmsg.NLM_F_REPLACE if verb == REPLACE
                                      else nlmsg.NLM_F_EXCL)
        head = _rtmsg(family, dst.prefixlen, table, protocol,
                      RT_SCOPE_UNIVERSE if via is not None else RT_SCOPE_LINK, RTN_UNICAST,
                      RTNH_F_ONLINK if via is not None else 0)
    else:
        raise ValueError(f"route verb {verb!r} is not add, replace or del")
    out = [head, attrs.raw(RTA_DST, dst.network_address.packed), attrs.u32(RTA_TABLE, table),
           attrs.u32(RTA_OIF, oif)]
    if via is not None:
        if via.version == dst.version:
            out.append(attrs.raw(RTA_GATEWAY, via.packed))
        else:  # an IPv4 next hop of an IPv6 route: struct rtvia
            out.append(attrs.raw(RTA_VIA, struct.pack("=H", family_of(via.version))
                                 + via.packed))
    if src is not None:
        out.append(attrs.raw(RTA_PREFSRC, src.packed))
    return msg_type, flags, b"".join(out)


def parse_route(payload: bytes) -> RouteMsg:
    if len(payload) < _RTMSG.size:
        raise nlmsg.MessageDecodeError("RTM_NEWROUTE shorter than rtmsg")
    family, dst_len, _, _, table, protocol, _, rtype, _ = _RTMSG.unpack_from(payload)
    dst = prefsrc = gateway = b""
    oif = gw_family = 0
    for a in attrs.iter_attrs(payload[_RTMSG.size:]):
        if a.type == RTA_DST:
            dst = a.payload
        elif a.type == RTA_OIF:
            oif = a.u32()
        elif a.type == RTA_TABLE:
            table = a.u32()
        elif a.type == RTA_PREFSRC:
            prefsrc = a.payload
        elif a.type == RTA_GATEWAY:
            gateway = a.payload
        elif a.type == RTA_VIA and len(a.payload) >= 2:
            gw_family = struct.unpack_from("=H", a.payload)[0]
            gateway = a.payload[2:]
    size = 4 if family == AF_INET else 16
    if (dst_len and len(dst) != size) or (prefsrc and len(prefsrc) != size):
        raise nlmsg.MessageDecodeError(f"route of family {family} with a bad address size")
    gw_size = 4 if (gw_family or family) == AF_INET else 16
    if gateway and len(gateway) != gw_size:
        raise nlmsg.MessageDecodeError(f"route of family {family} with a bad gateway size")
    return RouteMsg(family, dst or bytes(size), dst_len, table, protocol, rtype, oif,
                    prefsrc, gateway, gw_family)


@dataclass(frozen=True, slots=True)
class RuleMsg:
    family: int
    priority: int
    table: int
    protocol: int
    action: int


def encode_dump_rules(family: int) -> bytes:
    return _FIBHDR.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)


def encode_rule(family: int, priority: int, table: int, protocol: int | None) -> bytes:
    """A rule "from all lookup <table>" at ``priority``; ``protocol`` None matches any on
    delete."""
    small = table if table < 256 else RT_TABLE_COMPAT
    out = [_FIBHDR.pack(family, 0, 0, 0, small, 0, 0, FR_ACT_TO_TBL, 0),
           attrs.u32(FRA_PRIORITY, priority), attrs.u32(FRA_TABLE, table)]
    if protocol is not None:
        out.append(attrs.u8(FRA_PROTOCOL, protocol))
    return b"".join(out)


def parse_rule(payload: bytes) -> RuleMsg:
    if len(payload) < _FIBHDR.size:
        raise nlmsg.MessageDecodeError("RTM_NEWRULE shorter than fib_rule_hdr")
    family, _, _, _, table, _, _, action, _ = _FIBHDR.unpack_from(payload)
    priority = protocol = 0
    for a in attrs.iter_attrs(payload[_FIBHDR.size:]):
        if a.type == FRA_PRIORITY:
            priority = a.u32()
        elif a.type == FRA_TABLE:
            table = a.u32()
        elif a.type == FRA_PROTOCOL:
            protocol = a.u8()
    return RuleMsg(family, priority, table, protocol, action)
