"""The seam between the client and a transport: each backend speaks to one kind of device."""

from __future__ import annotations

from typing import Protocol

from wgcable.wgctrl.types import BackendKind, Config, Device


class Backend(Protocol):
    kind: BackendKind

    def device_names(self) -> list[str]:
        """Names of the devices this backend can control, in a stable order."""
        ...

    def owns(self, name: str) -> bool:
        """Whether ``name`` is a device of this backend (cheap; no full read)."""
        ...

    def device(self, name: str) -> Device:
        """Read a device. Raises DeviceNotFoundError when it is not one of ours."""
        ...

    def configure(self, name: str, config: Config) -> None:
        """Apply ``config``. Raises DeviceNotFoundError when it is not one of ours."""
        ...

    def close(self) -> None: ...
