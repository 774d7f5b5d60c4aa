"""Hijack by a remote (issue 15): rule 220 runs before the main table, so a remote subnet
that covers a neighbour of ours, our nameserver, the broker or a protected CIDR would pull
that traffic into its tunnel. Such an endpoint is refused (an error connection naming the
subnet and what it covers); the other clusters are unaffected. The kernel side is faked
(tests/unit/fake_kernel.py)."""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_kernel import fake_driver

from wgcable.agent.config import load_config
from wgcable.cable.types import ConnectionStatus, Endpoint, NATEndpointInfo
from wgcable.cable.wireguard.desired import EndpointRejectedError
from wgcable.cable.wireguard.driver import WireGuardDriver
from wgcable.wgctrl import Key

# eth1 is a neighbour network: 192.168.50.0/24, of which this host is only .7.
ADDRESSES = [("eth0", "198.18.0.1", 24), ("cni0", "10.1.0.1", 24),
             ("eth1", "192.168.50.7", 24), ("subwg0", "100.64.0.1", 10)]


def remote(cluster: str, subnet: str, ip: str) -> NATEndpointInfo:
    key = base64.b64encode(Key.generate().public_key().raw).decode()
    ep = Endpoint(cluster_id=cluster, cable_name="cable", subnets=[subnet], private_ip=ip,
                  backend="wireguard", backend_config={"publicKey": key})
    return NATEndpointInfo(endpoint=ep, use_ip=ip, use_nat=False)


def start(tmp_path: Path, resolv: str = "", **cfg: object) -> WireGuardDriver:
    local = Endpoint(cluster_id="cluster1", cable_name="cable", subnets=["10.1.0.0/16"],
                     private_ip="198.18.0.1", backend="wireguard")
    d = fake_driver(local, tmp_path / "state", ADDRESSES)
    if resolv:  # else none (fake_driver reads no resolv.conf)
        conf = tmp_path / "resolv.conf"
        conf.write_text(resolv)
        d.cfg.resolv_conf = str(conf)
    for k, v in cfg.items():
        setattr(d.cfg, k, v)
    d.init()
    return d


@pytest.fixture
def drivers() -> Iterator[list[WireGuardDriver]]:
    made: list[WireGuardDriver] = []
    yield made
    for d in made:
        d.close()


def refused(d: WireGuardDriver, info: NATEndpointInfo) -> EndpointRejectedError:
    with pytest.raises(EndpointRejectedError) as exc:
        d.connect_to_endpoint(info)
    err = exc.value
    assert err.field == "subnets"
    [conn] = [c for c in d.get_connections() if c.endpoint.cluster_id == info.endpoint.cluster_id]
    assert conn.status == ConnectionStatus.ERROR
    assert "subnets" in conn.status_message
    return err


def test_hostile_subnet_inside_a_directly_connected_network_is_refused(
    tmp_path: Path, drivers: list[WireGuardDriver]
) -> None:
    d = start(tmp_path)
    drivers.append(d)
    d.connect_to_endpoint(remote("cluster2", "10.2.0.0/16", "198.18.0.2"))
    # Not this host's address (.7), but its neighbours': a more specific route takes them.
    err = refused(d, remote("cluster3", "192.168.50.128/25", "198.18.0.3"))
    assert err.value == "192.168.50.128/25"
    assert "directly connected network 192.168.50.0/24 on eth1" in str(err)
    by_id = {c.endpoint.cluster_id: c for c in d.get_connections()}
    assert by_id["cluster2"].status != ConnectionStatus.ERROR  # the others are unaffected
    assert {str(r.dst) for r in d.table.routes()} == {"10.2.0.0/16"}


def test_hostile_subnet_over_our_own_wireguard_device_is_not_a_neighbour(
    tmp_path: Path, drivers: list[WireGuardDriver]
) -> None:
    d = start(tmp_path)
    drivers.append(d)
    d.connect_to_endpoint(remote("cluster2", "100.64.5.0/24", "198.18.0.2"))


def test_hostile_subnet_covering_a_nameserver_is_refused(
    tmp_path: Path, drivers: list[WireGuardDriver]
) -> None:
    d = start(tmp_path, "# comment\nsearch example.com\nnameserver 10.96.0.10\n")
    drivers.append(d)
    err = refused(d, remote("cluster3", "10.96.0.0/12", "198.18.0.3"))
    assert "nameserver 10.96.0.10" in str(err)


def test_hostile_subnet_covering_a_protected_cidr_or_the_broker_is_refused(
    tmp_path: Path, drivers: list[WireGuardDriver]
) -> None:
    cfg = load_config(["--store", "kubernetes", "--cluster-id", "cluster1", "--cluster-cidr",
                       "10.1.0.0/16", "--private-ip", "198.18.0.1",
                       "--protected-cidrs", "172.16.0.0/12"],
                      {"WGCABLE_PROTECTED_CIDRS": "192.0.2.0/24"},
                      detect_health_check_ip=lambda _: None)
    protected = cfg.driver_config(broker=[ipaddress.ip_address("203.0.113.10")]).protected
    d = start(tmp_path, protected=protected)
    drivers.append(d)
    assert "protected CIDR 172.16.0.0/12" in str(
        refused(d, remote("cluster3", "172.20.0.0/16", "198.18.0.3")))
    assert "broker's address 203.0.113.10" in str(
        refused(d, remote("cluster4", "203.0.113.0/24", "198.18.0.4")))


def test_protected_cidrs_from_the_environment_and_the_config_file(tmp_path: Path) -> None:
    base = ["--store", "/srv/store", "--cluster-id", "east", "--cluster-cidr", "10.10.0.0/16",
            "--private-ip", "192.0.2.10"]
    env = load_config(base, {"WGCABLE_PROTECTED_CIDRS": "172.16.0.0/12, 192.0.2.0/24"},
                      detect_health_check_ip=lambda _: None)
    assert [str(n) for n in env.protected_cidrs] == ["172.16.0.0/12", "192.0.2.0/24"]
    f = tmp_path / "agent.yaml"
    f.write_text("protected_cidrs: [100.64.0.0/10]\n")
    file = load_config([*base, "--config", str(f)], {}, detect_health_check_ip=lambda _: None)
    assert [str(n) for n in file.protected_cidrs] == ["100.64.0.0/10"]


def test_host_facts_are_read_at_start_and_resync_not_per_endpoint(
    tmp_path: Path, drivers: list[WireGuardDriver], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = start(tmp_path)
    drivers.append(d)
    reads: list[str] = []
    real = d.ip.addresses

    def addresses() -> list[tuple[str, str, int]]:
        reads.append("addr")
        return real()

    monkeypatch.setattr(d.ip, "addresses", addresses)
    for i in range(2, 12):
        d.connect_to_endpoint(remote(f"cluster{i}", f"10.{i}.0.0/16", f"198.18.0.{i}"))
    assert reads == []
    d.resync()
    assert reads == ["addr"]
