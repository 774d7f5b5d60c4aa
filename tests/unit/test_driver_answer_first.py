"""Of two gateways that learn of each other at once, one answers first.

If both initiated at once, the handshakes would cross: each side answers the other's
initiation and drops the answer to its own, and the tunnel waits out WireGuard's 5 s retry;
on wireguard-go a race between its handshake workers can even leave one direction dead for
15 s while both sides show a handshake (seen in CI, reproduced by hand: 7 in 450 crossed
configurations). So the side with the greater public key adds a new peer without its
keepalive (what makes WireGuard initiate the moment a peer is added) and gives it the
keepalive once a handshake came in or its wait is over. The real
tunnels are in tests/integration/test_driver_e2e.py; here the device is faked
(tests/unit/fake_kernel.py) and the keys are chosen for their order.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fake_kernel import FakeIP, fake_driver
from test_engine import wait_for
from test_ownership import ADDRESSES, local, peer_of, remote

from wgcable.cable.wireguard.driver import WireGuardDriver
from wgcable.cable.wireguard.firstcontact import RECENTLY_REMOVED
from wgcable.wgctrl import Key, UDPAddr

WAIT = 0.3  # the driver's wait, short for the test (0.5 s by default)
PUBLISHED = UDPAddr(ipaddress.ip_address("198.18.0.2"), 5871)


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[WireGuardDriver]:
    d = fake_driver(local(), tmp_path, ADDRESSES, ip=FakeIP(ADDRESSES))
    d.cfg.answer_first_wait = WAIT
    d.init()
    yield d
    d.close()


def key_on_side(d: WireGuardDriver, greater: bool) -> Key:
    """A remote's private key whose public key sorts after ours (``greater``) or before."""
    while True:
        k = Key.generate()
        if (k.public_key().raw > d.public_key.raw) == greater:
            return k


def state(d: WireGuardDriver, key: Key) -> tuple[UDPAddr | None, int]:
    peer = peer_of(d, key)
    return peer.endpoint, peer.persistent_keepalive


def test_the_greater_key_adds_a_new_peer_without_its_keepalive(
        driver: WireGuardDriver) -> None:
    """No keepalive: WireGuard does not initiate at once. The endpoint is there: data sent
    before any handshake still initiates, and routes go in at once."""
    key = key_on_side(driver, greater=False)  # the remote's key is smaller: it initiates
    driver.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2", key))
    assert driver.public_key.raw > key.public_key().raw
    assert state(driver, key) == (PUBLISHED, 0)
    assert [str(n) for n in peer_of(driver, key).allowed_ips] == ["10.2.0.0/16"]


def test_the_smaller_key_initiates_at_once(driver: WireGuardDriver) -> None:
    key = key_on_side(driver, greater=True)
    driver.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2", key))
    assert state(driver, key) == (PUBLISHED, driver.cfg.keepalive)


def test_a_waiting_peer_gets_its_keepalive_when_the_wait_is_over(
        driver: WireGuardDriver) -> None:
    key = key_on_side(driver, greater=False)
    t0 = time.monotonic()
    driver.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2", key))
    wait_for(lambda: state(driver, key)[1] != 0, 5)
    assert time.monotonic() - t0 >= WAIT * 0.9
    assert state(driver, key) == (PUBLISHED, driver.cfg.keepalive)


def test_after_a_handshake_the_endpoint_it_came_from_stands(driver: WireGuardDriver) -> None:
    key = key_on_side(driver, greater=False)
    driver.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2", key))
    # The remote initiated from behind a NAT: the device learned where it really is.
    seen = UDPAddr(ipaddress.ip_address("198.18.0.2"), 40123)
    peer = peer_of(driver, key)
    peer.endpoint, peer.last_handshake = seen, datetime.now(UTC)
    wait_for(lambda: state(driver, key)[1] != 0, 5)
    assert state(driver, key) == (seen, driver.cfg.keepalive)


def test_a_new_endpoint_published_during_the_wait_applies_at_once(
        driver: WireGuardDriver) -> None:
    key = key_on_side(driver, greater=False)
    driver.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2", key))
    peer = peer_of(driver, key)
    peer.endpoint = UDPAddr(ipaddress.ip_address("198.18.0.2"), 40123)
    peer.last_handshake = datetime.now(UTC)
    driver.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2", key,
                                      port=6000))
    assert str(peer_of(driver, key).endpoint) == "198.18.0.2:6000"
    wait_for(lambda: state(driver, key)[1] != 0, 5)
    assert str(peer_of(driver, key).endpoint) == "198.18.0.2:6000"


def test_a_peer_the_device_lost_is_restored_able_to_initiate(driver: WireGuardDriver) -> None:
    """The remote still has us with a session that no longer exists here: it will not
    initiate for a long while, so we must, at once."""
    key = key_on_side(driver, greater=False)
    driver.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2", key))
    driver.mark_synced()
    wait_for(lambda: state(driver, key)[1] != 0, 5)
    driver.device.mem.devices["subwg0"].peers = []  # type: ignore[attr-defined]
    driver.get_connections()  # a status read restores missing peers
    assert state(driver, key) == (PUBLISHED, driver.cfg.keepalive)


def test_a_peer_lost_during_its_wait_is_restored_able_to_initiate(
        driver: WireGuardDriver) -> None:
    key = key_on_side(driver, greater=False)
    driver.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2", key))
    assert state(driver, key) == (PUBLISHED, 0)
    driver.device.mem.devices["subwg0"].peers = []  # type: ignore[attr-defined]
    driver.get_connections()
    assert state(driver, key) == (PUBLISHED, driver.cfg.keepalive)
    assert not driver._peer_res.first.waiting


def test_a_peer_removed_lately_and_added_again_initiates_at_once(
        driver: WireGuardDriver) -> None:
    """The remote most likely kept us (an Endpoint deleted and created again, as both
    convergence benchmarks do): it will not initiate, we must. Long after, it is new."""
    key = key_on_side(driver, greater=False)
    info = remote("cluster2", ["10.2.0.0/16"], "198.18.0.2", key)
    driver.connect_to_endpoint(info)
    driver.mark_synced()
    wait_for(lambda: state(driver, key)[1] != 0, 5)
    driver.disconnect_from_endpoint(info.endpoint)
    driver.connect_to_endpoint(info)
    assert state(driver, key) == (PUBLISHED, driver.cfg.keepalive)
    driver.disconnect_from_endpoint(info.endpoint)
    first = driver._peer_res.first
    first.removed = {k: t - RECENTLY_REMOVED - 1 for k, t in first.removed.items()}  # long ago
    driver.connect_to_endpoint(info)
    assert state(driver, key) == (PUBLISHED, 0)


def test_close_leaves_no_peer_waiting(tmp_path: Path) -> None:
    d = fake_driver(local(), tmp_path, ADDRESSES, ip=FakeIP(ADDRESSES))
    d.cfg.answer_first_wait = 60
    d.init()
    key = key_on_side(d, greater=False)
    d.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2", key))
    assert state(d, key) == (PUBLISHED, 0)
    d.close()
    assert state(d, key) == (PUBLISHED, d.cfg.keepalive)


def test_no_keepalive_configured_no_waiting(tmp_path: Path) -> None:
    """With keepalive 0 we never initiate at once anyway: nothing to wait for."""
    d = fake_driver(local(), tmp_path, ADDRESSES, ip=FakeIP(ADDRESSES))
    d.cfg.keepalive = 0
    d.init()
    try:
        key = key_on_side(d, greater=False)
        d.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2", key))
        assert state(d, key) == (PUBLISHED, 0)
        assert not d._peer_res.first.waiting
    finally:
        d.close()
