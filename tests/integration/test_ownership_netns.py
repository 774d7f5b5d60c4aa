"""Ownership on a shared host, roaming and IPv6 off, with real devices and real routes in
namespaces (wireguard-go: what is checked is routes, rules and endpoints, not the kind of
device).

- Two drivers with different devices share table 220 with a strongSwan-style route and
  never remove each other's routes, nor strongSwan's.
- A peer whose packets come from another port than it published (NAT) keeps the endpoint
  WireGuard roamed to across resyncs.
- In a namespace with IPv6 disabled, a dual-stack remote still gets its IPv4 routes.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wgcable.cable import Endpoint, NATEndpointInfo
from wgcable.cable.wireguard.config import WireGuardConfig
from wgcable.cable.wireguard.driver import WireGuardDriver
from wgcable.lab.netns import Namespace, WireGuardGo, veth_pair
from wgcable.wgctrl import Key, Peer, PeerConfig, UDPAddr
from wgcable.wgctrl.types import Config

from .labtools import wait_for

pytestmark = pytest.mark.netns

_seq = itertools.count()


@pytest.fixture
def namespaces() -> Iterator[Callable[[], Namespace]]:
    made: list[Namespace] = []

    def make() -> Namespace:
        ns = Namespace(f"wgco-{os.getpid()}-{next(_seq)}").create()
        made.append(ns)
        return ns

    yield make
    for ns in reversed(made):
        ns.delete()


@pytest.fixture
def drivers() -> Iterator[list[WireGuardDriver]]:
    made: list[WireGuardDriver] = []
    yield made
    for d in made:
        d.cleanup(remove_key=True)  # stops its wireguard-go by PID


@pytest.fixture
def devices() -> Iterator[list[WireGuardGo]]:
    made: list[WireGuardGo] = []
    yield made
    for d in made:
        d.stop()


def local(ip: str) -> Endpoint:
    return Endpoint(cluster_id="cluster1", cable_name="cable", subnets=["10.1.0.0/16"],
                    private_ip=ip, backend="wireguard")


def remote(cluster: str, subnets: list[str], ip: str, key: Key, port: int) -> NATEndpointInfo:
    ep = Endpoint(cluster_id=cluster, cable_name="cable", subnets=subnets, private_ip=ip,
                  backend="wireguard",
                  backend_config={"publicKey": key.public_key().base64(),
                                  "udp-port": str(port)})
    return NATEndpointInfo(endpoint=ep, use_ip=ip, use_nat=False)


def start(drivers: list[WireGuardDriver], ns: Namespace, tmp: Path, device: str,
          port: int, ip: str = "198.18.0.1") -> WireGuardDriver:
    cfg = WireGuardConfig(device=device, netns=ns.name, state_dir=str(tmp / device),
                          backend="userspace", port=port)
    d = WireGuardDriver(local(ip), cfg)
    drivers.append(d)  # before init: the teardown cleans up a half-made one too
    d.init()
    return d


def table(ns: Namespace, fam: str = "-4") -> dict[str, tuple[str, str]]:
    routes = json.loads(ns.run("ip", "-j", "-N", fam, "route", "show", "table", "220") or "[]")
    return {r["dst"]: (r["dev"], str(r.get("protocol", "boot"))) for r in routes}


def rules(ns: Namespace) -> list[str]:
    return [str(r.get("protocol", "")) for r in json.loads(ns.run("ip", "-j", "-N", "rule"))
            if r.get("priority") == 220]


def test_ownership_two_devices_and_strongswan_share_table_220(
        namespaces: Callable[[], Namespace], drivers: list[WireGuardDriver],
        tmp_path: Path) -> None:
    ns = namespaces()
    ns.run("ip", "link", "add", "wgco0", "type", "veth", "peer", "name", "wgco1")
    ns.run("ip", "link", "set", "wgco0", "up")
    ns.run("ip", "addr", "add", "198.18.0.1/24", "dev", "wgco0")
    ns.run("ip", "addr", "add", "10.1.0.1/24", "dev", "lo")
    # What strongSwan's charon installs by default: table 220, rule 220.
    ns.run("ip", "route", "add", "10.50.0.0/16", "dev", "wgco0", "table", "220",
           "proto", "static")
    a = start(drivers, ns, tmp_path, "subwg0", 5871)
    b = start(drivers, ns, tmp_path, "subwg1", 5872)
    a.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2", Key.generate(),
                                 5871))
    b.connect_to_endpoint(remote("cluster3", ["10.3.0.0/16"], "198.18.0.3", Key.generate(),
                                 5871))
    a.mark_synced()
    b.mark_synced()
    for _ in range(2):  # what the engine does: status reads and resyncs, in turns
        for d in (a, b):
            d.get_connections()
            d.resync()
    assert table(ns) == {"10.50.0.0/16": ("wgco0", "4"), "10.2.0.0/16": ("subwg0", "87"),
                         "10.3.0.0/16": ("subwg1", "87")}
    assert rules(ns) == ["87"]  # one rule, shared
    a.cleanup(remove_key=True)
    drivers.remove(a)
    b.get_connections()
    assert table(ns) == {"10.50.0.0/16": ("wgco0", "4"), "10.3.0.0/16": ("subwg1", "87")}
    assert rules(ns) == ["87"]
    b.cleanup(remove_key=True)
    drivers.remove(b)
    assert table(ns) == {"10.50.0.0/16": ("wgco0", "4")}
    assert rules(ns) == ["87"]  # strongSwan's route still needs a rule for table 220


def test_roaming_a_natted_peers_observed_port_survives_resyncs(
        namespaces: Callable[[], Namespace], drivers: list[WireGuardDriver],
        devices: list[WireGuardGo], tmp_path: Path) -> None:
    """The remote publishes port 51999 (what it thinks a NAT maps), but its packets come
    from 51820: after its handshake, our device sends there, and a resync must not put
    51999 back (nothing answers there)."""
    here, there = namespaces(), namespaces()
    veth_pair(here, "wgco0", there, "wgco1")
    here.run("ip", "addr", "add", "198.18.0.1/24", "dev", "wgco0")
    there.run("ip", "addr", "add", "198.18.0.2/24", "dev", "wgco1")
    d = start(drivers, here, tmp_path, "subwg0", 5871)
    key = Key.generate()
    d.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2", key, 51999))
    d.mark_synced()
    dev = WireGuardGo(there, "wgr0")
    devices.append(dev)
    real = UDPAddr.parse("198.18.0.2:51820")
    with dev.client() as c:
        c.configure("wgr0", Config(private_key=key, listen_port=51820, peers=[PeerConfig(
            public_key=d.public_key, endpoint=UDPAddr.parse("198.18.0.1:5871"),
            persistent_keepalive=1, allowed_ips=[])]))

    def our_peer() -> Peer | None:
        return d.device.client.device("subwg0").peer(key.public_key())

    wait_for(lambda: (p := our_peer()) is not None and p.endpoint == real, 15,
             "our device roaming to the peer's real port")
    for _ in range(2):
        d.resync()
        d.get_connections()
        d.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2", key, 51999))
    peer = our_peer()
    assert peer is not None
    assert peer.endpoint == real
    # A new published endpoint is still applied.
    d.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16"], "198.18.0.2", key, 52000))
    peer = our_peer()
    assert peer is not None
    assert str(peer.endpoint) == "198.18.0.2:52000"


def test_ipv6_off_in_the_namespace_the_driver_works_ipv4_only(
        namespaces: Callable[[], Namespace], drivers: list[WireGuardDriver],
        tmp_path: Path) -> None:
    ns = namespaces()  # IPv6 off here only: never in the root namespace
    ns.run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
           "net.ipv6.conf.default.disable_ipv6=1")
    ns.run("ip", "link", "add", "wgco0", "type", "veth", "peer", "name", "wgco1")
    ns.run("ip", "link", "set", "wgco0", "up")
    ns.run("ip", "addr", "add", "198.18.0.1/24", "dev", "wgco0")
    d = start(drivers, ns, tmp_path, "subwg0", 5871)
    d.connect_to_endpoint(remote("cluster2", ["10.2.0.0/16", "fd00:2::/48"], "198.18.0.2",
                                 Key.generate(), 5871))
    d.mark_synced()
    d.get_connections()
    d.resync()
    assert table(ns) == {"10.2.0.0/16": ("subwg0", "87")}
    d.cleanup(remove_key=True)
    drivers.remove(d)
    assert "subwg0" not in ns.run("ip", "link")
    assert table(ns) == {}
