"""The engine: level-triggered reconcile of the store's endpoints into cables.

One thread does all driver calls (the driver contract wants them serialised): it wakes on
a store change, on the periodic resync and on the status timer. Everything else (the HTTP
metrics server, `wgcable show`) reads the last status it published.
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
    KnowsInstalled,
    Resyncable,
    SyncAware,
)
from wgcable.cable.remote import EndpointRejectedError, health_check_target, shown
from wgcable.cable.types import (
    Connection,
    ConnectionStatus,
    Endpoint,
    GatewayStatus,
    HAStatus,
    NATEndpointInfo,
)
from wgcable.engine import plan as planning
from wgcable.engine.health import HealthChecker
from wgcable.store.base import EndpointStore, StoreUnavailableError

log = logging.getLogger(__name__)

# Our endpoint edited again within RESTORE_BACKOFF_MAX of our last restore means another
# writer keeps changing it: restores then back off (1 s, doubling, up to the maximum), so
# that two writers never fight at full speed.
RESTORE_BACKOFF_MAX = 60.0


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
        self.watch_retry_interval = 1.0
        self._applied: dict[str, NATEndpointInfo] = {}  # what the driver was told, by cluster
        self._rejected: set[str] = set()
        self._retry_all = False
        self._handshaken: set[str] = set()  # clusters whose tunnel has had a handshake
        self._health_refused: dict[str, str] = {}  # cluster -> why its health check IP is not
        self._problems: dict[str, str] = {}
        self._store_problem = ""  # why the store could not be read, while it cannot
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._status = GatewayStatus(version=version, ha_status=HAStatus.ACTIVE,
                                     local_endpoint=local)
        self.established: dict[str, float] = {}  # cluster -> epoch when it became connected
        self._synced = False  # a reconcile succeeded since start: stale peers may go
        self._store_problem = ""  # why the store is unusable now ("" while it is fine)
        self._status_write_failing = False
        self._restores = 0  # restores of our edited endpoint, each soon after the last
        self._last_restore = -RESTORE_BACKOFF_MAX
        self._next_restore = 0.0  # monotonic time before which we do not restore again
        self._own_problem = ""  # for the gateway status, while our endpoint is contested
        self.clock: Callable[[], float] = time.monotonic

    # --- reconcile ------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Read the whole store, connect what is new or changed, disconnect what is gone.

        A store that cannot be read changes nothing (the tunnels stay as they are): the
        error is raised, and reported in the gateway status until a read succeeds."""
        try:
            snap = self.store.snapshot()
        except Exception as e:
            problem = f"store unavailable: {e}"
            if problem != self._store_problem:
                log.warning("%s; the tunnels stay as they are", problem)
            self._store_problem = problem
            if isinstance(e, StoreUnavailableError):
                raise
            raise StoreUnavailableError(problem) from e
        if self._store_problem:
            log.info("the store is readable again")
            self._store_problem = ""
        self._restore_own(snap.endpoints.get(self.local.object_name()))
        p = planning.plan(self.local, snap)
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
                # driver everything again (connecting is idempotent).
                self._retry_all = True
                raise
            self._retry_all = False
        self._update_health_targets()
        if not self._synced:
            self._synced = True
            if isinstance(self.driver, SyncAware):
                self.driver.mark_synced()  # all connected: stale peers may go

    def _publish(self) -> bool:
        try:
            self.store.publish(self.local)
        except Exception as exc:
            log.warning("publishing our endpoint %s failed (will retry): %s",
                        self.local.object_name(), exc)
            return False
        return True

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
            if self._own_problem and now - self._last_restore >= RESTORE_BACKOFF_MAX:
                log.info("our endpoint %s has stayed ours", name)
                self._own_problem = ""
            return
        if now < self._next_restore:
            return
        if published is None:
            log.warning("our endpoint %s is missing from the store; publishing it again", name)
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
        return c

    def refresh_status(self) -> GatewayStatus:
        raw = self.driver.get_connections()
        before = set(self._handshaken)
        self._handshaken |= {c.endpoint.cluster_id for c in raw
                             if c.status == ConnectionStatus.CONNECTED}
        if self._handshaken != before:
            self._update_health_targets()
        conns = [self._with_health(c) for c in raw]
        now = time.time()
        for c in conns:
            cid = c.endpoint.cluster_id
            if c.status == ConnectionStatus.CONNECTED:
                self.established.setdefault(cid, now)
            else:
                self.established.pop(cid, None)
        for cid in list(self.established):
            if cid not in {c.endpoint.cluster_id for c in conns}:
                del self.established[cid]
        problems = [f"{k}: {v}" for k, v in sorted(self._problems.items())]
        # A store may know it is unreachable before a read fails (its watch broke).
        store_problem = self._store_problem or (
            f"store unavailable: {p}" if (p := getattr(self.store, "problem", "")) else "")
        failure = "; ".join([*filter(None, [store_problem, self._own_problem]), *problems])
        status = GatewayStatus(
            version=self.version, ha_status=HAStatus.ACTIVE, local_endpoint=self.local,
            status_failure=failure, connections=conns)
        with self._lock:
            self._status = status
        try:
            self.store.write_status(self.hostname, status)
        except Exception as exc:
            # Once per outage: the status is rewritten every few seconds.
            if not self._status_write_failing:
                log.warning("writing the gateway status failed (will retry): %s", exc)
            self._status_write_failing = True
        else:
            self._status_write_failing = False
        if self.on_status is not None:
            self.on_status(status)
        return status

    @property
    def status(self) -> GatewayStatus:
        with self._lock:
            return self._status

    # --- the loop -------------------------------------------------------------------------------

    def start(self) -> None:
        """Publish our endpoint, connect everything known, then run in the background."""
        # Neither step is fatal: with the store unreachable, the adopted tunnels stay as
        # they are (no stale-peer removal before a reconcile succeeded) until it is back.
        self._publish()
        self._guard(self.reconcile)
        if self.health is not None:
            self.health.start()
        self.refresh_status()
        watcher = threading.Thread(target=self._watch, name="store-watch", daemon=True)
        loop = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._threads = [watcher, loop]
        for t in self._threads:
            t.start()

    def _watch(self) -> None:
        # A watch that fails (a lost store connection) is started again: without it, changes
        # would only be seen at the periodic resync.
        while True:
            try:
                self.store.watch(self._dirty.set, self._stop)
                return
            except Exception:
                log.exception("watching the store failed; watching again in %.1f s",
                              self.watch_retry_interval)
            self._dirty.set()  # changes may have been missed meanwhile
            if self._stop.wait(self.watch_retry_interval):
                return

    def _loop(self) -> None:
        next_resync = time.monotonic() + self.resync_interval
        next_status = time.monotonic() + self.status_interval
        while not self._stop.is_set():
            timeout = max(0.0, min(next_resync, next_status) - time.monotonic())
            if self._dirty.wait(timeout):
                self._dirty.clear()
                if self._stop.is_set():
                    break
                self._guard(self.reconcile)
            now = time.monotonic()
            if now >= next_resync:
                self._guard(self.reconcile)
                self.resync()
                next_resync = now + self.resync_interval
            if now >= next_status:
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
        self._dirty.set()
        for t in self._threads:
            t.join(5)
        if self.health is not None:
            self.health.stop()
