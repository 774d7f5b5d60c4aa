"""Many peer changes in one pass: the peers' write runs on a thread of its own while the
nftables table, routes and rules are written (``driver._Alongside``). The same state must
result as when written one after the other, and a failed peers' write must still be raised
and healed by the next pass."""

from __future__ import annotations

import base64
import gc
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_kernel import DEVICE, FakeDevice, FakeIP, fake_driver

from wgcable.cable.types import Endpoint, NATEndpointInfo
from wgcable.cable.wireguard import driver as driver_mod
from wgcable.cable.wireguard.driver import WireGuardDriver
from wgcable.wgctrl import Key
from wgcable.wgctrl.errors import ProtocolError

ADDRESSES = [("eth0", "198.18.0.1", 24), ("cni0", "10.1.0.1", 24)]
MANY = driver_mod.ALONGSIDE_PEERS + 6


def remote(i: int) -> NATEndpointInfo:
    key = base64.b64encode(Key.generate().public_key().raw).decode()
    ip = f"198.18.{1 + i // 200}.{i % 200 + 2}"
    ep = Endpoint(cluster_id=f"c{i}", cable_name="cable",
                  subnets=[f"10.{100 + i // 250}.{i % 250}.0/24"], private_ip=ip,
                  backend="wireguard", backend_config={"publicKey": key})
    return NATEndpointInfo(endpoint=ep, use_ip=ip, use_nat=False)


class Recorder:
    """Wraps the device's configure: the threads it ran on; fails while ``failing``."""

    def __init__(self, dev: FakeDevice) -> None:
        self.threads: list[str] = []
        self.failing = False
        self._configure = dev.client.configure
        dev.client.configure = self.configure  # type: ignore[method-assign]

    def configure(self, name: str, config: object) -> None:
        self.threads.append(threading.current_thread().name)
        if self.failing:
            raise ProtocolError(name, "configure", 5, None, "injected")
        self._configure(name, config)  # type: ignore[arg-type]


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[WireGuardDriver]:
    local = Endpoint(cluster_id="cluster1", cable_name="cable", subnets=["10.1.0.0/16"],
                     private_ip="198.18.0.1", backend="wireguard")
    d = fake_driver(local, tmp_path, ADDRESSES)
    d.init()
    d.mark_synced()
    yield d
    d.close()


def on_device(d: WireGuardDriver) -> set[str]:
    dev = d.device
    assert isinstance(dev, FakeDevice)
    return {base64.b64encode(p.public_key.raw).decode() for p in dev.mem.devices[DEVICE].peers}


def routes(d: WireGuardDriver) -> set[str]:
    assert isinstance(d.ip, FakeIP)
    return {dst for table, dst in d.ip.routes if table == "220"}


def test_many_peers_are_written_alongside_the_routes_to_the_same_state(
        driver: WireGuardDriver) -> None:
    dev = driver.device
    assert isinstance(dev, FakeDevice)
    rec = Recorder(dev)
    infos = [remote(i) for i in range(MANY)]
    with driver.batch():
        for info in infos:
            driver.connect_to_endpoint(info)
    assert rec.threads == ["peers-write"]  # the path under test was taken
    assert on_device(driver) == {i.endpoint.backend_config["publicKey"] for i in infos}
    assert len(routes(driver)) == MANY
    # One change is written in the caller's thread, as before.
    driver.disconnect_from_endpoint(infos[0].endpoint)
    assert rec.threads[-1] == threading.current_thread().name
    with driver.batch():
        for info in infos[1:]:
            driver.disconnect_from_endpoint(info.endpoint)
    assert rec.threads[-1] == "peers-write"
    assert on_device(driver) == set()
    assert routes(driver) == set()


def test_a_failed_peers_write_alongside_is_raised_and_the_next_pass_heals_it(
        driver: WireGuardDriver) -> None:
    dev = driver.device
    assert isinstance(dev, FakeDevice)
    rec = Recorder(dev)
    rec.failing = True
    infos = [remote(i) for i in range(MANY)]

    def connect_all() -> None:
        with driver.batch():
            for info in infos:
                driver.connect_to_endpoint(info)

    with pytest.raises(ProtocolError, match="injected"):
        connect_all()
    assert "peers-write" in rec.threads
    assert on_device(driver) == set()
    assert len(routes(driver)) == MANY  # written meanwhile: harmless without the peers
    rec.failing = False
    driver.get_connections()  # the status read restores the missing peers
    assert on_device(driver) == {i.endpoint.backend_config["publicKey"] for i in infos}
    assert len(routes(driver)) == MANY


def test_the_collector_waits_for_a_batch_and_a_status_read_and_comes_back(
        driver: WireGuardDriver) -> None:
    assert gc.isenabled()
    seen: list[bool] = []
    dev = driver.device
    assert isinstance(dev, FakeDevice)
    configure = dev.client.configure

    def record(name: str, config: object) -> None:
        seen.append(gc.isenabled())
        configure(name, config)  # type: ignore[arg-type]

    dev.client.configure = record  # type: ignore[method-assign]
    with driver.batch():
        driver.connect_to_endpoint(remote(0))
        seen.append(gc.isenabled())
    assert seen == [False, False]
    assert gc.isenabled()
    dev.client.configure = configure  # type: ignore[method-assign]
    # Back on when the block fails too.
    with pytest.raises(RuntimeError, match="boom"), driver.batch():
        raise RuntimeError("boom")
    assert gc.isenabled()
    driver.get_connections()
    assert gc.isenabled()


def test_the_collector_turned_off_by_someone_else_stays_off(driver: WireGuardDriver) -> None:
    gc.disable()
    try:
        with driver.batch():
            driver.connect_to_endpoint(remote(0))
        driver.get_connections()
        assert not gc.isenabled()
    finally:
        gc.enable()
