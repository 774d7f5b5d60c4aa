"""The driver's record of each remote cluster's cable, and its status from a device read.

A cable is an accepted endpoint with its peer and status tracker, or a refused one (no
peer), reported as an ``error`` connection with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from wgcable.cable.remote import EndpointRejectedError, bounded, parse_address
from wgcable.cable.types import Connection, ConnectionStatus, NATEndpointInfo
from wgcable.cable.wireguard.desired import RemotePeer
from wgcable.cable.wireguard.status import PeerStatus
from wgcable.wgctrl import IPNetwork, Key, Peer

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Cable:
    info: NATEndpointInfo
    peer: RemotePeer | None  # None: refused, and nothing of it was ever installed
    tracker: PeerStatus | None
    error: str | None = None  # why the latest endpoint was refused
    rx: int = 0
    tx: int = 0
    # The last read where the device's peer carried ``peer``'s subnets: that peer, the
    # device's key object and allowed IPs. The next read that shows the same (the parse
    # hands out the same objects while nothing changed) costs no hashing of networks.
    seen: tuple[RemotePeer, Key, list[IPNetwork]] | None = None

    def connection(self) -> Connection:
        tracker, peer = self.tracker, self.peer
        if tracker is None or peer is None:
            # A refused endpoint is reported as published, within bounds; its IP only when
            # it is one (canonical): the rest of the text is the remote's.
            return Connection(
                status=ConnectionStatus.ERROR, status_message=self.error or "refused",
                endpoint=bounded(self.info.endpoint),
                using_ip=_address_or_empty(self.info.use_ip), using_nat=self.info.use_nat,
                rx_bytes=self.rx, tx_bytes=self.tx, last_handshake=None)
        # One per cable per status read, 1000s of cables: each attribute read once.
        message = tracker.message
        if self.error:
            message = f"{message}; latest update refused: {self.error}"
        info = self.info
        return Connection(
            status=tracker.status, status_message=message, endpoint=info.endpoint,
            using_ip=peer.using_ip, using_nat=info.use_nat, rx_bytes=self.rx,
            tx_bytes=self.tx, last_handshake=tracker.handshake_epoch)


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
          wall: datetime, common: Sequence[str] = (), blocked: Collection[IPNetwork] = (),
          where: tuple[str, int] = ("", 0)) -> bool:
    """Update every cable's status from the device's peers and what else of its tunnel is
    missing: ``common``, pieces every cable needs (the rule, ...), named; ``blocked``, the
    destinations whose route another owner holds; ``where``, the device and the table, for
    the names. True when a peer is missing or does not carry its cluster's subnets (then
    the peers must be put back)."""
    restore = False
    device, table = where
    for cid, c in cables.items():
        peer, tracker = c.peer, c.tracker
        if peer is None or tracker is None:
            continue
        seen = c.seen
        if seen is not None and seen[0] is not peer:
            seen = c.seen = None
        # The device's own key object, when known, is found without comparing keys.
        p = on_device.get(peer.public_key if seen is None else seen[1])
        before = tracker.status
        if p is None:
            restore = True
            tracker.status = ConnectionStatus.ERROR
            tracker.message = "peer missing from the device; re-adding it"
        else:
            ips = p.allowed_ips
            missing: Sequence[str] = common
            # Equal to the last read's that matched (the same objects while the device's
            # peer is unchanged): it matches. Else in order first, then as sets: hashing
            # networks costs microseconds each, at every status read.
            if seen is not None and ips == seen[2]:
                pass
            elif tuple(ips) != peer.subnets and set(ips) != set(peer.subnets):
                # Edited behind our back (or a write went astray): traffic for the cluster
                # would be dropped while handshakes still say "connected".
                log.warning("peer of %s has allowed IPs %s instead of %s; restoring", cid,
                            sorted(map(str, ips)), sorted(map(str, peer.subnets)))
                restore = True
                missing = [f"allowed IPs {', '.join(map(str, peer.subnets))} on {device}",
                           *missing]
            else:
                c.seen = (peer, p.public_key, list(ips))
            if blocked:  # rare: only another owner's route for one of our destinations
                missing = [*missing, *(f"route {n} in table {table} (another owner's route "
                                       "has its destination)" for n in peer.subnets
                                       if n in blocked)]
            c.rx, c.tx = p.rx_bytes, p.tx_bytes
            tracker.update(now, wall, p.last_handshake, p.rx_bytes, p.tx_bytes, missing)
        if tracker.status != before:
            log.info("connection to %s: %s -> %s (%s)", cid, before.value,
                     tracker.status.value, tracker.message)
    return restore
