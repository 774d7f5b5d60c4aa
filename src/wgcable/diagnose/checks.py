"""Judging what was found on a gateway (pure): each function turns facts into Results.

Faults the agent repairs by itself (a deleted route, rule, peer or nftables table, a dead
wireguard-go) say so in their fix: a running agent puts them back within a status interval,
so a failure that stays while the agent runs points at the agent's log.
"""

from __future__ import annotations

import ipaddress
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from wgcable.agent.statusfile import AgentStatus
from wgcable.diagnose.result import Result, fail, passed, warn

# Submariner's age at which a gateway status is stale (its status interval is 5 s).
STATUS_STALE_AFTER = 15.0
# A live peer re-keys every 120 s; the driver calls a silence past this an error, as we do.
HANDSHAKE_STALE_AFTER = 130.0
STRICT = 1  # rp_filter: 0 off, 1 strict, 2 loose


@dataclass(frozen=True, slots=True)
class Remote:
    """A remote gateway this one should have a cable to, as the agent last reported it."""

    cluster_id: str
    public_key: str
    subnets: tuple[str, ...]
    health_check_ip: str = ""
    address: str = ""  # the IP the cable uses
    udp_port: int = 0
    natt_port: int = 0  # its NAT discovery port; 0: not published
    cable_name: str = ""
    private_ip: str = ""
    public_ip: str = ""
    nat_enabled: bool = False


@dataclass(slots=True)
class AgentFacts:
    status: AgentStatus | None
    error: str = ""  # why there is no status
    running: bool = False  # its PID is alive

    @property
    def repairs(self) -> str:
        """The fix's tail for what the agent puts back by itself."""
        if self.running:
            return ("the running agent restores it at its next status read; if it stays, "
                    "read the agent's log")
        return "start the agent (`wgcable agent` with these settings): it restores it"


def agent(facts: AgentFacts, now: float) -> Result:
    st = facts.status
    if st is None:
        return fail("agent", f"no agent status: {facts.error}",
                    "start `wgcable agent` with these settings (same --state-dir)")
    age = now - st.updated
    if not facts.running:
        return fail("agent", f"the agent (pid {st.pid}) is not running; its status is "
                    f"{age:.0f} s old. The tunnels stay up without it, but nothing heals "
                    "them and no change in the store is acted on",
                    "start `wgcable agent` with these settings: it adopts the device, peers "
                    "and routes as they are")
    if age > STATUS_STALE_AFTER:
        return warn("agent", f"the agent (pid {st.pid}) runs but its status is {age:.0f} s "
                    f"old (stale after {STATUS_STALE_AFTER:g} s)",
                    "read the agent's log: its engine may be stuck")
    return passed("agent", f"pid {st.pid}, {st.gateway.ha_status} gateway, status "
                  f"{age:.1f} s old")


def wireguard(kernel_module: bool, go_path: str | None, go_version: str,
              device_kind: str | None) -> Result:
    """The WireGuard implementation: the kernel's module, else wireguard-go."""
    using = f"; {device_kind} in use" if device_kind else ""
    if kernel_module:
        return passed("wireguard", f"kernel module loaded{using}")
    if go_path:
        version = go_version or "version unknown"
        return passed("wireguard", f"no kernel module; wireguard-go {version} at {go_path}"
                      f"{using}")
    return fail("wireguard", "no WireGuard: neither the kernel module nor wireguard-go",
                "load the kernel module (modprobe wireguard) or install wireguard-go")


@dataclass(slots=True)
class DeviceFacts:
    name: str
    present: bool
    up: bool = False
    mtu: int = 0
    kind: str = ""  # "kernel" or "userspace"
    daemon_pid: int = 0  # from the PID file (userspace); 0: none recorded
    daemon_running: bool = False
    error: str = ""  # a device that exists but cannot be read


def device(facts: DeviceFacts, a: AgentFacts) -> Result:
    name = facts.name
    if facts.error:
        return fail("device", f"{name}: cannot be read: {facts.error}",
                    "check the WireGuard backend (kernel module or wireguard-go socket)")
    if not facts.present:
        dead = ""
        if facts.daemon_pid and not facts.daemon_running:
            dead = f"; its wireguard-go (pid {facts.daemon_pid}) is not running"
        how = ("the running agent starts wireguard-go again at once and gives it the full "
               "state; if it stays, read the agent's log and "
               f"{name}.wireguard-go.log in the state directory") if a.running else \
            "start the agent (`wgcable agent` with these settings): it creates the device"
        return fail("device", f"no WireGuard device {name}{dead}: no tunnel carries traffic",
                    how)
    if not facts.up:
        return fail("device", f"{name} is down", a.repairs)
    daemon = f", wireguard-go pid {facts.daemon_pid}" if facts.kind == "userspace" and \
        facts.daemon_pid else ""
    return passed("device", f"{name} up, {facts.kind}, MTU {facts.mtu}{daemon}")


