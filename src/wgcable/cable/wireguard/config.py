"""Settings of the wireguard cable driver, with the defaults of the founding design."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from wgcable.cable.wireguard.host import Protected
from wgcable.cable.wireguard.status import StatusThresholds
from wgcable.routing.table import ROUTE_PROTOCOL
from wgcable.wgctrl import Key

DEFAULT_DEVICE = "subwg0"
DEFAULT_TABLE = 220  # the founding design's table and rule priority
DEFAULT_RULE_PRIORITY = 220
# Marks our routes and rule in a table that others may use too (routing/table.py).
DEFAULT_ROUTE_PROTOCOL = ROUTE_PROTOCOL
DEFAULT_KEEPALIVE = 10
DEFAULT_STATE_DIR = "/var/lib/wgcable"
# A new peer of ours that answers first waits this long for the remote's initiation before
# it initiates itself (cable/wireguard/resources.py; 0: never waits). Longer than the
# one-way latency between two gateways, short because a first contact may pay it.
DEFAULT_ANSWER_FIRST_WAIT = 0.5

BackendChoice = Literal["auto", "kernel", "userspace"]


@dataclass(slots=True)
class WireGuardConfig:
    device: str = DEFAULT_DEVICE
    port: int | None = None  # None: local endpoint's udp-port, else 5871
    keepalive: int = DEFAULT_KEEPALIVE
    answer_first_wait: float = DEFAULT_ANSWER_FIRST_WAIT
    state_dir: str = DEFAULT_STATE_DIR
    preshared_key_file: str | None = None  # a raw key (base64), as `wg genpsk` prints it
    preshared_key: Key | None = None  # or the key itself (Submariner's, from a text: psk.py)
    allow_default_psk: bool = False  # accept Submariner's default keys (psk.py), warned of
    table: int = DEFAULT_TABLE
    rule_priority: int = DEFAULT_RULE_PRIORITY
    route_protocol: int = DEFAULT_ROUTE_PROTOCOL
    mtu: int | None = None  # None: underlay MTU minus WireGuard's overhead
    fwmark: int = 0
    backend: BackendChoice = "auto"
    netns: str | None = None  # act inside this network namespace (tests, lab)
    wireguard_go: str = "wireguard-go"
    # Our own nftables table (routing/nftables.py); with both off there is no table at all.
    snat_exemption: bool = True  # keep pod addresses: no CNI masquerade to remote clusters
    mss_clamp: bool = True  # clamp TCP MSS to the route's MTU on the device
    thresholds: StatusThresholds = field(default_factory=StatusThresholds)
    # No remote subnet may cover these (configured CIDRs, the broker's address); the host's
    # connected networks and nameservers are added from the host at start-up and resync.
    protected: tuple[Protected, ...] = ()
    resolv_conf: str = "/etc/resolv.conf"
