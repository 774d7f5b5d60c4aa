"""An in-memory backend with the devices' own semantics, for unit tests of logic above wgctrl.

It models what wireguard-go and the kernel do with a Config (including an allowed IP moving
from one peer to another), so tests of the driver and engine need no root.
"""

from __future__ import annotations

import copy

from wgcable.wgctrl.errors import DeviceNotFoundError
from wgcable.wgctrl.types import BackendKind, Config, Device, Peer


def apply_config(device: Device, config: Config) -> Device:
    """A new Device: ``device`` after ``config`` was applied to it."""
    dev = copy.deepcopy(device)
    if config.private_key is not None:
        dev.private_key = config.private_key.clamped()
        dev.public_key = dev.private_key.public_key()
    if config.listen_port is not None:
        dev.listen_port = config.listen_port
    if config.fwmark is not None:
        dev.fwmark = config.fwmark
    if config.replace_peers:
        dev.peers = []
    for pc in config.peers:
        peer = dev.peer(pc.public_key)
        if pc.remove:
            dev.peers = [p for p in dev.peers if p.public_key != pc.public_key]
            continue
        if peer is None:
            if pc.update_only:
                continue
            peer = Peer(public_key=pc.public_key)
            dev.peers.append(peer)
        if pc.preshared_key is not None:
            peer.preshared_key = None if pc.preshared_key.is_zero() else pc.preshared_key
        if pc.endpoint is not None:
            peer.endpoint = pc.endpoint
        if pc.persistent_keepalive is not None:
            peer.persistent_keepalive = pc.persistent_keepalive
        if pc.replace_allowed_ips:
            peer.allowed_ips = []
        for net in pc.allowed_ips:
            # An allowed IP belongs to exactly one peer: adding it elsewhere moves it.
            for other in dev.peers:
                if net in other.allowed_ips and other is not peer:
                    other.allowed_ips.remove(net)
            if net not in peer.allowed_ips:
                peer.allowed_ips.append(net)
    return dev


class MemoryBackend:
    kind = BackendKind.USERSPACE

    def __init__(self) -> None:
        self.devices: dict[str, Device] = {}
        self.applied: list[tuple[str, Config]] = []  # every configure call, for assertions

    def add(self, name: str) -> Device:
        self.devices[name] = Device(name=name, kind=self.kind)
        return self.devices[name]

    def device_names(self) -> list[str]:
        return sorted(self.devices)

    def owns(self, name: str) -> bool:
        return name in self.devices

    def device(self, name: str) -> Device:
        if name not in self.devices:
            raise DeviceNotFoundError(name)
        return copy.deepcopy(self.devices[name])

    def configure(self, name: str, config: Config) -> None:
        if name not in self.devices:
            raise DeviceNotFoundError(name)
        self.applied.append((name, config))
        self.devices[name] = apply_config(self.devices[name], config)

    def close(self) -> None:
        pass
