"""The minimal configuration change that turns an actual device into a desired one.

Writing only the difference keeps live sessions: a peer that is re-sent unchanged keeps its
session, but ``replace_peers`` would drop every one of them, so it is used only on request.
"""

from __future__ import annotations

from wgcable.wgctrl.key import Key
from wgcable.wgctrl.types import Config, Device, Peer, PeerConfig


def new_peer(p: Peer) -> PeerConfig:
    """The whole config of ``p``, as for a peer the device does not have."""
    return PeerConfig(
        public_key=p.public_key,
        preshared_key=p.preshared_key,
        endpoint=p.endpoint,
        persistent_keepalive=p.persistent_keepalive,
        allowed_ips=list(p.allowed_ips),
    )


def _peer_change(have: Peer, want: Peer) -> PeerConfig | None:
    if (
        want.preshared_key == have.preshared_key
        and want.persistent_keepalive == have.persistent_keepalive
        and (want.endpoint is None or want.endpoint == have.endpoint)
        and want.allowed_ips == have.allowed_ips
    ):
        return None  # the common case on a resync, decided without building anything
    # update_only: if the peer vanished meanwhile, do not re-create it from a partial config.
    change = PeerConfig(public_key=want.public_key, update_only=True)
    changed = False
    if want.preshared_key != have.preshared_key:
        change.preshared_key = want.preshared_key or Key.zero()
        changed = True
    # No desired endpoint means "any": keep what the peer roamed to.
    if want.endpoint is not None and want.endpoint != have.endpoint:
        change.endpoint = want.endpoint
        changed = True
    if want.persistent_keepalive != have.persistent_keepalive:
        change.persistent_keepalive = want.persistent_keepalive
        changed = True
    have_ips, want_ips = set(have.allowed_ips), set(want.allowed_ips)
    if have_ips != want_ips:
        changed = True
        if have_ips <= want_ips:
            # Only additions: send just those, so routing to the others never blinks.
            change.allowed_ips = [n for n in want.allowed_ips if n not in have_ips]
        else:
            change.replace_allowed_ips = True
            change.allowed_ips = list(want.allowed_ips)
    return change if changed else None


def config_delta(actual: Device, desired: Device, *, replace_peers: bool = False) -> Config:
    """The Config that makes ``actual`` match ``desired``.

    In ``desired``: ``private_key`` None and ``listen_port`` 0 mean "leave as is"; ``fwmark``
    is always enforced (0 clears it); a peer's ``endpoint`` None means "any". Counters and
    handshake times are ignored. Private keys are compared after clamping.
    """
    cfg = Config()
    if desired.private_key is not None and (
        actual.private_key is None or not desired.private_key.same_private(actual.private_key)
    ):
        cfg.private_key = desired.private_key
    if desired.listen_port and desired.listen_port != actual.listen_port:
        cfg.listen_port = desired.listen_port
    if desired.fwmark != actual.fwmark:
        cfg.fwmark = desired.fwmark
    if replace_peers:
        cfg.replace_peers = True
        cfg.peers = [new_peer(p) for p in desired.peers]
        return cfg
    have = {p.public_key: p for p in actual.peers}
    want_keys = {p.public_key for p in desired.peers}
    for want in desired.peers:
        old = have.get(want.public_key)
        if old is None:
            cfg.peers.append(new_peer(want))
        elif (change := _peer_change(old, want)) is not None:
            cfg.peers.append(change)
    # Removals last: an allowed IP that moves to another peer (a remote's new key replacing
    # its old one) is taken over by the addition, and never routes to no peer in between.
    cfg.peers += [PeerConfig(public_key=p.public_key, remove=True)
                  for p in actual.peers if p.public_key not in want_keys]
    return cfg
