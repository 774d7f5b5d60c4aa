"""The device's identity: its private key in the state directory, whether a device that
exists is ours, and a key rotation that a crash may interrupt.

A rotation (``WireGuardDriver.rotate_key``) writes the new key beside the key file first
(``<device>.key.next``, 0600, atomically), sets it on the device, then renames it over the
key file; the new public key is published after that. So a start finds the device holding
the key file's key or, when the last agent stopped between setting the device and the
rename, the ``.next`` key: that rotation is then finished (the rename, then the publish any
start makes). A ``.next`` key the device does not hold never reached it: it is dropped. A
device with any other key stays refused untouched.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from wgcable.cable.wireguard.device import DeviceError, WireGuardDevice
from wgcable.wgctrl import Key, read_key_file, replace_key_file, tighten_private_dir, write_key_file

log = logging.getLogger(__name__)


def key_path(state_dir: str, device: str) -> Path:
    return Path(state_dir) / f"{device}.key"


def next_path(state_dir: str, device: str) -> Path:
    """Where a rotation's new key waits until the device holds it."""
    return Path(state_dir) / f"{device}.key.next"


@dataclass(frozen=True, slots=True)
class Identity:
    key: Key  # the key file's
    next: Key | None = None  # a rotation's new key, when one was under way

    def __repr__(self) -> str:
        return f"Identity(next={'yes' if self.next else 'none'})"


def load_key(state_dir: str, device: str) -> Identity:
    """The device's private key from ``<state_dir>/<device>.key`` (made on first use), and
    the ``.next`` key of an interrupted rotation, if there is one."""
    state = Path(state_dir)
    if tighten_private_dir(state):
        log.warning("state directory %s was open to group or others; made it 0700", state)
    path, nxt = key_path(state_dir, device), next_path(state_dir, device)
    # A dangling symlink too: read_key_file refuses it by name.
    pending = read_key_file(nxt) if os.path.lexists(nxt) else None
    if os.path.lexists(path):
        return Identity(read_key_file(path), pending)
    key = Key.generate()
    write_key_file(path, key)
    log.info("generated a new key pair in %s", path)
    return Identity(key, pending)


def adopt(device: WireGuardDevice, ident: Identity, state_dir: str, created: bool) -> Key:
    """The key to run with, given the device as ``ensure()`` left it (``created``: new, no
    key yet). Finishes or drops an interrupted rotation; refuses a device that is not ours
    (``check_ours``)."""
    if ident.next is not None:
        actual = None if created else device.client.device(device.name).private_key
        if actual is not None and actual.same_private(ident.next):
            commit_next(state_dir, device.name)
            log.warning("device %s holds the new key of an interrupted key rotation: "
                        "finishing it (the key file now holds it; it is published next)",
                        device.name)
            return ident.next
        discard_next(state_dir, device.name)
        log.warning("a key rotation of device %s was interrupted before the device took the "
                    "new key: dropped; the key stays", device.name)
    if not created:
        check_ours(device, ident.key, state_dir)
    return ident.key


def stage_next(state_dir: str, device: str, key: Key) -> None:
    write_key_file(next_path(state_dir, device), key)


def commit_next(state_dir: str, device: str) -> None:
    """The staged key becomes the key file's (an atomic rename, made durable)."""
    replace_key_file(next_path(state_dir, device), key_path(state_dir, device))


def discard_next(state_dir: str, device: str) -> None:
    next_path(state_dir, device).unlink(missing_ok=True)


def check_ours(device: WireGuardDevice, key: Key, state_dir: str) -> None:
    """A device that exists with another private key is not ours (wg-quick's, or an
    agent's whose key file is elsewhere): configuring it would replace its key and, once
    synced, remove its peers. Refused untouched; a device without a key is taken."""
    actual = device.client.device(device.name).private_key
    if actual is not None and actual.public_key() != key.public_key():
        device.close()
        raise DeviceError(
            f"device {device.name!r} exists with another key than "
            f"{Path(state_dir) / device.name}.key: not ours; remove it or choose another "
            "--device")
