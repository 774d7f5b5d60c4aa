"""The WireGuard device's resources for ``wgcable.reconcile``: the device's own settings
(key, port, firewall mark, MTU, up) and its peers.

Both read the device through one ``DeviceReads``, so a pass that checks both reads it once.
A new peer may be added unable to initiate at first: ``firstcontact.py``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Mapping

from wgcable.cable.wireguard.device import WireGuardDevice
from wgcable.cable.wireguard.firstcontact import FirstContact
from wgcable.cable.wireguard.state import LINK, LinkSettings
from wgcable.wgctrl import (
    BackendKind,
    Config,
    Device,
    Key,
    Peer,
    PeerConfig,
    UDPAddr,
    config_delta,
)
from wgcable.wgctrl.delta import new_peer

log = logging.getLogger(__name__)


class DeviceReads:
    """The device as read in the current pass (cleared between passes)."""

    def __init__(self, device: WireGuardDevice) -> None:
        self.device = device
        self.current: Device | None = None

    def get(self) -> Device:
        if self.current is None:
            self.current = self.device.client.device(self.device.name)
        return self.current

    def clear(self) -> None:
        self.current = None


class LinkResource:
    """``{"link": LinkSettings}``: the device's key, port, mark, MTU, and that it is up."""

    name = "link"

    def __init__(self, reads: DeviceReads) -> None:
        self.reads = reads
        self.device = reads.device

    def read(self) -> dict[str, LinkSettings]:
        dev = self.reads.get()
        link = self.device.link()
        if dev.private_key is None or link is None:
            return {}
        # A link that is down reads as MTU 0: unequal to any desired one, so it is set up.
        return {LINK: LinkSettings(dev.private_key, dev.listen_port, dev.fwmark,
                                   link.mtu if link.is_up else 0)}

    def write(self, have: Mapping[str, LinkSettings], want: Mapping[str, LinkSettings], *,
              trusted: bool, changed: Collection[str] | None = None) -> int:
        w, h = want[LINK], have.get(LINK)
        n = 0
        if h is None or h.private_key != w.private_key or h.listen_port != w.listen_port \
                or h.fwmark != w.fwmark:
            actual = self.reads.get() if not trusted else Device(
                self.device.name, self.device.kind or BackendKind.USERSPACE,
                private_key=h.private_key if h else None,
                listen_port=h.listen_port if h else 0, fwmark=h.fwmark if h else 0)
            change = config_delta(actual, Device(
                self.device.name, actual.kind, private_key=w.private_key,
                listen_port=w.listen_port, fwmark=w.fwmark, peers=actual.peers))
            if not change.is_empty():
                self.device.client.configure(self.device.name, change)
                n += 1
        if h is None or h.mtu != w.mtu:
            self.device.set_up(w.mtu)
            n += 1
        return n

    def holds(self, want: Mapping[str, LinkSettings], *, exactly: bool) -> bool:
        return self.device.is_up()


