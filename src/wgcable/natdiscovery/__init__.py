"""NAT discovery, wire-compatible with Submariner's: which address of a remote gateway to use
(private or public) and whether NAT is on the way, found by asking it over UDP.

``service.NATDiscovery`` is the whole surface; ``messages`` (the protocol, with
``proto/natdiscovery.proto``), ``responder`` and ``requester`` are pure, ``ratelimit``
bounds what hostile senders get out of us.
"""

from wgcable.natdiscovery.service import Limits, NATDiscovery
from wgcable.natdiscovery.types import (
    BACKEND_CONFIG_KEY,
    DEFAULT_PORT,
    HOW_DISCOVERED,
    HOW_STATIC,
    Choice,
    Target,
    Timings,
)

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
