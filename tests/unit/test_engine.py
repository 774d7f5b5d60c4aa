"""The engine: the pure plan (which IP, one endpoint per cluster, what changed), reconcile
against a fake driver, and the background loop over a fake store.

No root, no sockets, no devices: the store is a dict, the driver a recorder that refuses
overlapping subnets as the WireGuard driver does, and the health checker a table of results.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest

from wgcable.cable.remote import EndpointRejectedError
from wgcable.cable.types import (
    Connection,
    ConnectionStatus,
    Endpoint,
    GatewayStatus,
    LatencyRTT,
    NATEndpointInfo,
)
from wgcable.engine import plan as planning
from wgcable.engine.engine import Engine
from wgcable.engine.health import HealthChecker, HealthResult
from wgcable.store.base import EndpointStore, Snapshot, StoreUnavailableError

LOCAL_ID = "local"

# --- helpers ----------------------------------------------------------------------------------


def make_ep(
    cluster: str,
    *,
    subnets: list[str] | None = None,
    private_ip: str = "",
    public_ip: str = "",
    nat: bool = False,
    hc: str = "",
    cable: str = "cable",
    key: str = "",
) -> Endpoint:
    n = sum(map(ord, cluster)) % 200 + 1
    if subnets is None:
        subnets = [f"10.{n}.0.0/16"]
        if hc:  # the health check IP is pinged only inside the cluster's own subnets
            subnets.append(str(ipaddress.ip_network(f"{hc}/16", strict=False)))
    return Endpoint(
        cluster_id=cluster,
        cable_name=cable,
        hostname=f"{cluster}-gw",
        subnets=subnets,
        private_ip=private_ip,
        public_ip=public_ip,
        nat_enabled=nat,
        health_check_ip=hc,
        backend="wireguard",
        backend_config={"publicKey": key or f"key-of-{cluster}"},
    )


def local_ep(**kw: Any) -> Endpoint:
    return make_ep(LOCAL_ID, subnets=["10.0.0.0/16"], private_ip="198.18.0.1", **kw)


def remote(cluster: str, **kw: Any) -> Endpoint:
    kw.setdefault("private_ip", f"198.18.1.{sum(map(ord, cluster)) % 250 + 1}")
    return make_ep(cluster, **kw)


def info_for(ep: Endpoint, use_ip: str = "", nat: bool = False) -> NATEndpointInfo:
    return NATEndpointInfo(endpoint=ep, use_ip=use_ip or ep.private_ip, use_nat=nat)


def wait_for(cond: Callable[[], object], timeout: float = 2.0, what: str = "") -> float:
    """Seconds it took for ``cond`` to hold; fails after ``timeout``."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or cond}")
        time.sleep(0.005)
    return time.monotonic() - t0


# --- fakes ------------------------------------------------------------------------------------


class FakeStore:
    """An EndpointStore over a dict; ``poke()`` is a change notice."""

    def __init__(self, endpoints: dict[str, Endpoint] | None = None) -> None:
        self._lock = threading.Lock()
        self._endpoints: dict[str, Endpoint] = dict(endpoints or {})
        self._errors: dict[str, str] = {}
        self.published: list[Endpoint] = []
        self.withdrawn: list[Endpoint] = []
        self.statuses: list[tuple[str, GatewayStatus]] = []
        self.snapshots = 0
        self.snapshot_error: Exception | None = None
        self.publish_error: Exception | None = None
        self.write_status_error: Exception | None = None
        self.watch_errors: list[Exception] = []  # raised by the next watch() calls, in order
        self.watch_calls = 0
        self._callbacks: list[Callable[[], None]] = []
        self.watching = threading.Event()

    # test side
    def put(self, name: str, ep: Endpoint, *, notify: bool = True) -> None:
        with self._lock:
            self._endpoints[name] = ep
        if notify:
            self.poke()

    def delete(self, name: str, *, notify: bool = True) -> None:
        with self._lock:
            del self._endpoints[name]
        if notify:
            self.poke()

    def set_error(self, name: str, message: str) -> None:
        with self._lock:
            self._errors[name] = message

    def poke(self) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for cb in callbacks:
            cb()

    def status_count(self) -> int:
        with self._lock:
            return len(self.statuses)

    # EndpointStore
    def publish(self, endpoint: Endpoint) -> None:
        with self._lock:
            if self.publish_error is not None:
                raise self.publish_error
            self.published.append(endpoint)
            self._endpoints[endpoint.object_name()] = endpoint  # as a real store would

    def withdraw(self, endpoint: Endpoint) -> None:
        self.withdrawn.append(endpoint)

    def snapshot(self) -> Snapshot:
        with self._lock:
            self.snapshots += 1
            if self.snapshot_error is not None:
                raise self.snapshot_error
            return Snapshot(dict(self._endpoints), dict(self._errors))

    def watch(self, changed: Callable[[], None], stop: threading.Event) -> None:
        with self._lock:
            self.watch_calls += 1
            if self.watch_errors:
                raise self.watch_errors.pop(0)
            self._callbacks.append(changed)
        self.watching.set()
        stop.wait()
        with self._lock:
            self._callbacks.remove(changed)

    def write_status(self, hostname: str, status: GatewayStatus) -> None:
        if self.write_status_error is not None:
            raise self.write_status_error
        with self._lock:
            self.statuses.append((hostname, status))

    def read_statuses(self) -> dict[str, GatewayStatus]:
        with self._lock:
            return dict(self.statuses)

    def close(self) -> None:
        pass


