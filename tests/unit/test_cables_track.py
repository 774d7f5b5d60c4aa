"""``cables.track`` remembers the last read that matched; it must decide as without it.

Reads one after another with the device's allowed IPs (the same objects, equal copies,
reordered, changed, missing) and the cluster's peer replaced now and then: every read's
"restore" is what comparing the allowed IPs with the subnets afresh says.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from wgcable.cable.types import ConnectionStatus
from wgcable.cable.wireguard.cables import Cable, track
from wgcable.cable.wireguard.desired import RemotePeer
from wgcable.cable.wireguard.status import PeerStatus, StatusThresholds
from wgcable.wgctrl import IPNetwork, Key, Peer, UDPAddr

KEY = Key(b"\x11" * 32)
NETS = [ipaddress.ip_network(n) for n in ("10.0.0.0/24", "10.0.1.0/24", "fd00::/64")]
WALL = datetime(2026, 12, 2, tzinfo=UTC)


def remote(subnets: tuple[IPNetwork, ...]) -> RemotePeer:
    return RemotePeer("c1", KEY, UDPAddr(ipaddress.ip_address("192.0.2.1"), 51820), subnets,
                      "192.0.2.1", False)


def cable(peer: RemotePeer) -> Cable:
    info: Any = None  # track does not look at it
    return Cable(info, peer, PeerStatus(StatusThresholds(), 0.0))


def fresh(ips: list[IPNetwork], subnets: tuple[IPNetwork, ...]) -> bool:
    return tuple(ips) != subnets and set(ips) != set(subnets)


def test_a_change_after_a_matching_read_is_restored() -> None:
    c = cable(remote((NETS[0], NETS[1])))
    same = [NETS[0], NETS[1]]
    for _ in range(2):  # the second read: the remembered match
        assert not track({"c1": c}, {Key(KEY.raw): Peer(Key(KEY.raw), allowed_ips=same)}, 1.0,
                         WALL)
    assert c.seen is not None
    assert track({"c1": c}, {KEY: Peer(KEY, allowed_ips=[NETS[0]])}, 2.0, WALL)
    assert not track({"c1": c}, {KEY: Peer(KEY, allowed_ips=[NETS[1], NETS[0]])}, 3.0, WALL)
    assert track({"c1": c}, {}, 4.0, WALL)  # gone from the device
    assert c.tracker is not None
    assert c.tracker.status is ConnectionStatus.ERROR


def test_a_new_peer_for_the_cluster_is_compared_afresh() -> None:
    c = cable(remote((NETS[0],)))
    assert not track({"c1": c}, {KEY: Peer(KEY, allowed_ips=[NETS[0]])}, 1.0, WALL)
    c.peer = remote((NETS[2],))  # an update with other subnets, same key
    assert track({"c1": c}, {KEY: Peer(KEY, allowed_ips=[NETS[0]])}, 2.0, WALL)
    assert not track({"c1": c}, {KEY: Peer(KEY, allowed_ips=[NETS[2]])}, 3.0, WALL)


ALLOWED = st.lists(st.sampled_from(NETS), max_size=3)
SUBNETS = st.lists(st.sampled_from(NETS), min_size=1, max_size=2, unique=True).map(tuple)


@settings(max_examples=200, deadline=None)
@given(SUBNETS, st.lists(st.tuples(ALLOWED, st.booleans(), st.booleans(), st.booleans(),
                                   SUBNETS), min_size=1, max_size=8))
def test_every_read_decides_as_a_fresh_comparison(
    first: tuple[IPNetwork, ...],
    reads: list[tuple[list[IPNetwork], bool, bool, bool, tuple[IPNetwork, ...]]],
) -> None:
    c = cable(remote(first))
    for ips, copy, present, replace, subnets in reads:
        if replace:
            c.peer = remote(subnets)
        assert c.peer is not None
        shown = [ipaddress.ip_network(str(n)) for n in ips] if copy else list(ips)
        device = {Key(KEY.raw): Peer(Key(KEY.raw), allowed_ips=shown)} if present else {}
        expect = not present or fresh(shown, c.peer.subnets)
        assert track({"c1": c}, device, 1.0, WALL) == expect
