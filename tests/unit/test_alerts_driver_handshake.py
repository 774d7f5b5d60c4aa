"""The driver's connections carry the peer's last handshake time, for the
`wgcable_connection_last_handshake_timestamp_seconds` gauge that the handshake-stale alert
reads (the device is faked here; a real lab's is in tests/integration/test_alerts_lab.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fake_kernel import FakeIP, fake_driver
from test_driver_answer_first import key_on_side
from test_ownership import ADDRESSES, local, peer_of, remote

from wgcable.cable.wireguard.driver import WireGuardDriver


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[WireGuardDriver]:
    d = fake_driver(local(), tmp_path, ADDRESSES, ip=FakeIP(ADDRESSES))
    d.init()
    yield d
    d.close()


def test_alerts_connection_carries_the_last_handshake(driver: WireGuardDriver) -> None:
    key = key_on_side(driver, greater=True)
    driver.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2", key))
    [c] = driver.get_connections()
    assert c.last_handshake is None  # none yet: the gauge has no series
    when = datetime(2026, 12, 2, 4, 0, 1, 500000, tzinfo=UTC)
    peer_of(driver, key).last_handshake = when
    [c] = driver.get_connections()
    assert c.last_handshake == when.timestamp()
    assert "last_handshake" not in c.to_json()  # metrics only, not the API object


def test_alerts_refused_endpoint_has_no_handshake(driver: WireGuardDriver) -> None:
    key = key_on_side(driver, greater=True)
    bad = remote("cluster2", ["0.0.0.0/0"], "198.18.0.2", key)  # a default route: refused
    with pytest.raises(Exception, match="subnets"):
        driver.connect_to_endpoint(bad)
    [c] = driver.get_connections()
    assert c.last_handshake is None
