"""Control of WireGuard devices over the kernel's netlink API or the userspace UAPI socket.

The Python counterpart of Go's wgctrl: value types, a Client that picks a backend per device,
and :func:`config_delta`, which computes the minimal change between two device states.
"""

from wgcable.wgctrl.client import Client, default_backends
from wgcable.wgctrl.delta import config_delta
from wgcable.wgctrl.errors import (
    DeviceNotFoundError,
    InvalidConfigError,
    InvalidKeyError,
    PermissionDeniedError,
    ProtocolError,
    WgError,
)
from wgcable.wgctrl.key import (
    Key,
    read_key_file,
    replace_key_file,
    tighten_private_dir,
    write_key_file,
)
from wgcable.wgctrl.types import (
    BackendKind,
    Config,
    Device,
    IPAddress,
    IPNetwork,
    Peer,
    PeerConfig,
    UDPAddr,
)

__all__ = [
    "BackendKind",
    "Client",
    "Config",
    "Device",
    "DeviceNotFoundError",
    "IPAddress",
    "IPNetwork",
    "InvalidConfigError",
    "InvalidKeyError",
    "Key",
    "Peer",
    "PeerConfig",
    "PermissionDeniedError",
    "ProtocolError",
    "UDPAddr",
    "WgError",
    "config_delta",
    "default_backends",
    "read_key_file",
    "replace_key_file",
    "tighten_private_dir",
    "write_key_file",
]
