"""Generic netlink: find a family's id by name through the nlctrl family."""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass

from wgcable.netlink import attrs
from wgcable.netlink import message as nlmsg
from wgcable.netlink.message import NetlinkError
from wgcable.netlink.socket import NETLINK_GENERIC, NetlinkSocket

# include/uapi/linux/genetlink.h
GENL_ID_CTRL = 0x10
CTRL_VERSION = 2
CTRL_CMD_NEWFAMILY = 1
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
CTRL_ATTR_VERSION = 3
CTRL_ATTR_HDRSIZE = 4
CTRL_ATTR_MAXATTR = 5


@dataclass(frozen=True, slots=True)
class Family:
    id: int
    name: str
    version: int
    max_attr: int


def encode_get_family(name: str) -> bytes:
    """The CTRL_CMD_GETFAMILY payload asking for ``name``."""
    return nlmsg.pack_genl(
        CTRL_CMD_GETFAMILY, CTRL_VERSION, attrs.string(CTRL_ATTR_FAMILY_NAME, name)
    )


def parse_family(payload: bytes) -> Family:
    """A CTRL_CMD_NEWFAMILY reply's payload (genlmsghdr and attributes)."""
    _, _, data = nlmsg.parse_genl(payload)
    found = attrs.by_type(attrs.parse(data))
    fid = found.get(CTRL_ATTR_FAMILY_ID)
    if fid is None:
        raise nlmsg.MessageDecodeError("nlctrl reply without CTRL_ATTR_FAMILY_ID")
    name = found.get(CTRL_ATTR_FAMILY_NAME)
    version = found.get(CTRL_ATTR_VERSION)
    max_attr = found.get(CTRL_ATTR_MAXATTR)
    return Family(
        id=fid.u16(),
        name=name.string() if name else "",
        version=version.u32() if version else 0,
        max_attr=max_attr.u32() if max_attr else 0,
    )


def get_family(name: str, sock: NetlinkSocket | None = None) -> Family | None:
    """The family called ``name``, or None when the kernel has no such family (ENOENT).

    Asking may make the kernel try to autoload a module for the family (its own
    request_module); we never load modules ourselves.
    """
    own = sock is None
    s = sock if sock is not None else NetlinkSocket(NETLINK_GENERIC)
    try:
        replies = s.request(GENL_ID_CTRL, encode_get_family(name))
    except NetlinkError as e:
        if e.errno == _errno.ENOENT:
            return None
        raise
    finally:
        if own:
            s.close()
    for msg in replies:
        if msg.type == GENL_ID_CTRL:
            return parse_family(msg.payload)
    raise nlmsg.MessageDecodeError(f"nlctrl sent no family reply for {name!r}")


def resolve_family(name: str, sock: NetlinkSocket | None = None) -> int | None:
    """The numeric id of generic netlink family ``name``, or None when it does not exist."""
    fam = get_family(name, sock)
    return fam.id if fam is not None else None
