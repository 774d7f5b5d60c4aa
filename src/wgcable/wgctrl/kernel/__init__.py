"""The kernel backend: the ``wireguard`` generic netlink family (wgctrl-go's wglinux)."""

from wgcable.wgctrl.kernel.backend import KernelBackend
from wgcable.wgctrl.kernel.codec import decode_get_device, encode_set_device

__all__ = ["KernelBackend", "decode_get_device", "encode_set_device"]
