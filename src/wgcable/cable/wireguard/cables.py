"""The driver's record of each remote cluster's cable, and its status from a device read.

A cable is an accepted endpoint with its peer and status tracker, or a refused one (no
peer), reported as an ``error`` connection with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from wgcable.cable.remote import EndpointRejectedError, bounded, parse_address
from wgcable.cable.types import Connection, ConnectionStatus, NATEndpointInfo
from wgcable.cable.wireguard.desired import RemotePeer
from wgcable.cable.wireguard.status import PeerStatus
from wgcable.wgctrl import Key, Peer

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Cable:
    info: NATEndpointInfo
    peer: RemotePeer | None  # None: refused, and nothing of it was ever installed
    tracker: PeerStatus | None
    error: str | None = None  # why the latest endpoint was refused
    rx: int = 0
    tx: int = 0

    def connection(self) -> Connection:
        if self.tracker is None or self.peer is None:
            status, message = ConnectionStatus.ERROR, self.error or "refused"
        else:
            status, message = self.tracker.status, self.tracker.message
            if self.error:
                message = f"{message}; latest update refused: {self.error}"
        # A refused endpoint is reported as published, within bounds; its IP only when it
        # is one (canonical): the rest of the text is the remote's.
        return Connection(
            status=status,
            status_message=message,
            endpoint=self.info.endpoint if self.peer is not None else bounded(self.info.endpoint),
            using_ip=self.peer.using_ip if self.peer is not None
            else _address_or_empty(self.info.use_ip),
            using_nat=self.info.use_nat,
            rx_bytes=self.rx,
            tx_bytes=self.tx,
            last_handshake=None if self.tracker is None or self.tracker.last_handshake is None
            else self.tracker.last_handshake.timestamp(),
        )


def _address_or_empty(text: str) -> str:
    try:
        return str(parse_address(text, "using_ip", ""))
    except EndpointRejectedError:
        return ""


def device_lost(cables: Mapping[str, Cable], error: Exception) -> None:
    """The device could not be read (gone: the supervisor re-creates it)."""
    for c in cables.values():
        if c.tracker is not None:
            c.tracker.status, c.tracker.message = ConnectionStatus.ERROR, str(error)


def track(cables: Mapping[str, Cable], on_device: Mapping[Key, Peer], now: float,
          wall: datetime) -> bool:
    """Update every cable's status from the device's peers; True when a peer is missing
    or does not carry its cluster's subnets (then the peers must be put back)."""
    restore = False
    for cid, c in cables.items():
        if c.peer is None or c.tracker is None:
            continue
        p = on_device.get(c.peer.public_key)
        before = c.tracker.status
        if p is None:
            restore = True
            c.tracker.status = ConnectionStatus.ERROR
            c.tracker.message = "peer missing from the device; re-adding it"
        else:
            # In order first: hashing networks costs microseconds each, at every status read.
            if tuple(p.allowed_ips) != c.peer.subnets and \
                    set(p.allowed_ips) != set(c.peer.subnets):
                # Edited behind our back (or a write went astray): traffic for the cluster
                # would be dropped while handshakes still say "connected".
                log.warning("peer of %s has allowed IPs %s instead of %s; restoring", cid,
                            sorted(map(str, p.allowed_ips)), sorted(map(str, c.peer.subnets)))
                restore = True
            c.rx, c.tx = p.rx_bytes, p.tx_bytes
            c.tracker.update(now, wall, p.last_handshake, p.rx_bytes, p.tx_bytes)
        if c.tracker.status != before:
            log.info("connection to %s: %s -> %s (%s)", cid, before.value,
                     c.tracker.status.value, c.tracker.message)
    return restore
