"""Ownership on a shared host, restarts and roaming, with the kernel side faked
(tests/unit/fake_kernel.py): table 220 may hold strongSwan's routes and another wgcable
device's; only ours (our device and route protocol) are read, replaced or removed."""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_kernel import DEVICE, FakeDevice, FakeIP, FakeNft, fake_driver

from wgcable.cable.types import Endpoint, NATEndpointInfo
from wgcable.cable.wireguard.device import DeviceError
from wgcable.cable.wireguard.driver import WireGuardDriver
from wgcable.routing.iproute import RoutingError
from wgcable.wgctrl import Key, Peer, PeerConfig, UDPAddr
from wgcable.wgctrl.types import Config as WGConfig

ADDRESSES = [("eth0", "198.18.0.1", 24), ("cni0", "10.1.0.1", 24)]
TABLE = "220"
PROTO = "87"


def local() -> Endpoint:
    return Endpoint(cluster_id="cluster1", cable_name="cable", subnets=["10.1.0.0/16"],
                    private_ip="198.18.0.1", backend="wireguard")


def remote(cluster: str, subnets: list[str], ip: str, key: Key | None = None,
           port: int = 5871) -> NATEndpointInfo:
    k = base64.b64encode((key or Key.generate()).public_key().raw).decode()
    ep = Endpoint(cluster_id=cluster, cable_name="cable", subnets=subnets, private_ip=ip,
                  backend="wireguard", backend_config={"publicKey": k, "udp-port": str(port)})
    return NATEndpointInfo(endpoint=ep, use_ip=ip, use_nat=False)


def strongswan(ip: FakeIP) -> None:
    """What charon installs by default: its routes in table 220 (proto static, on eth0) and
    rule 220 (no protocol of ours)."""
    ip.routes[(TABLE, "10.50.0.0/16")] = {"dev": "eth0", "type": "unicast",
                                          "protocol": "static", "prefsrc": "198.18.0.1"}
    ip.rules.add(("-4", 220, TABLE, "static"))


def peer_of(d: WireGuardDriver, key: Key) -> Peer:
    """The peer as the device holds it now (the memory backend copies on every change)."""
    dev = d.device
    assert isinstance(dev, FakeDevice)
    peer = dev.mem.devices[DEVICE].peer(key.public_key())
    assert peer is not None
    return peer


def table(ip: FakeIP) -> dict[str, tuple[str, str]]:
    return {dst: (r["dev"], r["protocol"]) for (t, dst), r in ip.routes.items() if t == TABLE}


@pytest.fixture
def ip() -> FakeIP:
    return FakeIP(ADDRESSES)


@pytest.fixture
def drivers(tmp_path: Path, ip: FakeIP) -> Iterator[list[WireGuardDriver]]:
    made: list[WireGuardDriver] = []
    yield made
    for d in made:
        d.close()


def start(drivers: list[WireGuardDriver], tmp_path: Path, ip: FakeIP,
          device: str = DEVICE, answer_first: bool = True) -> WireGuardDriver:
    d = fake_driver(local(), tmp_path / device, ADDRESSES, device=device, ip=ip)
    if not answer_first:
        d.cfg.answer_first_wait = 0
    drivers.append(d)
    d.init()
    return d


# --- routes and rules ---------------------------------------------------------------------


def test_ownership_sync_and_status_read_leave_strongswans_routes(
        tmp_path: Path, ip: FakeIP, drivers: list[WireGuardDriver]) -> None:
    strongswan(ip)
    d = start(drivers, tmp_path, ip)
    d.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2"))
    d.mark_synced()  # now unknown routes of ours go: strongSwan's are not ours
    d.get_connections()
    d.resync()
    assert table(ip) == {"10.50.0.0/16": ("eth0", "static"), "10.2.0.0/16": (DEVICE, PROTO)}
    # strongSwan's rule serves our table already: no second rule.
    assert {r for r in ip.rules if r[0] == "-4"} == {("-4", 220, TABLE, "static")}


def test_ownership_cleanup_removes_only_ours_and_not_strongswans_rule(
        tmp_path: Path, ip: FakeIP, drivers: list[WireGuardDriver]) -> None:
    strongswan(ip)
    d = start(drivers, tmp_path, ip)
    d.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2"))
    d.mark_synced()
    d.cleanup(remove_key=True)
    assert table(ip) == {"10.50.0.0/16": ("eth0", "static")}
    assert ("-4", 220, TABLE, "static") in ip.rules
    # Our own IPv6 rule goes: that table is empty.
    assert not [r for r in ip.rules if r[3] == PROTO]