class FakeDriver:
    """Records calls. Refuses (EndpointRejectedError) clusters in ``refuse`` and endpoints whose
    subnets are held by another accepted cluster; a refused update keeps the old cable, as the
    WireGuard driver does. ``broken`` makes connect/disconnect raise RuntimeError (device trouble);
    ``fail_apply`` makes the end of a batch raise it."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.calls: list[tuple[str, str]] = []  # (what, cluster)
        self.accepted: dict[str, NATEndpointInfo] = {}
        self.errors: dict[str, tuple[NATEndpointInfo, str]] = {}
        self.status_override: dict[str, ConnectionStatus] = {}
        self.refuse: set[str] = set()
        self.broken = False
        self.bug: Exception | None = None  # raised by connect: a driver bug, not a refusal
        self.fail_apply = False
        self.get_connections_error: Exception | None = None
        self._depth = 0  # inside batch(): changes are applied at its end
        self.applies = 0
        self.synced = 0
        self.resyncs = 0
        self.resync_error: Exception | None = None
        self.on_device: set[str] = set()  # clusters whose tunnel exists (adopted at start)

    @property
    def name(self) -> str:
        return "fake"

    def init(self) -> None:
        pass

    def _owner(self, subnet: str, exclude: str) -> str | None:
        for cid, info in self.accepted.items():
            if cid != exclude and subnet in info.endpoint.subnets:
                return cid
        return None

    def connect_to_endpoint(self, info: NATEndpointInfo) -> str:
        cid = info.endpoint.cluster_id
        with self._lock:
            self.calls.append(("connect", cid))
            if self.broken:
                raise RuntimeError("device trouble")
            reason = "refused by the test" if cid in self.refuse else ""
            for s in info.endpoint.subnets:
                if owner := self._owner(s, cid):
                    reason = f"subnets {s} overlaps cluster {owner!r}"
            if self.bug is not None:
                raise self.bug
            if reason:
                self.errors[cid] = (info, reason)
                raise EndpointRejectedError(cid, "subnets", info.endpoint.subnets, reason)
            self.errors.pop(cid, None)
            self.accepted[cid] = info
            if self._depth == 0:
                self.applies += 1
            return info.use_ip

    def disconnect_from_endpoint(self, endpoint: Endpoint) -> None:
        cid = endpoint.cluster_id
        with self._lock:
            self.calls.append(("disconnect", cid))
            if self.broken:
                raise RuntimeError("device trouble")
            self.accepted.pop(cid, None)
            self.errors.pop(cid, None)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        with self._lock:
            self.calls.append(("batch", ""))
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            self.applies += 1
            if self.fail_apply:
                raise RuntimeError("applying the device failed")

    def installed(self, endpoints: list[Endpoint]) -> set[str]:
        return {ep.cluster_id for ep in endpoints} & self.on_device

    def mark_synced(self) -> None:
        with self._lock:
            self.calls.append(("synced", ""))
            self.synced += 1

    def resync(self) -> None:
        with self._lock:
            self.resyncs += 1
            if self.resync_error is not None:
                raise self.resync_error

    def get_connections(self) -> list[Connection]:
        with self._lock:
            if self.get_connections_error is not None:
                raise self.get_connections_error
            out: dict[str, Connection] = {}
            for cid, info in self.accepted.items():
                out[cid] = Connection(
                    endpoint=info.endpoint,
                    status=self.status_override.get(cid, ConnectionStatus.CONNECTED),
                    using_ip=info.use_ip, using_nat=info.use_nat)
            for cid, (info, reason) in self.errors.items():
                if cid not in out:
                    out[cid] = Connection(endpoint=info.endpoint, status=ConnectionStatus.ERROR,
                                          status_message=reason, using_ip=info.use_ip)
            return [out[c] for c in sorted(out)]

    def get_active_connections(self) -> list[Connection]:
        return [c for c in self.get_connections() if c.endpoint.cluster_id in self.accepted]

    def cleanup(self) -> None:
        pass

    # test side
    def connected(self, what: str = "connect") -> list[str]:
        with self._lock:
            return [cid for w, cid in self.calls if w == what]

    def reset_calls(self) -> None:
        with self._lock:
            self.calls.clear()


class FakeHealth:
    """The parts of HealthChecker the engine uses."""

    def __init__(self) -> None:
        self.targets: dict[str, str] | None = None
        self.results: dict[str, HealthResult] = {}
        self.started = 0
        self.stopped = 0

    def set_targets(self, targets: dict[str, str]) -> None:
        self.targets = dict(targets)

    def result(self, cluster_id: str) -> HealthResult | None:
        return self.results.get(cluster_id)

    def start(self) -> None:
        self.started += 1

    def stop(self, timeout: float = 1.0) -> None:
        self.stopped += 1


def make_engine(
    store: FakeStore,
    driver: FakeDriver | None = None,
    health: FakeHealth | None = None,
    **kw: Any,
) -> tuple[Engine, FakeDriver]:
    driver = driver or FakeDriver()
    engine = Engine(
        local_ep(), driver, cast(EndpointStore, store), hostname="gw-local",
        health=cast(HealthChecker, health) if health is not None else None, **kw)
    return engine, driver


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    """Engines started by a test; stopped at its end, pass or fail."""
    started: list[Engine] = []
    yield started
    for e in started:
        e.stop()


def start(engines: list[Engine], engine: Engine) -> Engine:
    engines.append(engine)
    engine.start()
    return engine


# --- plan.choose_ip -------------------------------------------------------------------------------


def test_choose_ip_nat_enabled_remote_is_reached_on_its_public_ip() -> None:
    r = remote("c2", private_ip="10.99.0.2", public_ip="203.0.113.2", nat=True)
    assert planning.choose_ip(local_ep(public_ip="203.0.113.1"), r) == ("203.0.113.2", True)


def test_choose_ip_behind_the_same_nat_uses_the_private_ip() -> None:
    r = remote("c2", private_ip="10.99.0.2", public_ip="203.0.113.9", nat=True)
    assert planning.choose_ip(local_ep(public_ip="203.0.113.9"), r) == ("10.99.0.2", False)


def test_choose_ip_without_nat_uses_the_private_ip() -> None:
    r = remote("c2", private_ip="10.99.0.2", public_ip="203.0.113.2", nat=False)
    assert planning.choose_ip(local_ep(), r) == ("10.99.0.2", False)


def test_choose_ip_falls_back_to_the_public_ip_when_there_is_no_private() -> None:
    r = remote("c2", private_ip="", public_ip="203.0.113.2", nat=False)
    assert planning.choose_ip(local_ep(), r) == ("203.0.113.2", False)


def test_choose_ip_nat_without_a_public_ip_uses_the_private_ip() -> None:
    r = remote("c2", private_ip="10.99.0.2", public_ip="", nat=True)
    assert planning.choose_ip(local_ep(), r) == ("10.99.0.2", False)


def test_choose_ip_local_without_public_ip_does_not_match_a_remote_without_one() -> None:
    # Two empty public IPs are not "the same NAT".
    r = remote("c2", private_ip="10.99.0.2", public_ip="", nat=True)
    assert planning.choose_ip(local_ep(public_ip=""), r) == ("10.99.0.2", False)


# --- plan.plan ----------------------------------------------------------------------------------


def test_plan_skips_our_own_cluster_and_its_sibling_gateways() -> None:
    snap = Snapshot(endpoints={
        "local-cable": local_ep(),
        "local-other": make_ep(LOCAL_ID, cable="other", private_ip="198.18.0.2"),
        "c2-cable": remote("c2"),
    })
    p = planning.plan(local_ep(), snap)
    assert list(p.connect) == ["c2"]
    assert p.problems == {}


def test_plan_one_endpoint_per_cluster_first_by_name_and_the_rest_reported() -> None:
    first = remote("c2", private_ip="198.18.1.1")
    second = remote("c2", private_ip="198.18.1.2", cable="b")
    snap = Snapshot(endpoints={"c2-z": second, "c2-a": first})
    p = planning.plan(local_ep(), snap)
    assert p.connect["c2"].endpoint is first
    assert list(p.problems) == ["c2-z"]
    assert "c2-a" in p.problems["c2-z"]
    assert "'c2'" in p.problems["c2-z"]


def test_plan_carries_the_store_errors_into_problems() -> None:
    snap = Snapshot(endpoints={"c2-cable": remote("c2")},
                    errors={"broken": "invalid JSON: Expecting value"})
    p = planning.plan(local_ep(), snap)
    assert p.problems == {"broken": "invalid JSON: Expecting value"}
    assert list(p.connect) == ["c2"]


def test_plan_does_not_modify_the_snapshot_errors() -> None:
    errors = {"broken": "bad"}
    snap = Snapshot(endpoints={"a": remote("c2"), "b": remote("c2", cable="x")}, errors=errors)
    planning.plan(local_ep(), snap)
    assert errors == {"broken": "bad"}


def test_plan_fills_use_ip_and_use_nat_per_endpoint() -> None:
    snap = Snapshot(endpoints={
        "c2": remote("c2", private_ip="10.99.0.2", public_ip="203.0.113.2", nat=True),
        "c3": remote("c3", private_ip="10.99.0.3"),
    })
    p = planning.plan(local_ep(), snap)
    assert (p.connect["c2"].use_ip, p.connect["c2"].use_nat) == ("203.0.113.2", True)
    assert (p.connect["c3"].use_ip, p.connect["c3"].use_nat) == ("10.99.0.3", False)


def test_plan_of_an_empty_store_is_empty() -> None:
    p = planning.plan(local_ep(), Snapshot())
    assert p.connect == {}
    assert p.problems == {}


# --- plan.changed -------------------------------------------------------------------------------


def test_changed_new_edited_unchanged_and_removed() -> None:
    a, b, c = remote("a"), remote("b"), remote("c")
    before = {"a": info_for(a), "b": info_for(b), "c": info_for(c)}
    b2 = remote("b", subnets=["10.250.0.0/16"])
    after = {"a": info_for(remote("a")), "b": info_for(b2), "d": info_for(remote("d"))}
    assert planning.changed(before, after) == (["b", "d"], ["c"])


def test_changed_notices_a_new_use_ip_or_nat_alone() -> None:
    a = remote("a", public_ip="203.0.113.2")
    before = {"a": info_for(a)}
    assert planning.changed(before, {"a": info_for(a, use_ip="203.0.113.2")}) == (["a"], [])
    assert planning.changed(before, {"a": info_for(a, nat=True)}) == (["a"], [])


def test_changed_outputs_are_sorted() -> None:
    after = {c: info_for(remote(c)) for c in ["z", "m", "a"]}
    assert planning.changed({}, after) == (["a", "m", "z"], [])
    assert planning.changed(after, {}) == ([], ["a", "m", "z"])


# --- Engine.reconcile ---------------------------------------------------------------------------


def test_reconcile_connects_new_endpoints_in_one_batch() -> None:
    store = FakeStore({"c2-cable": remote("c2"), "c3-cable": remote("c3")})
    engine, driver = make_engine(store)
    engine.reconcile()
    # The first successful pass also lets the driver drop stale peers.
    assert driver.calls == [("batch", ""), ("connect", "c2"), ("connect", "c3"), ("synced", "")]
    assert driver.applies == 1
    assert set(driver.accepted) == {"c2", "c3"}


def test_reconcile_does_not_resend_unchanged_endpoints() -> None:
    store = FakeStore({"c2-cable": remote("c2"), "c3-cable": remote("c3")})
    engine, driver = make_engine(store)
    engine.reconcile()
    driver.reset_calls()
    engine.reconcile()
    engine.reconcile()
    assert driver.calls == []
    assert store.snapshots == 3  # level-triggered: every pass reads the whole store


def test_reconcile_reconnects_an_edited_endpoint_only() -> None:
    store = FakeStore({"c2-cable": remote("c2"), "c3-cable": remote("c3")})
    engine, driver = make_engine(store)
    engine.reconcile()
    driver.reset_calls()
    edited = remote("c2", private_ip="198.18.9.9", subnets=["10.2.0.0/16", "10.202.0.0/16"])
    store.put("c2-cable", edited, notify=False)
    engine.reconcile()
    assert driver.calls == [("batch", ""), ("connect", "c2")]
    assert driver.accepted["c2"].endpoint == edited
    assert driver.accepted["c2"].use_ip == "198.18.9.9"


def test_reconcile_disconnects_a_removed_endpoint() -> None:
    store = FakeStore({"c2-cable": remote("c2"), "c3-cable": remote("c3")})
    engine, driver = make_engine(store)
    engine.reconcile()
    driver.reset_calls()
    store.delete("c3-cable", notify=False)
    engine.reconcile()
    assert driver.calls == [("batch", ""), ("disconnect", "c3")]
    assert set(driver.accepted) == {"c2"}


def test_reconcile_switches_to_the_next_endpoint_when_a_cluster_changes_gateway() -> None:
    store = FakeStore({"c2-a": remote("c2", private_ip="198.18.1.1"),
                       "c2-b": remote("c2", cable="b", private_ip="198.18.1.2")})
    engine, driver = make_engine(store)
    engine.reconcile()
    assert driver.accepted["c2"].use_ip == "198.18.1.1"
    driver.reset_calls()
    store.delete("c2-a", notify=False)
    engine.reconcile()
    assert driver.calls == [("batch", ""), ("connect", "c2")]  # an update, no disconnect
    assert driver.accepted["c2"].use_ip == "198.18.1.2"


def test_reconcile_logs_a_problem_once_until_it_changes(caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore()
    store.set_error("broken", "invalid JSON")
    engine, _ = make_engine(store)
    with caplog.at_level(logging.WARNING, logger="wgcable.engine.engine"):
        engine.reconcile()
        engine.reconcile()
        store.set_error("broken", "still invalid JSON")
        engine.reconcile()
    lines = [r.getMessage() for r in caplog.records if "broken" in r.getMessage()]
    assert lines == ["store entry broken: invalid JSON",
                     "store entry broken: still invalid JSON"]


def test_reconcile_does_not_retry_a_refused_endpoint_that_did_not_change() -> None:
    store = FakeStore({"c2-cable": remote("c2"), "c3-cable": remote("c3")})
    engine, driver = make_engine(store)
    driver.refuse = {"c3"}
    engine.reconcile()
    assert driver.connected() == ["c2", "c3"]
    driver.reset_calls()
    engine.reconcile()
    engine.reconcile()
    assert driver.calls == []
    conns = {c.endpoint.cluster_id: c for c in driver.get_connections()}
    assert conns["c3"].status == ConnectionStatus.ERROR


def test_alerts_refused_clusters_are_in_the_status_for_the_metrics() -> None:
    store = FakeStore({"c2-cable": remote("c2"), "c3-cable": remote("c3")})
    engine, driver = make_engine(store)
    driver.refuse = {"c3"}
    engine.reconcile()
    assert engine.refused == frozenset()  # as of the last status: none yet
    engine.refresh_status()
    assert engine.refused == {"c3"}
    driver.refuse = set()
    store.put("c3-cable", remote("c3", private_ip="198.18.7.7"), notify=False)
    engine.reconcile()
    engine.refresh_status()
    assert engine.refused == frozenset()


def test_reconcile_retries_a_refused_endpoint_when_it_changes() -> None:
    store = FakeStore({"c2-cable": remote("c2"), "c3-cable": remote("c3")})
    engine, driver = make_engine(store)
    driver.refuse = {"c3"}
    engine.reconcile()
    driver.refuse = set()
    driver.reset_calls()
    store.put("c3-cable", remote("c3", private_ip="198.18.7.7"), notify=False)
    engine.reconcile()
    assert driver.connected() == ["c3"]
    assert "c3" in driver.accepted


def test_reconcile_retries_refused_endpoints_when_the_conflicting_cluster_leaves() -> None:
    # c3 claims c2's subnet: refused while c2 holds it, accepted once c2 has gone.
    store = FakeStore({"c2-cable": remote("c2", subnets=["10.2.0.0/16"]),
                       "c3-cable": remote("c3", subnets=["10.2.0.0/16"]),
                       "c4-cable": remote("c4")})
    engine, driver = make_engine(store)
    engine.reconcile()
    assert set(driver.accepted) == {"c2", "c4"}
    assert "c3" in driver.errors
    driver.reset_calls()
    store.delete("c2-cable", notify=False)
    engine.reconcile()
    assert driver.calls == [("batch", ""), ("disconnect", "c2"), ("connect", "c3")]
    assert set(driver.accepted) == {"c3", "c4"}


def test_reconcile_retries_refused_endpoints_when_the_conflicting_cluster_moves_away() -> None:
    # c2 gives up the subnet c3 wants (an edit, not a removal): c3 must get it.
    store = FakeStore({"c2-cable": remote("c2", subnets=["10.2.0.0/16"]),
                       "c3-cable": remote("c3", subnets=["10.2.0.0/16"])})
    engine, driver = make_engine(store)
    engine.reconcile()
    assert "c3" in driver.errors
    store.put("c2-cable", remote("c2", subnets=["10.22.0.0/16"]), notify=False)
    engine.reconcile()
    assert set(driver.accepted) == {"c2", "c3"}
    assert driver.errors == {}
    driver.reset_calls()
    engine.reconcile()
    assert driver.calls == []  # and it stays settled


def test_reconcile_conflict_freed_and_refused_endpoint_edited_in_one_pass() -> None:
    # Both change at once; c2 sorts before c3, so c2 is tried while c3 still holds the subnet.
    store = FakeStore({"c3-cable": remote("c3", subnets=["10.3.0.0/16"])})
    engine, driver = make_engine(store)
    engine.reconcile()
    store.put("c2-cable", remote("c2", subnets=["10.3.0.0/16"]), notify=False)
    engine.reconcile()
    assert "c2" in driver.errors
    store.put("c3-cable", remote("c3", subnets=["10.33.0.0/16"]), notify=False)
    store.put("c2-cable", remote("c2", subnets=["10.3.0.0/16"], private_ip="198.18.5.5"),
              notify=False)
    engine.reconcile()
    assert set(driver.accepted) == {"c2", "c3"}


def test_reconcile_new_endpoints_do_not_retry_refused_ones() -> None:
    # Only a cluster leaving or changing can free what a refused endpoint wanted: a flood of
    # newcomers must not re-validate every refused entry on every pass.
    store = FakeStore({"c2-cable": remote("c2", subnets=["10.2.0.0/16"]),
                       "c3-cable": remote("c3", subnets=["10.2.0.0/16"])})
    engine, driver = make_engine(store)
    engine.reconcile()
    driver.reset_calls()
    store.put("c4-cable", remote("c4"), notify=False)
    engine.reconcile()
    assert driver.connected() == ["c4"]


def test_reconcile_connect_failure_retries_that_cluster_next_pass() -> None:
    store = FakeStore({"c2-cable": remote("c2"), "c3-cable": remote("c3")})
    engine, driver = make_engine(store)
    engine.reconcile()
    store.put("c4-cable", remote("c4"), notify=False)
    driver.broken = True
    engine.reconcile()  # the failure is logged, not raised
    assert "c4" not in driver.accepted
    driver.broken = False
    driver.reset_calls()
    engine.reconcile()
    assert driver.connected() == ["c4"]
    assert "c4" in driver.accepted


def test_reconcile_device_error_retries_the_whole_plan_next_pass() -> None:
    store = FakeStore({"c2-cable": remote("c2"), "c3-cable": remote("c3")})
    engine, driver = make_engine(store)
    engine.reconcile()
    store.put("c4-cable", remote("c4"), notify=False)
    driver.fail_apply = True
    with pytest.raises(RuntimeError, match="applying the device failed"):
        engine.reconcile()
    driver.fail_apply = False
    driver.reset_calls()
    engine.reconcile()
    # Everything is told again, not just what changed: the device may have lost any of it.
    assert driver.connected() == ["c2", "c3", "c4"]
    driver.reset_calls()
    engine.reconcile()
    assert driver.calls == []  # and once it succeeded, back to minimal passes


def test_reconcile_device_error_with_nothing_left_to_connect_still_reapplies() -> None:
    # The last remote leaves and applying that fails: the next pass must apply again.
    store = FakeStore({"c2-cable": remote("c2")})
    engine, driver = make_engine(store)
    engine.reconcile()
    store.delete("c2-cable", notify=False)
    driver.fail_apply = True
    with pytest.raises(RuntimeError):
        engine.reconcile()
    driver.fail_apply = False
    applies = driver.applies
    engine.reconcile()
    assert driver.applies == applies + 1
    driver.reset_calls()
    engine.reconcile()
    assert driver.calls == []


def test_reconcile_disconnect_failure_does_not_stop_the_rest() -> None:
    store = FakeStore({"c2-cable": remote("c2"), "c3-cable": remote("c3")})
    engine, driver = make_engine(store)
    engine.reconcile()
    store.delete("c2-cable", notify=False)
    store.put("c4-cable", remote("c4"), notify=False)
    driver.broken = True
    engine.reconcile()
    assert driver.connected("disconnect") == ["c2"]
    assert "c4" in driver.connected()


def test_reconcile_store_error_raises_and_changes_nothing() -> None:
    store = FakeStore({"c2-cable": remote("c2")})
    engine, driver = make_engine(store)
    engine.reconcile()
    driver.reset_calls()
    store.snapshot_error = OSError("store unreadable")
    with pytest.raises(StoreUnavailableError, match="store unreadable"):
        engine.reconcile()
    assert driver.calls == []  # an unreadable store is not an empty one


def test_a_tunnel_already_installed_keeps_its_subnet_against_a_newcomer_that_sorts_first() -> None:
    # After a restart both come at once; "a-intruder" sorts first but cluster c2 was there.
    store = FakeStore({"c2-cable": remote("c2", subnets=["10.2.0.0/16"]),
                       "a-cable": remote("a-intruder", subnets=["10.2.0.0/16"])})
    engine, driver = make_engine(store)
    driver.on_device = {"c2"}
    engine.reconcile()
    assert list(driver.accepted) == ["c2"]
    assert "overlaps cluster 'c2'" in driver.errors["a-intruder"][1]


def test_an_unavailable_store_is_reported_until_it_reads_again() -> None:
    store = FakeStore({"c2-cable": remote("c2")})
    engine, _ = make_engine(store)
    engine.reconcile()
    store.snapshot_error = OSError("endpoints: not a directory")
    with pytest.raises(StoreUnavailableError, match="not a directory"):
        engine.reconcile()
    failure = engine.refresh_status().status_failure
    assert failure == "store unavailable: endpoints: not a directory"
    assert [c.endpoint.cluster_id for c in engine.status.connections] == ["c2"]
    store.snapshot_error = None
    engine.reconcile()
    assert engine.refresh_status().status_failure == ""


def test_our_endpoint_missing_from_the_store_is_published_again() -> None:
    store = FakeStore({"c2-cable": remote("c2")})
    engine, _ = make_engine(store)
    engine.reconcile()
    assert [e.cluster_id for e in store.published] == [LOCAL_ID]
    engine.reconcile()  # there now: not published again
    assert len(store.published) == 1
    store.delete(local_ep().object_name(), notify=False)
    engine.reconcile()
    assert [e.cluster_id for e in store.published] == [LOCAL_ID, LOCAL_ID]


def test_reconcile_without_batch_support_still_works() -> None:
    class Plain:
        def __init__(self) -> None:
            self.connected: list[str] = []

        name = "plain"

        def init(self) -> None: ...
        def connect_to_endpoint(self, info: NATEndpointInfo) -> str:
            self.connected.append(info.endpoint.cluster_id)
            return info.use_ip

        def disconnect_from_endpoint(self, endpoint: Endpoint) -> None: ...
        def get_connections(self) -> list[Connection]:
            return []

        def get_active_connections(self) -> list[Connection]:
            return []

        def cleanup(self) -> None: ...

    driver = Plain()
    engine = Engine(local_ep(), driver, cast(EndpointStore, FakeStore({"c2": remote("c2")})),
                    hostname="gw")
    engine.reconcile()
    engine.resync()  # no resync on this driver: a no-op
    assert driver.connected == ["c2"]


def test_health_targets_accepted_clusters_after_their_first_handshake_only() -> None:
    store = FakeStore({
        "c2-cable": remote("c2", hc="10.2.0.1"),
        "c3-cable": remote("c3", hc="10.3.0.1"),  # refused
        "c4-cable": remote("c4"),  # no health check IP
        "c5-cable": remote("c5", hc="10.5.0.1"),  # no handshake yet
    })
    health = FakeHealth()
    engine, driver = make_engine(store, health=health)
    driver.refuse = {"c3"}
    driver.status_override["c5"] = ConnectionStatus.CONNECTING
    engine.reconcile()
    # Nothing is pinged into a tunnel before its first handshake.
    assert health.targets == {}
    engine.refresh_status()
    assert health.targets == {"c2": "10.2.0.1"}
    # Once it has had a handshake, a cluster stays a target when its status drops.
    driver.status_override["c2"] = ConnectionStatus.ERROR
    engine.refresh_status()
    assert health.targets == {"c2": "10.2.0.1"}
    store.delete("c2-cable", notify=False)
    engine.reconcile()
    assert health.targets == {}


def test_reconcile_health_target_follows_an_edited_health_check_ip() -> None:
    store = FakeStore({"c2-cable": remote("c2", hc="10.2.0.1")})
    health = FakeHealth()
    engine, _ = make_engine(store, health=health)
    engine.reconcile()
    engine.refresh_status()
    store.put("c2-cable", remote("c2", hc="10.2.0.99"), notify=False)
    engine.reconcile()
    assert health.targets == {"c2": "10.2.0.99"}


@pytest.mark.parametrize("hc", ["8.8.8.8", "198.18.0.1", "10.3.0.1", "fe80::1%eth0",
                                "10.2.0.1%x\nremove=true", "not an ip"])
def test_hostile_health_check_ip_outside_its_subnets_is_refused_not_pinged(hc: str) -> None:
    """A remote may name any address as its health check IP: a neighbour of ours, the API
    server. Only one inside the remote's own subnets (what its tunnel carries) is pinged."""
    store = FakeStore({"c2-cable": remote("c2", subnets=["10.2.0.0/16"], hc=hc),
                       "c4-cable": remote("c4", subnets=["10.4.0.0/16"], hc="10.4.0.1")})
    health = FakeHealth()
    engine, _ = make_engine(store, health=health)
    engine.reconcile()
    st = engine.refresh_status()
    assert health.targets == {"c4": "10.4.0.1"}
    [c2] = [c for c in st.connections if c.endpoint.cluster_id == "c2"]
    assert c2.status == ConnectionStatus.CONNECTED  # the tunnel itself is fine
    assert "health check refused" in c2.status_message
    assert "healthCheckIP" in c2.status_message
    assert c2.status_message.isprintable()


