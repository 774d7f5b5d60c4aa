"""Fuzzing (hypothesis) against a real device: hostile store entries through the real store,
engine and driver, with a wireguard-go device, routes, rules and nftables in a namespace.

One gateway lives for the whole module, like an agent that sees one hostile store after
another: each example replaces the store's entries and reconciles. After each, what the
kernel and the daemon really hold (`ip route show table 220`, `ip rule`, `wg show`) must be
safe, and the private key must be in no log line or status. Few examples: each costs real
`ip`, `nft` and UAPI round trips (the in-process fuzz test runs many more).

Every change goes through the real UAPI encoder to wireguard-go (the in-memory backend of
the unit fuzz never encodes). A victim cluster's peer sits on the device throughout: the
hostile entries carry zones, control characters and UAPI lines that try to remove it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings

from hostile import STORE_ENTRIES, Local, bad_prefixes, classes, leaks, write_entries
from wgcable.cable.types import Endpoint
from wgcable.cable.wireguard.config import WireGuardConfig
from wgcable.cable.wireguard.driver import WireGuardDriver
from wgcable.engine.engine import Engine
from wgcable.lab.netns import list_namespaces
from wgcable.lab.topology import ClusterNet, Topology
from wgcable.store.directory import DirectoryStore
from wgcable.wgctrl import Config, IPNetwork, Key
from wgcable.wgctrl.uapi import protocol

pytestmark = [pytest.mark.netns, pytest.mark.fuzz]

TABLE = "220"
UAPI_KEYS = {"set", "private_key", "listen_port", "fwmark", "replace_peers", "public_key",
             "remove", "update_only", "preshared_key", "endpoint",
             "persistent_keepalive_interval", "replace_allowed_ips", "allowed_ip"}


@dataclass
class Gateway:
    net: ClusterNet
    driver: WireGuardDriver
    engine: Engine
    store: DirectoryStore
    local: Local
    logs: StringIO
    victim: Key  # the public key of a peer that must stay, whatever the hostile entries say
    requests: list[bytes]  # every set request encoded for the device

    def ip_json(self, *args: str) -> list[dict[str, object]]:
        # An empty table does not exist: `ip` fails (after printing half a document).
        p = subprocess.run(self.net.gateway.cmd("ip", "-j", *args), capture_output=True,
                           text=True, check=False)
        if p.returncode != 0:
            return []
        data = json.loads(p.stdout) if p.stdout.strip() else []
        return data if isinstance(data, list) else []

    def routes(self) -> list[IPNetwork]:
        found = []
        for fam in ("-4", "-6"):
            for r in self.ip_json(fam, "route", "show", "table", TABLE):
                dst = str(r.get("dst"))
                found.append(ipaddress.ip_network(
                    ("0.0.0.0/0" if fam == "-4" else "::/0") if dst == "default" else dst,
                    strict=False))
        return found

    def rules(self) -> list[dict[str, object]]:
        return [r for fam in ("-4", "-6") for r in self.ip_json(fam, "rule", "show")]

    def wg_dump(self) -> list[list[str]]:
        pid = str(self.driver.device.daemon.pid)
        out = subprocess.run(["nsenter", "-t", pid, "-m", "-n", "wg", "show", "subwg0", "dump"],
                             capture_output=True, text=True, check=True).stdout
        return [line.split("\t") for line in out.splitlines()[1:]]


VICTIM_SUBNET = "10.250.0.0/16"


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    topo = Topology(f"wgfz{os.getpid() % 10000}")
    driver: WireGuardDriver | None = None
    logger = logging.getLogger("wgcable")
    logs = StringIO()
    handler = logging.StreamHandler(logs)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    tmp = tempfile.TemporaryDirectory(prefix="wgcable-fuzz-netns-")
    requests: list[bytes] = []
    real_encode = protocol.encode_set

    def encode_set(config: Config, *, update_only_supported: bool = True) -> bytes:
        request = real_encode(config, update_only_supported=update_only_supported)
        requests.append(request)
        return request

    protocol.encode_set = encode_set  # a spy; restored below
    try:
        topo.build_underlay()
        net = topo.add_cluster(1)
        ep = Endpoint(cluster_id=net.cluster_id, cable_name="cable", hostname="gw1",
                      subnets=list(net.subnets), private_ip=net.underlay_ip,
                      health_check_ip=net.gateway_pod_ip, backend="wireguard")
        driver = WireGuardDriver(ep, WireGuardConfig(
            netns=net.gateway.name, state_dir=str(Path(tmp.name) / "state"),
            backend="userspace", resolv_conf=os.devnull))
        driver.init()
        store = DirectoryStore(Path(tmp.name) / "store")
        engine = Engine(ep, driver, store, hostname="gw1", version="fuzz")
        store.publish(ep)
        victim = Key.generate().public_key()
        store.publish(Endpoint(cluster_id="victim", cable_name="cable", hostname="gw-victim",
                               subnets=[VICTIM_SUBNET], private_ip="198.18.0.200",
                               backend="wireguard",
                               backend_config={"publicKey": victim.base64()}))
        engine.reconcile()
        driver.mark_synced()
        addresses = json.loads(net.gateway.run("ip", "-j", "addr", "show"))
        mine = [a["local"] for link in addresses for a in link.get("addr_info", [])]
        local = Local(net.cluster_id, tuple(net.subnets),
                      (net.underlay_ip, *[a for a in mine if a != net.underlay_ip]),
                      driver.public_key.base64(), victim.hex())
        yield Gateway(net, driver, engine, store, local, logs, victim, requests)
    finally:
        protocol.encode_set = real_encode
        logger.removeHandler(handler)
        logger.setLevel(level)
        if driver is not None:
            driver.cleanup(remove_key=True)
        topo.destroy()
        tmp.cleanup()
    assert not [n for n in list_namespaces() if n.startswith(topo.prefix)]


@settings(max_examples=25, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(entries=STORE_ENTRIES)
def test_fuzz_hostile_store_real_device_routes_rules_peers(
    gateway: Gateway, entries: list[tuple[str, object]]
) -> None:
    g = gateway
    for c in sorted(classes(entries)):
        event(f"hostile class: {c}")
    seen = len(g.requests)
    eps = g.store.endpoints_dir
    for p in eps.iterdir():
        if p.name.startswith("fuzz"):
            p.unlink()
    # A new name per example: the store's cache keys on (inode, size, mtime).
    write_entries(eps, entries, g.local, f"fuzz{os.urandom(4).hex()}-")
    g.engine.reconcile()
    g.engine.resync()
    status = g.engine.refresh_status()

    assert bad_prefixes(g.local, g.routes()) == []
    ours = [r for r in g.rules() if str(r.get("table")) == TABLE]
    assert len(ours) == 2, ours  # one per family, ours, nothing else pointing at the table
    dump = g.wg_dump()
    event(f"peers on the device: {min(len(dump), 3)}{'+' if len(dump) >= 3 else ''}")
    allowed = [ipaddress.ip_network(n) for row in dump for n in row[3].split(",")
               if n and n != "(none)"]
    assert bad_prefixes(g.local, allowed) == []
    assert g.local.public_key not in [row[0] for row in dump]
    # The victim's peer is still there, whole: no injected line removed or changed it.
    victim = [row for row in dump if row[0] == g.victim.base64()]
    assert victim, "the victim cluster's peer was removed"
    assert victim[0][3] == VICTIM_SUBNET
    # What went to wireguard-go: encoded by the real encoder, one value per line, no zone.
    assert g.requests  # the victim's peer, at least, went through the encoder
    for request in g.requests[seen:]:
        for line in request.decode().split("\n"):
            name, _, value = line.partition("=")
            assert name in UAPI_KEYS or not line, line[:80]
            assert "%" not in value, line[:80]
            assert "=" not in value, line[:80]
    # Every peer on the device is an accepted connection (no leftovers of refused ones).
    accepted = {c.endpoint.backend_config.get("publicKey", "").strip()
                for c in status.connections if c.status.value != "error"
                or "latest update refused" in c.status_message}
    assert {row[0] for row in dump} <= accepted

    key = g.driver._key
    assert key is not None
    forms = [key.base64(), key.base64().rstrip("="), key.hex()]
    assert leaks(forms, {"logs": g.logs.getvalue(),
                         "status": json.dumps(status.to_json()),
                         "reprs": repr((status, g.driver.__dict__))}) == []
