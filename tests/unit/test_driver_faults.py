"""The driver healing what someone else removed, and the wireguard-go supervision helpers,
without root: the kernel side is tests/unit/fake_kernel.py, the daemon a plain child."""

from __future__ import annotations

import base64
import ipaddress
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_kernel import DEVICE, FakeDevice, FakeIP, FakeNft, fake_driver

from wgcable.cable.types import Endpoint, NATEndpointInfo
from wgcable.cable.wireguard.driver import WireGuardDriver
from wgcable.cable.wireguard.userspace import WireGuardGoProcess, _listening
from wgcable.wgctrl import Key
from wgcable.wgctrl.types import Config as WGConfig
from wgcable.wgctrl.types import PeerConfig

ADDRESSES = [("eth0", "198.18.0.1", 24), ("cni0", "10.1.0.1", 24)]


def remote(cluster: str, subnet: str, ip: str) -> NATEndpointInfo:
    key = base64.b64encode(Key.generate().public_key().raw).decode()
    ep = Endpoint(cluster_id=cluster, cable_name="cable", subnets=[subnet], private_ip=ip,
                  backend="wireguard", backend_config={"publicKey": key})
    return NATEndpointInfo(endpoint=ep, use_ip=ip, use_nat=False)


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[WireGuardDriver]:
    local = Endpoint(cluster_id="cluster1", cable_name="cable", subnets=["10.1.0.0/16"],
                     private_ip="198.18.0.1", backend="wireguard")
    d = fake_driver(local, tmp_path, ADDRESSES)
    d.init()
    d.connect_to_endpoint(remote("cluster2", "10.2.0.0/16", "198.18.0.2"))
    d.mark_synced()
    yield d
    d.close()


def test_a_status_read_puts_back_routes_rules_link_and_nft_table(
    driver: WireGuardDriver,
) -> None:
    ip, nft, dev = driver.ip, driver.nft, driver.device
    assert isinstance(ip, FakeIP)
    assert isinstance(nft, FakeNft)
    assert isinstance(dev, FakeDevice)
    routes, rules = dict(ip.routes), set(ip.rules)
    assert len(routes) == 1
    assert len(rules) == 2
    assert nft.exists()
    ip.routes.clear()
    ip.rules.clear()
    nft.remove()
    dev.up = False
    driver.get_connections()
    assert ip.routes == routes
    assert ip.rules == rules
    assert nft.exists()
    assert dev.up


def test_a_status_read_puts_back_a_removed_peer(driver: WireGuardDriver) -> None:
    dev = driver.device
    assert isinstance(dev, FakeDevice)
    [peer] = dev.mem.devices[DEVICE].peers
    dev.mem.configure(DEVICE, WGConfig(peers=[PeerConfig(peer.public_key, remove=True)]))
    driver.get_connections()
    assert [p.public_key for p in dev.mem.devices[DEVICE].peers] == [peer.public_key]


def test_a_status_read_puts_back_a_peer_s_edited_allowed_ips(driver: WireGuardDriver) -> None:
    dev = driver.device
    assert isinstance(dev, FakeDevice)
    [peer] = dev.mem.devices[DEVICE].peers
    want = set(peer.allowed_ips)
    dev.mem.configure(DEVICE, WGConfig(peers=[PeerConfig(
        peer.public_key, allowed_ips=[ipaddress.ip_network("10.99.0.0/16")],
        replace_allowed_ips=True, update_only=True)]))
    assert set(dev.mem.devices[DEVICE].peers[0].allowed_ips) != want
    driver.get_connections()
    assert set(dev.mem.devices[DEVICE].peers[0].allowed_ips) == want


def test_installed_names_the_endpoints_whose_peer_is_on_the_device(
    driver: WireGuardDriver,
) -> None:
    on = driver._conns["cluster2"].info.endpoint
    off = remote("cluster3", "10.3.0.0/16", "198.18.0.3").endpoint
    assert driver.installed([on, off]) == {"cluster2"}


def test_a_stale_socket_file_is_not_a_listening_daemon(tmp_path: Path) -> None:
    path = tmp_path / "wg0.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        s.listen()
        assert _listening(path)
    assert path.exists()  # what a daemon killed with SIGKILL leaves behind
    assert not _listening(path)


def test_wait_returns_as_soon_as_the_daemon_exits() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    daemon = WireGuardGoProcess("wg0", binary=sys.executable)
    daemon.pid, daemon._proc = proc.pid, proc
    try:
        t0 = time.monotonic()
        assert not daemon.wait(0.05)  # still running: waited the whole timeout
        assert daemon.wait(10)
        assert time.monotonic() - t0 < 5  # woken by the exit, not by the timeout
        assert daemon.wait(10)  # already gone: at once
    finally:
        proc.kill()
        proc.wait()
