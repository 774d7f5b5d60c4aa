"""Whether another nftables table or chain changed: the kernel's nftables notifications
(NETLINK_NETFILTER, multicast group NFNLGRP_NFTABLES) on a socket of their own.

A CNI or kube-proxy that loads its NAT table does so with tables and chains; the driver
then looks again whether the host has NAT (``routing/hostnat.py``) within milliseconds,
without listing anything on every status read. Rules and set elements do not matter (a
NAT chain counts whatever its rules), nor does our own table, which our writes replace
whole. A lost notification (ENOBUFS) or one that cannot be parsed counts as a change.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from wgcable.netlink import attrs
from wgcable.netlink import message as nlmsg
from wgcable.netlink.nfnetlink import NFGENMSG
from wgcable.netlink.socket import NETLINK_NETFILTER, notification_socket, pending

NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10

# include/uapi/linux/netfilter/nf_tables.h: enum nf_tables_msg_types
NFT_MSG_NEWTABLE = 0
NFT_MSG_DELTABLE = 2
NFT_MSG_NEWCHAIN = 3
NFT_MSG_DELCHAIN = 5
NFT_MSG_NEWRULE = 6
NFT_MSG_NEWGEN = 15
NFT_MSG_DESTROYTABLE = 26
NFT_MSG_DESTROYCHAIN = 27
TABLE_MSGS = frozenset({NFT_MSG_NEWTABLE, NFT_MSG_DELTABLE, NFT_MSG_DESTROYTABLE})
CHAIN_MSGS = frozenset({NFT_MSG_NEWCHAIN, NFT_MSG_DELCHAIN, NFT_MSG_DESTROYCHAIN})
NFTA_TABLE_NAME = 1  # a table message's name
NFTA_CHAIN_TABLE = 1  # a chain message's table
NFPROTO_INET = 1


@dataclass(frozen=True, slots=True)
class Change:
    """A table or chain added or removed, in table ``family``/``table``."""

    msg: int  # NFT_MSG_*
    family: int  # NFPROTO_*
    table: str


def changes_in(data: bytes) -> list[Change] | None:
    """The table and chain changes of a datagram of notifications (rules, sets and the
    generation messages are left out); None when part of it cannot be read."""
    out: list[Change] = []
    try:
        for m in nlmsg.parse(data):
            if m.type >> 8 != NFNL_SUBSYS_NFTABLES:
                continue
            kind = m.type & 0xFF
            if kind not in TABLE_MSGS and kind not in CHAIN_MSGS:
                continue
            if len(m.payload) < NFGENMSG.size:
                return None
            family = m.payload[0]
            a = attrs.first(attrs.iter_attrs(m.payload[NFGENMSG.size:]),
                            NFTA_TABLE_NAME if kind in TABLE_MSGS else NFTA_CHAIN_TABLE)
            if a is None:
                return None
            out.append(Change(kind, family, a.string()))
    except ValueError:  # MessageDecodeError, AttrDecodeError, UnicodeDecodeError
        return None
    return out


class NftWatch:
    """nftables notifications of the namespace the socket was made in (see ``netns``)."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        if sock is None:
            sock = notification_socket(NETLINK_NETFILTER, group=NFNLGRP_NFTABLES)
        sock.setblocking(False)
        self._sock = sock
        # Changes of our own table (its tables and chains: our writes, anyone's delete),
        # lost and unreadable notifications included: while this count stands still, a
        # drift check of our table needs no listing (``NftResource.holds``).
        self.own = 0

    def fileno(self) -> int:
        return self._sock.fileno()

    def changed(self, ours: tuple[int, str]) -> bool:
        """Whether any table or chain but those of our table (``(family, name)``) was
        added or removed since the last call, from every notification waiting; True when
        some were lost or unreadable. Changes of our table move ``own``."""
        seen = False
        for data in pending(self._sock):
            found = None if data is None else changes_in(data)
            if found is None:  # lost or unreadable: anything may have changed
                seen = True
                self.own += 1
                continue
            seen |= any((c.family, c.table) != ours for c in found)
            if any((c.family, c.table) == ours for c in found):
                self.own += 1
        return seen

    def close(self) -> None:
        self._sock.close()
