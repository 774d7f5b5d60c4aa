"""The route agent's life: read the store, find the cluster's active gateway, validate the
remote clusters, bring the node to its desired state; again on every store change, and a
full check (every resource read) at every resync.

It publishes nothing: it only reads the Endpoints the gateway agents publish. The active
gateway is the local cluster's Endpoint that the remote clusters connect to (the same
choice, ``plan.preferred``: the newest lease term, then the first by object name), its node
the Endpoint's ``private_ip``.

Hostile or broken input changes nothing it should not: a remote Endpoint that fails
validation is refused by name (the others are routed); a local Endpoint that is unusable, or
none at all, keeps the node as it is (traffic is never sent unencrypted past a gateway that
is gone: the routes stay until a gateway is known again).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wgcable.cable.remote import EndpointRejectedError, parse_remote, shown
from wgcable.cable.wireguard import desired, host
from wgcable.cable.wireguard.index import PeerIndex
from wgcable.cable.wireguard.natchain import NatChain, unbind_logged
from wgcable.engine.plan import plan, preferred
from wgcable.netlink import conntrack
from wgcable.reconcile import Reconciler
from wgcable.routeagent.resources import (
    FdbResource,
    NeighResource,
    RpFilterResource,
    VxlanResource,
)
from wgcable.routeagent.state import NodeFacts, NodeState, Settings, node_state
from wgcable.routing import IPRoute, RouteTable, nftables
from wgcable.routing.resources import NftResource, RouteResource
from wgcable.store.base import EndpointStore
from wgcable.store.directory import atomic_write
from wgcable.wgctrl import IPAddress, IPNetwork, Key

log = logging.getLogger(__name__)

# Our routes' protocol: unassigned in linux/rtnetlink.h and iproute2's rt_protos; ASCII "X".
ROUTE_PROTOCOL = 88
MAIN_TABLE = 254
STATUS_FILE = "route-agent.json"
RP_FILTER_RECORD = "route-agent-rp_filter.json"


@dataclass(frozen=True, slots=True)
class RouteAgentConfig:
    cluster_id: str
    node_ip: IPAddress
    hostname: str
    state_dir: str
    settings: Settings = field(default_factory=Settings)
    resync_interval: float = 30.0
    check_interval: float = 5.0  # the cheap drift check, as the gateway's status read
    resolv_conf: str = "/etc/resolv.conf"


@dataclass(slots=True)
class Status:
    gateway: dict[str, Any] | None = None  # the active gateway as last found
    routes: int = 0
    refused: dict[str, str] = field(default_factory=dict)  # cluster or entry -> why
    problem: str = ""  # why the node was left as it is, if it was


class RouteAgent:
    def __init__(self, cfg: RouteAgentConfig, store: EndpointStore,
                 ip: IPRoute | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.ip = ip or IPRoute()
        dev = cfg.settings.device
        self.vxlan = VxlanResource(self.ip, dev)
        self.rp = RpFilterResource(Path(cfg.state_dir) / RP_FILTER_RECORD)
        self.nft_table = nftables.NftTable(dev)
        self.table = RouteTable(self.ip, MAIN_TABLE, 0, dev, ROUTE_PROTOCOL)
        self._vxlan = Reconciler(self.vxlan)
        self._rp = Reconciler(self.rp)
        self._fdb = Reconciler(FdbResource(dev))
        self._neigh = Reconciler(NeighResource(self.ip, dev))
        self._routes = Reconciler(RouteResource(self.table))
        self._nft: Reconciler[IPNetwork, IPNetwork] | None = None  # once the CIDRs are known
        self._nft_res: NftResource | None = None
        # The exemption's NAT chain only while this node has NAT of its own and routes to
        # remote clusters (not on the gateway node: the driver's table exempts there), as
        # the driver's: a NAT chain turns connection tracking on for every packet.
        self._nat_chain = NatChain(self.nft_table, None,
                                   watch=isinstance(self.nft_table, nftables.NftTable))
        self._unbind_pending = False  # masqueraded conntrack entries to delete
        self._local_subnets: tuple[IPNetwork, ...] = ()
        self.synced = False
        self._state: NodeState | None = None  # as last applied
        self.status = Status()
        self._lock = threading.Lock()
        self._dirty = threading.Event()

    # --- one pass ---------------------------------------------------------------------------

    def _facts(self, addresses: list[tuple[str, str, int]],
               local_subnets: tuple[IPNetwork, ...]) -> NodeFacts:
        underlay, mtu = "", 1500
        for ifname, addr, _ in addresses:
            if ipaddress.ip_address(addr) == self.cfg.node_ip:
                underlay = ifname
                link = self.ip.link(ifname)
                mtu = int(link["mtu"]) if link else 1500
                break
        if not underlay:
            raise RuntimeError(f"node IP {self.cfg.node_ip} is on no interface of this node")
        ipv6 = self.ip.ipv6_enabled(self.cfg.settings.device)
        self.table.families = ("-4", "-6") if ipv6 else ("-4",)
        return NodeFacts(self.cfg.node_ip, underlay, mtu,
                         desired.local_sources(addresses, local_subnets,
                                               self.cfg.settings.device), ipv6)

    def _protected(self, addresses: list[tuple[str, str, int]]
                   ) -> tuple[list[host.Protected], set[IPAddress]]:
        try:
            resolv = Path(self.cfg.resolv_conf).read_text(errors="replace")
        except OSError:
            resolv = ""
        prot = [*host.connected_networks(addresses, self.cfg.settings.device),
                *host.nameservers(resolv),
                *((ipaddress.ip_network(a), f"the broker's address {a}")
                  for a in self.store.server_addresses())]
        mine = {ipaddress.ip_address(a) for ifname, a, _ in addresses
                if ifname != self.cfg.settings.device}
        return prot, mine

    def desired(self) -> NodeState | None:
        """The node's desired state from the store now, or None: leave the node as it is
        (``status.problem`` says why)."""
        snap = self.store.snapshot()
        status = Status(refused=dict(snap.errors))
        local = preferred([(name, ep) for name, ep in snap.endpoints.items()
                           if ep.cluster_id == self.cfg.cluster_id])
        if not local:
            status.problem = (f"no Endpoint of cluster {self.cfg.cluster_id} in the store: "
                              "the node is left as it is until a gateway publishes one")
            self.status = status
            return None
        name, gw = local[0]
        try:
            parsed = parse_remote(gw)
            if not isinstance(parsed.private_ip, ipaddress.IPv4Address):
                raise EndpointRejectedError(parsed.cluster_id, "private_ip", gw.private_ip,
                                            "the VXLAN to the gateway needs its IPv4 address")
            gw_ip: IPAddress = parsed.private_ip
        except EndpointRejectedError as e:
            status.problem = f"the cluster's gateway Endpoint {shown(name)} is refused: {e}"
            self.status = status
            return None
        status.gateway = {"endpoint": name, "hostname": shown(gw.hostname),
                          "ip": str(gw_ip), "this_node": gw_ip == self.cfg.node_ip}
        local_subnets = parsed.subnets
        addresses = self.ip.addresses()  # one read serves the checks and the facts
        protected, mine = self._protected(addresses)
        index = PeerIndex()
        for cid, info in sorted(plan(gw, snap).connect.items()):
            try:
                peer = desired.validate_remote(info, gw, local_subnets, Key.zero(), index,
                                               mine, protected)
            except EndpointRejectedError as e:
                status.refused[cid] = str(e)
                continue
            index.add(peer)
        nets = [n for p in index for n in p.subnets]
        state = node_state(self.cfg.settings, self._facts(addresses, local_subnets), gw_ip,
                           nets)
        if self._nft is None:
            self._nft_res = NftResource(self.nft_table, self.cfg.settings.device,
                                        local_subnets, True, True,
                                        nat_chain=self._nat_chain.needed)
            self._nft_res.changes = self._nat_chain.own_changes
            self._nft = Reconciler(self._nft_res)
        self._local_subnets = local_subnets
        status.routes = len(state.routes)
        self.status = status
        return state

    def reconcile(self, verify: bool = False) -> None:
        with self._lock:
            state = self.desired()
            if state is None:
                log.warning("%s", self.status.problem)
                self._write_status()
                return
            synced = self.synced
            self._vxlan.reconcile(state.link, synced=True, verify=verify)
            self._rp.reconcile(state.rp_filter, synced=True, verify=verify)
            assert self._nft is not None
            self._follow_host_nat(state, full=verify or not synced)
            self._nft.reconcile(state.nft_remote, synced=synced, verify=verify)
            self._unbind_masqueraded(state)
            # The new gateway's entries before the routes move to it, the old one's after:
            # no packet meets a route to a VTEP the device cannot reach.
            self._fdb.reconcile(state.fdb, synced=False)
            self._neigh.reconcile(state.neigh, synced=False)
            self._routes.reconcile(state.routes, synced=synced, verify=verify)
            self._fdb.reconcile(state.fdb, synced=synced, verify=not synced)
            self._neigh.reconcile(state.neigh, synced=synced, verify=not synced)
            if not synced:
                # Every Endpoint has been seen once: what is ours and unknown goes now.
                self.synced = True
                self._routes.reconcile(state.routes, synced=True, verify=True)
                self._nft.reconcile(state.nft_remote, synced=True, verify=True)
            self._state = state
            self._write_status()
        gw = self.status.gateway or {}
        log.info("gateway %s (%s)%s; %d route(s), %d refused", gw.get("ip"),
                 gw.get("endpoint"), ", this node" if gw.get("this_node") else "",
                 self.status.routes, len(self.status.refused))

    def _write_status(self) -> None:
        doc = {"updated": time.time(), "pid": os.getpid(), "cluster": self.cfg.cluster_id,
               "node_ip": str(self.cfg.node_ip), "device": self.cfg.settings.device,
               "gateway": self.status.gateway, "routes": self.status.routes,
               "refused": self.status.refused, "problem": self.status.problem}
        atomic_write(Path(self.cfg.state_dir), STATUS_FILE,
                     json.dumps(doc, indent=1).encode())

    # --- the loop ---------------------------------------------------------------------------

    def _forget(self) -> None:
        """After a failure nothing written is trusted: the next pass reads every resource
        (a device someone deleted makes every route write fail until it is back)."""
        for rec in (self._vxlan, self._rp, self._fdb, self._neigh, self._routes, self._nft):
            if rec is not None:
                rec.forget()

    def check(self) -> None:
        """Put back what someone else removed (the device, an FDB or neighbour entry, a
        route, our nftables table, a tightened rp_filter): a cheap check per resource, a
        read only where it fails. So damage lasts one check interval, not a resync."""
        with self._lock:
            state = self._state
            if state is None or not self.synced or self._nft is None:
                return
            self._vxlan.heal(state.link, synced=True)
            self._rp.heal(state.rp_filter, synced=True)
            if self._follow_host_nat(state, full=False):
                try:
                    self._nft.reconcile(state.nft_remote, synced=True, verify=True)
                except Exception as e:  # forgotten: the next check or pass reads it
                    log.warning("writing the nftables table failed: %s", e)
            else:
                self._nft.heal(state.nft_remote, synced=True)
            self._unbind_masqueraded(state)
            self._fdb.heal(state.fdb, synced=True)
            self._neigh.heal(state.neigh, synced=True)
            self._routes.heal(state.routes, synced=True)

    # --- the SNAT exemption's NAT chain (as the driver's: cable/wireguard/natchain.py) ------

    def _follow_host_nat(self, state: NodeState, full: bool) -> bool:
        """Whether our table is to hold the NAT chain: this node has NAT of its own and
        routes remote clusters' traffic to the gateway. True when that changed: the caller
        writes the table again (its record is forgotten)."""
        if self._nft is None or self._nft_res is None:
            return False
        try:
            changed = self._nat_chain.check(full)
        except Exception as e:  # the decision stays; the next look tries again
            log.warning("looking for NAT on this node failed: %s", e)
            return False
        want = self._nat_chain.needed and bool(state.nft_remote)
        if changed or want != self._nft_res.nat_chain:
            log.info("SNAT exemption: %s%s: NAT chain %s table inet %s",
                     self._nat_chain.reason(),
                     "" if state.nft_remote else " (this node routes no remote cluster)",
                     "loaded in" if want else "not loaded in", self.nft_table.name)
        if want == self._nft_res.nat_chain:
            return False
        self._unbind_pending = want
        self._nft_res.nat_chain = want
        self._nft.forget()
        return True

    def _unbind_masqueraded(self, state: NodeState) -> None:
        """Once the chain is written after NAT appeared: delete the tracking entries a
        masquerade bound before it (``netlink/conntrack.py``), tried once per appearance."""
        if not self._unbind_pending or self._nft_res is None or not self._nft_res.written:
            return
        self._unbind_pending = False
        if not isinstance(self.nft_table, nftables.NftTable):
            return  # a fake table (unit tests): no kernel entries
        local, remote = list(self._local_subnets), list(state.nft_remote)
        unbind_logged(lambda: conntrack.delete_masqueraded(local, remote))

    def _host_nat_changed(self) -> None:
        """The watcher's callback: another table's tables or chains changed. Our table is
        written at once when the chain's need changed; nothing is written when not."""
        with self._lock:
            state = self._state
            if state is None or self._nft is None:
                return
            if not self._follow_host_nat(state, full=False):
                return
            try:
                self._nft.reconcile(state.nft_remote, synced=True, verify=True)
            except Exception as e:  # the next pass or check reads everything
                log.warning("writing the nftables table after a host NAT change failed: %s",
                            e)
                self._nft.forget()
                return
            self._unbind_masqueraded(state)

    def run(self, stop: threading.Event) -> None:
        self._nat_chain.start(self._host_nat_changed)
        try:
            self._run(stop)
        finally:
            self._nat_chain.close()

    def _run(self, stop: threading.Event) -> None:
        watcher = threading.Thread(target=self._watch, args=(stop,), name="store-watch",
                                   daemon=True)
        watcher.start()
        next_resync = next_check = 0.0
        failures = 0
        while not stop.is_set():
            now = time.monotonic()
            if self._dirty.is_set() or now >= next_resync:
                verify = now >= next_resync
                self._dirty.clear()
                try:
                    self.reconcile(verify=verify)
                    if verify:
                        next_resync = time.monotonic() + self.cfg.resync_interval
                except Exception as e:
                    log.warning("reconcile failed (will retry, reading everything): %s", e)
                    self._forget()
                    self._dirty.set()
                    failures += 1
                    # The first retry at once: a read usually mends it (a device someone
                    # deleted is made again); then no faster than once a second.
                    if failures > 1:
                        stop.wait(1.0)
                    continue
                failures = 0
                next_check = time.monotonic() + self.cfg.check_interval
            elif now >= next_check:
                self.check()
                next_check = time.monotonic() + self.cfg.check_interval
            self._dirty.wait(max(0.0, min(next_resync, next_check) - time.monotonic()))

    def _watch(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.store.watch(self._dirty.set, stop)
            except Exception as e:
                log.warning("watching the store failed (will retry): %s", e)
            self._dirty.set()
            stop.wait(1.0)

    def cleanup(self) -> None:
        remove(self.cfg.settings.device, self.cfg.state_dir, self.ip)


def remove(device: str, state_dir: str, ip: IPRoute | None = None) -> None:
    """Remove what a route agent made on this node: its device (with its FDB, neighbour
    entries and routes), its nftables table, the rp_filter it loosened, its status file.
    (Also run by `wgcable cleanup`, with the default device.)"""
    if VxlanResource(ip or IPRoute(), device).remove():
        log.info("removed device %s and its routes", device)
    table = nftables.NftTable(device)
    if shutil.which("nft") and table.exists():  # on a node without one, nothing is written
        table.remove()
    RpFilterResource(Path(state_dir) / RP_FILTER_RECORD).restore()
    (Path(state_dir) / STATUS_FILE).unlink(missing_ok=True)
