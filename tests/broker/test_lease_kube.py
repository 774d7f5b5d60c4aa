"""The gateway lease as a coordination.k8s.io/v1 Lease on a real kube-apiserver: KubeLease's
optimistic concurrency, two electors on one Lease, an outage, and hostile Lease objects.

The lease is reached as the gateway's own identity: a service account bound to exactly the
lease Role of deploy/rbac.yaml (``crds.LEASE_RULES``), so a missing verb fails here.
Everything that talks to the API server does so from a thread in its network namespace.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from loneapi import lone_api_server

from wgcable.ha.elector import Elector, Role
from wgcable.ha.kubelease import KubeLease
from wgcable.ha.lease import (
    DEFAULT_LEASE_NAME,
    LeaseConflictError,
    LeaseRecord,
    LeaseTiming,
    LeaseUnavailableError,
)
from wgcable.lab.kubeapi import LocalAPIServer
from wgcable.store.crds import LEASE_ROLE, LEASE_RULES
from wgcable.store.kubernetes import load_api_client

pytestmark = pytest.mark.kubernetes

LEASE_NS = "submariner-operator"  # the agent's own namespace, on its own cluster
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases"
TIMING = LeaseTiming(1.5, 1.0, 0.2)
T = TypeVar("T")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAPIServer]:
    with lone_api_server(f"wglease{os.getpid() % 100000}",
                         tmp_path_factory.mktemp("leaseapi")) as api:
        assert api.request("POST", "/api/v1/namespaces", {
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LEASE_NS}})[0] == 201
        yield api


@pytest.fixture(scope="module")
def gateway_kubeconfig(server: LocalAPIServer) -> Path:
    """Service account wgcable-gateway bound to the lease Role only, as deploy/rbac.yaml."""
    sa = "wgcable-gateway"
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{LEASE_NS}"
    for path, doc in (
        (f"/api/v1/namespaces/{LEASE_NS}/serviceaccounts",
         {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}}),
        (f"{rbac}/roles", {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                           "metadata": {"name": LEASE_ROLE}, "rules": LEASE_RULES}),
        (f"{rbac}/rolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": LEASE_ROLE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                        "name": LEASE_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": LEASE_NS}]}),
    ):
        status, body = server.request("POST", path, doc)
        assert status == 201, body
    status, body = server.request(
        "POST", f"/api/v1/namespaces/{LEASE_NS}/serviceaccounts/{sa}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
         "spec": {"expirationSeconds": 3600}})
    assert status == 201, body
    path = server.dir / "lease-gateway.kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": {
            "server": server.url,
            "certificate-authority": str(server.dir / "certs" / "apiserver.crt")}}],
        "users": [{"name": sa, "user": {"token": body["status"]["token"]}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": sa}}],
        "current-context": "local",
    }))
    return path


@pytest.fixture
def lease_name(server: LocalAPIServer) -> Iterator[str]:
    """The default lease name (the only one the Role allows), deleted after each test."""
    yield DEFAULT_LEASE_NAME
    if server.apiserver_pid:
        server.request("DELETE", f"{LEASES}/{DEFAULT_LEASE_NAME}")


class Side:
    """One gateway's view: its KubeLease, used from a thread in the server's namespace."""

    def __init__(self, server: LocalAPIServer, kubeconfig: Path, name: str,
                 timeout: float = 5.0) -> None:
        self.server = server
        self.lease = KubeLease(load_api_client(str(kubeconfig)), LEASE_NS, name, timeout)

    def __call__(self, fn: Callable[[], T]) -> T:
        return self.server.call(fn)

    def read(self) -> LeaseRecord | None:
        return self(self.lease.read)

    def write(self, record: LeaseRecord, replaces: LeaseRecord | None) -> LeaseRecord:
        return self(lambda: self.lease.write(record, replaces))


def record(holder: str, renew: float, transitions: int = 1) -> LeaseRecord:
    return LeaseRecord(holder=holder, duration=1.5, acquire_time=renew - 1, renew_time=renew,
                       transitions=transitions)


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


# --- KubeLease by itself ----------------------------------------------------------------------


def test_lease_create_read_renew_and_a_stale_write_conflicts(
    server: LocalAPIServer, gateway_kubeconfig: Path, lease_name: str,
) -> None:
    a = Side(server, gateway_kubeconfig, lease_name)
    assert a.read() is None
    first = a.write(record("gw1", 1_700_000_000.25), None)
    assert first.version
    got = a.read()
    assert got is not None
    assert got == first  # every field, version included, as the API server stored it
    assert got.same_term(first)
    # What the API server holds is a real Lease, with Kubernetes' own field types.
    status, obj = server.request("GET", f"{LEASES}/{lease_name}")
    assert status == 200, obj
    assert obj["spec"] == {"holderIdentity": "gw1", "leaseDurationSeconds": 2,
                           "acquireTime": "2023-11-14T22:13:19.250000Z",
                           "renewTime": "2023-11-14T22:13:20.250000Z", "leaseTransitions": 1}
    renewed = a.write(record("gw1", 1_700_000_001.5), got)
    assert renewed.version != got.version
    assert a.read() == renewed
    with pytest.raises(LeaseConflictError, match="changed meanwhile"):
        a.write(record("gw1", 1_700_000_002.0), got)  # the version before the renewal
    with pytest.raises(LeaseConflictError):
        a.write(record("gw1", 1_700_000_002.0), None)  # it exists: no second create
    assert a.read() == renewed  # neither failed write changed anything


def test_lease_two_racing_creates_exactly_one_wins(
    server: LocalAPIServer, gateway_kubeconfig: Path, lease_name: str,
) -> None:
    for _ in range(3):
        sides = [Side(server, gateway_kubeconfig, lease_name) for _ in range(2)]
        results: dict[int, LeaseRecord | Exception] = {}
        go = threading.Barrier(2)

        def run(i: int, sides: list[Side] = sides, results: dict[int, Any] = results,
                go: threading.Barrier = go) -> None:
            def attempt() -> None:
                go.wait()
                try:
                    results[i] = sides[i].lease.write(record(f"gw{i}", time.time()), None)
                except Exception as exc:
                    results[i] = exc
            server.call(attempt)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        won = [i for i, r in results.items() if isinstance(r, LeaseRecord)]
        lost = [r for r in results.values() if not isinstance(r, LeaseRecord)]
        assert len(won) == 1, results
        assert len(lost) == 1, results
        assert isinstance(lost[0], LeaseConflictError), results
        stored = sides[0].read()
        assert stored is not None
        assert stored.holder == f"gw{won[0]}"
        assert server.request("DELETE", f"{LEASES}/{lease_name}")[0] == 200


def test_lease_of_another_name_is_refused_by_the_role_and_named(
    server: LocalAPIServer, gateway_kubeconfig: Path,
) -> None:
    # The Role narrows get and update to the lease's name: another one reads as unavailable
    # (403), with the server, the namespace and the name in the message.
    other = Side(server, gateway_kubeconfig, "someone-elses-lock")
    with pytest.raises(LeaseUnavailableError) as info:
        other.read()
    text = str(info.value)
    assert "HTTP 403" in text
    assert f"Lease {LEASE_NS}/someone-elses-lock" in text
    assert server.url in text


# --- two electors on one Lease ------------------------------------------------------------------


def acting(e: Elector) -> bool:
    """Active by the fencing rule: ACTIVE and renewed within the renew deadline (an elector
    that is no longer stepped keeps its role attribute, but its term is over)."""
    return e.role == Role.ACTIVE and e.clock() - e._last_renew <= e.timing.renew_deadline


def test_lease_two_electors_one_active_failover_and_handover(
    server: LocalAPIServer, gateway_kubeconfig: Path, lease_name: str,
) -> None:
    sides = [Side(server, gateway_kubeconfig, lease_name) for _ in range(2)]
    e1, e2 = (Elector(s.lease, f"gw{i + 1}", TIMING) for i, s in enumerate(sides))
    stepped = [e1, e2]

    def tick() -> None:
        for e in stepped:
            server.call(e.step)
        assert sum(acting(e) for e in (e1, e2)) <= 1, (e1.role, e2.role)
        time.sleep(0.05)

    # Election: one active, the other passive, and so it stays while both renew.
    deadline = time.monotonic() + 10
    while {e1.role, e2.role} != {Role.ACTIVE, Role.PASSIVE}:
        assert time.monotonic() < deadline, (e1.role, e2.role)
        tick()
    end = time.monotonic() + 3 * TIMING.duration
    while time.monotonic() < end:
        tick()
        assert sorted([e1.role, e2.role]) == [Role.ACTIVE, Role.PASSIVE]
    active, standby = (e1, e2) if e1.role == Role.ACTIVE else (e2, e1)

    # The active stops (it is no longer stepped): the standby takes over after about the
    # lease duration, never before the active's renew deadline has passed.
    stepped = [standby]
    last_renew = active._last_renew
    while standby.role != Role.ACTIVE:
        assert time.monotonic() - last_renew < TIMING.duration + 2.0, "no takeover"
        tick()
    took = time.monotonic() - last_renew
    assert took > TIMING.duration > TIMING.renew_deadline
    assert took < TIMING.duration + 4 * TIMING.retry + 0.5
    record_now = sides[0].read()
    assert record_now is not None
    assert record_now.holder == standby.identity

    # The old active comes back: it follows the new holder.
    stepped = [active, standby]
    tick()
    assert (active.role, standby.role) == (Role.PASSIVE, Role.ACTIVE)

    # Handover: the active releases, stays UNKNOWN (tunnels kept), the other takes over
    # within about one retry.
    assert server.call(standby.hand_over)
    assert standby.role == Role.UNKNOWN
    t0 = time.monotonic()
    while active.role != Role.ACTIVE:
        assert time.monotonic() - t0 < 2 * TIMING.retry + 1.0, "no takeover after handover"
        tick()
    tick()
    assert (active.role, standby.role) == (Role.ACTIVE, Role.PASSIVE)
    final = sides[1].read()
    assert final is not None
    assert final.holder == active.identity
    assert final.transitions == 3  # gw -> standby -> (released) -> active


# --- hostile Lease objects ----------------------------------------------------------------------


@pytest.mark.parametrize("holder", ["gw1\x1b[2J\nERROR forged line\x07", "g" * 10000])
def test_lease_hostile_holder_is_free_and_never_echoed(
    server: LocalAPIServer, gateway_kubeconfig: Path, lease_name: str, holder: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    status, body = server.request("POST", LEASES, {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": lease_name},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 3600,
                 "renewTime": "2099-01-01T00:00:00.000000Z", "leaseTransitions": 7}})
    assert status == 201, body  # the API server takes any holder text
    side = Side(server, gateway_kubeconfig, lease_name)
    with caplog.at_level(logging.WARNING):
        got = side.read()
        assert got is not None
        assert (got.holder, got.version) == ("", body["metadata"]["resourceVersion"])
        assert side.read() == got
    warnings = [r.getMessage() for r in caplog.records if "taken as free" in r.getMessage()]
    assert len(warnings) == 1, warnings  # logged once, not at every read
    assert "holderIdentity" in warnings[0]
    assert "forged" not in warnings[0]
    assert "ggggg" not in warnings[0]
    assert all(ch.isprintable() for ch in warnings[0])
    # Free means free: an elector takes it over at once, replacing it by its version.
    e = Elector(side.lease, "gw2", TIMING)
    assert server.call(e.step) == Role.ACTIVE
    stored = side.read()
    assert stored is not None
    assert stored.holder == "gw2"


@pytest.mark.parametrize(("field", "value"), [
    ("leaseTransitions", -1), ("leaseTransitions", "7"), ("renewTime", "yesterday"),
    ("leaseDurationSeconds", 0),
])
def test_lease_the_api_server_refuses_malformed_lease_fields(
    server: LocalAPIServer, lease_name: str, field: str, value: object,
) -> None:
    # What the API server refuses never reaches KubeLease; its parsing of such fields
    # anyway is tested without a server (tests/unit/test_ha_kubelease.py).
    spec = {"holderIdentity": "gw1", "leaseDurationSeconds": 10, field: value}
    status, body = server.request("POST", LEASES, {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": lease_name}, "spec": spec})
    assert status in (400, 422), body


# --- an outage (last: it stops and restarts the API server) -------------------------------------


def test_lease_unreachable_api_server_is_named_and_fences_the_active(
    server: LocalAPIServer, gateway_kubeconfig: Path, lease_name: str,
) -> None:
    # A closed port: unavailable, with the server in the message.
    closed_config = gateway_kubeconfig.with_name("closed-port.kubeconfig")
    closed_config.write_text(gateway_kubeconfig.read_text().replace(server.url,
                                                                   "https://127.0.0.1:1"))
    closed = KubeLease(load_api_client(str(closed_config)), LEASE_NS, lease_name, 2.0)
    with pytest.raises(LeaseUnavailableError) as info:
        server.call(closed.read)
    assert "https://127.0.0.1:1" in str(info.value)
    assert f"Lease {LEASE_NS}/{lease_name}" in str(info.value)

    side = Side(server, gateway_kubeconfig, lease_name, timeout=0.5)
    e = Elector(side.lease, "gw1", TIMING)
    assert server.call(e.step) == Role.ACTIVE
    server.stop_apiserver()
    try:
        with pytest.raises(LeaseUnavailableError) as info:
            side.read()
        assert server.url in str(info.value)
        # Still active until the renew deadline has passed since the last renew; unknown
        # (tunnels kept, nothing changed) right after.
        while True:
            role = server.call(e.step)
            since = time.monotonic() - e._last_renew
            if role != Role.ACTIVE:
                break
            assert since < TIMING.renew_deadline + TIMING.retry + 0.5, "never fenced"
            time.sleep(TIMING.retry / 4)
        assert role == Role.UNKNOWN
        assert since > TIMING.renew_deadline
        assert server.url in e.problem
    finally:
        server.start_apiserver()
    # Back: it renews its own lease and is active again.
    wait_for(lambda: server.call(e.step) == Role.ACTIVE, 10, "active again")
    assert e.problem == ""


def test_lease_hung_api_server_fences_the_active_by_the_renew_deadline(
    server: LocalAPIServer, gateway_kubeconfig: Path, lease_name: str,
) -> None:
    """The API server stops answering (SIGSTOP: connections are accepted, nothing comes
    back): each call hangs for its timeout, the client's retries included, longer than the
    renew deadline. The elector must never report ACTIVE past its renew deadline."""
    side = Side(server, gateway_kubeconfig, lease_name, timeout=0.4)
    e = Elector(side.lease, "gw1", TIMING)
    assert server.call(e.step) == Role.ACTIVE
    pid = server.apiserver_pid
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        while True:
            role = server.call(e.step)
            since = time.monotonic() - e._last_renew
            if role != Role.ACTIVE:
                break
            assert since <= TIMING.renew_deadline, f"still active {since:.2f} s after renewing"
            assert time.monotonic() - t0 < 30, "never fenced"
        assert role == Role.UNKNOWN
        assert "timed out" in e.problem.lower() or "timeout" in e.problem.lower(), e.problem
        assert server.url in e.problem
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: server.call(e.step) == Role.ACTIVE, 15, "active again")