def test_ownership_our_rule_stays_while_others_routes_use_the_table(
        tmp_path: Path, ip: FakeIP, drivers: list[WireGuardDriver]) -> None:
    d = start(drivers, tmp_path, ip)
    assert ("-4", 220, TABLE, PROTO) in ip.rules
    strongswan_route = {"dev": "eth0", "type": "unicast", "protocol": "static"}
    ip.routes[(TABLE, "10.50.0.0/16")] = strongswan_route
    d.cleanup()
    assert ("-4", 220, TABLE, PROTO) in ip.rules  # removing it would cut 10.50.0.0/16
    assert ("-6", 220, TABLE, PROTO) not in ip.rules


def test_ownership_a_destination_another_owner_routes_is_not_taken(
        tmp_path: Path, ip: FakeIP, drivers: list[WireGuardDriver]) -> None:
    strongswan(ip)
    d = start(drivers, tmp_path, ip)
    d.mark_synced()
    d.connect_to_endpoint(remote("cluster2", ["10.50.0.0/16", "10.2.0.0/16"], "198.18.0.2"))
    d.get_connections()
    d.resync()
    assert table(ip)["10.50.0.0/16"] == ("eth0", "static")
    assert table(ip)["10.2.0.0/16"] == (DEVICE, PROTO)


def test_ownership_two_devices_share_the_table_without_fighting(
        tmp_path: Path, ip: FakeIP, drivers: list[WireGuardDriver]) -> None:
    a = start(drivers, tmp_path, ip, "subwg0")
    b = start(drivers, tmp_path, ip, "subwg1")
    a.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2"))
    b.connect_to_endpoint(remote("cluster3", ["10.3.0.0/16"], "198.18.0.3"))
    a.mark_synced()
    b.mark_synced()
    for _ in range(2):
        for d in (a, b):
            d.get_connections()
            d.resync()
    want = {"10.2.0.0/16": ("subwg0", PROTO), "10.3.0.0/16": ("subwg1", PROTO)}
    assert table(ip) == want
    assert len([r for r in ip.rules if r[0] == "-4"]) == 1
    a.cleanup()
    assert table(ip) == {"10.3.0.0/16": ("subwg1", PROTO)}
    assert ("-4", 220, TABLE, PROTO) in ip.rules  # subwg1 still needs it
    b.get_connections()
    assert table(ip) == {"10.3.0.0/16": ("subwg1", PROTO)}
    b.cleanup()
    assert table(ip) == {}
    assert not ip.rules


def test_ownership_routes_of_an_older_version_on_our_device_are_adopted(
        tmp_path: Path, ip: FakeIP, drivers: list[WireGuardDriver]) -> None:
    """Routes written before the protocol mark (proto boot, our device) keep the tunnel up
    across the upgrade and become ours."""
    ip.routes[(TABLE, "10.2.0.0/16")] = {"dev": DEVICE, "type": "unicast", "protocol": "3",
                                         "prefsrc": "10.1.0.1"}
    d = start(drivers, tmp_path, ip)
    d.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2"))
    assert table(ip) == {"10.2.0.0/16": (DEVICE, PROTO)}


# --- the SNAT exemption across a restart ------------------------------------------------


def test_nft_remote_set_is_kept_until_synced_after_a_restart(
        tmp_path: Path, ip: FakeIP, drivers: list[WireGuardDriver]) -> None:
    first = start(drivers, tmp_path, ip)
    first.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2"))
    nft = first.nft
    assert isinstance(nft, FakeNft)
    assert nft.sets() is not None
    assert nft.sets()["remote4"] == {"10.2.0.0/16"}  # type: ignore[index]
    first.close()  # a restart: the next driver finds the table as it was
    second = fake_driver(local(), tmp_path / DEVICE, ADDRESSES, ip=ip)
    drivers.append(second)
    second.nft = nft
    assert isinstance(first.device, FakeDevice)
    second.device = first.device
    before = len(nft.written)
    second.init()  # the store is unreachable: nothing is connected yet
    second.resync()
    second.get_connections()
    assert nft.sets()["remote4"] == {"10.2.0.0/16"}  # type: ignore[index]
    assert len(nft.written) > before
    assert all("10.2.0.0/16" in body for body in nft.written[before:])
    second.mark_synced()  # the store said cluster2 is gone: now it goes
    assert nft.sets()["remote4"] == set()  # type: ignore[index]


# --- roaming ---------------------------------------------------------------------------------


