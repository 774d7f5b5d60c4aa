"""The desired state (``cable/wireguard/state.py``): the incremental builder the driver uses
gives exactly what ``desired_state`` computes from scratch, after any sequence of changes."""

from __future__ import annotations

import dataclasses
import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from wgcable.cable.wireguard.desired import RemotePeer
from wgcable.cable.wireguard.facts import HostFacts
from wgcable.cable.wireguard.state import LINK, Settings, StateBuilder, desired_state
from wgcable.reconcile import Tracked
from wgcable.routing.table import Route
from wgcable.wgctrl import Key, UDPAddr

KEYS = [Key.generate().public_key() for _ in range(8)]
SETTINGS = Settings("subwg0", Key.generate(), 4500, keepalive=10)
FACTS = HostFacts(sources={4: ipaddress.ip_address("10.1.0.1")})


def peer(i: int, version: int, port: int) -> RemotePeer:
    nets = (ipaddress.ip_network(f"10.{10 + i}.0.0/16"),
            ipaddress.ip_network(f"fd00:{i + 1}::/64"))
    ip = ipaddress.ip_address(f"198.18.1.{i + 1}" if version == 4 else f"fd99::{i + 1}")
    return RemotePeer(f"c{i}", KEYS[i], UDPAddr(ip, port), nets, str(ip), False)


# A step: cluster i is (re)connected with this endpoint, or removed (None).
steps = st.lists(st.tuples(st.integers(0, 7), st.one_of(
    st.none(), st.tuples(st.sampled_from([4, 6]), st.integers(1, 3)))), max_size=30)


@settings(max_examples=60, deadline=None)
@given(steps, st.booleans())
def test_reconcile_incremental_state_equals_the_state_from_scratch(
        sequence: list[tuple[int, tuple[int, int] | None]], ipv6: bool) -> None:
    facts = dataclasses.replace(FACTS, ipv6=ipv6)
    scanning, hinted = StateBuilder(), StateBuilder()  # the whole list; the touched IDs
    accepted: dict[int, RemotePeer] = {}
    by_id: dict[str, RemotePeer] = {}
    for n, (i, change) in enumerate(sequence):
        if change is None:
            accepted.pop(i, None)
            by_id.pop(f"c{i}", None)
        else:
            accepted[i] = by_id[f"c{i}"] = peer(i, *change)
        peers = list(accepted.values())
        scratch = desired_state(peers, SETTINGS, facts)
        built = scanning.build(peers, SETTINGS, facts)
        assert built == scratch
        for m in (built.peers, built.routes, built.nft_remote):
            assert_exact(m)
        # Builds may be skipped (a batch): the hint then covers every step since the last.
        if n % 3 != 1:
            touched = {f"c{j}" for j, _ in sequence[:n + 1]}
            built = hinted.build(peers, SETTINGS, facts, changed=touched, lookup=by_id.get)
            assert built == scratch
            for m in (built.peers, built.routes, built.nft_remote):
                assert_exact(m)


def assert_exact(m: object) -> None:
    """An exact step names exactly the keys whose values differ from its parent's (the
    reconcilers write only those)."""
    if isinstance(m, Tracked) and m.exact and m.parent is not None:
        parent = m.parent
        differ = {k for k in {*m, *parent}
                  if k not in m or k not in parent or m[k] != parent[k]}
        assert set(m.touched) == differ


def test_reconcile_state_holds_every_resource_of_the_accepted_clusters() -> None:
    p = peer(0, 6, 51820)
    state = desired_state([p], SETTINGS, FACTS)
    assert list(state.peers) == [p.public_key]
    assert state.peers[p.public_key].allowed_ips == list(p.subnets)
    assert set(state.routes) == {Route(n, "subwg0", FACTS.sources.get(n.version))
                                 for n in p.subnets}
    assert set(state.nft_remote) == set(p.subnets)
    assert set(state.rules) == {"-4", "-6"}
    assert state.link[LINK].mtu == 1500 - 80  # an IPv6 endpoint: 20 more bytes of header
    no_v6 = desired_state([p], SETTINGS, dataclasses.replace(FACTS, ipv6=False))
    assert {r.dst.version for r in no_v6.routes} == {4}
    assert set(no_v6.rules) == {"-4"}