@dataclass(slots=True)
class KeyFileFacts:
    path: str
    exists: bool
    mode: int = 0
    uid: int = 0
    symlink: bool = False
    regular: bool = True


def key_file(facts: KeyFileFacts, euid: int) -> Result:
    path = facts.path
    if not facts.exists:
        return fail("key-file", f"{path} does not exist",
                    "start the agent: it makes a key pair (remote gateways learn the new "
                    "public key from its Endpoint)")
    if facts.symlink or not facts.regular:
        return fail("key-file", f"{path} is {'a symlink' if facts.symlink else 'not a file'}"
                    "; the agent refuses it", "replace it by the key file itself (mode 0600)")
    if facts.uid != euid:
        return fail("key-file", f"{path} belongs to uid {facts.uid}, not {euid}; the agent "
                    "refuses it", f"chown {euid} {path}")
    mode = stat.S_IMODE(facts.mode)
    if mode & 0o077:
        return fail("key-file", f"{path} has mode {mode:04o}: the private key is readable "
                    "by others; the agent refuses it at its next start",
                    f"chmod 600 {path}, and rotate the key (`wgcable rotate-key`) if "
                    "someone may have read it")
    return passed("key-file", f"{path} mode {mode:04o}, ours")


def peers(expected: Sequence[Remote], on_device: set[str], device_present: bool,
          a: AgentFacts) -> Result:
    if not device_present:
        return fail("peers", "no device, so no peer", "see the device check")
    missing = [r.cluster_id for r in expected if r.public_key not in on_device]
    if missing:
        return fail("peers", f"no peer for {', '.join(missing)} on the device: their traffic "
                    "has no tunnel", a.repairs)
    return passed("peers", f"{len(expected)} expected, all on the device")


def handshakes(expected: Sequence[Remote], last: Mapping[str, datetime | None], now: datetime,
               limit: float = HANDSHAKE_STALE_AFTER) -> list[Result]:
    """One result per remote whose peer is on the device (``last``: by public key)."""
    out = []
    for r in expected:
        if r.public_key not in last:
            continue  # no peer: the peers check says so
        when = last[r.public_key]
        fix = (f"check that {r.address or 'its address'} UDP port {r.udp_port or '?'} is "
               "reachable both ways (see udp-port) and that both ends have each other's "
               "current key")
        if when is None:
            out.append(fail("handshake", f"{r.cluster_id}: no handshake ever", fix))
            continue
        age = (now - when).total_seconds()
        if age > limit:
            out.append(fail("handshake", f"{r.cluster_id}: last handshake {age:.0f} s ago "
                            f"(stale after {limit:g} s: the session has expired)", fix))
        else:
            out.append(passed("handshake", f"{r.cluster_id}: last handshake {age:.0f} s ago"))
    return out


def routes(expected: Sequence[Remote], routed: set[str], device_name: str, table: int,
           a: AgentFacts) -> Result:
    """``routed``: the destinations in ``table`` that go through our device."""
    missing = [f"{s} ({r.cluster_id})" for r in expected for s in r.subnets
               if str(ipaddress.ip_network(s, strict=False)) not in routed]
    if missing:
        return fail("routes", f"table {table} has no route via {device_name} for "
                    f"{', '.join(missing)}", a.repairs)
    count = sum(len(r.subnets) for r in expected)
    return passed("routes", f"table {table}: {count} remote subnets via {device_name}")


def rule(families: set[int], needed: set[int], table: int, priority: int,
         a: AgentFacts) -> Result:
    """``families``: the IP versions with a rule looking up ``table``."""
    missing = sorted(needed - families)
    if missing:
        names = " and ".join(f"IPv{v}" for v in missing)
        return fail("rule", f"no {names} rule looks up table {table}: the routes there are "
                    "never used", a.repairs)
    if not families:
        return passed("rule", f"no rule looks up table {table}, and no remote subnet needs one")
    names = " and ".join(f"IPv{v}" for v in sorted(families))
    return passed("rule", f"an {names} rule looks up table {table} (ours: priority {priority})")


