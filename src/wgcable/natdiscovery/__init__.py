"""NAT discovery, wire-compatible with Submariner's: which address of a remote gateway to use
(private or public) and whether NAT is on the way, found by asking it over UDP.

``service.NATDiscovery`` is the whole surface; ``messages`` (the protocol, with
``proto/natdiscovery.proto``), ``responder`` and ``requester`` are pure, ``ratelimit``
bounds what hostile senders get out of us.

The service (and with it protobuf, about 0.1 s of import) loads on first use: the settings,
the CLI and the route agent need only the types.
"""

from typing import TYPE_CHECKING, Any

from wgcable.natdiscovery.types import (
    BACKEND_CONFIG_KEY,
    DEFAULT_PORT,
    HOW_DISCOVERED,
    HOW_STATIC,
    Choice,
    Target,
    Timings,
)

if TYPE_CHECKING:
    from wgcable.natdiscovery.service import Limits, NATDiscovery

__all__ = [
    "BACKEND_CONFIG_KEY",
    "DEFAULT_PORT",
    "HOW_DISCOVERED",
    "HOW_STATIC",
    "Choice",
    "Limits",
    "NATDiscovery",
    "Target",
    "Timings",
]


def __getattr__(name: str) -> Any:
    if name in ("Limits", "NATDiscovery"):
        from wgcable.natdiscovery import service

        return getattr(service, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
