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
    if via is None and dst.version == 4 and (src is None or src.version == 4):
        # The common route (thousands at once): its attributes in one pack, the same bytes
        # as ``_attributes`` (each 8 long: no padding).
        body = _V4_ROUTE.pack(8, RTA_DST, dst.network_address.packed, 8, RTA_TABLE, table,
                              8, RTA_OIF, oif)
        if src is not None:
            body += _V4_ATTR.pack(8, RTA_PREFSRC, src.packed)
        return msg_type, flags, head + body
    return msg_type, flags, head + _attributes(dst, oif, table, src, via)


_V4_ROUTE = struct.Struct("=HH4sHHIHHI")  # RTA_DST (4 bytes), RTA_TABLE, RTA_OIF (u32)
_V4_ATTR = struct.Struct("=HH4s")


def _attributes(dst: ipaddress.IPv4Network | ipaddress.IPv6Network, oif: int, table: int,
                src: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
                via: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bytes:
    """A route's attributes, one by one (any family, a next hop)."""
    out = [attrs.raw(RTA_DST, dst.network_address.packed), attrs.u32(RTA_TABLE, table),
           attrs.u32(RTA_OIF, oif)]
    if via is not None:
        if via.version == dst.version:
            out.append(attrs.raw(RTA_GATEWAY, via.packed))
        else:  # an IPv4 next hop of an IPv6 route: struct rtvia
            out.append(attrs.raw(RTA_VIA, struct.pack("=H", family_of(via.version))
                                 + via.packed))
    if src is not None:
        out.append(attrs.raw(RTA_PREFSRC, src.packed))
    return b"".join(out)


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


_ATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_UNI = RTN_UNICAST


def route_rows(parts: list[tuple[bytes, int, int]], family: int, table: int
               ) -> list[tuple[bytes, int, int, bytes, int, bytes, int]]:
    """The unicast routes but the default of one family and table, from a dump's raw
    messages (``NetlinkSocket.dump_raw``), as (dst, dst_len, oif, prefsrc, protocol,
    gateway, gateway family). One tight loop: a table of thousands of routes is read on
    every status check. Multipath routes (no RTA_OIF) are left out."""
    out = []
    size = 4 if family == AF_INET else 16
    rt, hdr, u32 = _RTMSG, _ATTR, _U32
    for data, start, end in parts:
        if end - start < rt.size:
            raise nlmsg.MessageDecodeError("RTM_NEWROUTE shorter than rtmsg")
        fam, dst_len, _, _, tab, proto, _, rtype, _ = rt.unpack_from(data, start)
        if fam != family or rtype != _UNI or not dst_len:
            continue
        dst = src = gw = b""
        oif = gw_fam = 0
        pos = start + rt.size
        while end - pos >= 4:
            alen, atype = hdr.unpack_from(data, pos)
            if alen < 4 or pos + alen > end:
                raise nlmsg.MessageDecodeError(f"route attribute with bad length {alen}")
            atype &= attrs.NLA_TYPE_MASK
            if atype == RTA_DST:
                dst = data[pos + 4:pos + alen]
            elif atype == RTA_OIF and alen == 8:
                oif = u32.unpack_from(data, pos + 4)[0]
            elif atype == RTA_TABLE and alen == 8:
                tab = u32.unpack_from(data, pos + 4)[0]
            elif atype == RTA_PREFSRC:
                src = data[pos + 4:pos + alen]
            elif atype == RTA_GATEWAY:
                gw = data[pos + 4:pos + alen]
            elif atype == RTA_VIA and alen >= 6:
                gw_fam = struct.unpack_from("=H", data, pos + 4)[0]
                gw = data[pos + 6:pos + alen]
            pos += (alen + 3) & ~3
        if tab != table or not oif:
            continue
        if len(dst) != size or (src and len(src) != size):
            raise nlmsg.MessageDecodeError(f"route of family {family} with a bad address size")
        if gw and len(gw) != (4 if (gw_fam or family) == AF_INET else 16):
            raise nlmsg.MessageDecodeError(f"route of family {family} with a bad gateway size")
        out.append((dst, dst_len, oif, src, proto, gw, gw_fam))
    return out
