"""Issue 16: a connection is ``connected`` only when everything it needs is in place.

The pure tracker (``PeerStatus``) with the pieces it is told are missing; the driver on fakes
(``test_driver_delta.Rig``), naming each missing piece: the peer's allowed IPs, routes in
table 220, another owner's route, the rule, the SNAT exemption; and the engine, which also
waits for the first health check reply.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from test_driver_delta import DEV, TABLE, Rig
from test_driver_delta import rig as rig  # the fixture
from test_engine import FakeHealth, FakeStore, make_engine, remote

from wgcable.cable.types import ConnectionStatus
from wgcable.cable.wireguard.status import PeerStatus, StatusThresholds
from wgcable.engine.health import HealthChecker, HealthResult
from wgcable.routing.iproute import RoutingError
from wgcable.routing.nftables import NftError
from wgcable.wgctrl import Config, PeerConfig

WALL = datetime(2026, 12, 1, tzinfo=UTC)
CONNECTED, CONNECTING, ERROR = (ConnectionStatus.CONNECTED, ConnectionStatus.CONNECTING,
                                ConnectionStatus.ERROR)

# --- the tracker --------------------------------------------------------------------------


def test_tracker_with_a_handshake_but_a_missing_piece_is_connecting_naming_it() -> None:
    t = PeerStatus(StatusThresholds(), now=0)
    status, message = t.update(1, WALL, WALL, 100, 100, ["route 10.2.0.0/16 in table 220"])
    assert status is CONNECTING
    assert message == "waiting for: route 10.2.0.0/16 in table 220"
    status, message = t.update(2, WALL, WALL, 200, 200)
    assert status is CONNECTED


def test_tracker_names_the_pieces_and_the_handshake_it_waits_for() -> None:
    t = PeerStatus(StatusThresholds(), now=0)
    status, message = t.update(1, WALL, None, 0, 0, ["rule for table 220",
                                                    "routes in table 220"])
    assert status is CONNECTING
    assert message == "waiting for: rule for table 220, routes in table 220, the first handshake"


def test_tracker_a_piece_missing_beyond_the_limit_is_an_error_naming_it() -> None:
    t = PeerStatus(StatusThresholds(missing_limit=30), now=0)
    piece = ["SNAT exemption in nftables table inet wgcable-subwg0"]
    for now in (1, 10, 31):
        assert t.update(now, WALL, WALL, now, now, piece)[0] is CONNECTING
    status, message = t.update(32, WALL, WALL, 32, 32, piece)
    assert status is ERROR
    assert message == f"missing for 31 s: {piece[0]}"
    # In place again: connected, and the limit counts afresh the next time.
    assert t.update(33, WALL, WALL, 33, 33)[0] is CONNECTED
    assert t.update(34, WALL, WALL, 34, 34, piece)[0] is CONNECTING


def test_tracker_an_error_of_its_own_keeps_its_reason_and_names_the_piece_too() -> None:
    t = PeerStatus(StatusThresholds(handshake_timeout=130), now=0)
    old = WALL - timedelta(seconds=200)
    status, message = t.update(1, WALL, old, 1, 1, ["rule for table 220"])
    assert status is ERROR
    assert message == "last handshake 200 s ago; missing: rule for table 220"


# --- the driver, each piece named ------------------------------------------------------------


def _conn(rig: Rig, i: int) -> Any:
    return {c.endpoint.cluster_id: c for c in rig.driver.get_connections()}[f"c{i}"]


def _handshake(rig: Rig, i: int) -> None:
    """The remote answered: the fake device shows a handshake and received bytes."""
    peer = rig.dev.backend.devices[DEV].peer(rig.keys[i])
    assert peer is not None
    peer.last_handshake, peer.rx_bytes = datetime.now(UTC), peer.rx_bytes + 148


@pytest.fixture
def synced(rig: Rig) -> Rig:
    rig.driver.mark_synced()
    for i in (1, 2):
        rig.driver.connect_to_endpoint(rig.endpoint(i))
        _handshake(rig, i)
    assert _conn(rig, 1).status is CONNECTED
    return rig


def test_driver_all_in_place_with_a_handshake_is_connected(synced: Rig) -> None:
    assert [c.status for c in synced.driver.get_connections()] == [CONNECTED, CONNECTED]


def test_driver_a_route_that_cannot_be_written_keeps_connecting_naming_the_routes(
        synced: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(commands: list[str], force: bool = False) -> None:
        raise RoutingError("ip -batch: RTNETLINK answers: No buffer space available")

    monkeypatch.setattr(synced.ip, "batch", fail)
    with pytest.raises(RoutingError):
        synced.driver.connect_to_endpoint(synced.endpoint(3))
    _handshake(synced, 3)
    c = _conn(synced, 3)
    assert c.status is CONNECTING
    assert c.status_message == f"waiting for: routes in table {TABLE}"
    monkeypatch.undo()  # the next status read writes them
    assert _conn(synced, 3).status is CONNECTED
    assert "10.10.3.0/24" in synced.ip.routes


def test_driver_a_route_another_owner_holds_is_named(synced: Rig) -> None:
    synced.ip.routes["10.10.3.0/24"] = {"dst": "10.10.3.0/24", "dev": "eth9",
                                        "prefsrc": "", "protocol": "boot"}
    synced.driver.resync()  # reads the table: the destination is another owner's
    synced.driver.connect_to_endpoint(synced.endpoint(3))
    _handshake(synced, 3)
    c = _conn(synced, 3)
    assert c.status is CONNECTING
    assert c.status_message == (f"waiting for: route 10.10.3.0/24 in table {TABLE} "
                                "(another owner's route has its destination)")
    assert _conn(synced, 1).status is CONNECTED  # the others are not affected


def test_driver_a_rule_that_cannot_be_added_is_named(
        synced: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    synced.ip.rules.clear()
    real = synced.ip.run

    def no_rule(*args: str, check: bool = True) -> str:
        if args[1] == "rule":
            raise RoutingError("ip rule add: Operation not permitted")
        return real(*args, check=check)

    monkeypatch.setattr(synced.ip, "run", no_rule)
    c = _conn(synced, 1)
    assert c.status is CONNECTING
    assert c.status_message == f"waiting for: rule for table {TABLE}"
    monkeypatch.undo()
    assert _conn(synced, 1).status is CONNECTED
    assert ("-4", TABLE, "87") in synced.ip.rules


def test_driver_an_nft_table_that_cannot_be_written_is_named(
        synced: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(body: str) -> None:
        raise NftError("nft -f: Could not process rule: No such file or directory")

    monkeypatch.setattr(synced.nft, "apply", fail)
    with pytest.raises(NftError):
        synced.driver.connect_to_endpoint(synced.endpoint(3))
    _handshake(synced, 3)
    # The table lacks cluster 3's CIDRs: no connection is known to have its exemption.
    c = _conn(synced, 3)
    assert c.status is CONNECTING
    assert c.status_message.startswith("waiting for: SNAT exemption in nftables table inet ")
    monkeypatch.undo()
    assert _conn(synced, 3).status is CONNECTED
    sets = synced.nft.sets()
    assert sets is not None
    assert "10.10.2.0/23" in sets["remote4"]  # 2 and 3, merged


def test_driver_allowed_ips_edited_behind_our_back_are_named_then_restored(synced: Rig) -> None:
    synced.dev.backend.configure(DEV, Config(peers=[PeerConfig(
        public_key=synced.keys[1], update_only=True, replace_allowed_ips=True,
        allowed_ips=[])]))
    c = _conn(synced, 1)
    assert c.status is CONNECTING
    assert c.status_message == (f"waiting for: allowed IPs 10.10.1.0/24, 10.110.1.0/24 on {DEV}")
    assert _conn(synced, 1).status is CONNECTED  # restored by that read


# --- the engine: the first health check reply ------------------------------------------------


def _reply(age: float | None, losses: int = 0, healthy: bool = True) -> HealthResult:
    return HealthResult(latency=None, consecutive_losses=losses, healthy=healthy,
                        last_reply_age=age, ip="10.2.0.1")


def test_engine_connected_waits_for_the_first_health_check_reply() -> None:
    store = FakeStore({"c2-cable": remote("c2", hc="10.2.0.1"), "c4-cable": remote("c4")})
    health = FakeHealth()
    engine, _ = make_engine(store, health=health)
    engine.reconcile()
    health.results["c2"] = _reply(None)
    by = {c.endpoint.cluster_id: c for c in engine.refresh_status().connections}
    assert by["c2"].status is CONNECTING
    assert by["c2"].status_message.startswith(
        "waiting for: the first reply from health check IP 10.2.0.1")
    assert by["c4"].status is CONNECTED  # no health check IP: nothing to wait for
    assert "c2" not in engine.established
    health.results["c2"] = _reply(0.1)
    [c2, _] = engine.refresh_status().connections
    assert c2.status is CONNECTED


def test_engine_no_first_reply_within_the_allowed_losses_is_an_error() -> None:
    store = FakeStore({"c2-cable": remote("c2", hc="10.2.0.1")})
    health = FakeHealth()
    engine, _ = make_engine(store, health=health)
    engine.reconcile()
    health.results["c2"] = _reply(None, losses=6, healthy=False)
    [c] = engine.refresh_status().connections
    assert c.status is ERROR
    assert "no reply from health check IP 10.2.0.1 to 6 pings" in c.status_message


def test_engine_a_new_key_starts_the_health_check_afresh() -> None:
    store = FakeStore({"c2-cable": remote("c2", hc="10.2.0.1")})
    health = FakeHealth()
    engine, _ = make_engine(store, health=health)
    engine.reconcile()
    engine.refresh_status()
    assert health.targets == {"c2": "10.2.0.1"}
    store.put("c2-cable", remote("c2", hc="10.2.0.1", key="a-new-key-of-c2"))
    engine.reconcile()
    assert health.targets == {}  # until the new peer's handshake: a new echo tracker then
    engine.refresh_status()
    assert health.targets == {"c2": "10.2.0.1"}



def test_engine_reports_a_first_health_reply_at_once() -> None:
    """The checker's first reply wakes the engine's loop to write the status now: with the
    default 5 s interval, "connected" would otherwise lag the tunnel by up to 5 s."""
    checker = HealthChecker(interval=1.0)
    engine, _ = make_engine(FakeStore({}), health=cast(FakeHealth, checker))
    assert checker.on_first_reply is not None
    checker.on_first_reply("c2")
    assert engine._status_now.is_set()
    assert engine._wake.is_set()


def test_tracker_after_our_key_changed_waits_for_a_handshake_under_it() -> None:
    t = PeerStatus(StatusThresholds(), now=0)
    assert t.update(1, WALL, WALL, 1, 1)[0] is CONNECTED
    t.rekeyed(WALL + timedelta(seconds=1))
    later = WALL + timedelta(seconds=2)
    assert t.update(2, later, WALL, 2, 2) == (CONNECTING,
                                               "waiting for: a handshake under our new key")
    assert t.update(3, later, later, 3, 3)[0] is CONNECTED


def test_driver_a_key_rotation_keeps_connections_connecting_until_a_new_handshake(
        synced: Rig) -> None:
    synced.driver.rotate_key()
    c = _conn(synced, 1)
    assert c.status is CONNECTING
    assert c.status_message == "waiting for: a handshake under our new key"
    _handshake(synced, 1)
    assert _conn(synced, 1).status is CONNECTED
    assert _conn(synced, 2).status is CONNECTING
