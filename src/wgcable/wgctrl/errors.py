"""Errors raised by device control. Each message says which device and what failed."""

from __future__ import annotations

import errno as _errno
import os

from wgcable.safetext import safe


class WgError(Exception):
    """Base of every device-control error."""


class InvalidKeyError(WgError, ValueError):
    """A key that is not 32 bytes in the expected encoding. Never echoes the input."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason  # without the field, for messages that name it themselves
        super().__init__(f"{field}: invalid key: {reason}")


class InvalidConfigError(WgError, ValueError):
    """A configuration value out of range; names the field and the value."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"{field}={safe(value)}: {reason}")


class DeviceNotFoundError(WgError, LookupError):
    def __init__(self, name: str, detail: str = "") -> None:
        self.name = name
        msg = f"WireGuard device {name!r} not found"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class PermissionDeniedError(WgError, PermissionError):
    def __init__(self, name: str, action: str) -> None:
        self.name = name
        super().__init__(f"permission denied to {action} WireGuard device {name!r} (root needed)")


class ProtocolError(WgError):
    """The device refused or garbled a request.

    ``errno`` is always positive (wireguard-go sends it negated, boringtun does not);
    ``key`` names the protocol key or attribute that failed when it is known.
    """

    def __init__(
        self, device: str, action: str, errno: int, key: str | None = None, detail: str = ""
    ) -> None:
        self.device = device
        self.action = action
        self.errno = abs(errno)
        self.key = key
        name = _errno.errorcode.get(self.errno, "?")
        msg = f"{action} WireGuard device {device!r} failed: errno {self.errno} ({name}"
        msg += f": {os.strerror(self.errno)})" if self.errno else ")"
        if key:
            msg += f" at {key!r}"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)
