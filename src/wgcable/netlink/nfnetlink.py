"""nfnetlink's common header, shared by its subsystems (nftables, ctnetlink): every message
of NETLINK_NETFILTER starts with ``struct nfgenmsg`` and carries its subsystem in the upper
byte of its type."""

from __future__ import annotations

import struct

NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (big-endian, unused)


def msg_type(subsys: int, msg: int) -> int:
    """A message type: ``msg`` of subsystem ``subsys`` (``NFNL_SUBSYS_*``)."""
    return (subsys << 8) | msg