class PeersResource:
    """``{public key: Peer}``: the device's peers."""

    name = "peers"

    def __init__(self, reads: DeviceReads, answer_first_wait: float = 0.0) -> None:
        self.reads = reads
        self.device = reads.device
        # The endpoint we last sent per peer: the device's may differ because WireGuard
        # roamed to where the peer's packets come from (NAT); only a newly published one
        # is sent again.
        self.sent: dict[Key, UDPAddr] = {}
        self.first = FirstContact(answer_first_wait)
        # Peers whose path moved (NAT discovery chose another address of the same Endpoint)
        # before their status showed a handshake: at the next write, added anew if the
        # device confirms they never had one (``_restart_silent``).
        self.restart_if_silent: set[Key] = set()

    def read(self) -> dict[Key, Peer]:
        return {p.public_key: p for p in self.reads.get().peers}

    def _shape(self, p: Peer, have: Mapping[Key, Peer]) -> Peer:
        return self.first.shape(p, present=p.public_key in have,
                                written=p.public_key in self.sent)

    def release(self, *, all_now: bool = False) -> int:
        """The new peers that had a handshake or whose wait is over (or all, ``all_now``)
        get their keepalive (``firstcontact.py``). Returns the number of peers changed."""
        if not self.first.waiting:
            return 0
        out = self.first.release(self.read(), all_now=all_now)
        kind = self.device.kind or BackendKind.USERSPACE
        change = config_delta(Device(self.device.name, kind, peers=[h for h, _ in out]),
                              Device(self.device.name, kind, peers=[w for _, w in out]))
        if not change.is_empty():
            self.device.client.configure(self.device.name, change)
            log.debug("device %s: %d new peer(s) may initiate now", self.device.name,
                      len(change.peers))
        return len(change.peers)

    def initiate_all(self) -> int:
        """Every peer that keeps alive sends a keepalive now (its keepalive turned off and on
        in one change: turning it on sends one). Right after a new device key, which ended
        every peer's session for sending, each starts a handshake at once; the next one
        waits REKEY_TIMEOUT (5 s). Returns the number of peers."""
        peers = [p for p in self.read().values() if p.persistent_keepalive > 0]
        change = Config(peers=[pc for p in peers for pc in (
            PeerConfig(p.public_key, update_only=True, persistent_keepalive=0),
            PeerConfig(p.public_key, update_only=True,
                       persistent_keepalive=p.persistent_keepalive))])
        if change.peers:
            self.device.client.configure(self.device.name, change)
        return len(peers)

    def write(self, have: Mapping[Key, Peer], want: Mapping[Key, Peer], *,
              trusted: bool, changed: Collection[Key] | None = None) -> int:
        if trusted:  # only the peers that changed since our last write
            keys = list(changed) if changed is not None else (
                [k for k, p in want.items() if have.get(k) is not p]
                + [k for k in have if k not in want])
            have_now = {k: have[k] for k in keys if k in have}
            wants = [self._shape(want[k], have) for k in keys if k in want]
        else:
            have_now = dict(have)
            sent = self.sent
            wants = [self._shape(dataclasses.replace(p, endpoint=None)
                                 if p.public_key in have and p.endpoint is not None
                                 and sent.get(p.public_key) == p.endpoint else p, have)
                     for p in want.values()]
        self.first.keep_only(want)
        kind = self.device.kind or BackendKind.USERSPACE
        change: Config = config_delta(
            Device(self.device.name, kind, peers=list(have_now.values())),
            Device(self.device.name, kind, peers=wants))
        self._restart_silent(change, wants)
        if not change.is_empty():
            self.device.client.configure(self.device.name, change)
            log.debug("device %s: %d peer change(s)", self.device.name, len(change.peers))
            self.first.note_removed(pc.public_key for pc in change.peers if pc.remove)
        if trusted:
            for k in have_now:
                self.sent.pop(k, None)
            self.sent.update((k, e) for k in keys
                             if k in want and (e := want[k].endpoint) is not None)
        else:
            self.sent = {k: p.endpoint for k, p in want.items() if p.endpoint is not None}
        return len(change.peers)

    def _restart_silent(self, change: Config, wants: list[Peer]) -> None:
        """A peer whose path moves before it ever had a handshake is removed and added
        again in the same write. WireGuard tries a handshake again only 5 s after the last
        (REKEY_TIMEOUT), and a new endpoint does not hurry it: a peer first sent to an
        address that never answered (the static rule's, until NAT discovery found the live
        one) would wait that out. A new peer initiates at once."""
        asked, self.restart_if_silent = self.restart_if_silent, set()
        moved = {pc.public_key for pc in change.peers
                 if pc.update_only and pc.endpoint is not None and pc.public_key in asked}
        if not moved:
            return  # the common case: no device read
        on_device = self.read()
        silent = {k for k in moved if k in on_device and on_device[k].last_handshake is None}
        if not silent:
            return
        by_key = {p.public_key: p for p in wants}
        peers: list[PeerConfig] = []
        for pc in change.peers:
            if pc.public_key in silent:
                peers += [PeerConfig(public_key=pc.public_key, remove=True),
                          new_peer(by_key[pc.public_key])]
            else:
                peers.append(pc)
        change.peers = peers
        log.debug("device %s: %d peer(s) without a handshake moved: added anew",
                  self.device.name, len(silent))

    def holds(self, want: Mapping[Key, Peer], *, exactly: bool) -> bool:
        have = self.read()
        if exactly and len(have) != len(want):
            return False
        return all(k in have and set(have[k].allowed_ips) == set(p.allowed_ips)
                   for k, p in want.items())
