"""wgcable.wgctrl against real WireGuard devices in network namespaces: wireguard-go here,
and the kernel's WireGuard in the test VM (the same test bodies, parametrized)."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from wgcable.lab.netns import LabDevice, Namespace, veth_pair
from wgcable.wgctrl import Config, Key, PeerConfig, UDPAddr, config_delta

from .labtools import both_kinds

pytestmark = pytest.mark.netns

WGCABLE = str(Path(sys.executable).with_name("wgcable"))


def net(s: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(s)


def parse_showconf(text: str) -> dict[str, dict[str, str]]:
    """`wg showconf` as {section id: {key: value}}; peers keyed by public key."""
    sections: dict[str, dict[str, str]] = {}
    cur: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line == "[Interface]":
            cur = sections.setdefault("interface", {})
        elif line == "[Peer]":
            cur = {}
        elif "=" in line:
            k, v = (x.strip() for x in line.split("=", 1))
            cur[k] = v
            if k == "PublicKey":
                sections[v] = cur
    return sections


@both_kinds
def test_configure_then_wg_showconf(make_wg: Callable[..., LabDevice]) -> None:
    wg = make_wg()
    priv, psk = Key.generate(), Key.generate_preshared()
    p1, p2 = Key.generate().public_key(), Key.generate().public_key()
    cfg = Config(
        private_key=priv,
        listen_port=5871,
        fwmark=0x1234,
        peers=[
            PeerConfig(
                public_key=p1,
                preshared_key=psk,
                endpoint=UDPAddr.parse("198.18.0.2:5871"),
                persistent_keepalive=10,
                allowed_ips=[net("10.2.0.0/16"), net("fd00:2::/64")],
            ),
            PeerConfig(
                public_key=p2,
                endpoint=UDPAddr.parse("[2001:db8::3]:4500"),
                allowed_ips=[net("10.3.0.0/16")],
            ),
        ],
    )
    with wg.client() as client:
        client.configure("wgt0", cfg)
        dev = client.device("wgt0")
    conf = parse_showconf(wg.run("wg", "showconf", "wgt0"))
    assert conf["interface"] == {
        "ListenPort": "5871",
        "FwMark": "0x1234",
        "PrivateKey": priv.base64(),
    }
    assert conf[p1.base64()] == {
        "PublicKey": p1.base64(),
        "PresharedKey": psk.base64(),
        "AllowedIPs": "10.2.0.0/16, fd00:2::/64",
        "Endpoint": "198.18.0.2:5871",
        "PersistentKeepalive": "10",
    }
    assert conf[p2.base64()] == {
        "PublicKey": p2.base64(),
        "AllowedIPs": "10.3.0.0/16",
        "Endpoint": "[2001:db8::3]:4500",
    }
    # And our own read agrees with what we wrote.
    assert dev.public_key == priv.public_key()
    assert dev.listen_port == 5871
    assert dev.fwmark == 0x1234
    assert {p.public_key for p in dev.peers} == {p1, p2}
    assert dev.peer(p1) is not None
    assert dev.peer(p1).preshared_key == psk


@both_kinds
def test_wg_set_then_read_back_and_show_json(
    make_wg: Callable[..., LabDevice], tmp_path: Path
) -> None:
    wg = make_wg()
    priv = Key.generate()
    key_file = tmp_path / "priv"
    key_file.write_text(priv.base64() + "\n")
    peer = Key.generate().public_key()
    wg.run(
        "wg", "set", "wgt0", "private-key", str(key_file), "listen-port", "4500",
        "peer", peer.base64(), "allowed-ips", "10.9.0.0/16,fd00:9::/64",
        "endpoint", "198.18.0.9:4500", "persistent-keepalive", "25",
    )
    with wg.client() as client:
        dev = client.device("wgt0")
    assert dev.public_key == priv.public_key()
    assert dev.private_key is not None
    assert dev.private_key.same_private(priv)
    assert dev.listen_port == 4500
    [p] = dev.peers
    assert p.public_key == peer
    assert p.endpoint == UDPAddr.parse("198.18.0.9:4500")
    assert p.persistent_keepalive == 25
    assert set(p.allowed_ips) == {net("10.9.0.0/16"), net("fd00:9::/64")}
    assert p.last_handshake is None
    assert p.preshared_key is None

    shown = json.loads(wg.run(WGCABLE, "show", "wgt0", "--json"))
    assert shown["name"] == "wgt0"
    assert shown["backend"] == ("linux kernel" if wg.kind == "kernel" else "userspace")
    assert shown["public_key"] == priv.public_key().base64()
    assert shown["listen_port"] == 4500
    [sp] = shown["peers"]
    assert sp["public_key"] == peer.base64()
    assert sp["endpoint"] == "198.18.0.9:4500"
    assert sorted(sp["allowed_ips"]) == ["10.9.0.0/16", "fd00:9::/64"]
    assert sp["latest_handshake"] is None
    text = wg.run(WGCABLE, "show")
    assert priv.base64() not in text
    assert "interface: wgt0" in text


class Site:
    """One end of a test tunnel: a namespace, a wireguard-go device and its key."""

    def __init__(self, wg: LabDevice, underlay: str, tunnel: str) -> None:
        self.wg, self.underlay, self.tunnel = wg, underlay, tunnel
        self.key = Key.generate()
        self.ns = wg.ns

    def peer_config(self) -> PeerConfig:
        return PeerConfig(
            public_key=self.key.public_key(),
            endpoint=UDPAddr.parse(f"{self.underlay}:5871"),
            allowed_ips=[net(f"{self.tunnel}/32")],
        )


def _sites(
    make_ns: Callable[[], Namespace], make_wg: Callable[..., LabDevice], n: int
) -> list[Site]:
    """``n`` sites whose underlay addresses meet on a bridge in a hub namespace."""
    hub = make_ns()
    hub.run("ip", "link", "add", "br0", "type", "bridge")
    hub.run("ip", "link", "set", "br0", "up")
    sites = []
    for i in range(1, n + 1):
        ns = make_ns()
        veth_pair(ns, "eth0", hub, f"s{i}")
        hub.run("ip", "link", "set", f"s{i}", "master", "br0")
        ns.run("ip", "addr", "add", f"198.18.0.{i}/24", "dev", "eth0")
        site = Site(make_wg(ns), f"198.18.0.{i}", f"10.99.0.{i}")
        site.wg.run("ip", "addr", "add", f"{site.tunnel}/24", "dev", "wgt0")
        site.wg.run("ip", "link", "set", "wgt0", "up")
        with site.wg.client() as c:
            c.configure("wgt0", Config(private_key=site.key, listen_port=5871))
        sites.append(site)
    return sites


def _ping(src: Site, dst: Site) -> None:
    src.ns.run("ping", "-c", "2", "-i", "0.2", "-W", "2", dst.tunnel)


@both_kinds
def test_two_namespaces_handshake_and_ping(
    make_ns: Callable[[], Namespace], make_wg: Callable[..., LabDevice]
) -> None:
    a, b = _sites(make_ns, make_wg, 2)
    for x, y in ((a, b), (b, a)):
        with x.wg.client() as c:
            c.configure("wgt0", Config(peers=[y.peer_config()]))
    _ping(a, b)
    with a.wg.client() as c:
        [peer] = c.device("wgt0").peers
    assert peer.last_handshake is not None
    assert peer.rx_bytes > 0
    assert peer.tx_bytes > 0


def _handshake_of(site: Site, peer: Site) -> float:
    with site.wg.client() as c:
        p = c.device("wgt0").peer(peer.key.public_key())
    assert p is not None, "no such peer"
    assert p.last_handshake is not None, "no session"
    return p.last_handshake.timestamp()


@both_kinds
def test_changing_one_peer_leaves_other_sessions_alone(
    make_ns: Callable[[], Namespace], make_wg: Callable[..., LabDevice]
) -> None:
    a, b, c = _sites(make_ns, make_wg, 3)
    # a knows b, c and 100 more peers (no endpoint, so they send nothing).
    extra = [
        PeerConfig(public_key=Key.generate().public_key(), allowed_ips=[net(f"10.{i}.0.0/16")])
        for i in range(100, 200)
    ]
    with a.wg.client() as cl:
        cl.configure("wgt0", Config(peers=[b.peer_config(), c.peer_config(), *extra]))
    for s in (b, c):
        with s.wg.client() as cl:
            cl.configure("wgt0", Config(peers=[a.peer_config()]))
        _ping(a, s)
    hs_b, hs_c = _handshake_of(a, b), _handshake_of(a, c)
    time.sleep(1.1)  # handshake times have 1 s granularity in what we compare against

    with a.wg.client() as cl:
        actual = cl.device("wgt0")
        desired = cl.device("wgt0")
        target = desired.peer(extra[0].public_key)
        assert target is not None
        target.allowed_ips.append(net("10.250.0.0/16"))
        target.endpoint = UDPAddr.parse("198.18.0.77:5871")
        change = config_delta(actual, desired)
        assert [p.public_key for p in change.peers] == [extra[0].public_key]
        cl.configure("wgt0", change)
        after = cl.device("wgt0")
    moved = after.peer(extra[0].public_key)
    assert moved is not None
    assert net("10.250.0.0/16") in moved.allowed_ips
    _ping(a, b)
    _ping(a, c)
    assert _handshake_of(a, b) == hs_b
    assert _handshake_of(a, c) == hs_c


@both_kinds
def test_replace_peers_drops_sessions(
    make_ns: Callable[[], Namespace], make_wg: Callable[..., LabDevice]
) -> None:
    """The counterpart of the test above: proves that it can see a dropped session."""
    a, b = _sites(make_ns, make_wg, 2)
    for x, y in ((a, b), (b, a)):
        with x.wg.client() as cl:
            cl.configure("wgt0", Config(peers=[y.peer_config()]))
    _ping(a, b)
    assert _handshake_of(a, b)
    with a.wg.client() as cl:
        cl.configure("wgt0", Config(replace_peers=True, peers=[b.peer_config()]))
        p = cl.device("wgt0").peer(b.key.public_key())
    assert p is not None
    assert p.last_handshake is None


def test_no_leftovers_in_root_namespace() -> None:
    """Our daemons keep their sockets in private mounts: nothing of ours in the root one."""
    for d in ("/run/wireguard", "/var/run/wireguard"):
        if os.path.isdir(d):
            assert not [f for f in os.listdir(d) if f.startswith("wgt")], d
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    assert "wgt0" not in out.stdout
