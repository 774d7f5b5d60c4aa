"""The engine with NAT discovery: the static rule at once, discovery's answer when it comes,
the status saying which and why, and a probe again when a cable stops handshaking (fake
store, driver and discovery)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import pytest
from test_engine import FakeStore, make_engine, remote
from test_engine_failover import FakeElector

from wgcable.cable.types import ConnectionStatus
from wgcable.engine import paths
from wgcable.engine.engine import REPROBE_AFTER, REPROBE_INTERVAL
from wgcable.ha.elector import Elector, Role
from wgcable.natdiscovery import Choice, Target


class FakeDiscovery:
    def __init__(self) -> None:
        self.targets: dict[str, Target] = {}
        self.choices: dict[str, Choice] = {}
        self.reprobes: list[str] = []

    def set_targets(self, targets: Mapping[str, Target]) -> None:
        self.targets = dict(targets)

    def choice(self, cluster_id: str) -> Choice | None:
        return self.choices.get(cluster_id)

    def reprobe(self, cluster_id: str) -> None:
        self.reprobes.append(cluster_id)


def nat_remote() -> FakeStore:
    """c2 says it is behind NAT, with a public IP, and publishes its discovery port."""
    ep = remote("c2", public_ip="203.0.113.9", nat=True)
    ep.backend_config[paths.NATT_DISCOVERY_PORT] = "4490"
    return FakeStore({"c2": ep})


def test_natdiscovery_static_rule_at_once_then_the_discovered_path() -> None:
    store, found = nat_remote(), FakeDiscovery()
    engine, driver = make_engine(store, discovery=found)
    engine.reconcile()
    # Nothing answered yet: connected by the static rule (public, NAT), not waiting.
    assert driver.accepted["c2"].use_ip == "203.0.113.9"
    assert driver.accepted["c2"].use_nat
    t = found.targets["c2"]
    assert (t.private_ip, t.public_ip, t.port, t.nat_enabled) == (
        store._endpoints["c2"].private_ip, "203.0.113.9", 4490, True)
    private = store._endpoints["c2"].private_ip
    found.choices["c2"] = Choice(private, False, paths.DISCOVERED, "private answered in 2 ms")
    engine.reconcile()
    assert driver.accepted["c2"].use_ip == private
    assert not driver.accepted["c2"].use_nat
    [conn] = engine.refresh_status().connections
    assert conn.using_nat is False
    assert "path discovered: private answered in 2 ms" in conn.status_message


def test_natdiscovery_static_fallback_keeps_the_rule_and_says_why() -> None:
    store, found = nat_remote(), FakeDiscovery()
    engine, driver = make_engine(store, discovery=found)
    found.choices["c2"] = Choice("203.0.113.9", True, paths.STATIC, "no answer in 60 s")
    engine.reconcile()
    assert driver.accepted["c2"].use_ip == "203.0.113.9"
    [conn] = engine.refresh_status().connections
    assert "path static rule: no answer in 60 s" in conn.status_message


def test_natdiscovery_off_uses_the_static_rule_and_adds_nothing_to_the_status() -> None:
    engine, driver = make_engine(nat_remote())
    engine.reconcile()
    assert driver.accepted["c2"].use_ip == "203.0.113.9"
    [conn] = engine.refresh_status().connections
    assert "path" not in conn.status_message


@pytest.mark.parametrize("port", ["", "0", "65536", "44 90", "4490\n", "x" * 10_000, "٣"])
def test_natdiscovery_a_bad_published_port_is_not_probed(port: str) -> None:
    store, found = nat_remote(), FakeDiscovery()
    store._endpoints["c2"].backend_config[paths.NATT_DISCOVERY_PORT] = port
    engine, _ = make_engine(store, discovery=found)
    engine.reconcile()
    assert found.targets["c2"].port == 0


@pytest.mark.parametrize("ip", ["fe80::1%eth0", "10.0.0.1\n", "not-an-ip", "1" * 5000])
def test_natdiscovery_a_hostile_address_is_never_probed(ip: str) -> None:
    store, found = nat_remote(), FakeDiscovery()
    store._endpoints["c2"].public_ip = ip
    engine, _ = make_engine(store, discovery=found)
    engine.reconcile()
    assert found.targets["c2"].public_ip == ""


def test_natdiscovery_a_discovered_path_follows_a_changed_choice() -> None:
    store, found = nat_remote(), FakeDiscovery()
    engine, driver = make_engine(store, discovery=found)
    found.choices["c2"] = Choice("203.0.113.9", True, paths.DISCOVERED, "public answered")
    engine.reconcile()
    assert driver.accepted["c2"].use_ip == "203.0.113.9"
    connects = [c for c in driver.calls if c == ("connect", "c2")]
    engine.reconcile()  # the same answer: nothing is sent again
    assert [c for c in driver.calls if c == ("connect", "c2")] == connects
    private = store._endpoints["c2"].private_ip
    found.choices["c2"] = Choice(private, False, paths.DISCOVERED, "private answered")
    engine.reconcile()
    assert driver.accepted["c2"].use_ip == private


def test_natdiscovery_reprobes_a_cable_that_stopped_handshaking() -> None:
    store, found = nat_remote(), FakeDiscovery()
    engine, driver = make_engine(store, discovery=found)
    now = [100.0]
    engine.clock = lambda: now[0]
    engine.reconcile()
    driver.status_override["c2"] = ConnectionStatus.CONNECTED
    engine.refresh_status()
    driver.status_override["c2"] = ConnectionStatus.CONNECTING  # no handshake any more
    engine.refresh_status()
    now[0] += REPROBE_AFTER - 0.5
    engine.refresh_status()
    assert found.reprobes == []  # not yet: a handshake retry takes 5 s
    now[0] += 1.0
    engine.refresh_status()
    assert found.reprobes == ["c2"]
    now[0] += 1.0
    engine.refresh_status()
    assert found.reprobes == ["c2"]  # at most once per interval
    now[0] += REPROBE_INTERVAL
    engine.refresh_status()
    assert found.reprobes == ["c2", "c2"]
    driver.status_override["c2"] = ConnectionStatus.CONNECTED
    now[0] += REPROBE_INTERVAL
    engine.refresh_status()
    assert found.reprobes == ["c2", "c2"]


def test_natdiscovery_a_passive_gateway_probes_nobody() -> None:
    store, found = nat_remote(), FakeDiscovery()
    elector = cast(Elector, FakeElector(Role.PASSIVE))
    engine, _ = make_engine(store, discovery=found, elector=elector)
    found.targets = {"stale": Target("stale", "x", "", "", 0, False)}
    engine.reconcile()
    assert found.targets == {}


def test_natdiscovery_never_reprobes_a_refused_remote_nor_one_without_a_port() -> None:
    """Thousands of refused or port-less remotes (a flooded store) must not each cost a
    probe every 10 s: their address is not what keeps them down."""
    store, found = nat_remote(), FakeDiscovery()
    store._endpoints["c3"] = remote("c3")  # publishes no discovery port
    engine, driver = make_engine(store, discovery=found)
    driver.refuse = {"c2"}
    now = [100.0]
    engine.clock = lambda: now[0]
    engine.reconcile()
    driver.status_override["c3"] = ConnectionStatus.CONNECTING
    for _ in range(3):
        engine.refresh_status()
        now[0] += REPROBE_AFTER + REPROBE_INTERVAL
    assert found.reprobes == []
