"""The cable driver contract (Submariner's ``cable.Driver``) and the registry of drivers by name.

The gateway engine picks a driver by the local endpoint's ``backend`` and serialises every call
into it, so drivers need no locking of their own against the engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, overload, runtime_checkable

from wgcable.cable.remote import EndpointRejectedError
from wgcable.cable.types import Connection, Endpoint, NATEndpointInfo

# A driver refuses an endpoint by raising this (it names the field and the value); any
# other exception from a driver is a failure to apply, retried, never a refusal.
EndpointRefused = EndpointRejectedError


@runtime_checkable
class Driver(Protocol):
    """What every cable driver provides. Structural: drivers need not inherit from this."""

    @property
    def name(self) -> str:
        """The registered name, e.g. ``wireguard``."""
        ...

    def init(self) -> None:
        """Finish setup after construction (create the device, open sockets)."""
        ...

    def connect_to_endpoint(self, info: NATEndpointInfo) -> str:
        """Build or refresh the cable to ``info.endpoint``; return the remote IP used."""
        ...

    def disconnect_from_endpoint(self, endpoint: Endpoint) -> None:
        """Remove the cable to ``endpoint`` (ignored if it is not the current one)."""
        ...

    def get_connections(self) -> list[Connection]:
        """Every cable the driver knows of, with its current status."""
        ...

    def get_active_connections(self) -> list[Connection]:
        """The cables that are up (or coming up)."""
        ...

    def cleanup(self) -> None:
        """Remove everything the driver created."""
        ...


# Optional capabilities: the engine uses them when a driver has them (isinstance checks
# against these, not attribute probes).


@runtime_checkable
class Batching(Protocol):
    def batch(self) -> contextlib.AbstractContextManager[object]:
        """Group connects and disconnects into one change, applied at the block's end."""
        ...


@runtime_checkable
class SyncAware(Protocol):
    def mark_synced(self) -> None:
        """Every known endpoint has been connected: state nobody owns may go now."""
        ...


@runtime_checkable
class Resyncable(Protocol):
    def resync(self) -> None:
        """Re-apply everything, whatever the driver thinks the host holds."""
        ...


@runtime_checkable
class KnowsInstalled(Protocol):
    def installed(self, endpoints: list[Endpoint]) -> set[str]:
        """The cluster IDs of ``endpoints`` whose tunnel is installed now (after a
        restart: adopted), so the engine connects them first."""
        ...


@runtime_checkable
class KeyRotating(Protocol):
    def rotate_key(self) -> dict[str, str]:
        """Switch to a new key pair; return the local endpoint's backend config entries that
        changed (the new public key), which the caller publishes next."""
        ...


DriverFactory = Callable[..., Driver]
"""Called as ``factory(local_endpoint, **options)``."""

_F = TypeVar("_F", bound=DriverFactory)

_DRIVERS: dict[str, DriverFactory] = {}


class UnknownDriverError(ValueError):
    """No driver registered under the requested name; the message lists the known ones."""

    def __init__(self, name: str, supported: list[str]) -> None:
        self.name = name
        self.supported = supported
        known = ", ".join(supported) if supported else "none registered"
        super().__init__(f"unknown cable driver {name!r} (supported: {known})")


@overload
def register_driver(name: str) -> Callable[[_F], _F]: ...
@overload
def register_driver(name: str, factory: _F) -> _F: ...
def register_driver(name: str, factory: _F | None = None) -> _F | Callable[[_F], _F]:
    """Register ``factory`` under ``name``; without ``factory``, return a decorator.

    Registering the same factory twice is a no-op (modules may be re-imported); a different
    factory under a taken name is refused, since silently replacing a driver hides bugs.
    """
    if not name:
        raise ValueError("cable driver name must not be empty")

    def add(f: _F) -> _F:
        current = _DRIVERS.get(name)
        if current is not None and current is not f:
            raise ValueError(f"cable driver {name!r} is already registered to {current!r}")
        _DRIVERS[name] = f
        return f

    return add if factory is None else add(factory)


def unregister_driver(name: str) -> None:
    """Forget ``name`` (for tests and plugins); unknown names are ignored."""
    _DRIVERS.pop(name, None)


def driver_names() -> list[str]:
    return sorted(_DRIVERS)


def new_driver(name: str, local_endpoint: Endpoint, **options: Any) -> Driver:
    """Build the driver registered as ``name`` for ``local_endpoint``."""
    factory = _DRIVERS.get(name)
    if factory is None:
        raise UnknownDriverError(name, driver_names())
    driver = factory(local_endpoint, **options)
    if not isinstance(driver, Driver):  # catches a factory returning the wrong thing early
        raise TypeError(f"cable driver factory {name!r} returned {driver!r}, not a Driver")
    return driver
