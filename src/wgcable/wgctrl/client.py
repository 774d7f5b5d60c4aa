"""The Client: one surface over every WireGuard device, kernel or userspace."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

from wgcable.wgctrl.backend import Backend
from wgcable.wgctrl.errors import DeviceNotFoundError
from wgcable.wgctrl.kernel import KernelBackend
from wgcable.wgctrl.types import Config, Device
from wgcable.wgctrl.uapi import DEFAULT_SOCKET_DIRS, UAPIBackend


def default_backends(
    socket_dirs: Sequence[str] = DEFAULT_SOCKET_DIRS, netns: str | None = None
) -> list[Backend]:
    """Kernel first when its netlink family exists, then the UAPI socket (as wgctrl-go does).

    ``netns`` selects the network namespace of kernel devices; userspace devices are found
    by their socket directory.
    """
    backends: list[Backend] = []
    kernel = KernelBackend.open(netns)
    if kernel is not None:
        backends.append(kernel)
    backends.append(UAPIBackend(socket_dirs))
    return backends


class Client:
    """Reads and configures WireGuard devices; callers never know which backend serves one."""

    def __init__(self, backends: Sequence[Backend] | None = None) -> None:
        self._backends = list(backends) if backends is not None else default_backends()
        self._owner: dict[str, Backend] = {}

    def _backend(self, name: str) -> Backend:
        b = self._owner.get(name)
        if b is not None and b.owns(name):
            return b
        for b in self._backends:
            if b.owns(name):
                self._owner[name] = b
                return b
        self._owner.pop(name, None)
        raise DeviceNotFoundError(name)

    def devices(self) -> list[Device]:
        """Every device any backend can see. A device that vanishes mid-listing is skipped."""
        out: list[Device] = []
        seen: set[str] = set()
        for b in self._backends:
            for name in b.device_names():
                if name in seen:
                    continue
                try:
                    out.append(b.device(name))
                except DeviceNotFoundError:
                    continue
                seen.add(name)
        return out

    def device(self, name: str) -> Device:
        return self._backend(name).device(name)

    def configure(self, name: str, config: Config) -> None:
        self._backend(name).configure(name, config)

    def close(self) -> None:
        for b in self._backends:
            b.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
