"""Key rotation (`wgcable rotate-key`): the driver switches its device first, then the new
key is published; remotes replace the peer in place and initiate at once; a crash at any
step is finished or undone at the next start; the engine publishes, refuses or waits.

The device, `ip` and `nft` are faked (tests/unit/fake_kernel.py); the real tunnels, with
pings across many rotations and both stores, are in tests/integration/test_agent_e2e.py
and tests/broker/test_broker.py (`-k rotation`).
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest
from fake_kernel import DEVICE, FakeIP, fake_driver
from test_engine import FakeDriver, FakeStore, local_ep, make_engine, remote
from test_engine_failover import FakeElector
from test_ownership import ADDRESSES, local, peer_of
from test_ownership import remote as remote_info

from wgcable.cable.wireguard import identity
from wgcable.cable.wireguard.device import DeviceError
from wgcable.cable.wireguard.driver import WireGuardDriver
from wgcable.cable.wireguard.firstcontact import FirstContact
from wgcable.cli.main import main
from wgcable.ha.elector import Elector, Role
from wgcable.store.base import StoreUnavailableError
from wgcable.wgctrl import Config, Key, Peer, UDPAddr, read_key_file, write_key_file


def make(tmp_path: Path, answer_first_wait: float = 0.0) -> WireGuardDriver:
    d = fake_driver(local(), tmp_path, ADDRESSES, ip=FakeIP(ADDRESSES))
    d.cfg.answer_first_wait = answer_first_wait
    return d


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[WireGuardDriver]:
    d = make(tmp_path)
    d.init()
    yield d
    d.close()


def mem(d: WireGuardDriver) -> object:
    return d.device.mem  # type: ignore[attr-defined]


def applied(d: WireGuardDriver) -> list[Config]:
    return [c for _, c in d.device.mem.applied]  # type: ignore[attr-defined]


def device_key(d: WireGuardDriver) -> Key | None:
    return d.device.mem.devices[DEVICE].private_key  # type: ignore[attr-defined, no-any-return]


def files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(DEVICE))


# --- the driver -----------------------------------------------------------------------------


def test_rotation_switches_the_device_first_then_reports_the_key(
        driver: WireGuardDriver, tmp_path: Path) -> None:
    keys = [Key.generate() for _ in range(3)]
    with driver.batch():
        for i, k in enumerate(keys, start=2):
            driver.connect_to_endpoint(remote_info(f"cluster{i}", [f"10.{i}.0.0/16"],
                                                   f"198.18.0.{i}", k))
    driver.mark_synced()
    peers_before = {p.public_key: p.allowed_ips for p in
                    driver.device.client.device(DEVICE).peers}
    routes_before = dict(driver.ip.routes)  # type: ignore[attr-defined]
    nft_writes = len(driver.nft.written)  # type: ignore[attr-defined]
    old = driver.public_key
    n = len(applied(driver))

    changes = driver.rotate_key()

    new = driver.public_key
    assert new != old
    assert changes == {"publicKey": new.base64()}
    assert device_key(driver) is not None
    assert device_key(driver).public_key() == new  # type: ignore[union-attr]
    assert read_key_file(identity.key_path(str(tmp_path), DEVICE)).public_key() == new
    assert files(tmp_path) == [f"{DEVICE}.key"]  # the staged .next was renamed over it
    # Two changes: the key alone; then every peer's keepalive off and on, which makes each
    # initiate at once (before anything is published). Peers, routes, nft: untouched.
    key_change, kick = applied(driver)[n:]
    assert key_change.private_key is not None
    assert key_change.peers == []
    assert [(pc.public_key, pc.update_only, pc.persistent_keepalive) for pc in kick.peers] \
        == [(k, True, v) for k in peers_before for v in (0, driver.cfg.keepalive)]
    assert {p.public_key: p.allowed_ips for p in
            driver.device.client.device(DEVICE).peers} == peers_before
    assert driver.ip.routes == routes_before  # type: ignore[attr-defined]
    assert len(driver.nft.written) == nft_writes  # type: ignore[attr-defined]
    # Later changes and status reads go on with the new key (no drift, nothing re-written).
    n = len(applied(driver))
    driver.get_connections()
    driver.resync()
    assert applied(driver)[n:] == []


def test_rotation_failed_on_the_device_keeps_the_old_key_and_drops_the_staged_one(
        driver: WireGuardDriver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = driver.public_key
    real = driver.device.client.configure
    failed: list[Config] = []

    def configure(name: str, config: Config) -> None:
        if config.private_key is not None and not failed:
            failed.append(config)
            raise OSError("the daemon went away")
        real(name, config)

    monkeypatch.setattr(driver.device.client, "configure", configure)
    with pytest.raises(OSError, match="went away"):
        driver.rotate_key()
    assert failed
    assert driver.public_key == old
    assert device_key(driver) is not None
    assert device_key(driver).public_key() == old  # type: ignore[union-attr]
    assert files(tmp_path) == [f"{DEVICE}.key"]
    assert read_key_file(identity.key_path(str(tmp_path), DEVICE)).public_key() == old


# --- a rotation interrupted by a crash -------------------------------------------------------


def crashed(tmp_path: Path, on_device: str) -> tuple[WireGuardDriver, Key, Key]:
    """A state directory as a crash mid-rotation leaves it: the key file's key, the staged
    ``.next`` key, and a device (``on_device``: "old", "next", "other" key, or "none")."""
    old, new = Key.generate(), Key.generate()
    write_key_file(identity.key_path(str(tmp_path), DEVICE), old)
    identity.stage_next(str(tmp_path), DEVICE, new)
    d = make(tmp_path)
    if on_device != "none":
        dev = d.device.mem.add(DEVICE)  # type: ignore[attr-defined]
        dev.private_key = {"old": old, "next": new, "other": Key.generate()}[on_device]
    return d, old, new


def test_rotation_interrupted_after_the_device_took_the_key_is_finished(
        tmp_path: Path) -> None:
    d, _, new = crashed(tmp_path, "next")
    d.init()
    try:
        assert d.public_key == new.public_key()
        assert d.local.backend_config["publicKey"] == new.public_key().base64()
        assert files(tmp_path) == [f"{DEVICE}.key"]
        assert read_key_file(identity.key_path(str(tmp_path), DEVICE)) == new
    finally:
        d.close()


@pytest.mark.parametrize("on_device", ["old", "none"])
def test_rotation_interrupted_before_the_device_took_the_key_is_dropped(
        tmp_path: Path, on_device: str) -> None:
    d, old, _ = crashed(tmp_path, on_device)
    d.init()
    try:
        assert d.public_key == old.public_key()
        assert files(tmp_path) == [f"{DEVICE}.key"]
        assert read_key_file(identity.key_path(str(tmp_path), DEVICE)) == old
    finally:
        d.close()


def test_rotation_staged_key_does_not_make_another_key_s_device_ours(tmp_path: Path) -> None:
    d, old, _ = crashed(tmp_path, "other")
    with pytest.raises(DeviceError, match="not ours"):
        d.init()
    assert read_key_file(identity.key_path(str(tmp_path), DEVICE)) == old


def test_rotation_cleanup_removes_the_staged_key_too(tmp_path: Path) -> None:
    d = make(tmp_path)
    d.init()
    identity.stage_next(str(tmp_path), DEVICE, Key.generate())
    d.cleanup(remove_key=True)
    assert files(tmp_path) == []


# --- the remote side: in place, initiating at once ---------------------------------------------


def test_rotation_of_a_remote_replaces_its_peer_in_place_and_initiates_at_once(
        tmp_path: Path) -> None:
    """With answer-first on and our key the greater, a new peer would wait for the remote
    to initiate; a remote that rotated already holds packets for us: ours initiates."""
    d = make(tmp_path, answer_first_wait=60)
    d.init()
    try:
        def smaller() -> Key:
            while (k := Key.generate()).public_key().raw > d.public_key.raw:
                pass
            return k

        k1, k2 = smaller(), smaller()
        d.connect_to_endpoint(remote_info("cluster2", ["10.2.0.0/16"], "198.18.0.2", k1))
        d.mark_synced()
        assert peer_of(d, k1).persistent_keepalive == 0  # a first contact: we answer first
        peer_of(d, k1).last_handshake = datetime.now(UTC)
        d.get_connections()  # the status read that sees the handshake
        routes = dict(d.ip.routes)  # type: ignore[attr-defined]
        n = len(applied(d))
        d.connect_to_endpoint(remote_info("cluster2", ["10.2.0.0/16"], "198.18.0.2", k2))
        [change] = applied(d)[n:]
        assert [(pc.public_key, pc.remove) for pc in change.peers] == [
            (k2.public_key(), False), (k1.public_key(), True)]
        assert peer_of(d, k2).persistent_keepalive == d.cfg.keepalive
        assert [str(n) for n in peer_of(d, k2).allowed_ips] == ["10.2.0.0/16"]
        assert d.ip.routes == routes  # type: ignore[attr-defined]
    finally:
        d.close()


def test_rotation_first_contact_answers_first_unless_the_key_replaces_a_live_tunnel() -> None:
    fc = FirstContact(0.5)
    fc.own_key = Key(b"\xff" * 32)  # the greater key: a new peer waits for the remote
    at = UDPAddr(ipaddress.ip_address("198.18.0.2"), 5871)
    new = Peer(public_key=Key(b"\x01" * 32), persistent_keepalive=10, endpoint=at)
    assert fc.shape(new, present=False, written=False).persistent_keepalive == 0
    rotated = Peer(public_key=Key(b"\x02" * 32), persistent_keepalive=10, endpoint=at)
    fc.replaces(rotated.public_key)
    assert fc.shape(rotated, present=False, written=False).persistent_keepalive == 10
    fc.keep_only({new.public_key})  # forgotten once no longer wanted
    assert fc.replacing == set()


# --- the engine --------------------------------------------------------------------------------


class RotatingDriver(FakeDriver):
    def __init__(self) -> None:
        super().__init__()
        self.rotations = 0

    def rotate_key(self) -> dict[str, str]:
        self.rotations += 1
        return {"publicKey": f"new-key-{self.rotations}"}


def test_rotation_engine_publishes_the_new_key_after_the_driver_switched() -> None:
    store = FakeStore({"c2": remote("c2")})
    engine, driver = make_engine(store, RotatingDriver())
    engine.reconcile()
    published = len(store.published)
    engine.request_key_rotation()
    engine._rotate_key()
    assert cast(RotatingDriver, driver).rotations == 1
    assert engine.local.backend_config["publicKey"] == "new-key-1"
    assert store.published[published:][-1].backend_config["publicKey"] == "new-key-1"
    assert not engine._rotate.is_set()


def test_rotation_engine_refuses_while_the_store_is_in_trouble() -> None:
    store = FakeStore({"c2": remote("c2")})
    engine, driver = make_engine(store, RotatingDriver())
    engine.reconcile()
    store.snapshot_error = StoreUnavailableError("the broker is down")
    with pytest.raises(StoreUnavailableError):
        engine.reconcile()
    engine.request_key_rotation()
    engine._rotate_key()
    assert cast(RotatingDriver, driver).rotations == 0
    assert not engine._rotate.is_set()  # refused, not kept for later
    assert engine.local.backend_config["publicKey"] == local_ep().backend_config["publicKey"]


def test_rotation_engine_waits_while_the_role_is_unknown_and_a_passive_one_publishes_nothing(
        ) -> None:
    store = FakeStore({"c2": remote("c2")})
    elector = FakeElector(Role.UNKNOWN)
    engine, driver = make_engine(store, RotatingDriver(), elector=cast(Elector, elector))
    engine._synced = True
    engine.request_key_rotation()
    engine._rotate_key()
    assert cast(RotatingDriver, driver).rotations == 0
    assert engine._rotate.is_set()  # still asked for: done once the role is known
    elector.role = Role.PASSIVE
    published = len(store.published)
    engine._drain_until = engine.clock() + 60  # just became passive: its tunnels drain
    engine._rotate_key()
    assert cast(RotatingDriver, driver).rotations == 0
    engine._drain_until = 0.0
    engine._rotate_key()
    assert cast(RotatingDriver, driver).rotations == 1
    assert store.published[published:] == []  # a passive gateway's Endpoint is withdrawn
    assert engine.local.backend_config["publicKey"] == "new-key-1"


def test_rotation_engine_refuses_a_driver_without_a_key() -> None:
    engine, _ = make_engine(FakeStore(), FakeDriver())
    engine.reconcile()
    engine.request_key_rotation()
    engine._rotate_key()
    assert not engine._rotate.is_set()


# --- wgcable rotate-key --------------------------------------------------------------------------

# An "agent": writes its status with key A, and on SIGUSR2 (if ``rotates``) with key B.
AGENT = """
import signal, sys, time
from wgcable.agent.statusfile import write_status_file
from wgcable.cable.types import Endpoint, GatewayStatus
def status(key):
    ep = Endpoint(cluster_id="c1", backend_config={"publicKey": key})
    write_status_file(sys.argv[1], GatewayStatus(local_endpoint=ep, ha_status="active"))
def rotate(*_):
    time.sleep(0.2)
    status("key-B")
signal.signal(signal.SIGUSR2, rotate if sys.argv[2] == "yes" else lambda *_: None)
status("key-A")
print("ready", flush=True)
time.sleep(30)
"""


@pytest.mark.parametrize("rotates", [True, False], ids=["rotates", "refuses"])
def test_rotation_command_signals_the_agent_and_waits_for_its_new_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], rotates: bool) -> None:
    agent = subprocess.Popen([sys.executable, "-c", AGENT, str(tmp_path),
                              "yes" if rotates else "no"], stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout is not None
        assert agent.stdout.readline() == "ready\n"
        wait = "3" if rotates else "0.5"
        code = main(["rotate-key", "--state-dir", str(tmp_path), "--wait", wait])
        out, err = capsys.readouterr()
        if rotates:
            assert code == 0, err
            assert "public key key-B (was key-A)" in out
        else:
            assert code == 1
            assert "has not reported a new key within 0.5 s" in err
    finally:
        agent.kill()
        agent.wait()
    assert main(["rotate-key", "--state-dir", str(tmp_path)]) == 1
    assert "is not running" in capsys.readouterr().err
