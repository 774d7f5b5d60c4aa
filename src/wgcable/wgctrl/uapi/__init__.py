"""The userspace backend: the UAPI socket spoken by wireguard-go and boringtun."""

from wgcable.wgctrl.uapi.backend import DEFAULT_SOCKET_DIRS, UAPIBackend

__all__ = ["DEFAULT_SOCKET_DIRS", "UAPIBackend"]
