"""The endpoint store interface: where gateways meet (a directory, or Kubernetes).

Level-triggered by design: a watch only says "something changed"; the engine then reads a
whole snapshot and reconciles. A missed or merged event therefore never loses a change.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from wgcable.cable.types import Endpoint, GatewayStatus
from wgcable.wgctrl import IPAddress

log = logging.getLogger(__name__)


class StoreUnavailableError(RuntimeError):
    """The store cannot be read at all (as opposed to: it holds no endpoints), cannot be
    reached, or refused a request; the message says which and why. The engine then keeps
    every tunnel as it is and reports the problem."""


@dataclass(slots=True)
class Snapshot:
    """Every entry of the store: parsed endpoints, and entries that could not be read."""

    endpoints: dict[str, Endpoint] = field(default_factory=dict)  # by object name
    errors: dict[str, str] = field(default_factory=dict)  # object name -> what is wrong


class EndpointStore(Protocol):
    def publish(self, endpoint: Endpoint) -> None:
        """Create or update our own endpoint (atomically)."""
        ...

    def withdraw(self, endpoint: Endpoint) -> None:
        """Remove our own endpoint (on cleanup)."""
        ...

    def snapshot(self) -> Snapshot:
        """All endpoints now in the store; unreadable entries are reported, not raised.
        A store that cannot be read at all raises (StoreUnavailableError, OSError)."""
        ...

    def watch(self, changed: Callable[[], None], stop: threading.Event) -> None:
        """Block until ``stop`` is set, calling ``changed()`` soon after any change."""
        ...

    def write_status(self, hostname: str, status: GatewayStatus) -> None:
        """Write this gateway's status (atomically)."""
        ...

    def read_statuses(self) -> dict[str, GatewayStatus]:
        """Every gateway's last status, by hostname."""
        ...

    def close(self) -> None: ...

    def server_addresses(self) -> list[IPAddress]:
        """The addresses of the server the store talks to (none for a local store): no
        remote cluster may route them into its tunnel."""
        ...


def notify(changed: Callable[[], None]) -> None:
    """Call a watch's ``changed()``; a failing callback is logged, and the watch goes on
    (the next change calls it again)."""
    try:
        changed()
    except Exception:
        log.exception("store change callback failed")
