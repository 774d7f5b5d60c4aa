"""Whether a route table changed: the kernel's route notifications (RTNLGRP_IPV4_ROUTE,
RTNLGRP_IPV6_ROUTE) on a socket of their own, read without waiting.

A status check that reads a table of thousands of routes costs milliseconds; with this,
a check whose last read matched, and after which no route of the table was added, changed
or deleted by anyone, needs no read. Only a watch that saw everything can say "unchanged":
a lost notification (the socket's buffer ran over: ENOBUFS) or a message it cannot parse
counts as a change, so the caller reads.
"""

from __future__ import annotations

import socket

from wgcable.netlink import attrs
from wgcable.netlink import message as nlmsg
from wgcable.netlink.route import RTA_TABLE, RTM_DELROUTE, RTM_NEWROUTE
from wgcable.netlink.socket import NETLINK_ROUTE, notification_socket, pending

RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_ROUTE = 0x400
_RTMSG_SIZE = 12


def tables_in(data: bytes) -> set[int] | None:
    """The tables whose routes a datagram of notifications changes; None when part of it
    cannot be read (then any table may have changed)."""
    found: set[int] = set()
    try:
        for msg in nlmsg.parse(data):
            if msg.type not in (RTM_NEWROUTE, RTM_DELROUTE):
                continue
            if len(msg.payload) < _RTMSG_SIZE:
                return None
            table = msg.payload[4]  # rtmsg's rtm_table: the table when it fits in a u8
            a = attrs.first(attrs.iter_attrs(msg.payload[_RTMSG_SIZE:]), RTA_TABLE)
            found.add(a.u32() if a is not None else table)
    except ValueError:  # MessageDecodeError, AttrDecodeError
        return None
    return found


class RouteWatch:
    """Route notifications of the namespace the socket was made in (see ``netns``)."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        if sock is None:
            sock = notification_socket(NETLINK_ROUTE, RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)
        sock.setblocking(False)
        self._sock = sock

    def changed(self) -> set[int] | None:
        """The tables changed since the last call (or since the watch began), from every
        notification waiting; None when some were lost or unreadable: any may have."""
        tables: set[int] | None = set()
        for data in pending(self._sock):
            found = None if data is None else tables_in(data)
            tables = None if found is None or tables is None else tables | found
        return tables

    def close(self) -> None:
        self._sock.close()