def test_roaming_a_peers_observed_endpoint_stands_across_resyncs(
        tmp_path: Path, ip: FakeIP, drivers: list[WireGuardDriver]) -> None:
    d = start(drivers, tmp_path, ip, answer_first=False)  # endpoints from the first write
    key = Key.generate()
    d.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2", key))
    d.mark_synced()
    # The peer is behind NAT: its packets come from another port; WireGuard roams there.
    roamed = UDPAddr(ipaddress.ip_address("198.18.0.2"), 40123)
    peer_of(d, key).endpoint = roamed
    d.resync()
    d.get_connections()
    d.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2", key))
    assert peer_of(d, key).endpoint == roamed
    # A new published endpoint is still applied; and then roaming stands again.
    d.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.7", key))
    assert str(peer_of(d, key).endpoint) == "198.18.0.7:5871"
    peer_of(d, key).endpoint = roamed
    d.resync()
    assert peer_of(d, key).endpoint == roamed


def test_roaming_a_new_published_endpoint_is_applied_by_read_and_diff(
        tmp_path: Path, ip: FakeIP, drivers: list[WireGuardDriver]) -> None:
    # Not synced: every change reads and diffs. A new peer that answers first would have
    # no endpoint for its first second (test_driver_answer_first.py): not the subject here.
    d = start(drivers, tmp_path, ip, answer_first=False)
    key = Key.generate()
    d.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2", key))
    peer_of(d, key).endpoint = UDPAddr(ipaddress.ip_address("198.18.0.2"), 40123)
    d.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2", key))
    assert str(peer_of(d, key).endpoint) == "198.18.0.2:40123"
    d.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2", key, port=6000))
    assert str(peer_of(d, key).endpoint) == "198.18.0.2:6000"


# --- IPv6 off --------------------------------------------------------------------------------


def test_ipv6_off_the_driver_works_ipv4_only(
        tmp_path: Path, ip: FakeIP, drivers: list[WireGuardDriver]) -> None:
    ip.ipv6 = False  # every `ip -6` fails, as with ipv6.disable=1
    d = start(drivers, tmp_path, ip)
    d.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16", "fd00:2::/48"], "198.18.0.2"))
    d.mark_synced()
    conns = d.get_connections()
    d.resync()
    assert table(ip) == {"10.2.0.0/16": (DEVICE, PROTO)}
    assert ip.rules == {("-4", 220, TABLE, PROTO)}
    assert [c.status.value for c in conns] == ["connecting"]
    d.cleanup()
    assert not ip.rules


def test_ipv6_a_failed_set_up_leaves_no_device_behind(
        tmp_path: Path, ip: FakeIP) -> None:
    ip.fail_rules = True
    d = fake_driver(local(), tmp_path, ADDRESSES, ip=ip)
    dev = d.device
    assert isinstance(dev, FakeDevice)
    with pytest.raises(RoutingError):
        d.init()
    assert DEVICE not in dev.mem.devices
    assert d.nft.exists() is False
    assert table(ip) == {}


# --- the device ------------------------------------------------------------------------------


def test_ownership_a_device_with_another_key_is_not_adopted(
        tmp_path: Path, ip: FakeIP) -> None:
    """A `subwg0` made by someone else (wg-quick, say): its key and peers stay as they are."""
    d = fake_driver(local(), tmp_path, ADDRESSES, ip=ip)
    dev = d.device
    assert isinstance(dev, FakeDevice)
    theirs, their_peer = Key.generate(), Key.generate().public_key()
    dev.mem.add(DEVICE)
    dev.mem.configure(DEVICE, WGConfig(private_key=theirs, peers=[
        PeerConfig(public_key=their_peer, allowed_ips=[ipaddress.ip_network("10.9.0.0/16")])]))
    with pytest.raises(DeviceError, match="not ours"):
        d.init()
    held = dev.mem.devices[DEVICE]
    assert held.private_key == theirs.clamped()
    assert [p.public_key for p in held.peers] == [their_peer]
    assert table(ip) == {}
    assert not ip.rules


def test_ipv6_off_cleanup_without_init_works_ipv4_only(
        tmp_path: Path, ip: FakeIP, drivers: list[WireGuardDriver]) -> None:
    """`wgcable cleanup` makes a driver and cleans up without init()."""
    d = start(drivers, tmp_path, ip)
    d.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2"))
    d.close()
    ip.ipv6 = False  # as after a reboot with ipv6.disable=1
    fresh = fake_driver(local(), tmp_path / DEVICE, ADDRESSES, ip=ip)
    fresh.cleanup()
    assert table(ip) == {}
    assert not [r for r in ip.rules if r[0] == "-4"]
