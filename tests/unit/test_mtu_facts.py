"""The device MTU the driver derives from the host (issue 16): the MTU of the link that holds
the published private IP, less WireGuard's overhead for the underlay's family (60 bytes
over IPv4, 80 over IPv6 or with any peer reached over IPv6); a configured MTU wins."""

from __future__ import annotations

from typing import Any

import pytest

from wgcable.cable.types import Endpoint
from wgcable.cable.wireguard.facts import mtu_warnings, read_facts
from wgcable.cable.wireguard.state import Settings, mtu
from wgcable.wgctrl import Key


class FakeIP:
    """The three reads ``read_facts`` makes of the host."""

    def __init__(self, links: dict[str, int], addresses: list[tuple[str, str, int]]) -> None:
        self.links, self._addresses = links, addresses

    def addresses(self) -> list[tuple[str, str, int]]:
        return list(self._addresses)

    def link(self, name: str) -> dict[str, Any] | None:
        return {"ifname": name, "mtu": self.links[name]} if name in self.links else None

    def ipv6_enabled(self, device: str) -> bool:
        return True


HOST = FakeIP({"eth0": 1400, "eth1": 9000, "cni0": 1500},
              [("eth0", "198.18.0.1", 16), ("eth0", "fdce:18::1", 64),
               ("eth1", "192.0.2.1", 24), ("cni0", "10.1.0.1", 24)])
SETTINGS = Settings("subwg0", Key(b"\x11" * 32), 4500)


def _facts(private_ip: str, ip: FakeIP = HOST) -> Any:
    local = Endpoint(cluster_id="cluster1", private_ip=private_ip, subnets=["10.1.0.0/16"])
    return read_facts(ip, local, (), "subwg0", (), "/nonexistent/resolv.conf")  # type: ignore[arg-type]


@pytest.mark.parametrize(("private_ip", "underlay", "v6_peers", "want"), [
    ("198.18.0.1", 1400, False, 1340),  # a cloud's 1400: the outer packets still fit
    ("198.18.0.1", 1400, True, 1320),  # a peer over IPv6: 40-byte outer header
    ("fdce:18::1", 1400, False, 1320),  # an IPv6 underlay
    ("192.0.2.1", 9000, False, 8940),  # the link of the published IP, not another one
])
def test_mtu_device_follows_the_underlay_link(private_ip: str, underlay: int, v6_peers: bool,
                                              want: int) -> None:
    facts = _facts(private_ip)
    assert facts.underlay_mtu == underlay
    assert mtu(SETTINGS, facts, v6_peers) == want


def test_mtu_configured_wins_over_the_underlay() -> None:
    configured = Settings("subwg0", Key(b"\x11" * 32), 4500, mtu=1280)
    assert mtu(configured, _facts("198.18.0.1"), False) == 1280


def test_mtu_published_ip_on_no_link_assumes_ethernet() -> None:
    facts = _facts("203.0.113.9")
    assert (facts.underlay_mtu, facts.underlay_v6) == (1500, False)
    assert mtu(SETTINGS, facts, False) == 1440


def test_mtu_warns_when_the_published_ip_is_on_no_link() -> None:
    facts = _facts("203.0.113.9")  # e.g. a 1:1 NAT's address published as the private IP
    assert facts.underlay_link is None
    assert facts.underlay_mtu == 1500
    (said,) = mtu_warnings(facts, "203.0.113.9", "subwg0")
    assert "203.0.113.9 is on no link" in said
    assert "--mtu" in said
    assert mtu_warnings(_facts("198.18.0.1"), "198.18.0.1", "subwg0") == []


def test_mtu_warns_when_the_device_would_lose_ipv6() -> None:
    small = FakeIP({"eth0": 1300}, [("eth0", "198.18.0.1", 16)])
    (said,) = mtu_warnings(_facts("198.18.0.1", small), "198.18.0.1", "subwg0")
    assert "underlay MTU 1300 leaves subwg0 an MTU of 1240, below IPv6's minimum" in said
    fits = FakeIP({"eth0": 1340}, [("eth0", "198.18.0.1", 16)])  # 1280 on the device: fits
    assert mtu_warnings(_facts("198.18.0.1", fits), "198.18.0.1", "subwg0") == []
