"""Which of a remote gateway's addresses the plan uses: NAT discovery's answer, else the
static rule (pure, apart from the discovery service it asks).

The plan connects at once by the static rule, and NAT discovery corrects it when its probes
find another path: a rule that is right costs no wait, and one that is wrong (``nat_enabled``
set, but the private IP is the one that answers; or a public IP published that nothing
answers on) is put right within the probe's first answers. Remotes are reached on the IP
they were told: what the remote published is another cluster's text, so only canonical
addresses (no zone, rebuilt from their bits) go to the prober.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from wgcable.cable.remote import EndpointRejectedError, parse_address, parse_port
from wgcable.cable.types import Endpoint, NATEndpointInfo
from wgcable.natdiscovery import (
    BACKEND_CONFIG_KEY as NATT_DISCOVERY_PORT,  # Submariner's key in backend_config
)
from wgcable.natdiscovery import DEFAULT_PORT as NATT_DISCOVERY_DEFAULT_PORT
from wgcable.natdiscovery import HOW_DISCOVERED as DISCOVERED
from wgcable.natdiscovery import HOW_STATIC as STATIC
from wgcable.natdiscovery import Choice, Target

__all__ = ["DISCOVERED", "NATT_DISCOVERY_DEFAULT_PORT", "NATT_DISCOVERY_PORT", "STATIC",
           "Path", "PathChooser", "PathDiscovery", "discovery_port", "target"]


class PathDiscovery(Protocol):
    """What the engine asks of NAT discovery (``wgcable.natdiscovery.NATDiscovery``)."""

    def set_targets(self, targets: Mapping[str, Target]) -> None: ...
    def choice(self, cluster_id: str) -> Choice | None: ...
    def reprobe(self, cluster_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Path:
    """The address a cable uses and why, for its status."""

    use_ip: str
    how: str  # DISCOVERED or STATIC
    detail: str
    probed: bool = False  # the remote publishes a discovery port and an address to probe

    def describe(self) -> str:
        return f"path {self.how}: {self.detail}" if self.detail else f"path {self.how}"


def discovery_port(ep: Endpoint) -> int:
    """The remote's published NAT discovery port; 0 when it publishes none or no port."""
    try:
        return parse_port(ep.backend_config.get(NATT_DISCOVERY_PORT), NATT_DISCOVERY_PORT,
                          ep.cluster_id, 0)
    except EndpointRejectedError:
        return 0


def _address(text: str) -> str:
    if not text:
        return ""
    try:
        return str(parse_address(text, "ip", ""))
    except EndpointRejectedError:
        return ""  # the driver refuses the endpoint by name; nothing to probe


def target(cluster_id: str, ep: Endpoint) -> Target:
    return Target(cluster_id=cluster_id, endpoint_id=ep.cable_name,
                  private_ip=_address(ep.private_ip), public_ip=_address(ep.public_ip),
                  port=discovery_port(ep), nat_enabled=ep.nat_enabled)


class PathChooser:
    """Puts NAT discovery's answers into each plan. The Targets are kept per Endpoint object:
    a store hands back the same object while an Endpoint is unchanged, so a plan of 1000
    remotes does not parse their 2000 addresses again (14 ms a plan)."""

    def __init__(self, discovery: PathDiscovery) -> None:
        self.discovery = discovery
        self._targets: dict[str, tuple[Endpoint, Target]] = {}

    def _target(self, cid: str, ep: Endpoint) -> Target:
        known = self._targets.get(cid)
        return known[1] if known is not None and known[0] is ep else target(cid, ep)

    def choose(self, connect: dict[str, NATEndpointInfo]) -> dict[str, Path]:
        """Put discovery's answers into ``connect`` (by cluster ID, in place); the path of
        each cluster, for its status (a static one's reason is the service's, read when
        the status is)."""
        self._targets = {cid: (info.endpoint, self._target(cid, info.endpoint))
                         for cid, info in connect.items()}
        self.discovery.set_targets({cid: t for cid, (_, t) in self._targets.items()})
        paths: dict[str, Path] = {}
        for cid, info in connect.items():
            t = self._targets[cid][1]
            probed = t.port > 0 and bool(t.private_ip or t.public_ip)
            found = self.discovery.choice(cid)
            if found is not None and found.how == DISCOVERED and found.use_ip:
                connect[cid] = NATEndpointInfo(endpoint=info.endpoint, use_ip=found.use_ip,
                                               use_nat=found.use_nat)
                paths[cid] = Path(found.use_ip, DISCOVERED, found.detail, probed)
            else:
                paths[cid] = Path(info.use_ip, STATIC, "", probed)
        return paths
