"""The ``wireguard`` cable driver: one WireGuard peer and its routes per remote cluster.

The shape: the accepted endpoints (``index.py``), the driver's settings and the host's facts
(``facts.py``) give one desired state (``state.py``, pure); one reconciler per resource
(``wgcable.reconcile``) brings the host to it: the device's own settings and its peers
(``resources.py``), our nftables table, our routes and the rule (``routing/resources.py``).
The rules of when to read and what to keep until synced live in ``wgcable.reconcile``, once.

A pass runs after every change (once per ``batch()``), at start-up, on ``resync`` and when
the supervisor brings a lost device back; ``full`` passes also re-read the host's facts and
read every resource. Status reads check each resource cheaply and heal what drifted.

All public methods take one lock: the engine serialises its calls, but the supervisor
thread that restarts a dead wireguard-go re-applies state concurrently.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from wgcable.cable.remote import shown
from wgcable.cable.types import Connection, ConnectionStatus, Endpoint, NATEndpointInfo
from wgcable.cable.wireguard import cables, desired, identity, psk
from wgcable.cable.wireguard.cables import Cable
from wgcable.cable.wireguard.config import WireGuardConfig
from wgcable.cable.wireguard.desired import EndpointRejectedError
from wgcable.cable.wireguard.device import WireGuardDevice
from wgcable.cable.wireguard.facts import HostFacts, mtu_warnings, read_facts
from wgcable.cable.wireguard.index import PeerIndex
from wgcable.cable.wireguard.natchain import NatChain, unbind_logged
from wgcable.cable.wireguard.resources import DeviceReads, LinkResource, PeersResource
from wgcable.cable.wireguard.state import DesiredState, Settings, StateBuilder
from wgcable.cable.wireguard.status import PeerStatus
from wgcable.netlink import conntrack
from wgcable.netlink.netns import call_in_netns
from wgcable.reconcile import Reconciler, Tracked
from wgcable.routing import IPRoute, RouteTable, nftables
from wgcable.routing.resources import NftResource, RouteResource, RuleResource
from wgcable.routing.table import FAMILIES
from wgcable.wgctrl import IPNetwork, Key, read_key_file

log = logging.getLogger(__name__)

DRIVER_NAME = "wireguard"
SUPERVISOR_RETRY = 0.5  # seconds between attempts to bring a lost device back
# From this many peer changes in one pass, the peers' write runs on a thread of its own
# while the nftables table, routes and rules are written: wireguard-go takes about 0.3 ms
# a new peer (one Curve25519 multiplication each), which our route writes fill. Below,
# the thread is not worth it: taking the GIL back after the reply may wait out the
# interpreter's switch interval (5 ms), more than the route writes of 100 clusters.
ALONGSIDE_PEERS = 256


class _Joined:
    """Items shown ``", "``-joined in a log line, rendered only if the line is emitted."""

    __slots__ = ("items",)

    def __init__(self, items: Iterable[object]) -> None:
        self.items = items

    def __str__(self) -> str:
        return ", ".join(map(str, self.items))


@contextlib.contextmanager
def _gc_deferred() -> Iterator[None]:
    """The cyclic garbage collector waits until the block ends.

    A pass over 1000 clusters makes some 100 000 objects, none of them garbage cycles, and
    the collector would run 30-odd times meanwhile, now and then over the older generations
    too: in the collector's own callbacks, 28 ms of a connect of 1000 clusters (11 ms with
    the wait, the collection after it included), 4 ms of a removal (0.6), 1.8 ms of a status
    read (1.0). Left alone when something else turned the collector off (then it is not ours
    to turn on)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _Alongside:
    """``fn(*args, **kwargs)``, on a thread of its own when ``apart``, else at once; ``join``
    waits for it and raises what it raised."""

    def __init__(self, fn: Callable[..., object], *args: object, apart: bool,
                 **kwargs: object) -> None:
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if not apart:
            fn(*args, **kwargs)
            return

        def run() -> None:
            try:
                fn(*args, **kwargs)
            except BaseException as e:  # handed to join(), in the caller's thread
                self._error = e

        self._thread = threading.Thread(target=run, name="peers-write", daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


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
        self._conns: dict[str, Cable] = {}
        self._index = PeerIndex()  # the accepted peers, for cheap conflict checks at scale
        self._batch = 0  # >0: inside batch(): changes are applied once, at its end
        self._synced = False
        self._key: Key | None = None
        self._public: Key | None = None
        self._psk: Key | None = None
        self.device = WireGuardDevice(self.cfg)
        self.ip = IPRoute(self.cfg.netns)
        self.table = RouteTable(self.ip, self.cfg.table, self.cfg.rule_priority,
                                self.cfg.device, self.cfg.route_protocol)
        self.nft = nftables.NftTable(self.cfg.device, self.cfg.netns)
        self._local_subnets = tuple(
            ipaddress.ip_network(s, strict=False) for s in local_endpoint.subnets)
        port = desired.parse_port(
            local_endpoint.backend_config.get(desired.UDP_PORT), "udp-port",
            local_endpoint.cluster_id, desired.DEFAULT_PORT)
        self.port = self.cfg.port or port
        self._facts = HostFacts(protected=tuple(self.cfg.protected))
        self._mtu_said: set[str] = set()  # warnings about the derived MTU, said once
        self._builder = StateBuilder()
        self._state: DesiredState | None = None  # None: recompute (the accepted set changed)
        self._touched: set[str] = set()  # clusters connected or disconnected since then
        # Per resource a connection needs (``_pieces``): the desired mapping its last
        # successful write or check made it hold; None: not known to be in place.
        self._held: dict[str, Mapping[Any, Any] | None] = {}
        self._nft_piece = (f"SNAT exemption in nftables table inet {self.nft.name}"
                           if self.cfg.snat_exemption else f"nftables table inet {self.nft.name}")
        self._nat_chain = NatChain(self.nft, self.cfg.netns, watch=False)  # _wire's
        self._unbind_pending = False  # masqueraded conntrack entries to delete (natchain)
        self._wire()
        self._stop = threading.Event()
        self._stop_fds: tuple[int, int] | None = None  # a pipe: stopping wakes the supervisor
        self._supervisor: threading.Thread | None = None
        self._release_timer: threading.Timer | None = None  # new peers that wait to initiate

    def _wire(self) -> None:
        """One reconciler per resource, on the device, table and nftables table this driver
        has (again in ``init``: tests put fakes in their place after construction)."""
        self._reads = DeviceReads(self.device)
        self._link = Reconciler(LinkResource(self._reads))
        self._peer_res = PeersResource(self._reads, self.cfg.answer_first_wait)
        self._peers = Reconciler(self._peer_res)
        self._nft_res = NftResource(self.nft, self.cfg.device, self._local_subnets,
                                    self.cfg.snat_exemption, self.cfg.mss_clamp, self.port)
        self._nft = Reconciler(self._nft_res)
        self._nat_chain.close()  # not started yet (init() starts it): nothing to stop
        # A fake table (unit tests) has no kernel whose notifications could be watched, nor
        # connection tracking entries to delete.
        real = isinstance(self.nft, nftables.NftTable)
        self._nat_chain = NatChain(self.nft, self.cfg.netns, watch=real)
        self._nft_res.changes = self._nat_chain.own_changes
        netns = self.cfg.netns
        self._unbind: Callable[[list[IPNetwork], list[IPNetwork]], int] | None = (
            (lambda local, remote: call_in_netns(
                netns, lambda: conntrack.delete_masqueraded(local, remote))) if real else None)
        self._routes = Reconciler(RouteResource(self.table))
        self._rules = Reconciler(RuleResource(self.table))

    @property
    def name(self) -> str:
        return DRIVER_NAME

    @property
    def public_key(self) -> Key:
        if self._key is None or self._public is None:
            raise RuntimeError("driver not initialised")
        return self._public

    # --- set-up -----------------------------------------------------------------------

    def init(self) -> None:
        """Load or create the key, adopt or create the device, publish the public key."""
        with self._lock:
            self._wire()
            ident = identity.load_key(self.cfg.state_dir, self.cfg.device)
            self._psk = self._load_psk()
            created = self.device.ensure()
            self._set_key(identity.adopt(self.device, ident, self.cfg.state_dir, created))
            self.local.backend_config[desired.PUBLIC_KEY] = self.public_key.base64()
            self.local.backend_config[desired.INTERFACE_NAME] = self.cfg.device
            self.local.backend_config[desired.UDP_PORT] = str(self.port)
            log.info("device %s %s (%s), port %d, public key %s", self.cfg.device,
                     "created" if created else "adopted", self.device.kind, self.port,
                     self.public_key.base64())
            if self.cfg.snat_exemption:
                # Before the first look: a NAT table loaded in between is still seen.
                self._nat_chain.start(self._host_nat_changed)
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
        self._stop_fds = os.pipe()
        self._supervisor = threading.Thread(
            target=self._supervise, name=f"supervise:{self.cfg.device}", daemon=True)
        self._supervisor.start()

    def _set_key(self, key: Key) -> None:
        self._key = key
        # Derived once: each connect compares against it (a curve25519 multiplication).
        self._public = key.public_key()
        self._peer_res.first.own_key = self._public
        self._state = None  # the link's key changes; peers and routes stay as they are

    def rotate_key(self) -> dict[str, str]:
        """A new key pair, switched to without losing a packet; returns the backend config
        entries to publish (the new public key), which the caller must publish next.

        The device takes the new key first. WireGuard then stops sending on every peer's
        current session (wireguard-go ``ExpireCurrentKeypairs``, the kernel
        ``wg_noise_expire_current_peer_keypairs``) but still receives on it: what remotes
        send meanwhile arrives, and what we send waits in the peer's queue (128 packets)
        while our handshake under the new key fails at remotes that do not know it yet.
        Each remote, once it reads the new key, replaces our peer in place and initiates
        at once; the handshake flushes both queues. Published first, remotes would drop
        what we still send on the old session.

        Every peer initiates at once, before the key is published (``initiate_all``):
        otherwise our first initiation would leave with the first packet we send after the
        switch, maybe just as the remote initiates, and two crossed initiations cost both
        sides a 5 s retry (1 to 2 rotations in 100 in the lab, before). Spent on remotes
        that do not know the key yet, it is the last until REKEY_TIMEOUT, 5 s: by then the
        remotes have initiated.

        The key waits in ``<device>.key.next`` until the device holds it, then replaces
        the key file (identity.py: a crash at any step is finished or undone at start)."""
        with self._lock:
            if self._key is None:
                raise RuntimeError("driver not initialised")
            old, new = self._key, Key.generate()
            state_dir, dev = self.cfg.state_dir, self.cfg.device
            identity.stage_next(state_dir, dev, new)
            self._set_key(new)
            try:
                self._apply()
            except Exception:
                self._set_key(old)
                try:
                    self._apply(verify=True)
                except Exception:  # the staged key stays: a start takes either key
                    log.exception("device %s: putting the old key back failed", dev)
                    raise
                identity.discard_next(state_dir, dev)
                raise
            # Every session is for receiving only now: no connection is ``connected``
            # again before a handshake under the new key.
            switched = datetime.now(UTC)
            for c in self._conns.values():
                if c.tracker is not None:
                    c.tracker.rekeyed(switched)
            try:
                self._peer_res.initiate_all()
            except Exception as e:  # the remotes' initiations still bring the tunnels back
                log.warning("device %s: starting handshakes under the new key failed: %s",
                            dev, e)
            finally:
                self._reads.clear()
            try:
                identity.commit_next(state_dir, dev)
            except OSError as e:  # the device has it: the next start finishes the rotation
                log.error("device %s: the new key stays in %s (%s); a restart makes it the "
                          "key file's", dev, identity.next_path(state_dir, dev), e)
            log.info("device %s: new key pair, public key %s (was %s)", dev,
                     self.public_key.base64(), old.public_key().base64())
            return {desired.PUBLIC_KEY: self.public_key.base64()}

    def _load_psk(self) -> Key | None:
        """The preshared key of every peer: from the file (a raw key) or as given (derived
        from a text), checked; None for none."""
        cfg = self.cfg
        if cfg.preshared_key_file and cfg.preshared_key is not None:
            raise ValueError("a preshared key file and a preshared key: give one, not both")
        if cfg.preshared_key_file:
            # Followed: Kubernetes mounts a Secret's files through symlinks. Owner and
            # mode are checked on the file the link leads to.
            key = read_key_file(cfg.preshared_key_file, "preshared_key_file",
                                follow_symlinks=True)
            source = cfg.preshared_key_file
        elif cfg.preshared_key is not None:
            key, source = cfg.preshared_key, "the preshared key"
        else:
            return None
        key = psk.check(key, source, allow_default=cfg.allow_default_psk)
        if psk.is_submariner_default(key):
            log.warning("the preshared key is Submariner's default (from an unset or empty "
                        "CE_IPSEC_PSK), accepted as asked: %s", psk.DEFAULT_RISK)
        return key

    def _supervise(self) -> None:
        """Re-create a device that vanished (a wireguard-go daemon that died) and re-apply
        the full state; retried until it succeeds, not just until the device exists."""
        healthy = True
        while not self._stop.is_set():
            if healthy:
                # At once when wireguard-go exits, or when we stop (close() writes).
                self.device.wait_gone(1.0, self._stop,
                                      self._stop_fds[0] if self._stop_fds else None)
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
            self._apply(verify=True)  # unknown peers, routes and CIDRs go now

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group many connects and disconnects into one pass (the engine uses it when the
        store brings many endpoints at once)."""
        with self._lock, _gc_deferred():
            self._batch += 1
            try:
                yield
            finally:
                self._batch -= 1
                if self._batch == 0:
                    self._apply()

    def _changed(self, cid: str) -> None:
        self._state = None
        self._touched.add(cid)
        if self._batch == 0:
            self._apply()

    # --- desired state and the reconcilers ------------------------------------------------

    def _desired(self) -> DesiredState:
        if self._state is None:
            assert self._key is not None
            settings = Settings(self.cfg.device, self._key, self.port, self.cfg.fwmark,
                                self.cfg.keepalive, self._psk, self.cfg.mtu)
            # Only the clusters touched since the last build are looked at again.
            self._state = self._builder.build(self._index, settings, self._facts,
                                              changed=self._touched, lookup=self._index.get)
            self._touched = set()
        return self._state

    def _read_facts(self) -> None:
        facts = read_facts(self.ip, self.local, self._local_subnets, self.cfg.device,
                           tuple(self.cfg.protected), self.cfg.resolv_conf)
        if facts.ipv6 != ("-6" in self.table.families):
            log.info("IPv6 is %s on %s: IPv6 routes and rules %s", "on" if facts.ipv6
                     else "off", self.cfg.device, "too" if facts.ipv6 else "left out")
        self.table.families = FAMILIES if facts.ipv6 else ("-4",)
        if facts != self._facts:
            self._warn_mtu(facts)
            self._facts, self._state = facts, None

    def _warn_mtu(self, facts: HostFacts) -> None:
        said = set() if self.cfg.mtu else set(mtu_warnings(facts, self.local.private_ip,
                                                            self.cfg.device))
        for text in sorted(said - self._mtu_said):  # once, until the facts change again
            log.warning("%s", text)
        self._mtu_said = said

    def _follow_host_nat(self, full: bool) -> None:
        """Look whether the host has NAT (``natchain.py``); when the NAT chain's need
        changed, our table is to be written again (the next pass or status check does it,
        and until then the SNAT exemption is not counted in place)."""
        if not self.cfg.snat_exemption:
            return
        try:
            changed = self._nat_chain.check(full)
        except Exception as e:  # the decision stays; the next look tries again
            log.warning("looking for NAT on this host failed: %s", e)
            return
        if not changed:
            return
        log.info("SNAT exemption: %s: NAT chain %s table inet %s", self._nat_chain.reason(),
                 "loaded in" if self._nat_chain.needed else "not loaded in", self.nft.name)
        # Flows that sent before our chain was there may carry the masquerade's binding.
        self._unbind_pending = self._nat_chain.needed
        if self._nft_res.nat_chain == self._nat_chain.needed:
            return  # the first look, and the table as it would be written anyway
        self._nft_res.nat_chain = self._nat_chain.needed
        self._held[self._nft_piece] = None
        self._nft.forget()

    def _unbind_masqueraded(self) -> None:
        """Once our NAT chain is written after host NAT appeared: delete the connection
        tracking entries that a masquerade bound before it (``netlink/conntrack.py``), so
        that their next packet gets our null binding. Tried once per appearance."""
        if not self._unbind_pending or self._held.get(self._nft_piece) is None:
            return
        self._unbind_pending = False
        remote = list(self._desired().nft_remote)
        if not remote or self._unbind is None:
            return
        unbind, local = self._unbind, list(self._local_subnets)
        unbind_logged(lambda: unbind(local, remote))

    def _host_nat_changed(self) -> None:
        """The watcher's callback: another table's tables or chains changed. Our table is
        written again at once when the NAT chain's need changed; nothing is written when
        it did not (our own writes, a CNI's rule changes)."""
        with self._lock:
            if self._stop.is_set() or self._key is None:
                return
            self._follow_host_nat(full=False)  # the watcher had the chains listed again
            if self._held.get(self._nft_piece) is not None:
                return
            state = self._desired()
            try:
                self._nft.reconcile(state.nft_remote, synced=self._synced, verify=True)
            except Exception as e:  # the next status read writes it again
                log.warning("writing the %s failed: %s", self._nft_piece, e)
            else:
                self._held[self._nft_piece] = state.nft_remote
            self._unbind_masqueraded()

    def _apply(self, full: bool = False, verify: bool = False) -> None:
        """One pass: every resource to the desired state, in an order that never lets pod
        traffic reach a new cluster before its SNAT exemption (nftables before routes).

        ``full`` (start-up, resync, a restored device) re-reads the host's facts first;
        ``full`` and ``verify`` read every resource instead of trusting the last write."""
        with _gc_deferred():
            self._pass(full, verify)
        self._unbind_masqueraded()
        self._schedule_release()

    def _pass(self, full: bool, verify: bool) -> None:
        if full:
            self._read_facts()
            self._follow_host_nat(full=True)
        state, synced, verify = self._desired(), self._synced, full or verify
        held = self._held
        try:
            self._link.reconcile(state.link, synced=synced, verify=verify)
            peers = _Alongside(self._peers.reconcile, state.peers, synced=synced,
                               verify=verify, apart=self._many_peer_changes(state, verify))
            try:
                for name, rec, want in self._pieces(state):
                    held[name] = None  # unknown until the write succeeds
                    rec.reconcile(want, synced=synced, verify=verify)
                    held[name] = want
            finally:
                peers.join()  # its failure is raised first: it was the first to start
        finally:
            self._reads.clear()

    def _many_peer_changes(self, state: DesiredState, verify: bool) -> bool:
        """Whether the peers' write may be long enough to be worth a thread of its own."""
        want, written = state.peers, self._peers.written
        if verify or written is None:
            return len(want) >= ALONGSIDE_PEERS
        if isinstance(want, Tracked) and want.parent is written:
            return len(want.touched) >= ALONGSIDE_PEERS
        return abs(len(want) - len(written)) >= ALONGSIDE_PEERS

    def _pieces(self, state: DesiredState) -> tuple[
            tuple[str, Reconciler[Any, Any], Mapping[Any, Any]], ...]:
        """The resources a connection needs besides its peer, each with its name in a
        status message (what it waits for), its reconciler and its desired mapping; in the
        order they are applied."""
        return ((self._nft_piece, self._nft, state.nft_remote),
                (f"routes in table {self.cfg.table}", self._routes, state.routes),
                (f"rule for table {self.cfg.table}", self._rules, state.rules))

    def _check_pieces(self, state: DesiredState, synced: bool) -> tuple[str, ...]:
        """Heal each resource a connection needs and name those not in place now. A
        resource is in place when its last write of the current desired state succeeded
        (identity: nothing is compared) and the cheap drift check passes (or restores it);
        one whose last write failed, or was of an older state, is written again here."""
        missing = []
        held = self._held
        for name, rec, want in self._pieces(state):
            if held.get(name) is want:
                if rec.heal(want, synced=synced):
                    continue
            else:
                try:
                    rec.reconcile(want, synced=synced, verify=True)
                except Exception as e:
                    log.warning("writing the %s failed: %s", name, e)
                else:
                    held[name] = want
                    continue
            held[name] = None
            missing.append(name)
        return tuple(missing)

    def _schedule_release(self, delay: float | None = None) -> None:
        """Wake when the first new peer that waits for the remote's initiation is due
        (``resources.PeersResource``: of two gateways, one answers first)."""
        due = self._peer_res.first.next_due()
        if due is None or self._release_timer is not None or self._stop.is_set():
            return
        wait = delay if delay is not None else max(0.0, due - time.monotonic())
        self._release_timer = threading.Timer(wait, self._release_waiting)
        self._release_timer.daemon = True
        self._release_timer.start()

    def _release_waiting(self) -> None:
        with self._lock:
            self._release_timer = None
            if self._stop.is_set():
                return
            try:
                self._peer_res.release()
            except Exception:  # the device is gone: the supervisor restores it; try again
                log.exception("device %s: letting new peers initiate failed; will retry",
                              self.cfg.device)
                self._schedule_release(SUPERVISOR_RETRY)
                return
            finally:
                self._reads.clear()
            self._schedule_release()

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
                    info, self.local, self._local_subnets, self.public_key, self._index,
                    self._facts.local_ips, self._facts.protected)
            except EndpointRejectedError as e:
                log.warning("refused %s", e)
                if old is not None and old.peer is not None:
                    old.error = str(e)
                else:
                    self._conns[cid] = Cable(info, None, None, str(e))
                raise
            now = self._clock()
            tracker = None
            if old is not None and old.peer is not None and old.peer.public_key == peer.public_key:
                tracker = old.tracker  # same key: an in-place update keeps the session
            if old is not None and old.peer is not None and tracker is None:
                log.info("cluster %s has a new key: replacing its peer", cid)
                if old.tracker is not None and old.tracker.last_handshake is not None:
                    # A key rotation: the remote waits for a handshake with its new key.
                    self._peer_res.first.replaces(peer.public_key)
            elif (tracker is not None and old is not None and old.info.endpoint == info.endpoint
                  and old.info.use_ip != info.use_ip
                  and tracker.status is not ConnectionStatus.CONNECTED):
                # Another address of the same Endpoint (NAT discovery): a peer that never
                # had a handshake is added anew, to initiate at once (resources.py).
                self._peer_res.restart_if_silent.add(peer.public_key)
            self._conns[cid] = Cable(
                info, peer, tracker or PeerStatus(self.cfg.thresholds, now))
            self._index.add(peer)
            self._changed(cid)
            log.info("connected cluster %s at %s (nat=%s, subnets %s)", cid, peer.endpoint,
                     peer.using_nat, _Joined(peer.subnets))
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
            self._changed(cid)
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
            cables.device_lost(self._conns, e)
            return
        on_device = {p.public_key: p for p in dev.peers}
        state, synced = self._desired(), self._synced
        # Put back what someone else removed: the link's up state, our nftables table,
        # routes, rules. A few reads and no writes when all is well, so damage lasts one
        # status interval, not until the next resync. First: what is still missing after
        # it keeps each connection ``connecting`` (issue 16: "connected" is never wrong).
        self._link.heal(state.link, synced=synced)
        self._follow_host_nat(full=False)  # legacy iptables: no notifications; one small read
        common = self._check_pieces(state, synced)
        self._unbind_masqueraded()
        missing = cables.track(self._conns, on_device, self._clock(), datetime.now(UTC),
                               common, self.table.blocked, (self.cfg.device, self.cfg.table))
        if missing or (synced and len(on_device) != len(state.peers)):
            # Restores missing peers, removes those nobody owns: from this read.
            self._peers.reconcile(state.peers, synced=synced, have=on_device)
        self._reads.clear()
        self._schedule_release()

    def get_connections(self) -> list[Connection]:
        with self._lock, _gc_deferred():
            self._read_status()
            return [c.connection() for _, c in sorted(self._conns.items())]

    def get_active_connections(self) -> list[Connection]:
        """Connections whose tunnel is installed (refused endpoints have none)."""
        with self._lock, _gc_deferred():
            self._read_status()
            return [c.connection() for _, c in sorted(self._conns.items())
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
        for rec in (self._link, self._peers, self._nft, self._routes, self._rules):
            rec.forget()
        self._builder, self._state = StateBuilder(), None

    def close(self) -> None:
        """Stop supervising but leave the tunnels up: a restart must not drop traffic."""
        self._stop.set()
        self._nat_chain.close()  # outside the lock: its callback may be waiting for it
        if self._stop_fds is not None:
            with contextlib.suppress(OSError):
                os.write(self._stop_fds[1], b"x")  # ends the supervisor's wait on the daemon
        # Before the join: a supervisor inside ensure() may be starting wireguard-go, and the
        # join may time out; that daemon is stopped now rather than orphaned.
        self.device.stop_starting()
        if self._supervisor is not None:
            self._supervisor.join(5)
        self._close_stop_fds()
        self._release_all()
        self.device.close()
        self._close_sockets()

    def _close_sockets(self) -> None:
        """Our netlink socket and nftables context: each holds its namespace while open
        (a later call opens them again)."""
        with self._lock:
            self.ip.close()
            self.nft.close()

    def _release_all(self) -> None:
        """No peer is left unable to initiate when we stop."""
        with self._lock:
            if self._release_timer is not None:
                self._release_timer.cancel()
                self._release_timer = None
            try:
                self._peer_res.release(all_now=True)
            except Exception as e:
                log.warning("device %s: letting new peers initiate on close failed: %s",
                            self.cfg.device, e)
            finally:
                self._reads.clear()

    def _close_stop_fds(self) -> None:
        if self._supervisor is not None and self._supervisor.is_alive():
            return  # still waiting on them (a join that timed out): left to the process
        fds, self._stop_fds = self._stop_fds, None
        for fd in fds or ():
            with contextlib.suppress(OSError):
                os.close(fd)

    def cleanup(self, remove_key: bool = False) -> None:
        """Remove everything the driver created: routes, rules, device, daemon, PID file,
        our nftables table; and the key file when asked."""
        self._stop.set()
        self._nat_chain.close()
        if self._stop_fds is not None:
            with contextlib.suppress(OSError):
                os.write(self._stop_fds[1], b"x")
        self.device.stop_starting()
        if self._supervisor is not None:
            self._supervisor.join(5)
        self._close_stop_fds()
        with self._lock:
            try:
                self._remove_all()
            finally:
                self._close_sockets()
            self._conns.clear()
            self._index = PeerIndex()
            if remove_key:
                identity.key_path(self.cfg.state_dir, self.cfg.device).unlink(missing_ok=True)
                identity.discard_next(self.cfg.state_dir, self.cfg.device)
