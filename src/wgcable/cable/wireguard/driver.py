"""The ``wireguard`` cable driver: one WireGuard peer and its routes per remote cluster.

All public methods take one lock: the engine serialises its calls, but the supervisor
thread that restarts a dead wireguard-go re-applies state concurrently.

Two ways to apply a change:

- read and diff (start-up, resync, a restored device, the engine's ``mark_synced``, a
  status read that found a peer missing, and after any failure): read the device and table
  220, compute the difference from the whole desired state, write it. O(N) in the number of
  remote clusters.
- delta (every other change, once synced): the driver trusts the device, the routes and the
  nftables table to hold what it last wrote (``_written``), and sends only what the changed
  clusters need: their peers, their routes, and the nftables table only if the set of remote
  CIDRs changed. O(changed clusters). A delta that fails (a route someone deleted) falls
  back to read and diff at once; drift that does not make it fail is healed at the next
  status read or resync.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from wgcable.cable.remote import bounded, parse_address, shown
from wgcable.cable.types import Connection, ConnectionStatus, Endpoint, NATEndpointInfo
from wgcable.cable.wireguard import desired, host
from wgcable.cable.wireguard.config import WireGuardConfig
from wgcable.cable.wireguard.desired import EndpointRejectedError, RemotePeer
from wgcable.cable.wireguard.device import DeviceError, WireGuardDevice
from wgcable.cable.wireguard.index import PeerIndex
from wgcable.cable.wireguard.status import PeerStatus
from wgcable.routing import IPRoute, Route, RouteTable, nftables
from wgcable.routing.table import FAMILIES
from wgcable.wgctrl import (
    BackendKind,
    Device,
    IPAddress,
    IPNetwork,
    Key,
    UDPAddr,
    config_delta,
    read_key_file,
    tighten_private_dir,
    write_key_file,
)

log = logging.getLogger(__name__)

DRIVER_NAME = "wireguard"
SUPERVISOR_RETRY = 0.5  # seconds between attempts to bring a lost device back


def _address_or_empty(text: str) -> str:
    try:
        return str(parse_address(text, "using_ip", ""))
    except EndpointRejectedError:
        return ""


@dataclass(slots=True)
class _Conn:
    info: NATEndpointInfo
    peer: RemotePeer | None  # None: refused, and nothing of it was ever installed
    tracker: PeerStatus | None
    error: str | None = None  # why the latest endpoint was refused
    rx: int = 0
    tx: int = 0


class WireGuardDriver:
    def __init__(
        self,
        local_endpoint: Endpoint,
        config: WireGuardConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = config or WireGuardConfig()
        self.local = local_endpoint
        self._clock = clock
        self._lock = threading.RLock()
        self._conns: dict[str, _Conn] = {}
        self._index = PeerIndex()  # the accepted peers, for cheap conflict checks at scale
        self._batch = 0  # >0: inside batch(): changes are applied once, at its end
        self._synced = False
        self._key: Key | None = None
        self._psk: Key | None = None
        self.device = WireGuardDevice(self.cfg)
        self.ip = IPRoute(self.cfg.netns)
        self.table = RouteTable(self.ip, self.cfg.table, self.cfg.rule_priority,
                                self.cfg.device, self.cfg.route_protocol)
        self.nft = nftables.NftTable(self.cfg.device, self.cfg.netns)
        self._nft_applied: str | None = None  # the table text last written (None: none)
        # The remote CIDRs in the table last written: its render is skipped while they stay.
        self._nft_remote: frozenset[IPNetwork] | None = None
        # Until synced, the remote CIDRs an earlier run left in our table stay exempt from
        # SNAT (their peers and routes stay too); None: not read yet.
        self._nft_kept: frozenset[IPNetwork] | None = None
        # The endpoint we last sent per peer: the device's may differ because WireGuard
        # roamed to where the peer's packets come from (NAT); only a new published one is
        # sent again.
        self._endpoints_sent: dict[Key, UDPAddr] = {}
        # What the device, table 220 and our nftables table hold, as last written by us, per
        # cluster; None: unknown (read and diff next time). ``_dirty``: clusters changed
        # since then.
        self._written: dict[str, RemotePeer] | None = None
        self._dirty: set[str] = set()
        # The desired routes as text, for the status read's cheap drift check (None: stale).
        self._route_keys: frozenset[tuple[str, str, str]] | None = None
        self._local_subnets: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(s, strict=False) for s in local_endpoint.subnets
        )
        port = desired.parse_port(
            local_endpoint.backend_config.get(desired.UDP_PORT), "udp-port",
            local_endpoint.cluster_id, desired.DEFAULT_PORT)
        self.port = self.cfg.port or port
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._underlay_mtu, self._underlay_v6 = 1500, False
        self._sources: dict[int, IPAddress] = {}
        self._local_ips: set[IPAddress] = set()  # no remote subnet may cover one of these
        self._protected: list[host.Protected] = list(self.cfg.protected)  # nor overlap these
        self._mtu_set = 0

    @property
    def name(self) -> str:
        return DRIVER_NAME

    @property
    def public_key(self) -> Key:
        if self._key is None:
            raise RuntimeError("driver not initialised")
        return self._key.public_key()

    # --- set-up -----------------------------------------------------------------------

    def _load_key(self) -> Key:
        state = Path(self.cfg.state_dir)
        if tighten_private_dir(state):
            log.warning("state directory %s was open to group or others; made it 0700", state)
        path = state / f"{self.cfg.device}.key"
        if os.path.lexists(path):  # a dangling symlink too: read_key_file refuses it by name
            return read_key_file(path)
        key = Key.generate()
        write_key_file(path, key)
        log.info("generated a new key pair in %s", path)
        return key

    def init(self) -> None:
        """Load or create the key, adopt or create the device, publish the public key."""
        with self._lock:
            self._key = self._load_key()
            if self.cfg.preshared_key_file:
                # Followed: Kubernetes mounts a Secret's files through symlinks. Owner and
                # mode are checked on the file the link leads to.
                psk = read_key_file(self.cfg.preshared_key_file, "preshared_key_file",
                                    follow_symlinks=True)
                self._psk = desired.check_psk(psk, self.cfg.preshared_key_file)
            self.local.backend_config[desired.PUBLIC_KEY] = self.public_key.base64()
            self.local.backend_config[desired.INTERFACE_NAME] = self.cfg.device
            self.local.backend_config[desired.UDP_PORT] = str(self.port)
            created = self.device.ensure()
            if not created:
                self._check_ours()
            log.info("device %s %s (%s), port %d, public key %s", self.cfg.device,
                     "created" if created else "adopted", self.device.kind, self.port,
                     self.public_key.base64())
            try:
                self._apply(full=True)
            except Exception:
                if created:  # no half-made device (nor a wireguard-go daemon) left behind
                    log.error("setting up device %s failed; removing it", self.cfg.device)
                    try:
                        self._remove_all()
                    except Exception:  # the set-up failure is the one to report
                        log.exception("removing the half-made device %s failed",
                                      self.cfg.device)
                raise
        self._supervisor = threading.Thread(
            target=self._supervise, name=f"supervise:{self.cfg.device}", daemon=True)
        self._supervisor.start()

    def _check_ours(self) -> None:
        """A device that exists with another private key is not ours (wg-quick's, or an
        agent's whose key file is elsewhere): configuring it would replace its key and,
        once synced, remove its peers. Refused untouched; a device without a key is
        taken."""
        actual = self.device.client.device(self.cfg.device)
        if actual.private_key is not None and \
                actual.private_key.public_key() != self.public_key:
            self.device.close()
            raise DeviceError(
                f"device {self.cfg.device!r} exists with another key than "
                f"{Path(self.cfg.state_dir) / self.cfg.device}.key: not ours; remove it or "
                "choose another --device")

    def _supervise(self) -> None:
        """Re-create a device that vanished (a wireguard-go daemon that died) and re-apply
        the full state; retried until it succeeds, not just until the device exists."""
        healthy = True
        while not self._stop.is_set():
            if healthy:
                self.device.wait_gone(1.0, self._stop)  # at once when wireguard-go exits
            elif self._stop.wait(SUPERVISOR_RETRY):
                return
            with self._lock:
                if self._stop.is_set():
                    return
                if healthy and self.device.alive():
                    continue
                if healthy:
                    log.warning("device %s is gone; re-creating it and re-applying state",
                                self.cfg.device)
                try:
                    created = self.device.ensure()
                    self._apply(full=True)
                except Exception:
                    if self._stop.is_set():
                        return  # closed meanwhile: the start was abandoned on purpose
                    log.exception("re-creating device %s failed; will retry", self.cfg.device)
                    healthy = False
                    continue
                if not healthy or created:
                    log.info("device %s is back with %d peer(s)", self.cfg.device,
                             len(self._index))
                healthy = True

    def mark_synced(self) -> None:
        """Every known endpoint has been connected: peers nobody owns can go now.

        Until then they stay, so that a restart does not cut tunnels the engine is about
        to re-connect (what Cilium does too).
        """
        with self._lock:
            self._synced = True
            self._nft_kept = frozenset()
            self._written = None  # unknown peers and routes go now: read and diff
            self._apply()

    # --- desired state ------------------------------------------------------------------

    def _accepted(self) -> list[RemotePeer]:
        return list(self._index)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group many connects and disconnects into one device change and one route sync
        (the engine uses it when the store brings many endpoints at once)."""
        with self._lock:
            self._batch += 1
            try:
                yield
            finally:
                self._batch -= 1
                if self._batch == 0:
                    self._apply()

    def _changed(self) -> None:
        if self._batch == 0:
            self._apply()

    def _desired_device(self, actual: Device) -> Device:
        assert self._key is not None
        have = {p.public_key: p for p in actual.peers}
        peers = []
        for p in self._accepted():
            peer = desired.desired_peer(p, self.cfg.keepalive, self._psk)
            if p.public_key in have and self._endpoints_sent.get(p.public_key) == p.endpoint:
                peer.endpoint = None  # unchanged since we sent it: keep where it roamed
            peers.append(peer)
        if not self._synced:
            ours = {p.public_key for p in peers}
            peers += [p for p in actual.peers if p.public_key not in ours]
        return Device(
            name=self.cfg.device, kind=actual.kind, private_key=self._key,
            listen_port=self.port, fwmark=self.cfg.fwmark, peers=peers,
        )

    def _read_host(self) -> None:
        """What the driver needs from the host's interfaces: the underlay's MTU and family,
        and the local addresses that become the routes' sources. Read at start-up and on
        every resync (not on every change: that would cost subprocesses per endpoint)."""
        addresses = self.ip.addresses()
        self._underlay_mtu, self._underlay_v6 = 1500, False
        local_ips = {self.local.private_ip, *self.local.private_ips}
        for ifname, addr, _ in addresses:
            if addr in local_ips:
                link = self.ip.link(ifname)
                self._underlay_mtu = int(link["mtu"]) if link else 1500
                self._underlay_v6 = ipaddress.ip_address(addr).version == 6
                break
        self._sources = desired.local_sources(addresses, self._local_subnets, self.cfg.device)
        v6 = self.ip.ipv6_enabled(self.cfg.device)
        if v6 != ("-6" in self.table.families):
            log.info("IPv6 is %s on %s: IPv6 routes and rules %s", "on" if v6 else "off",
                     self.cfg.device, "too" if v6 else "left out")
        self.table.families = FAMILIES if v6 else ("-4",)
        self._local_ips = set()
        for ifname, addr, _ in addresses:
            if ifname != self.cfg.device:
                self._local_ips.add(ipaddress.ip_address(addr))
        for text in (self.local.private_ip, self.local.public_ip, *self.local.private_ips,
                     *self.local.public_ips):
            with contextlib.suppress(ValueError):
                self._local_ips.add(ipaddress.ip_address(text))
        try:
            resolv = Path(self.cfg.resolv_conf).read_text(errors="replace")
        except OSError as e:
            log.debug("no nameservers to protect from %s: %s", self.cfg.resolv_conf, e)
            resolv = ""
        self._protected = [*self.cfg.protected,
                           *host.connected_networks(addresses, self.cfg.device),
                           *host.nameservers(resolv)]

    def _mtu(self) -> int:
        if self.cfg.mtu:
            return self.cfg.mtu
        v6 = self._underlay_v6 or self._index.v6_endpoints > 0
        return desired.mtu_for(self._underlay_mtu, v6)

    def _nft_rules(self) -> nftables.Rules:
        remote = [n for p in self._accepted() for n in p.subnets]
        if not self._synced:
            if self._nft_kept is None:
                self._nft_kept = self._nft_left()
            remote += sorted(self._nft_kept - set(remote), key=lambda n: (n.version, n))
        return nftables.Rules(
            device=self.cfg.device,
            local=self._local_subnets,
            remote=tuple(remote),
            snat_exemption=self.cfg.snat_exemption,
            mss_clamp=self.cfg.mss_clamp,
        )

    def _nft_left(self) -> frozenset[IPNetwork]:
        """The remote CIDRs in our table as an earlier run left it (after a restart)."""
        sets = self.nft.sets() if self.cfg.snat_exemption else None
        if not sets:
            return frozenset()
        return frozenset(nftables.networks(sets.get("remote4", set()) |
                                           sets.get("remote6", set())))

    def _apply_nft(self, full: bool) -> None:
        """Our nftables table follows the accepted clusters' CIDRs. Rendered and written
        only when that set changed since the last write, and on every full apply (which
        heals a table someone else deleted or edited)."""
        rules = self._nft_rules()
        remote = frozenset(rules.remote)
        if not full and remote == self._nft_remote and self._nft_applied is not None:
            return  # the same CIDRs: the same text; skip the render
        body = nftables.render(rules)
        if not full and body == self._nft_applied:
            self._nft_remote = remote
            return
        self._nft_remote = None  # unknown until the write succeeds
        if body is None:
            self.nft.remove()  # turned off: a table left by an earlier run goes
        else:
            self.nft.apply(body)
            log.debug("nftables table inet %s written", self.nft.name)
        self._nft_applied, self._nft_remote = body, remote

    def _apply(self, actual: Device | None = None, full: bool = False) -> None:
        """Bring device, nftables table and routes to the desired state.

        ``full`` also re-reads the host and re-checks the link and rules (start-up, resync).
        ``actual`` (a device just read) or ``full`` ask for read and diff; otherwise, once
        synced and with nothing unknown, only the changed clusters' delta is sent.
        """
        if actual is None and not full and self._synced and self._written is not None:
            if not self._dirty:
                return
            try:
                self._apply_delta(self._written)
                return
            except Exception as e:
                log.info("applying the change alone failed (%s); reading the device and "
                         "table %d to apply the whole state", e, self.cfg.table)
        self._apply_read_diff(actual, full)

    def _apply_read_diff(self, actual: Device | None, full: bool) -> None:
        """Read the device and table 220, and change only what differs from the whole
        desired state. Before the engine marks the driver synced, peers and routes we do
        not know are kept: after a restart they belong to clusters about to be re-connected.
        """
        self._written = self._route_keys = None  # unknown until this succeeds
        client = self.device.client
        if actual is None:
            actual = client.device(self.cfg.device)
        change = config_delta(actual, self._desired_device(actual))
        if not change.is_empty():
            client.configure(self.cfg.device, change)
            log.debug("device %s: %d peer change(s)", self.cfg.device, len(change.peers))
        self._endpoints_sent = {p.public_key: p.endpoint for p in self._accepted()}
        if full:
            self._read_host()
        mtu = self._mtu()
        if full or mtu != self._mtu_set:
            self.device.set_up(mtu)
            self._mtu_set = mtu
        # Before the routes: pod traffic must not reach a new cluster before its exemption.
        self._apply_nft(full)
        added, removed = self.table.sync(self._routes(), remove_unknown=self._synced)
        if added or removed:
            log.debug("table %d: %d route(s) added, %d removed", self.cfg.table, added, removed)
        if full:
            self.table.ensure_rules()
        self._dirty.clear()
        self._written = {p.cluster_id: p for p in self._index}

    def _apply_delta(self, written: dict[str, RemotePeer]) -> None:
        """Send only what the clusters in ``_dirty`` changed, to the device, our nftables
        table and table 220, trusting ``written`` to be what they hold for the others."""
        dirty = sorted(self._dirty)
        olds = [p for cid in dirty if (p := written.get(cid)) is not None]
        news = [p for cid in dirty if (p := self._index.get(cid)) is not None]
        keepalive, psk = self.cfg.keepalive, self._psk
        kind = self.device.kind or BackendKind.USERSPACE
        # The changed peers as the device holds them (what we wrote) and as they should be:
        # config_delta gives removals, additions and update_only changes for just those.
        have = Device(name=self.cfg.device, kind=kind, fwmark=self.cfg.fwmark,
                      peers=[desired.desired_peer(p, keepalive, psk) for p in olds])
        want = Device(name=self.cfg.device, kind=kind, fwmark=self.cfg.fwmark,
                      peers=[desired.desired_peer(p, keepalive, psk) for p in news])
        change = config_delta(have, want)
        if not change.is_empty():
            self.device.client.configure(self.cfg.device, change)
            log.debug("device %s: %d peer change(s)", self.cfg.device, len(change.peers))
        for p in olds:
            self._endpoints_sent.pop(p.public_key, None)
        self._endpoints_sent.update((p.public_key, p.endpoint) for p in news)
        mtu = self._mtu()
        if mtu != self._mtu_set:
            self.device.set_up(mtu)
            self._mtu_set = mtu
        old_nets = {n for p in olds for n in p.subnets}
        new_nets = {n for p in news for n in p.subnets}
        if old_nets != new_nets:
            self._apply_nft(False)  # before the routes, as in a full apply
        old_routes = desired.desired_routes(olds, self.cfg.device, self._sources)
        new_routes = desired.desired_routes(news, self.cfg.device, self._sources)
        add, remove = new_routes - old_routes, old_routes - new_routes
        if add or remove:
            self.table.apply(add, remove)
            log.debug("table %d: %d route(s) added, %d removed", self.cfg.table, len(add),
                      len(remove))
        for cid in dirty:
            if (p := self._index.get(cid)) is not None:
                written[cid] = p
            else:
                written.pop(cid, None)
        self._dirty.clear()
        self._route_keys = None

    def resync(self) -> None:
        """Re-apply everything; heals drift (peers or routes removed by someone else)."""
        with self._lock:
            self.device.ensure()
            self._apply(full=True)

    # --- the cable driver contract ----------------------------------------------------------

    def connect_to_endpoint(self, info: NATEndpointInfo) -> str:
        """Install (or update in place) the peer and routes of ``info``'s cluster.

        A refused endpoint raises EndpointRejectedError and shows as an ``error``
        connection; a tunnel already up for that cluster stays as it was.
        """
        cid = info.endpoint.cluster_id
        with self._lock:
            assert self._key is not None, "init() first"
            old = self._conns.get(cid)
            try:
                peer = desired.validate_remote(
                    info, self.local, self._local_subnets, self._key.public_key(), self._index,
                    self._local_ips, self._protected)
            except EndpointRejectedError as e:
                log.warning("refused %s", e)
                if old is not None and old.peer is not None:
                    old.error = str(e)
                else:
                    self._conns[cid] = _Conn(info, None, None, str(e))
                raise
            now = self._clock()
            tracker = None
            if old is not None and old.peer is not None and old.peer.public_key == peer.public_key:
                tracker = old.tracker  # same key: an in-place update keeps the session
            if old is not None and old.peer is not None and tracker is None:
                log.info("cluster %s has a new key: replacing its peer", cid)
            self._conns[cid] = _Conn(
                info, peer, tracker or PeerStatus(self.cfg.thresholds, now))
            self._index.add(peer)
            self._dirty.add(cid)
            self._changed()
            log.info("connected cluster %s at %s (nat=%s, subnets %s)", cid, peer.endpoint,
                     peer.using_nat, ", ".join(map(str, peer.subnets)))
            return peer.using_ip

    def disconnect_from_endpoint(self, endpoint: Endpoint) -> None:
        cid = endpoint.cluster_id
        with self._lock:
            conn = self._conns.get(cid)
            if conn is None:
                return
            key = endpoint.backend_config.get(desired.PUBLIC_KEY)
            if conn.peer is not None and key and key != conn.peer.public_key.base64():
                # An out-of-order event about a key that was already replaced.
                log.info("ignored disconnect of cluster %r with a stale key", shown(cid))
                return
            del self._conns[cid]
            self._index.remove(cid)
            self._dirty.add(cid)
            self._changed()
            log.info("disconnected cluster %r", shown(cid))  # refused ones too: any text

    def installed(self, endpoints: list[Endpoint]) -> set[str]:
        """The cluster IDs of ``endpoints`` whose peer (by public key) is on the device now:
        the engine connects those first, so that a tunnel that was there keeps its subnets
        against a newcomer claiming them."""
        with self._lock:
            on_device = {p.public_key.base64() for p in
                         self.device.client.device(self.cfg.device).peers}
        return {ep.cluster_id for ep in endpoints
                if ep.backend_config.get(desired.PUBLIC_KEY, "").strip() in on_device}

    def _read_status(self) -> None:
        try:
            dev = self.device.client.device(self.cfg.device)
        except Exception as e:  # the device is gone: the supervisor re-creates it
            for c in self._conns.values():
                if c.tracker is not None:
                    c.tracker.status, c.tracker.message = ConnectionStatus.ERROR, str(e)
            return
        now, wall = self._clock(), datetime.now(UTC)
        on_device = {p.public_key: p for p in dev.peers}
        missing = False
        for cid, c in self._conns.items():
            if c.peer is None or c.tracker is None:
                continue
            p = on_device.get(c.peer.public_key)
            before = c.tracker.status
            if p is None:
                missing = True
                c.tracker.status = ConnectionStatus.ERROR
                c.tracker.message = "peer missing from the device; re-adding it"
            else:
                if set(p.allowed_ips) != set(c.peer.subnets):
                    # Edited behind our back (or a write went astray): traffic for the
                    # cluster would be dropped while handshakes still say "connected".
                    log.warning("peer of %s has allowed IPs %s instead of %s; restoring",
                                cid, sorted(map(str, p.allowed_ips)),
                                sorted(map(str, c.peer.subnets)))
                    missing = True
                c.rx, c.tx = p.rx_bytes, p.tx_bytes
                c.tracker.update(now, wall, p.last_handshake, p.rx_bytes, p.tx_bytes)
            if c.tracker.status != before:
                log.info("connection to %s: %s -> %s (%s)", cid, before.value,
                         c.tracker.status.value, c.tracker.message)
        if missing or (self._synced and len(on_device) != len(self._index)):
            self._apply(dev)  # removes peers nobody owns, restores missing ones
        try:
            self._heal_routing()
        except Exception as e:  # the status must still be reported; the resync retries
            log.warning("checking the routes, rules and nftables table failed: %s", e)

    def _heal_routing(self) -> None:
        """Put back what someone else removed: the device's up state, routes, rules, our
        nftables table. Checked on every status read (a few reads, no writes when all is
        well), so the damage lasts one status interval, not until the next resync."""
        if not self.device.is_up():
            log.warning("device %s was down; setting it up", self.cfg.device)
            self.device.set_up(self._mtu())
        if self._route_keys is None or self._dirty:
            self._route_keys = frozenset(r.text_key() for r in self._routes())
        # One read compared as text; the parse-and-diff only when something differs.
        if not self.table.holds(self._route_keys, exactly=self._synced):
            added, removed = self.table.sync(self._routes(), remove_unknown=self._synced)
            if added or removed:
                log.warning("table %d: restored %d route(s), removed %d unknown",
                            self.cfg.table, added, removed)
        if not self.table.has_rules():
            log.warning("rule for table %d was removed; adding it again", self.cfg.table)
            self.table.ensure_rules()
        if self._nft_applied is not None and not self.nft.exists():
            log.warning("nftables table inet %s was removed; writing it again", self.nft.name)
            self._apply_nft(full=True)

    def _routes(self) -> set[Route]:
        """The accepted clusters' routes that this host can hold (no IPv6 without it)."""
        return self.table.routable(
            desired.desired_routes(self._accepted(), self.cfg.device, self._sources))

    def _connection(self, c: _Conn) -> Connection:
        if c.tracker is None or c.peer is None:
            status, message = ConnectionStatus.ERROR, c.error or "refused"
        else:
            status, message = c.tracker.status, c.tracker.message
            if c.error:
                message = f"{message}; latest update refused: {c.error}"
        # A refused endpoint is reported as published, within bounds; its IP only when it is
        # one (canonical): the rest of the text is the remote's.
        return Connection(
            status=status,
            status_message=message,
            endpoint=c.info.endpoint if c.peer is not None else bounded(c.info.endpoint),
            using_ip=c.peer.using_ip if c.peer is not None else _address_or_empty(c.info.use_ip),
            using_nat=c.info.use_nat,
            rx_bytes=c.rx,
            tx_bytes=c.tx,
        )

    def get_connections(self) -> list[Connection]:
        with self._lock:
            self._read_status()
            return [self._connection(c) for _, c in sorted(self._conns.items())]

    def get_active_connections(self) -> list[Connection]:
        """Connections whose tunnel is installed (refused endpoints have none)."""
        with self._lock:
            self._read_status()
            return [self._connection(c) for _, c in sorted(self._conns.items())
                    if c.peer is not None]

    # --- shutdown ---------------------------------------------------------------------------

    def _remove_all(self) -> None:
        """Our routes and rules (only ours: the table may be shared), the device, our
        nftables table."""
        # `wgcable cleanup` runs without init(): without IPv6, `ip -6` fails.
        self.table.families = FAMILIES if self.ip.ipv6_enabled(self.cfg.device) else ("-4",)
        self.table.remove()
        self.device.delete()
        self.nft.remove()
        self._nft_applied = self._nft_remote = self._written = self._route_keys = None
        self._endpoints_sent.clear()
        self._dirty.clear()

    def close(self) -> None:
        """Stop supervising but leave the tunnels up: a restart must not drop traffic."""
        self._stop.set()
        # Before the join: a supervisor inside ensure() may be starting wireguard-go, and the
        # join may time out; that daemon is stopped now rather than orphaned.
        self.device.stop_starting()
        if self._supervisor is not None:
            self._supervisor.join(5)
        self.device.close()

    def cleanup(self, remove_key: bool = False) -> None:
        """Remove everything the driver created: routes, rules, device, daemon, PID file,
        our nftables table; and the key file when asked."""
        self._stop.set()
        self.device.stop_starting()
        if self._supervisor is not None:
            self._supervisor.join(5)
        with self._lock:
            self._remove_all()
            self._conns.clear()
            self._index = PeerIndex()
            if remove_key:
                path = Path(self.cfg.state_dir) / f"{self.cfg.device}.key"
                if path.exists():
                    os.unlink(path)
