"""A small netlink layer of our own: attributes, messages, a socket, generic netlink family
lookup and rtnetlink links. Pure encoding lives in ``attrs`` and ``message``."""

from wgcable.netlink.message import DumpInterruptedError, Message, NetlinkError
from wgcable.netlink.socket import NETLINK_GENERIC, NETLINK_ROUTE, NetlinkSocket

__all__ = [
    "NETLINK_GENERIC",
    "NETLINK_ROUTE",
    "DumpInterruptedError",
    "Message",
    "NetlinkError",
    "NetlinkSocket",
]