def test_hostile_health_check_ip_is_pinged_in_canonical_form() -> None:
    store = FakeStore({"c2-cable": remote("c2", subnets=["fd00:2::/64"], hc="FD00:2:0::0001")})
    health = FakeHealth()
    engine, _ = make_engine(store, health=health)
    engine.reconcile()
    engine.refresh_status()
    assert health.targets == {"c2": "fd00:2::1"}


def test_hostile_health_check_ip_outside_subnets_sends_no_icmp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real checker over a faked socket: echoes go to the cluster whose health check IP
    is inside its subnets, none to the one that names an address elsewhere."""
    from test_health import _fake_sockets

    wires = _fake_sockets(monkeypatch, {"10.4.0.1": "answer", "198.18.0.1": "answer"})
    store = FakeStore({"c2-cable": remote("c2", subnets=["10.2.0.0/16"], hc="198.18.0.1"),
                       "c4-cable": remote("c4", subnets=["10.4.0.0/16"], hc="10.4.0.1")})
    checker = HealthChecker(interval=0.02)
    engine, _ = make_engine(store, health=cast(FakeHealth, checker))
    engine.reconcile()
    engine.refresh_status()
    with checker:
        wait_for(lambda: len(wires[socket.AF_INET].sent) >= 3 if socket.AF_INET in wires
                 else False, what="echoes to c4")
    assert {ip for ip, _ in wires[socket.AF_INET].sent} == {"10.4.0.1"}


# --- status -------------------------------------------------------------------------------------


def test_refresh_status_reports_connections_problems_and_calls_back() -> None:
    store = FakeStore({"c2-cable": remote("c2")})
    store.set_error("broken", "invalid JSON")
    seen: list[GatewayStatus] = []
    engine, _ = make_engine(store, on_status=seen.append, version="1.2.3")
    engine.reconcile()
    st = engine.refresh_status()
    assert [c.endpoint.cluster_id for c in st.connections] == ["c2"]
    assert st.status_failure == "broken: invalid JSON"
    assert st.version == "1.2.3"
    assert st.local_endpoint.cluster_id == LOCAL_ID
    assert engine.status is st
    assert seen == [st]
    assert store.statuses == [("gw-local", st)]


def test_refresh_status_survives_a_failing_store_write() -> None:
    store = FakeStore({"c2-cable": remote("c2")})
    seen: list[GatewayStatus] = []
    engine, _ = make_engine(store, on_status=seen.append)
    engine.reconcile()
    store.write_status_error = OSError("disk full")
    st = engine.refresh_status()
    assert engine.status is st
    assert seen == [st]  # the local status file is still written


def _health(healthy: bool, losses: int = 0, rtt: float = 0.002) -> HealthResult:
    return HealthResult(latency=LatencyRTT(last=rtt, min=rtt, average=rtt, max=rtt),
                        consecutive_losses=losses, healthy=healthy, last_reply_age=0.5)


def test_status_merges_latency_from_health_results() -> None:
    store = FakeStore({"c2-cable": remote("c2", hc="10.2.0.1"),
                       "c3-cable": remote("c3", hc="10.3.0.1")})
    health = FakeHealth()
    engine, _ = make_engine(store, health=health)
    engine.reconcile()
    health.results["c2"] = _health(True, rtt=0.0015)
    st = engine.refresh_status()
    by_id = {c.endpoint.cluster_id: c for c in st.connections}
    assert by_id["c2"].latency_rtt == LatencyRTT(last=0.0015, min=0.0015, average=0.0015,
                                                 max=0.0015)
    assert by_id["c2"].status == ConnectionStatus.CONNECTED
    assert by_id["c3"].latency_rtt is None  # no result yet


def test_status_connected_but_unhealthy_is_an_error_naming_the_health_check_ip() -> None:
    store = FakeStore({"c2-cable": remote("c2", hc="10.2.0.1")})
    health = FakeHealth()
    engine, _ = make_engine(store, health=health)
    engine.reconcile()
    health.results["c2"] = _health(False, losses=6)
    [c] = engine.refresh_status().connections
    assert c.status == ConnectionStatus.ERROR
    assert "10.2.0.1" in c.status_message
    assert "6" in c.status_message
    assert c.latency_rtt is not None


def test_status_unhealthy_does_not_override_a_connection_that_is_not_connected() -> None:
    store = FakeStore({"c2-cable": remote("c2", hc="10.2.0.1")})
    health = FakeHealth()
    engine, driver = make_engine(store, health=health)
    engine.reconcile()
    driver.status_override["c2"] = ConnectionStatus.CONNECTING
    health.results["c2"] = _health(False, losses=9)
    [c] = engine.refresh_status().connections
    assert c.status == ConnectionStatus.CONNECTING
    assert c.status_message == ""


def test_established_is_set_on_connect_kept_and_cleared_on_loss() -> None:
    store = FakeStore({"c2-cable": remote("c2"), "c3-cable": remote("c3")})
    engine, driver = make_engine(store)
    engine.reconcile()
    before = time.time()
    engine.refresh_status()
    first = dict(engine.established)
    assert set(first) == {"c2", "c3"}
    assert first["c2"] >= before
    time.sleep(0.01)
    engine.refresh_status()
    assert engine.established == first  # still the time it came up
    driver.status_override["c2"] = ConnectionStatus.ERROR
    engine.refresh_status()
    assert set(engine.established) == {"c3"}
    driver.status_override.clear()
    engine.refresh_status()
    assert engine.established["c2"] > first["c2"]  # a new session
    store.delete("c3-cable", notify=False)
    engine.reconcile()
    engine.refresh_status()
    assert set(engine.established) == {"c2"}


def test_established_is_cleared_when_health_turns_a_connection_to_error() -> None:
    store = FakeStore({"c2-cable": remote("c2", hc="10.2.0.1")})
    health = FakeHealth()
    engine, _ = make_engine(store, health=health)
    engine.reconcile()
    engine.refresh_status()
    assert "c2" in engine.established
    health.results["c2"] = _health(False, losses=6)
    engine.refresh_status()
    assert engine.established == {}


# --- the loop -----------------------------------------------------------------------------------

SLOW = 60.0  # an interval that never fires during a test


def test_start_publishes_reconciles_then_marks_synced(engines: list[Engine]) -> None:
    store = FakeStore({"c2-cable": remote("c2", hc="10.2.0.1"), "c3-cable": remote("c3")})
    health = FakeHealth()
    engine, driver = make_engine(store, health=health, resync_interval=SLOW,
                                 status_interval=SLOW)
    start(engines, engine)
    assert [e.cluster_id for e in store.published] == [LOCAL_ID]
    # Stale peers may only go once every known endpoint has been connected.
    assert driver.calls == [("batch", ""), ("connect", "c2"), ("connect", "c3"), ("synced", "")]
    assert health.started == 1
    assert health.targets == {"c2": "10.2.0.1"}
    # A status right away, not after the first interval (written on the store thread).
    wait_for(lambda: store.status_count() == 1, 2, "the first status in the store")
    assert [c.endpoint.cluster_id for c in engine.status.connections] == ["c2", "c3"]


def test_the_loop_reacts_to_a_store_change_quickly(engines: list[Engine]) -> None:
    store = FakeStore({"c2-cable": remote("c2")})
    engine, driver = make_engine(store, resync_interval=SLOW, status_interval=SLOW)
    start(engines, engine)
    assert store.watching.wait(2)
    store.put("c3-cable", remote("c3"))
    took = wait_for(lambda: "c3" in driver.accepted, 2, "c3 to connect")
    assert took < 0.5
    store.delete("c2-cable")
    took = wait_for(lambda: "c2" not in driver.accepted, 2, "c2 to disconnect")
    assert took < 0.5


def test_a_status_write_under_way_does_not_hold_a_change_back(engines: list[Engine]) -> None:
    """At 1000 connections the API server takes up to a second over a status write; a
    store read must not queue behind it."""
    release = threading.Event()
    writing = threading.Event()

    class SlowStatusStore(FakeStore):
        def write_status(self, hostname: str, status: GatewayStatus) -> None:
            writing.set()
            release.wait(10)
            super().write_status(hostname, status)

    store = SlowStatusStore({"c2-cable": remote("c2")})
    engine, driver = make_engine(store, resync_interval=SLOW, status_interval=0.05)
    try:
        start(engines, engine)
        assert store.watching.wait(2)
        assert writing.wait(2)  # the loop's status write, held by the store
        store.put("c3-cable", remote("c3"))
        wait_for(lambda: "c3" in driver.accepted, 2, "c3 to connect during the write")
        assert not release.is_set()
    finally:
        release.set()


def test_the_loop_resyncs_on_its_interval(engines: list[Engine]) -> None:
    store = FakeStore({"c2-cable": remote("c2")})
    engine, driver = make_engine(store, resync_interval=0.05, status_interval=SLOW)
    start(engines, engine)
    wait_for(lambda: driver.resyncs >= 3, 2, "three resyncs")
    # A resync also re-reads the store (a missed notice is caught up), without re-sending.
    wait_for(lambda: store.snapshots >= 4, 2, "a read per resync")
    assert driver.connected() == ["c2"]


def test_the_resync_pass_reconciles_a_change_nobody_announced(engines: list[Engine]) -> None:
    store = FakeStore({"c2-cable": remote("c2")})
    engine, driver = make_engine(store, resync_interval=0.1, status_interval=SLOW)
    start(engines, engine)
    store.put("c3-cable", remote("c3"), notify=False)
    wait_for(lambda: "c3" in driver.accepted, 2, "c3 to connect")


def test_the_loop_writes_status_on_its_interval(engines: list[Engine]) -> None:
    store = FakeStore({"c2-cable": remote("c2")})
    seen: list[GatewayStatus] = []
    engine, _ = make_engine(store, resync_interval=SLOW, status_interval=0.05,
                            on_status=seen.append)
    start(engines, engine)
    wait_for(lambda: store.status_count() >= 4, 2, "four statuses")
    assert len(seen) >= 4
    assert {h for h, _ in store.statuses} == {"gw-local"}


def test_status_interval_is_kept_while_the_store_keeps_changing(engines: list[Engine]) -> None:
    store = FakeStore({"c2-cable": remote("c2")})
    engine, _ = make_engine(store, resync_interval=SLOW, status_interval=0.1)
    start(engines, engine)
    assert store.watching.wait(2)
    n = store.status_count()
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:  # a store that never stops changing
        store.poke()
        time.sleep(0.005)
    assert store.status_count() >= n + 3


def test_stop_ends_the_threads_promptly(engines: list[Engine]) -> None:
    store = FakeStore({"c2-cable": remote("c2")})
    health = FakeHealth()
    engine, _ = make_engine(store, health=health, resync_interval=SLOW, status_interval=SLOW)
    start(engines, engine)
    assert store.watching.wait(2)
    threads = list(engine._threads)
    assert all(t.is_alive() for t in threads)
    t0 = time.monotonic()
    engine.stop()
    assert time.monotonic() - t0 < 1
    assert not any(t.is_alive() for t in threads)
    assert health.stopped == 1
    assert store.withdrawn == []  # stopping leaves our endpoint (and the tunnels) in place


def test_a_failing_pass_never_kills_the_loop(engines: list[Engine]) -> None:
    store = FakeStore({"c2-cable": remote("c2")})
    engine, driver = make_engine(store, resync_interval=0.05, status_interval=0.05)
    start(engines, engine)
    assert store.watching.wait(2)
    store.snapshot_error = OSError("store unreadable")
    driver.get_connections_error = RuntimeError("device gone")
    driver.resync_error = RuntimeError("device gone")
    n = store.snapshots
    store.poke()
    wait_for(lambda: store.snapshots >= n + 3, 2, "failing passes")
    resyncs = driver.resyncs
    wait_for(lambda: driver.resyncs >= resyncs + 2, 2, "failing resyncs")
    store.snapshot_error = None
    driver.get_connections_error = None
    driver.resync_error = None
    store.put("c3-cable", remote("c3"))
    wait_for(lambda: "c3" in driver.accepted, 2, "c3 after the failures")
    statuses = store.status_count()
    wait_for(lambda: store.status_count() > statuses, 2, "statuses again")
    assert all(t.is_alive() for t in engine._threads)


def test_a_device_error_in_the_loop_is_retried_on_the_next_pass(engines: list[Engine]) -> None:
    store = FakeStore({"c2-cable": remote("c2")})
    engine, driver = make_engine(store, resync_interval=SLOW, status_interval=SLOW)
    start(engines, engine)
    assert store.watching.wait(2)
    driver.fail_apply = True
    store.put("c3-cable", remote("c3"))
    wait_for(lambda: ("connect", "c3") in driver.calls, 2, "the failed pass")
    driver.fail_apply = False
    driver.reset_calls()
    store.poke()
    wait_for(lambda: driver.connected() == ["c2", "c3"], 2, "everything told again")


def test_a_failing_watch_is_started_again(engines: list[Engine]) -> None:
    store = FakeStore({"c2-cable": remote("c2")})
    store.watch_errors = [ConnectionError("store connection lost")]
    engine, driver = make_engine(store, resync_interval=SLOW, status_interval=SLOW)
    engine.watch_retry_interval = 0.05
    start(engines, engine)
    assert store.watching.wait(2)
    assert store.watch_calls == 2
    store.put("c3-cable", remote("c3"))
    wait_for(lambda: "c3" in driver.accepted, 2, "c3 to connect")


def test_start_with_the_store_unavailable_keeps_everything_until_it_is_back(
    engines: list[Engine],
) -> None:
    # An agent restarted during a store outage must not mark itself synced (which drops the
    # adopted peers) before it has connected what the store holds; it waits for the store.
    store = FakeStore({"c2-cable": remote("c2")})
    store.snapshot_error = StoreUnavailableError("API server unreachable")
    store.publish_error = StoreUnavailableError("API server unreachable")
    engine, driver = make_engine(store, resync_interval=0.1, status_interval=SLOW)
    start(engines, engine)
    assert driver.synced == 0
    assert driver.accepted == {}
    assert "store unavailable: API server unreachable" in engine.status.status_failure
    time.sleep(0.3)  # a few failed resyncs
    assert driver.synced == 0
    store.snapshot_error = store.publish_error = None
    wait_for(lambda: driver.synced == 1 and "c2" in driver.accepted, 5, "sync after recovery")
    wait_for(lambda: [e.cluster_id for e in store.published] == [LOCAL_ID], 5, "publish")
    assert driver.calls.index(("connect", "c2")) < driver.calls.index(("synced", ""))


def test_our_endpoint_is_republished_when_it_goes_missing() -> None:
    store = FakeStore({"c2-cable": remote("c2")})
    engine, _ = make_engine(store)
    engine.reconcile()
    assert [e.cluster_id for e in store.published] == [LOCAL_ID]
    engine.reconcile()
    assert len(store.published) == 1  # present and equal: no write
    store.delete(engine.local.object_name(), notify=False)
    engine.reconcile()
    assert len(store.published) == 2


def test_status_write_failures_are_logged_once_per_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeStore()
    engine, _ = make_engine(store)
    store.write_status_error = StoreUnavailableError("API server unreachable")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            engine.refresh_status()
    assert sum("writing the gateway status failed" in r.message for r in caplog.records) == 1
    store.write_status_error = None
    engine.refresh_status()
    store.write_status_error = StoreUnavailableError("down again")
    engine.refresh_status()
    assert sum("writing the gateway status failed" in r.message for r in caplog.records) == 2


def test_reconcile_a_driver_bug_is_not_read_as_a_refusal() -> None:
    """A ValueError from a driver (a bug) is a failure to apply: the cluster is tried again
    on the next pass. Only EndpointRejectedError is a refusal, which stands until the
    endpoint changes."""
    engine, driver = make_engine(FakeStore({"c2-cable": remote("c2"), "c3-cable": remote("c3")}))
    driver.refuse = {"c3"}
    driver.bug = ValueError("a bug in the driver")
    engine.reconcile()
    assert driver.accepted == {}
    assert driver.errors == {}
    driver.bug = None
    engine.reconcile()  # both again: a bug is no verdict on an endpoint
    assert set(driver.accepted) == {"c2"}
    assert set(driver.errors) == {"c3"}
    engine.reconcile()  # the refusal stands: c3 is not tried again unchanged
    connects = [cid for what, cid in driver.calls if what == "connect"]
    assert connects.count("c2") == 2
    assert connects.count("c3") == 2


# --- a hung store ---------------------------------------------------------------------------


class HungStore(FakeStore):
    """A FakeStore whose calls block while ``hung`` (a broker that stopped answering, as a
    SIGSTOPped API server does: the connection opens, no reply comes)."""

    def __init__(self, endpoints: dict[str, Endpoint] | None = None) -> None:
        super().__init__(endpoints)
        self.answering = threading.Event()
        self.answering.set()
        self.blocked = 0  # calls that had to wait

    def hang(self) -> None:
        self.answering.clear()

    def answer(self) -> None:
        self.answering.set()

    def _wait(self) -> None:
        if not self.answering.is_set():
            with self._lock:
                self.blocked += 1
            self.answering.wait()

    def publish(self, endpoint: Endpoint) -> None:
        self._wait()
        super().publish(endpoint)

    def snapshot(self) -> Snapshot:
        self._wait()
        return super().snapshot()

    def write_status(self, hostname: str, status: GatewayStatus) -> None:
        self._wait()
        super().write_status(hostname, status)


def _gaps(times: list[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def test_hung_store_never_freezes_the_status_and_is_named(engines: list[Engine]) -> None:
    interval, timeout = 0.05, 0.25
    hang = 6 * timeout
    store = HungStore({"c2-cable": remote("c2")})
    times: list[float] = []
    seen: list[GatewayStatus] = []

    def on_status(st: GatewayStatus) -> None:
        times.append(time.monotonic())
        seen.append(st)

    engine, driver = make_engine(store, resync_interval=SLOW, status_interval=interval,
                                 store_timeout=timeout, on_status=on_status)
    start(engines, engine)
    wait_for(lambda: store.status_count() >= 2, 2, "statuses in the store")
    store.hang()
    hung_at = time.monotonic()
    n = len(times)
    took = wait_for(lambda: "has not returned" in engine.status.status_failure,
                    interval + timeout + 2, "the hung store to be named")
    assert "writing the gateway status has not returned" in engine.status.status_failure
    # Named within one status interval plus the store timeout (the rest is slack for a
    # loaded machine); the status meanwhile kept its interval.
    assert took < hang
    time.sleep(max(0.0, hung_at + hang - time.monotonic()))
    during = times[n - 1:]
    assert store.blocked >= 1
    assert len(during) >= 3
    assert _gaps(during) < hang / 2  # the old engine waited the whole hang once
    assert [c.endpoint.cluster_id for c in seen[-1].connections] == ["c2"]  # tunnels kept
    assert driver.connected() == ["c2"]
    store.answer()
    wait_for(lambda: engine.status.status_failure == "", interval + timeout + 2,
             "the failure to clear")
    wait_for(lambda: store.statuses[-1][1].status_failure == "", 2,
             "a clean status in the store")


def test_hung_store_at_start_holds_up_neither_start_nor_the_first_status(
    engines: list[Engine],
) -> None:
    interval, timeout = 0.2, 0.3
    store = HungStore({"c2-cable": remote("c2")})
    store.hang()
    seen: list[GatewayStatus] = []
    engine, driver = make_engine(store, resync_interval=SLOW, status_interval=interval,
                                 store_timeout=timeout, on_status=seen.append)
    t0 = time.monotonic()
    hang = 10 * (interval + timeout)
    threading.Timer(hang, store.answer).start()  # never left hanging, whatever happens
    start(engines, engine)
    assert time.monotonic() - t0 < hang / 2  # the read was waited for one interval only
    assert len(seen) == 1
    assert driver.synced == 0  # nothing read yet: nothing removed either
    wait_for(lambda: "has not returned" in engine.status.status_failure,
             2 * interval + timeout + 2, "the hung store to be named")
    store.answer()
    wait_for(lambda: driver.connected() == ["c2"] and driver.synced == 1, 2,
             "the read applied when it came")
    wait_for(lambda: engine.status.status_failure == "", interval + timeout + 2,
             "the failure to clear")
    assert [e.cluster_id for e in store.published] == [LOCAL_ID]


def test_a_failed_publish_is_reported_until_our_endpoint_is_in_the_store() -> None:
    store = FakeStore({"c2-cable": remote("c2")})
    engine, _ = make_engine(store)
    store.publish_error = OSError("read-only file system")
    engine.reconcile()
    failure = engine.refresh_status().status_failure
    assert "store unavailable: publishing our endpoint failed: read-only file system" in failure
    # Put back by other means (a restored directory): nothing left to report.
    store.publish_error = None
    store.put(engine.local.object_name(), engine.local, notify=False)
    engine.reconcile()
    assert engine.refresh_status().status_failure == ""
    assert store.published == []
