"""The device's identity: its private key in the state directory, and whether a device
that exists is ours."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from wgcable.cable.wireguard.device import DeviceError, WireGuardDevice
from wgcable.wgctrl import Key, read_key_file, tighten_private_dir, write_key_file

log = logging.getLogger(__name__)


def load_key(state_dir: str, device: str) -> Key:
    """The device's private key from ``<state_dir>/<device>.key``; made on first use."""
    state = Path(state_dir)
    if tighten_private_dir(state):
        log.warning("state directory %s was open to group or others; made it 0700", state)
    path = state / f"{device}.key"
    if os.path.lexists(path):  # a dangling symlink too: read_key_file refuses it by name
        return read_key_file(path)
    key = Key.generate()
    write_key_file(path, key)
    log.info("generated a new key pair in %s", path)
    return key


def check_ours(device: WireGuardDevice, key: Key, state_dir: str) -> None:
    """A device that exists with another private key is not ours (wg-quick's, or an
    agent's whose key file is elsewhere): configuring it would replace its key and, once
    synced, remove its peers. Refused untouched; a device without a key is taken."""
    actual = device.client.device(device.name)
    if actual.private_key is not None and actual.private_key.public_key() != key.public_key():
        device.close()
        raise DeviceError(
            f"device {device.name!r} exists with another key than "
            f"{Path(state_dir) / device.name}.key: not ours; remove it or choose another "
            "--device")
