"""A peer whose endpoint moves (NAT discovery found another address) before it ever had a
handshake is added anew, so that it initiates at once; one that has a session is moved in
place. WireGuard retries a handshake only 5 s after the last one, and a new endpoint does
not hurry it: without this, a remote first sent to an address that never answered waited
that out (5.05 s to the first ping in the natdiscovery bench, 1.06 s with it). The real
tunnels are in tests/integration/test_natdiscovery_lab.py; the device is faked here."""

from __future__ import annotations

import dataclasses
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


def moved(driver: WireGuardDriver, *, handshake: bool) -> tuple[str, int]:
    key = key_on_side(driver, greater=True)  # we initiate at once (no answer-first wait)
    info = remote("cluster2", ["10.2.0.0/16"], "198.18.0.2", key)
    driver.connect_to_endpoint(info)
    peer = peer_of(driver, key)
    peer.rx_bytes = 100  # marks this peer object: a peer added anew starts at 0
    if handshake:
        peer.last_handshake = datetime.now(UTC)
    driver.connect_to_endpoint(dataclasses.replace(info, use_ip="198.18.0.9"))
    after = peer_of(driver, key)
    assert [str(n) for n in after.allowed_ips] == ["10.2.0.0/16"]
    assert after.persistent_keepalive == driver.cfg.keepalive
    return str(after.endpoint), after.rx_bytes


def test_endpoint_move_before_any_handshake_adds_the_peer_anew(
        driver: WireGuardDriver) -> None:
    assert moved(driver, handshake=False) == ("198.18.0.9:5871", 0)


def test_endpoint_move_of_a_peer_with_a_session_keeps_it(driver: WireGuardDriver) -> None:
    assert moved(driver, handshake=True) == ("198.18.0.9:5871", 100)