def nft_table(enabled: bool, present: bool, name: str, remote_missing: Sequence[str],
              a: AgentFacts) -> Result:
    if not enabled:
        return passed("nft-table", "off (no SNAT exemption, no MSS clamping)")
    if not present:
        return fail("nft-table", f"table inet {name} is missing: no SNAT exemption and no "
                    "MSS clamping", a.repairs)
    if remote_missing:
        return fail("nft-table", f"table inet {name}: the remote set lacks "
                    f"{', '.join(remote_missing)}", a.repairs)
    return passed("nft-table", f"table inet {name} present")


def mss_clamp(enabled: bool, table_present: bool, clamps: bool, a: AgentFacts) -> Result:
    if not enabled:
        return warn("mss-clamp", "off (--no-mss-clamp): TCP relies on path MTU discovery "
                    "through the tunnel", "leave --mss-clamp on unless something else clamps")
    if not table_present:
        return fail("mss-clamp", "no clamp: our nftables table is missing", a.repairs)
    if not clamps:
        return fail("mss-clamp", "our nftables table has no MSS clamp rule", a.repairs)
    return passed("mss-clamp", "TCP MSS clamped to the route MTU on the device")


def rp_filter(values: Mapping[str, int], device_name: str, active: bool = True) -> Result:
    """``values``: the effective rp_filter (max of ``all`` and the interface's) of our
    device and, where present, the route agent's VXLAN device (other keys). Only the active
    gateway receives the workers' traffic on the VXLAN device; on a passive one's node the
    route agent loosens the CNI's interface instead, as on any worker."""
    if not values:
        return passed("rp-filter", f"neither {device_name} nor a VXLAN device exists")
    shown = ", ".join(f"{name}={v}" for name, v in values.items())
    if not active:
        return passed("rp-filter", f"{shown}: a passive gateway's node is a worker for the "
                      "route agent (the VXLAN device only sends)")
    strict = [name for name, v in values.items() if name != device_name and v == STRICT]
    if strict:
        return fail("rp-filter", f"strict reverse-path filtering on {', '.join(strict)} "
                    f"({shown}): replies from the workers' pods arrive there but route back "
                    "through the CNI, so the kernel drops them",
                    f"sysctl -w net.ipv4.conf.{strict[0]}.rp_filter=2 (the route agent "
                    "loosens it when it runs)")
    if values.get(device_name) == STRICT:
        return passed("rp-filter", f"{shown}: strict on {device_name} is fine while every "
                      "remote subnet routes back through it (see routes)")
    return passed("rp-filter", shown)


def subnet_overlaps(endpoints: Iterable[tuple[str, Sequence[str]]]) -> Result:
    """Clusters (ID, subnets) of the store, ours included, whose subnets overlap."""
    seen: list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
    clashes: list[str] = []
    for cluster, subnets in endpoints:
        for text in subnets:
            try:
                net = ipaddress.ip_network(text, strict=False)
            except ValueError:
                continue  # the agent refuses it by name; the store check lists such entries
            for other, onet in seen:
                if other != cluster and net.version == onet.version and net.overlaps(onet):
                    clashes.append(f"{cluster} {net} overlaps {other} {onet}")
            seen.append((cluster, net))
    if clashes:
        return fail("subnet-overlap", "; ".join(clashes) + ". Of two clusters claiming a "
                    "subnet, the first keeps it and the other is refused",
                    "give every cluster its own pod and service CIDRs (or use Globalnet)")
    clusters = len({c for c, _ in seen})
    return passed("subnet-overlap", f"no overlap among {clusters} clusters' subnets")


@dataclass(slots=True)
class StoreFacts:
    describe: str
    readable: bool
    error: str = ""
    endpoints: int = 0
    bad_entries: list[str] = field(default_factory=list)
    agent_reports: str = ""  # the agent's status_failure


def store(facts: StoreFacts) -> Result:
    if not facts.readable:
        return fail("store", f"{facts.describe}: {facts.error}. The tunnels stay as they "
                    "are, but no change of a remote is seen",
                    "make the store readable again (its endpoints directory, or the broker "
                    "API server and its credentials)")
    if facts.agent_reports:
        return fail("store", f"{facts.describe} readable here, but the agent reports: "
                    f"{facts.agent_reports}", "read the agent's log; check its credentials")
    if facts.bad_entries:
        return warn("store", f"{facts.describe}: {facts.endpoints} endpoints, "
                    f"{len(facts.bad_entries)} unreadable: {'; '.join(facts.bad_entries[:3])}",
                    "fix or remove the entries named")
    return passed("store", f"{facts.describe}: {facts.endpoints} endpoints")
