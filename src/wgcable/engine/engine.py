"""The engine: level-triggered reconcile of the store's endpoints into cables.

One thread does all driver calls (the driver contract wants them serialised): it wakes on
a store change, on the periodic resync and on the status timer. Everything else (the HTTP
metrics server, `wgcable show`) reads the last status it published.

It never waits on the store: reads, our endpoint's publishing and the status writes run on
the store-calls thread (engine/storecalls.py), so a hung broker cannot freeze the status,
the health checks or the metrics. A call that has not returned within the store timeout
is reported in the status as a store problem.

With an elector (wgcable.ha), only the active gateway of a cluster acts: it publishes its
Endpoint, removes those of former gateways of its cluster, and connects the remotes. A
passive one keeps its device and key (warm) but no peers or routes, and withdraws its
Endpoint. A gateway that does not know (lease unreadable, fenced, handing over) changes
nothing: its tunnels stay as they are, as in a store outage.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from wgcable.cable.driver import (
    Batching,
    Driver,
    EndpointRefused,
    KeyRotating,
    KnowsInstalled,
    Resyncable,
    SyncAware,
)
from wgcable.cable.remote import PUBLIC_KEY, EndpointRejectedError, health_check_target, shown
from wgcable.cable.types import (
    Connection,
    ConnectionStatus,
    Endpoint,
    GatewayStatus,
    HAStatus,
    JSONObject,
    NATEndpointInfo,
)
from wgcable.engine import paths
from wgcable.engine import plan as planning
from wgcable.engine.health import HealthChecker
from wgcable.engine.paths import Path, PathChooser, PathDiscovery
from wgcable.engine.storecalls import StoreCalls
from wgcable.ha.elector import Elector, Role
from wgcable.store.base import EndpointStore, Snapshot, StoreUnavailableError
from wgcable.store.open import DEFAULT_STORE_TIMEOUT

log = logging.getLogger(__name__)

# Our endpoint edited again within RESTORE_BACKOFF_MAX of our last restore means another
# writer keeps changing it: restores then back off (1 s, doubling, up to the maximum), so
# that two writers never fight at full speed.
RESTORE_BACKOFF_MAX = 60.0

# A gateway that has just become passive keeps its tunnels this long: the new active one's
# Endpoint reaches remote clusters and route agents through the store (tens to hundreds of
# ms), and until then they still send through us. Remotes drop our peer when they switch,
# so the tunnels kept carry nothing after that.
PASSIVE_DRAIN = 2.0

# A cable without a handshake this long (seconds) has NAT discovery probe its remote's
# addresses again, then at most once per interval: the path it uses may have died (a moved
# NAT, a withdrawn public IP). Longer than a handshake's retry (5 s) would wait for nothing.
REPROBE_AFTER = 5.0
REPROBE_INTERVAL = 10.0


class Engine:
    def __init__(
        self,
        local: Endpoint,
        driver: Driver,
        store: EndpointStore,
        *,
        hostname: str,
        health: HealthChecker | None = None,
        resync_interval: float = 30.0,
        status_interval: float = 5.0,
        on_status: Callable[[GatewayStatus], None] | None = None,
        version: str = "",
        store_timeout: float = DEFAULT_STORE_TIMEOUT,
        elector: Elector | None = None,
        discovery: PathDiscovery | None = None,
    ) -> None:
        self.local = local
        self.driver = driver
        self.store = store
        self.hostname = hostname
        self.health = health
        self.resync_interval = resync_interval
        self.status_interval = status_interval
        self.on_status = on_status
        self.version = version
        self.store_timeout = store_timeout  # a store call running longer is a store problem
        self.elector = elector  # None: no election, always active
        self.discovery = discovery  # None: the static rule alone picks remotes' addresses
        self._chooser = PathChooser(discovery) if discovery is not None else None
        self._paths: dict[str, Path] = {}  # cluster -> the address its cable uses, and why
        self._unconnected_since: dict[str, float] = {}  # cluster -> when it last was not
        self._reprobed: dict[str, float] = {}  # cluster -> when discovery last probed again
        self._acting_as: Role | None = None  # the role the last reconcile acted on
        self._withdrawn: set[str] = set()  # endpoints of our cluster we asked the store to drop
        self._drain_until = 0.0  # passive since just now: tunnels kept until then (monotonic)
        self._timer_at = 0.0  # when the timer of _wake_at fires
        self.watch_retry_interval = 1.0
        self._applied: dict[str, NATEndpointInfo] = {}  # what the driver was told, by cluster
        self._rejected: set[str] = set()
        self._retry_all = False
        self._handshaken: set[str] = set()  # clusters whose tunnel has had a handshake
        self._health_refused: dict[str, str] = {}  # cluster -> why its health check IP is not
        self._problems: dict[str, str] = {}
        self._dirty = threading.Event()  # the store changed: read it again
        self._replan = threading.Event()  # NAT discovery found a path: plan the last read again
        self._last_snap: Snapshot | None = None  # the last store read applied
        self._wake = threading.Event()  # the loop has something to do before its timer
        self._status_now = threading.Event()  # the store's health changed: report it now
        if health is not None:
            health.on_first_reply = self._first_reply
        self._calls = StoreCalls()  # reads, publishing and withdrawals, in this order
        # The status write has a thread of its own: at 1000 connections the API server
        # takes up to a second over it, and a read queued behind it held a change back.
        self._status_calls = StoreCalls()
        self._pending: Snapshot | Exception | None = None  # a read the loop has not applied
        self._publishing = False  # a publish of our endpoint is queued or under way
        self._publish_again = False  # our endpoint changed while a publish was under way
        self._rotate = threading.Event()  # a key rotation was asked for (wgcable rotate-key)
        self._call_problems: dict[str, str] = {}  # store call -> why it failed last time
        self._reported_store_problem = ""  # the store problem in the last status
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._status_write = threading.Lock()  # the local status: role changes vs the loop
        self._status = GatewayStatus(version=version, local_endpoint=local,
                                     ha_status=_ha_status(self.role))
        self.established: dict[str, float] = {}  # cluster -> epoch when it became connected
        # The clusters whose latest Endpoint the driver refused, as of the last status.
        self._refused: frozenset[str] = frozenset()
        self._synced = False  # a reconcile succeeded since start: stale peers may go
        self._store_problem = ""  # why the store is unusable now ("" while it is fine)
        self._status_write_failing = False
        self._restores = 0  # restores of our edited endpoint, each soon after the last
        self._last_restore = -RESTORE_BACKOFF_MAX
        self._next_restore = 0.0  # monotonic time before which we do not restore again
        self._own_problem = ""  # for the gateway status, while our endpoint is contested
        self._published: JSONObject | None = None  # our endpoint as last published
        self.clock: Callable[[], float] = time.monotonic

    # --- reconcile ------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Read the whole store, connect what is new or changed, disconnect what is gone.

        A store that cannot be read changes nothing (the tunnels stay as they are): the
        error is raised, and reported in the gateway status until a read succeeds.
        The store is read on the calling thread: the loop reads it on the store-calls
        thread instead, and applies the result with ``_reconcile_pending``."""
        self._reconcile_with(self._read())

    def _read(self) -> Snapshot | Exception:
        try:
            return self.store.snapshot()
        except Exception as e:
            return e

    def _request_read(self) -> None:
        """Read the store on the store-calls thread; the loop applies the result."""
        def read() -> None:
            result = self._read()
            with self._lock:
                self._pending = result
            self._wake.set()

        self._calls.submit("snapshot", "reading the store", read)

    def _take_pending(self) -> Snapshot | Exception | None:
        with self._lock:
            result, self._pending = self._pending, None
        return result

    def _reconcile_pending(self) -> None:
        result = self._take_pending()
        if result is not None:
            self._reconcile_with(result)

    def _reconcile_with(self, snap: Snapshot | Exception) -> None:
        if isinstance(snap, Exception):
            problem = f"store unavailable: {snap}"
            if problem != self._store_problem:
                log.warning("%s; the tunnels stay as they are", problem)
            self._store_problem = problem
            if isinstance(snap, StoreUnavailableError):
                raise snap
            raise StoreUnavailableError(problem) from snap
        if self._store_problem:
            log.info("the store is readable again")
            self._store_problem = ""
        self._last_snap = snap
        role = self.role
        if role is not self._acting_as:
            log.info("acting as %s gateway", role)
            if role is Role.PASSIVE and self._applied:
                self._drain_until = self.clock() + PASSIVE_DRAIN
            self._acting_as = role
        if role is Role.UNKNOWN:
            return  # fenced, handing over, or the lease never read: change nothing
        if role is Role.PASSIVE and self.clock() < self._drain_until:
            self._wake_at(self._drain_until)
            return  # make before break: the others follow the new active one first
        store = snap
        if role is Role.PASSIVE:
            self._withdraw(snap, only=self.local.object_name())  # remotes must not use it
            snap = Snapshot(errors=snap.errors)  # a passive gateway connects nothing
        p = planning.plan(self.local, snap)
        before = self._paths
        self._paths = self._chooser.choose(p.connect) if self._chooser is not None else {}
        for cid, path in self._paths.items():
            if path.how == paths.DISCOVERED and before.get(cid) != path:
                log.info("cluster %r: using %s: %s", shown(cid), path.use_ip, path.describe())
        for name, problem in p.problems.items():
            if self._problems.get(name) != problem:
                log.warning("store entry %s: %s", name, problem)
        self._problems = p.problems
        connect, gone = planning.changed(self._applied, p.connect)
        # A refusal may have been for a conflict (subnets, key) with a cluster that is
        # leaving or changing: retry the refused ones after the others have been applied.
        # Newcomers only take, never free, so they do not trigger it.
        freed = bool(gone) or any(cid in self._applied for cid in connect)
        if self._retry_all:
            connect = sorted(p.connect)
        if connect or gone or self._retry_all:
            try:
                with self._batch():
                    self._disconnect(gone)
                    self._connect(connect, p.connect)
                    if freed:
                        self._connect(sorted(self._rejected & set(p.connect)), p.connect)
            except Exception:
                # Applying the batch failed (device trouble): the next pass tells the
                # driver everything again (connecting is idempotent). Our Endpoint is kept
                # published all the same (the tunnels already up still work).
                self._retry_all = True
                self._own_endpoint(role, store)
                raise
            self._retry_all = False
        self._own_endpoint(role, store)
        self._update_health_targets()
        if not self._synced:
            self._synced = True
            if isinstance(self.driver, SyncAware):
                self.driver.mark_synced()  # all connected: stale peers may go

    def _own_endpoint(self, role: Role, snap: Snapshot) -> None:
        """An active gateway keeps its Endpoint published, and its cluster's others gone.
        Called after the tunnels are in place: remotes that follow a new active gateway's
        Endpoint find peers and routes here, not a handshake into nothing."""
        if role is Role.ACTIVE:
            self._stamp_term(snap)
            self._restore_own(snap.endpoints.get(self.local.object_name()))
            self._withdraw(snap, keep=self.local.object_name())

    def _stamp_term(self, snap: Snapshot) -> None:
        """Our lease term into our Endpoint (the newest wins for every reader). Above any
        term a sibling's Endpoint still carries: a lease made anew (its file deleted, the
        Lease object recreated) counts from 1 again, and the Endpoint of the active
        gateway before it, until withdrawn, would otherwise keep every reader."""
        if self.elector is None:
            return
        mine = self.local.object_name()
        siblings = [planning.lease_term(ep) for name, ep in snap.endpoints.items()
                    if name != mine and ep.cluster_id == self.local.cluster_id]
        term = str(max([self.elector.transitions, *(t + 1 for t in siblings)]))
        if self.local.backend_config.get(planning.LEASE_TERM) != term:
            with self._lock:  # (the metrics thread reads the local endpoint)
                self.local.backend_config[planning.LEASE_TERM] = term

    @property
    def role(self) -> Role:
        return Role.ACTIVE if self.elector is None else self.elector.role

    def _wake_at(self, when: float) -> None:
        """Read the store and reconcile again at ``when`` (monotonic), whatever else."""
        if when == self._timer_at:
            return
        self._timer_at = when

        def later() -> None:
            if not self._stop.wait(max(0.0, when - self.clock())):
                self._changed()

        threading.Thread(target=later, name="engine-timer", daemon=True).start()

    def role_changed(self) -> None:
        """The elector's role changed (called on its thread): say so in the status at once
        (the loop may be busy: a status saying active after we stopped being so would make
        two actives for whoever reads it), then read the store and act."""
        with self._status_write:
            role = self.role
            # The failure too: a gateway fenced by an unreachable lease says why at once.
            failure = self._failure(role, self._reported_store_problem)
            with self._lock:
                self._status = replace(self._status, ha_status=_ha_status(role),
                                       status_failure=failure)
                status = self._status
            if self.on_status is not None:
                self.on_status(status)
        self._status_now.set()
        self._changed()

    def _withdraw(self, snap: Snapshot, *, keep: str = "", only: str = "") -> None:
        """Remove our cluster's Endpoints but ``keep`` (an active gateway: those of former
        active ones, or a dead node's would stay), or only ``only`` (a passive one: its
        own). Remote clusters, and Submariner's gateways, then see one Endpoint per
        cluster."""
        ours = {name for name, ep in snap.endpoints.items()
                if ep.cluster_id == self.local.cluster_id and name != keep
                and (not only or name == only)}
        with self._lock:
            self._withdrawn &= ours
            new = sorted(ours - self._withdrawn)
            self._withdrawn.update(new)
        for name in new:
            ep = snap.endpoints[name]
            log.info("removing %s Endpoint %s", "our" if name == self.local.object_name()
                     else "a former gateway's", name)

            def withdraw(ep: Endpoint = ep, name: str = name) -> None:
                try:
                    self.store.withdraw(ep)
                except Exception as exc:
                    log.warning("removing Endpoint %s failed (will retry): %s", name, exc)
                    with self._lock:
                        self._withdrawn.discard(name)

            self._calls.submit(f"withdraw {name}", f"removing Endpoint {name}", withdraw)

    def _publish(self) -> None:
        """Publish our endpoint on the store-calls thread (inline before start)."""
        with self._lock:
            if self._publishing:
                # A restore already on its way: a read meanwhile is no new edit. It may
                # carry our endpoint as it was: publish again after it.
                self._publish_again = True
                return
            self._publishing = True

        def publish() -> None:
            with self._lock:
                sent = self.local.to_json()
            try:
                self.store.publish(self.local)
            except Exception as exc:
                log.warning("publishing our endpoint %s failed (will retry): %s",
                            self.local.object_name(), exc)
                self._call_done("publish", f"publishing our endpoint failed: {exc}")
            else:
                self._published = sent
                self._call_done("publish", "")
            finally:
                with self._lock:
                    self._publishing = False
                    again, self._publish_again = self._publish_again, False
                if again:
                    self._publish()

        self._calls.submit("publish", "publishing our endpoint", publish)

    def _call_done(self, key: str, problem: str) -> None:
        """Record how a store call ended; wake the loop to report a change of the store's
        health now rather than at the next status interval."""
        with self._lock:
            if problem:
                self._call_problems[key] = problem
            else:
                self._call_problems.pop(key, None)
        if self._current_store_problem() != self._reported_store_problem:
            self._status_now.set()
            self._wake.set()

    def _first_reply(self, cluster_id: str) -> None:
        """A tunnel's first health check reply (the health checker's thread): its connection
        is ``connected`` from now on, reported now rather than at the next interval."""
        self._status_now.set()
        self._wake.set()

    def _current_store_problem(self) -> str:
        """Why the store is unusable now, in one line; "" while it is fine. The first that
        applies of: a failed read, the store's own word (a Kubernetes store knows when its
        API server stopped answering), a call that has run past the store timeout, a
        failed write."""
        store_problem = getattr(self.store, "problem", "")
        stalled = max((c for c in (self._calls.stalled(), self._status_calls.stalled())
                       if c is not None), key=lambda c: c[1], default=None)
        with self._lock:
            calls = [p for _, p in sorted(self._call_problems.items())]
        if self._store_problem:
            return self._store_problem
        if store_problem:
            return f"store unavailable: {store_problem}"
        # A little grace past the timeout: a store that times out by itself (Kubernetes)
        # then names its own error first, with its server in it.
        grace = min(1.0, self.store_timeout / 2)
        if stalled is not None and stalled[1] > self.store_timeout + grace:
            return (f"store unavailable: {stalled[0]} has not returned after "
                    f"{stalled[1]:.0f} s (store timeout {self.store_timeout:g} s)")
        return f"store unavailable: {calls[0]}" if calls else ""

    def _restore_own(self, published: Endpoint | None) -> None:
        """Keep the store's copy of our endpoint ours: publish it when missing (deleted, the
        store came back without it, the first publish failed), restore it when someone
        edited it (compared as JSON, so a store's round trip is no difference): an edited
        key or address would send other clusters' traffic elsewhere.

        This agent is the owner: the endpoint's name is our cluster ID and cable name. If
        another writer keeps changing it (a second agent configured as the same cluster and
        cable: a misconfiguration), restores back off up to RESTORE_BACKOFF_MAX and the
        gateway status says so, instead of two writers fighting at full speed."""
        name = self.local.object_name()
        now = self.clock()
        if published is not None and published.to_json() == self.local.to_json():
            with self._lock:  # there as it should be: an earlier failed publish is moot
                self._call_problems.pop("publish", None)
            if self._own_problem and now - self._last_restore >= RESTORE_BACKOFF_MAX:
                log.info("our endpoint %s has stayed ours", name)
                self._own_problem = ""
            return
        if now < self._next_restore or self._publishing:
            return  # (publishing: a read made before our publish landed is no new edit)
        if published is None:
            log.warning("our endpoint %s is missing from the store; publishing it again", name)
        elif published.to_json() == self._published:
            # The store holds what we published last; it is ours that changed (a new lease
            # term, a rotated key, a publish that failed): no one else's edit to count.
            log.info("our endpoint %s changed here; publishing it", name)
        else:
            recent = now - self._last_restore < RESTORE_BACKOFF_MAX
            self._restores = self._restores + 1 if recent else 1
            self._last_restore = now
            delay = 0.0 if self._restores == 1 else min(RESTORE_BACKOFF_MAX,
                                                        2.0 ** (self._restores - 2))
            self._next_restore = now + delay
            log.warning("our endpoint %s was changed in the store by someone else; "
                        "restoring it", name)
            self._own_problem = "" if self._restores == 1 else (
                f"our endpoint {name} was changed by someone else {self._restores} times "
                f"in a row (another gateway with the same cluster ID and cable name?); "
                f"next restore in {delay:.0f} s or later")
        self._publish()

    def _update_health_targets(self) -> None:
        """Ping the health check IPs of accepted clusters whose tunnel has had a handshake,
        and only those inside the cluster's own subnets (the ones its tunnel carries).

        Not before the handshake: echoes into a tunnel that never came up wait in the
        daemon's queue while it retries the handshake (wireguard-go held ~1 MiB per peer)."""
        if self.health is None:
            return
        self._handshaken &= set(self._applied) - self._rejected
        targets: dict[str, str] = {}
        refused: dict[str, str] = {}
        for cid, info in self._applied.items():
            if cid in self._rejected:
                continue
            try:
                ip = health_check_target(info.endpoint)
            except EndpointRejectedError as e:
                refused[cid] = f"{e.field}={e.value!r}: {e.reason}"
                if self._health_refused.get(cid) != refused[cid]:
                    log.warning("cluster %r: health check refused: %s", shown(cid), refused[cid])
                continue
            if ip is not None and cid in self._handshaken:
                targets[cid] = str(ip)
        self._health_refused = refused
        self.health.set_targets(targets)

    def _batch(self) -> contextlib.AbstractContextManager[object]:
        if isinstance(self.driver, Batching):
            return self.driver.batch()
        return contextlib.nullcontext()

    def _disconnect(self, gone: list[str]) -> None:
        for cid in gone:
            info = self._applied.pop(cid)
            self._rejected.discard(cid)
            try:
                self.driver.disconnect_from_endpoint(info.endpoint)
            except Exception:
                log.exception("disconnecting cluster %r failed", shown(cid))

    def _first_come(self, clusters: list[str], infos: dict[str, NATEndpointInfo]) -> list[str]:
        """Clusters whose tunnel the driver already has (adopted after a restart) before the
        others: when two claim one subnet, the one that held it keeps it, whatever their
        names. Without it, a restarted agent would hand the subnet to whoever sorts first."""
        if len(clusters) < 2 or not isinstance(self.driver, KnowsInstalled):
            return clusters
        try:
            first = self.driver.installed([infos[cid].endpoint for cid in clusters])
        except Exception as e:
            log.warning("reading the installed tunnels failed: %s", e)
            return clusters
        return sorted(clusters, key=lambda cid: (cid not in first, cid))

    def _connect(self, clusters: list[str], infos: dict[str, NATEndpointInfo]) -> None:
        for cid in self._first_come(clusters, infos):
            info = infos[cid]
            old = self._applied.get(cid)
            if old is not None and old.endpoint.backend_config.get(PUBLIC_KEY) != \
                    info.endpoint.backend_config.get(PUBLIC_KEY):
                # A new key is a new peer: its health check starts afresh after its first
                # handshake, so that its first reply is the new tunnel's.
                self._handshaken.discard(cid)
            self._applied[cid] = info
            try:
                self.driver.connect_to_endpoint(info)
                self._rejected.discard(cid)
            except EndpointRefused as e:  # the driver reports it as an error connection
                self._rejected.add(cid)
                log.debug("cluster %r refused: %s", shown(cid), e)
            except Exception:
                # The driver could not apply it (device trouble): try again next pass.
                del self._applied[cid]
                log.exception("connecting cluster %r failed; will retry", shown(cid))

    def request_key_rotation(self) -> None:
        """Rotate the driver's key at the loop's next turn (safe from a signal handler)."""
        self._rotate.set()
        self._wake.set()

    def _rotate_key(self) -> None:
        """The driver switches to a new key pair, then we publish it (its order: the device
        first, see ``WireGuardDriver.rotate_key``). Refused while the store is in trouble:
        remotes would not learn the new key, and what we send them would wait in vain.
        Waits while our role is unknown (fenced, handing over: we change nothing then), and
        while a gateway that has just become passive keeps its tunnels (PASSIVE_DRAIN)."""
        name = getattr(self.driver, "name", "?")
        if not isinstance(self.driver, KeyRotating):
            self._rotate.clear()
            log.warning("key rotation refused: the %s cable driver has no key to rotate", name)
            return
        role = self.role
        if role is Role.UNKNOWN:
            log.info("key rotation waits: this gateway's role is unknown")
            return  # still asked for: a change of role wakes the loop
        if role is Role.PASSIVE and self.clock() < self._drain_until:
            # Its tunnels still carry traffic while remotes move to the new active gateway,
            # and a passive one publishes no key: they would have no way to reach it.
            log.info("key rotation waits: this gateway has just become passive")
            self._wake_at(self._drain_until)
            return
        self._rotate.clear()
        problem = self._current_store_problem() or (
            "" if self._synced else "the store has not been read yet")
        if problem:
            log.warning("key rotation refused: %s; remote clusters could not learn the new "
                        "key", problem)
            return
        changes = self.driver.rotate_key()
        with self._lock:  # (the metrics thread reads the local endpoint)
            self.local.backend_config.update(changes)
        if role is Role.ACTIVE:
            self._publish()  # a passive gateway's Endpoint is withdrawn: nothing to publish
        log.info("key rotated; %s", "publishing the new public key" if role is Role.ACTIVE
                 else "passive: it is published when this gateway becomes active")
        self._status_now.set()  # the status file shows the new key at once

    def resync(self) -> None:
        """Heal drift: re-apply the device, routes and rules whatever we think they hold."""
        if isinstance(self.driver, Resyncable):
            try:
                self.driver.resync()
            except Exception:
                log.exception("resync failed; will retry")

    # --- status -------------------------------------------------------------------------------

    def _with_health(self, c: Connection) -> Connection:
        if self.health is None:
            return c
        if why := self._health_refused.get(c.endpoint.cluster_id):
            message = f"health check refused: {why}"
            return replace(c, status_message=f"{c.status_message}; {message}"
                           if c.status_message else message)
        result = self.health.result(c.endpoint.cluster_id)
        if result is None:
            return c
        c = replace(c, latency_rtt=result.latency)
        if c.status == ConnectionStatus.CONNECTED and not result.healthy:
            c = replace(c, status=ConnectionStatus.ERROR, status_message=(
                f"no reply from health check IP {c.endpoint.health_check_ip} to "
                f"{result.consecutive_losses} pings in a row"))
        elif (c.status == ConnectionStatus.CONNECTED and result.last_reply_age is None
              and result.available):
            # A handshake proves neither direction of pod traffic (wireguard-go's crossed
            # handshakes can leave one dead while both sides show one; the remote's routes
            # may not be in): a first echo answered through the tunnel does (issue 16).
            # Never answered, it becomes an error after the checker's allowed losses.
            c = replace(c, status=ConnectionStatus.CONNECTING, status_message=(
                f"waiting for: the first reply from health check IP "
                f"{c.endpoint.health_check_ip}"))
        return c

    def _with_path(self, c: Connection) -> Connection:
        """The status says which address the cable uses and why; a cable that stopped
        handshaking (or never did) has discovery probe again: the path may have died."""
        cid = c.endpoint.cluster_id
        path = self._paths.get(cid)
        if path is None or self.discovery is None:
            return c  # without discovery, the static rule is all there is: nothing to say
        now = self.clock()
        if (c.status == ConnectionStatus.CONNECTED or not path.probed
                or cid in self._rejected or cid not in self._applied):
            # Connected; or nothing to probe; or refused (its address is not the problem).
            self._unconnected_since.pop(cid, None)
        else:
            since = self._unconnected_since.setdefault(cid, now)
            if (self.discovery is not None and now - since >= REPROBE_AFTER
                    and now - self._reprobed.get(cid, -REPROBE_INTERVAL) >= REPROBE_INTERVAL):
                self._reprobed[cid] = now
                log.info("cluster %r: no handshake for %.0f s on %s; probing its addresses "
                         "again", shown(cid), now - since, path.use_ip)
                self.discovery.reprobe(cid)
        if path.how == paths.STATIC:
            found = self.discovery.choice(cid)
            path = replace(path, detail=found.detail if found is not None
                           else "until NAT discovery answers")
        message = path.describe()
        return replace(c, status_message=f"{c.status_message}; {message}"
                       if c.status_message else message)

    def paths_changed(self) -> None:
        """NAT discovery found (another) path: plan the last store read again, without
        reading the store (a broker's list is what must not grow with discoveries); from
        any thread."""
        self._replan.set()
        self._wake.set()

    def _replan_last(self) -> None:
        if self._replan.is_set():
            self._replan.clear()
            if self._last_snap is not None:
                self._reconcile_with(self._last_snap)

    def refresh_status(self) -> GatewayStatus:
        raw = self.driver.get_connections()
        before = set(self._handshaken)
        self._handshaken |= {c.endpoint.cluster_id for c in raw
                             if c.status == ConnectionStatus.CONNECTED}
        if self._handshaken != before:
            self._update_health_targets()
        conns = [self._with_path(self._with_health(c)) for c in raw]
        now = time.time()
        for c in conns:
            cid = c.endpoint.cluster_id
            if c.status == ConnectionStatus.CONNECTED:
                self.established.setdefault(cid, now)
            else:
                self.established.pop(cid, None)
        present = {c.endpoint.cluster_id for c in conns}
        refused = frozenset(self._rejected & present)
        for cid in list(self.established):
            if cid not in present:
                del self.established[cid]
        for seen in (self._unconnected_since, self._reprobed):
            for cid in list(seen):
                if cid not in present:
                    del seen[cid]
        store_problem = self._current_store_problem()
        self._reported_store_problem = store_problem
        with self._status_write:  # with role_changed: the last status written is right
            role = self.role
            failure = self._failure(role, store_problem)
            status = GatewayStatus(
                version=self.version, ha_status=_ha_status(role), local_endpoint=self.local,
                status_failure=failure, connections=conns)
            with self._lock:
                self._status, self._refused = status, refused
            # The local status first, then the store's copy on the store-calls thread: a
            # store that hangs must not hold up the status file or the metrics.
            if self.on_status is not None:
                self.on_status(status)
        self._status_calls.submit("status", "writing the gateway status",
                                  lambda: self._write_status(status))
        return status

    def _failure(self, role: Role, store_problem: str) -> str:
        """The status's failure text: the store's, the lease's, our own Endpoint's, and
        each refused remote's problem."""
        ha_problem = ""
        if self.elector is not None and role is not Role.PASSIVE and self.elector.problem:
            ha_problem = f"gateway lease: {self.elector.problem}"
        problems = [f"{k}: {v}" for k, v in sorted(self._problems.items())]
        return "; ".join([*filter(None, [store_problem, ha_problem, self._own_problem]),
                          *problems])

    def _write_status(self, status: GatewayStatus) -> None:
        try:
            self.store.write_status(self.hostname, status)
        except Exception as exc:
            # Once per outage: the status is rewritten every few seconds.
            if not self._status_write_failing:
                log.warning("writing the gateway status failed (will retry): %s", exc)
            self._status_write_failing = True
            self._call_done("status", f"writing the gateway status failed: {exc}")
        else:
            self._status_write_failing = False
            self._call_done("status", "")

    @property
    def store_problem(self) -> str:
        """The store problem of the last status ("" when there was none)."""
        return self._reported_store_problem

    @property
    def status(self) -> GatewayStatus:
        with self._lock:
            return self._status

    @property
    def refused(self) -> frozenset[str]:
        """The clusters whose latest Endpoint the driver refused, as of the last status."""
        with self._lock:
            return self._refused

    def status_and_refused(self) -> tuple[GatewayStatus, frozenset[str]]:
        """Both as of the same status (for the metrics, from another thread: a connection
        that left is never seen without its refusal)."""
        with self._lock:
            return self._status, self._refused

    # --- the loop -------------------------------------------------------------------------------

    def start(self) -> None:
        """Publish our endpoint, connect everything known, then run in the background.

        The first read of the store is waited for one status interval at most: a store
        that hangs then delays neither the first status nor the loop (the loop applies
        the read when it comes)."""
        # Neither step is fatal: with the store unreachable, the adopted tunnels stay as
        # they are (no stale-peer removal before a reconcile succeeded) until it is back.
        self._calls.start()
        self._status_calls.start()
        if self.role is Role.ACTIVE:
            self._stamp_term(Snapshot())  # before the first publish: one version, not two
            self._publish()
        self._request_read()
        deadline = time.monotonic() + self.status_interval
        while (self._pending is None and not self._stop.is_set()
               and self._wake.wait(max(0.0, deadline - time.monotonic()))):
            self._wake.clear()
        self._guard(self._reconcile_pending)
        if self.health is not None:
            self.health.start()
        self.refresh_status()
        watcher = threading.Thread(target=self._watch, name="store-watch", daemon=True)
        loop = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._threads = [watcher, loop]
        for t in self._threads:
            t.start()

    def _changed(self) -> None:
        self._dirty.set()
        self._wake.set()

    def _watch(self) -> None:
        # A watch that fails (a lost store connection) is started again: without it, changes
        # would only be seen at the periodic resync.
        while True:
            try:
                self.store.watch(self._changed, self._stop)
                return
            except Exception:
                log.exception("watching the store failed; watching again in %.1f s",
                              self.watch_retry_interval)
            self._changed()  # changes may have been missed meanwhile
            if self._stop.wait(self.watch_retry_interval):
                return

    def _loop(self) -> None:
        next_resync = time.monotonic() + self.resync_interval
        next_status = time.monotonic() + self.status_interval
        while not self._stop.is_set():
            timeout = max(0.0, min(next_resync, next_status) - time.monotonic())
            self._wake.wait(timeout)
            self._wake.clear()  # before the flags are read: a later wake is not lost
            if self._stop.is_set():
                break
            if self._dirty.is_set():
                self._dirty.clear()
                self._request_read()
            self._guard(self._reconcile_pending)
            self._guard(self._replan_last)
            if self._rotate.is_set():
                self._guard(self._rotate_key)
            now = time.monotonic()
            if now >= next_resync:
                self._request_read()
                self.resync()
                next_resync = now + self.resync_interval
            if now >= next_status or self._status_now.is_set():
                self._status_now.clear()
                self._guard(self.refresh_status)
                next_status = now + self.status_interval

    @staticmethod
    def _guard(fn: Callable[[], object]) -> None:
        # One failed pass must never end the loop: the next one starts from scratch.
        try:
            fn()
        except StoreUnavailableError as e:
            # Already reported once per outage (and in the status): no traceback each pass.
            log.debug("%s: %s; will retry", getattr(fn, "__name__", "engine step"), e)
        except Exception:
            log.exception("%s failed; will retry", getattr(fn, "__name__", "engine step"))

    def stop(self) -> None:
        """Stop the loop; tunnels stay up (a restart must not drop traffic)."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(5)
        # Not waiting out a hung store call: its thread is a daemon and does no harm.
        deadline = time.monotonic() + 1.0
        for calls in (self._calls, self._status_calls):
            calls.stop(wait=max(0.0, deadline - time.monotonic()))
        if self.health is not None:
            self.health.stop()


def _ha_status(role: Role) -> HAStatus:
    """Submariner's haStatus: active, or passive (which is also what a gateway that does not
    know its role reports: it is not acting as the active one)."""
    return HAStatus.ACTIVE if role is Role.ACTIVE else HAStatus.PASSIVE
