"""The engine under an elector: what an active, a passive and an undecided gateway do with
the same store (fake store and driver; the elector is a role the test sets)."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import cast

import pytest
from test_engine import LOCAL_ID, FakeStore, local_ep, make_engine, remote

from wgcable.cable.types import Endpoint, HAStatus
from wgcable.engine import plan as planning
from wgcable.engine.engine import PASSIVE_DRAIN
from wgcable.ha.elector import Elector, Role
from wgcable.store.base import Snapshot

OWN = local_ep().object_name()


@dataclass
class FakeElector:
    role: Role = Role.ACTIVE
    problem: str = ""
    transitions: int = 3


def store_with(*extra: tuple[str, Endpoint]) -> FakeStore:
    return FakeStore({"c2": remote("c2"), "c3": remote("c3"), **dict(extra)})


def former() -> tuple[str, Endpoint]:
    """Another gateway of our own cluster: a former active one (another node's address)."""
    ep = local_ep(cable="cable-of-the-former-active")
    ep.private_ip = "198.18.0.9"
    return ep.object_name(), ep


def test_failover_active_connects_all_and_removes_a_former_gateways_endpoint() -> None:
    name, ep = former()
    store = store_with((name, ep))
    elector = FakeElector(Role.ACTIVE)
    engine, driver = make_engine(store, elector=cast(Elector, elector))
    engine.reconcile()
    assert sorted(driver.accepted) == ["c2", "c3"]
    assert [e.object_name() for e in store.withdrawn] == [name]
    assert [e.object_name() for e in store.published] == [OWN]  # ours: it was missing
    engine.reconcile()  # asked once, not at every pass while the store catches up
    assert len(store.withdrawn) == 1


def test_failover_passive_connects_nothing_and_withdraws_its_own_endpoint() -> None:
    store = store_with((OWN, local_ep()))
    elector = FakeElector(Role.ACTIVE)
    engine, driver = make_engine(store, elector=cast(Elector, elector))
    engine.reconcile()
    assert sorted(driver.accepted) == ["c2", "c3"]
    now = [100.0]
    engine.clock = lambda: now[0]
    elector.role = Role.PASSIVE  # another gateway took the lease
    engine.reconcile()
    # Make before break: the tunnels stay a moment, for remotes and route agents to follow
    # the new active gateway's Endpoint.
    assert sorted(driver.accepted) == ["c2", "c3"]
    assert store.withdrawn == []
    now[0] += PASSIVE_DRAIN
    engine.reconcile()
    assert driver.accepted == {}  # peers and routes gone; the device and key stay
    assert [e.object_name() for e in store.withdrawn] == [OWN]
    status = engine.refresh_status()
    assert status.ha_status == HAStatus.PASSIVE
    assert status.connections == []


def test_failover_passive_leaves_the_active_gateways_endpoint_alone() -> None:
    name, ep = former()  # here: the active one's, on another node
    store = store_with((name, ep), (OWN, local_ep()))
    engine, _ = make_engine(store, elector=cast(Elector, FakeElector(Role.PASSIVE)))
    engine.reconcile()
    assert [e.object_name() for e in store.withdrawn] == [OWN]


def test_failover_passive_never_publishes_nor_restores_its_endpoint() -> None:
    store = store_with()
    engine, _ = make_engine(store, elector=cast(Elector, FakeElector(Role.PASSIVE)))
    engine.reconcile()
    engine.reconcile()
    assert store.published == []


def test_failover_undecided_gateway_changes_nothing() -> None:
    """Fenced (no renewal within the deadline), handing over, or the lease never read: the
    tunnels stay as they are and nothing is published or removed, as in a store outage."""
    name, ep = former()
    store = store_with((name, ep))
    elector = FakeElector(Role.ACTIVE)
    engine, driver = make_engine(store, elector=cast(Elector, elector))
    engine.reconcile()
    published, withdrawn = len(store.published), len(store.withdrawn)
    elector.role, elector.problem = Role.UNKNOWN, "lease unreachable"
    store.delete("c3")
    store.put(name, ep)
    engine.reconcile()
    assert sorted(driver.accepted) == ["c2", "c3"]  # c3's tunnel kept: no decision now
    assert (len(store.published), len(store.withdrawn)) == (published, withdrawn)
    status = engine.refresh_status()
    assert status.ha_status == HAStatus.PASSIVE
    assert "gateway lease: lease unreachable" in status.status_failure


def test_failover_a_fenced_gateways_status_says_why_at_once() -> None:
    """The role change writes the status at once, and with the reason: a status that says
    passive with no failure until the next status interval was read by a test in CI."""
    elector = FakeElector(Role.ACTIVE)
    engine, _ = make_engine(store_with(), elector=cast(Elector, elector))
    engine.reconcile()
    engine.refresh_status()
    written: list[str] = []
    engine.on_status = lambda st: written.append(st.status_failure)
    elector.role, elector.problem = Role.UNKNOWN, "lease unreachable"
    engine.role_changed()
    assert written == ["gateway lease: lease unreachable"]
    assert engine.status.status_failure == "gateway lease: lease unreachable"


def test_failover_passive_then_active_again_reconnects_everyone() -> None:
    store = store_with()
    elector = FakeElector(Role.PASSIVE)
    engine, driver = make_engine(store, elector=cast(Elector, elector))
    engine.reconcile()
    assert driver.accepted == {}
    elector.role = Role.ACTIVE
    engine.reconcile()
    assert sorted(driver.accepted) == ["c2", "c3"]
    assert [e.object_name() for e in store.published] == [OWN]
    assert engine.refresh_status().ha_status == HAStatus.ACTIVE


def test_failover_without_an_elector_is_always_active() -> None:
    engine, driver = make_engine(store_with())
    engine.reconcile()
    assert sorted(driver.accepted) == ["c2", "c3"]
    assert engine.refresh_status().ha_status == HAStatus.ACTIVE
    assert engine.local.cluster_id == LOCAL_ID


def test_failover_active_publishes_its_lease_term_and_remotes_prefer_the_newest() -> None:
    """The active gateway's Endpoint carries its lease term; while a cluster has two
    Endpoints, every reader (remote engines, route agents: plan.preferred) takes the newest
    term, whatever the names, so that they follow a new active gateway at its first
    publish, not only once its predecessor's Endpoint is gone."""
    store = store_with()
    engine, _ = make_engine(store, elector=cast(Elector, FakeElector(Role.ACTIVE, "", 7)))
    engine.reconcile()
    assert store.published[-1].backend_config[planning.LEASE_TERM] == "7"
    old, new = remote("c9", cable="a-old", key="k-old"), remote("c9", cable="z-new", key="k-new")
    new.backend_config[planning.LEASE_TERM] = "8"
    old.backend_config[planning.LEASE_TERM] = "7"
    snap = Snapshot({"c9-a-old": old, "c9-z-new": new})
    assert planning.plan(local_ep(), snap).connect["c9"].endpoint is new
    del new.backend_config[planning.LEASE_TERM]  # without terms: the first by name
    assert planning.plan(local_ep(), snap).connect["c9"].endpoint is old


@pytest.mark.parametrize("term", ["-1", "1e9", "99999999999", "٣", "7 ", "", "0x10", "\n7"])
def test_failover_a_hostile_lease_term_counts_as_none(term: str) -> None:
    ep = remote("c9")
    ep.backend_config[planning.LEASE_TERM] = term
    assert planning.lease_term(ep) == -1


def test_failover_the_term_published_is_above_a_sibling_endpoint_s() -> None:
    """A lease made anew (its file deleted, the Lease recreated) counts from 1 again; the
    Endpoint of the gateway that was active before, until withdrawn, carries its old term.
    Ours must be the newest at once, or every reader keeps following the old one."""
    name, ep = former()
    ep.backend_config[planning.LEASE_TERM] = "5"
    store = store_with((name, ep))
    engine, _ = make_engine(store, elector=cast(Elector, FakeElector(Role.ACTIVE, "", 1)))
    engine.reconcile()
    assert store.published[-1].backend_config[planning.LEASE_TERM] == "6"
    del store._endpoints[name]  # withdrawn: the lease's own count is the term again
    engine.reconcile()
    assert engine.local.backend_config[planning.LEASE_TERM] == "1"


class CopyingStore(FakeStore):
    """Keeps a copy of what is published, as a real store does (the fake keeps the object,
    so a change to ours would look published already)."""

    def publish(self, endpoint: Endpoint) -> None:
        super().publish(copy.deepcopy(endpoint))


def test_failover_a_new_term_is_published_as_ours_not_as_someone_else_s_edit(
        caplog: pytest.LogCaptureFixture) -> None:
    store = CopyingStore({"c2": remote("c2")})
    elector = FakeElector(Role.ACTIVE, "", 3)
    engine, _ = make_engine(store, elector=cast(Elector, elector))
    engine.reconcile()
    assert store.published[-1].backend_config[planning.LEASE_TERM] == "3"
    elector.transitions = 4  # we lost the lease and won it again
    with caplog.at_level(logging.INFO, logger="wgcable.engine.engine"):
        engine.reconcile()
    assert store.published[-1].backend_config[planning.LEASE_TERM] == "4"
    assert "changed here; publishing it" in caplog.text
    assert "by someone else" not in caplog.text
    store.put(OWN, remote("c9"), notify=False)  # a real edit is still called one
    with caplog.at_level(logging.INFO, logger="wgcable.engine.engine"):
        engine.reconcile()
    assert "changed in the store by someone else" in caplog.text
