"""rtnetlink links: list, look up, create, delete, bring up and set the MTU of interfaces.

Enough for the cable driver and tests to manage kernel ``wireguard`` links without pyroute2
or ip(8). Encoding and parsing are separate pure functions.
"""

from __future__ import annotations

import errno as _errno
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from wgcable.netlink import attrs
from wgcable.netlink import message as nlmsg
from wgcable.netlink.message import NetlinkError
from wgcable.netlink.socket import NETLINK_ROUTE, NetlinkSocket

# include/uapi/linux/rtnetlink.h, if_link.h, if.h
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
IFF_UP = 0x1
AF_UNSPEC = 0
IFNAMSIZ = 16

_IFINFOMSG = struct.Struct("=BxHiII")  # family, pad, type, index, flags, change


@dataclass(frozen=True, slots=True)
class Link:
    index: int
    name: str
    kind: str | None  # IFLA_INFO_KIND: "wireguard", "veth", ...; None for plain devices
    flags: int
    mtu: int

    @property
    def is_up(self) -> bool:
        return bool(self.flags & IFF_UP)


def check_name(name: str) -> None:
    """Reject names the kernel would (dev_valid_name), with a clearer message."""
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ or name in (".", ".."):
        raise ValueError(f"interface name {name!r} must be 1-{IFNAMSIZ - 1} bytes")
    if any(c in name for c in "/:\0") or any(c.isspace() for c in name):
        raise ValueError(f"interface name {name!r} has a character the kernel refuses")


def ifinfomsg(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFOMSG.pack(AF_UNSPEC, 0, index, flags, change)


def parse_link(payload: bytes) -> Link:
    """An RTM_NEWLINK payload: ifinfomsg, then IFLA_* attributes."""
    if len(payload) < _IFINFOMSG.size:
        raise nlmsg.MessageDecodeError("RTM_NEWLINK shorter than ifinfomsg")
    _, _, index, flags, _ = _IFINFOMSG.unpack_from(payload)
    found = attrs.by_type(attrs.parse(payload[_IFINFOMSG.size :]))
    name = found.get(IFLA_IFNAME)
    mtu = found.get(IFLA_MTU)
    kind: str | None = None
    info = found.get(IFLA_LINKINFO)
    if info is not None:
        k = attrs.first(info.nested(), IFLA_INFO_KIND)
        kind = k.string() if k is not None else None
    return Link(
        index=index,
        name=name.string() if name is not None else "",
        kind=kind,
        flags=flags,
        mtu=mtu.u32() if mtu is not None else 0,
    )


def encode_create(name: str, kind: str) -> bytes:
    check_name(name)
    return ifinfomsg() + attrs.string(IFLA_IFNAME, name) + attrs.nested(
        IFLA_LINKINFO, [attrs.string(IFLA_INFO_KIND, kind)]
    )


def encode_by_name(name: str, *extra: bytes, flags: int = 0, change: int = 0) -> bytes:
    check_name(name)
    return ifinfomsg(flags=flags, change=change) + attrs.string(IFLA_IFNAME, name) + b"".join(
        extra
    )


@contextmanager
def _route_socket(sock: NetlinkSocket | None) -> Iterator[NetlinkSocket]:
    if sock is not None:
        yield sock
        return
    with NetlinkSocket(NETLINK_ROUTE) as s:
        yield s


def list_links(sock: NetlinkSocket | None = None) -> list[Link]:
    """Every link in the current network namespace, in ifindex order."""
    with _route_socket(sock) as s:
        replies = s.request(RTM_GETLINK, ifinfomsg(), dump=True)
    links = [parse_link(m.payload) for m in replies if m.type == RTM_NEWLINK]
    return sorted(links, key=lambda link: link.index)


def get_link(name: str, sock: NetlinkSocket | None = None) -> Link | None:
    """The link called ``name``, or None when there is none (or the name is impossible)."""
    try:
        payload = encode_by_name(name)
    except ValueError:
        return None
    with _route_socket(sock) as s:
        try:
            replies = s.request(RTM_GETLINK, payload)
        except NetlinkError as e:
            if e.errno == _errno.ENODEV:
                return None
            raise
    for m in replies:
        if m.type == RTM_NEWLINK:
            return parse_link(m.payload)
    return None


def get_link_by_index(index: int, sock: NetlinkSocket | None = None) -> Link | None:
    """The link with ifindex ``index``, or None."""
    with _route_socket(sock) as s:
        try:
            replies = s.request(RTM_GETLINK, ifinfomsg(index=index))
        except NetlinkError as e:
            if e.errno == _errno.ENODEV:
                return None
            raise
    for m in replies:
        if m.type == RTM_NEWLINK:
            return parse_link(m.payload)
    return None


def create_link(name: str, kind: str, sock: NetlinkSocket | None = None) -> None:
    """Create a link of ``kind`` (e.g. "wireguard"). EEXIST if the name is taken;
    EOPNOTSUPP when the kernel has no driver of that kind."""
    flags = nlmsg.NLM_F_CREATE | nlmsg.NLM_F_EXCL
    with _route_socket(sock) as s:
        s.request(RTM_NEWLINK, encode_create(name, kind), flags)


def delete_link(name: str, sock: NetlinkSocket | None = None) -> None:
    """Delete the link called ``name``; ENODEV if there is none."""
    with _route_socket(sock) as s:
        s.request(RTM_DELLINK, encode_by_name(name))


def set_link_up(name: str, sock: NetlinkSocket | None = None) -> None:
    with _route_socket(sock) as s:
        s.request(RTM_NEWLINK, encode_by_name(name, flags=IFF_UP, change=IFF_UP))


def set_link_down(name: str, sock: NetlinkSocket | None = None) -> None:
    with _route_socket(sock) as s:
        s.request(RTM_NEWLINK, encode_by_name(name, flags=0, change=IFF_UP))


def set_mtu(name: str, mtu: int, sock: NetlinkSocket | None = None) -> None:
    if not 0 < mtu <= 0xFFFFFFFF:
        raise ValueError(f"mtu {mtu} out of range")
    with _route_socket(sock) as s:
        s.request(RTM_NEWLINK, encode_by_name(name, attrs.u32(IFLA_MTU, mtu)))


IFLA_AF_SPEC = 26
IFLA_INET_CONF = 1
AF_INET = 2
IPV4_DEVCONF_RP_FILTER = 8  # include/uapi/linux/ip.h: the devconf index (1-based)


def set_ipv4_conf(name: str, index: int, value: int, sock: NetlinkSocket | None = None) -> None:
    """Set one IPv4 per-device setting (``net.ipv4.conf.<name>.*``) through rtnetlink: it
    needs CAP_NET_ADMIN only, where /proc/sys is read-only (a container's, unless it is
    privileged)."""
    conf = attrs.nested(IFLA_INET_CONF, [attrs.u32(index, value)])
    spec = attrs.nested(IFLA_AF_SPEC, [attrs.nested(AF_INET, [conf])])
    with _route_socket(sock) as s:
        s.request(RTM_NEWLINK, encode_by_name(name, spec))
