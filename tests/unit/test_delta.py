"""config_delta: the minimal Config that turns an actual device into a desired one."""

from __future__ import annotations

import copy
import ipaddress
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from wgcable.wgctrl.delta import config_delta
from wgcable.wgctrl.key import Key
from wgcable.wgctrl.memory import apply_config
from wgcable.wgctrl.types import BackendKind, Config, Device, IPNetwork, Peer, PeerConfig, UDPAddr

keys = st.binary(min_size=32, max_size=32).filter(any).map(Key)


def _net(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, bits: int) -> IPNetwork:
    return ipaddress.ip_network(f"{addr}/{min(bits, addr.max_prefixlen)}", strict=False)


networks = st.builds(_net, st.ip_addresses(), st.integers(0, 128))
endpoints = st.builds(UDPAddr, st.ip_addresses(), st.integers(1, 65535))
handshakes = st.none() | st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
)


@st.composite
def peer(draw: st.DrawFn, public_key: Key, nets: list[IPNetwork]) -> Peer:
    return Peer(
        public_key=public_key,
        preshared_key=draw(st.none() | keys),
        endpoint=draw(st.none() | endpoints),
        persistent_keepalive=draw(st.sampled_from([0, 25]) | st.integers(0, 65535)),
        last_handshake=draw(handshakes),  # counters and handshakes are not config: ignored
        rx_bytes=draw(st.integers(0, 2**40)),
        tx_bytes=draw(st.integers(0, 2**40)),
        allowed_ips=nets,
    )


@st.composite
def device(draw: st.DrawFn, peer_keys: list[Key]) -> Device:
    """A device with peers for ``peer_keys``; each allowed IP belongs to one peer only."""
    pool = draw(st.lists(networks, unique=True, max_size=3 * len(peer_keys) + 1))
    owner = [draw(st.integers(-1, len(peer_keys) - 1)) for _ in pool]  # -1: unassigned
    peers = [
        draw(peer(k, [n for n, o in zip(pool, owner, strict=True) if o == i]))
        for i, k in enumerate(peer_keys)
    ]
    private = draw(st.none() | keys)
    return Device(
        name="wg0",
        kind=BackendKind.USERSPACE,
        private_key=private,
        public_key=private.public_key() if private else None,
        listen_port=draw(st.integers(0, 65535)),
        fwmark=draw(st.sampled_from([0, 0x1234]) | st.integers(0, 0xFFFFFFFF)),
        peers=peers,
    )


@st.composite
def device_pairs(draw: st.DrawFn) -> tuple[Device, Device]:
    """An actual and a desired device sharing some peers (and some of their allowed IPs)."""
    pool = draw(st.lists(keys, unique=True, max_size=8))
    in_actual = [k for k in pool if draw(st.booleans())]
    in_desired = [k for k in pool if draw(st.booleans())]
    actual = draw(device(draw(st.permutations(in_actual))))
    desired = draw(device(draw(st.permutations(in_desired))))
    if draw(st.booleans()):  # often the desired state is a small edit of the actual one
        desired = draw(edited(actual))
    return actual, desired


@st.composite
def edited(draw: st.DrawFn, actual: Device) -> Device:
    d = copy.deepcopy(actual)
    for p in d.peers:
        if draw(st.booleans()):
            continue
        p.persistent_keepalive = draw(st.integers(0, 65535))
        p.endpoint = draw(st.none() | endpoints)
        p.preshared_key = draw(st.none() | keys)
        if bool(p.allowed_ips) and draw(st.booleans()):
            p.allowed_ips.pop(draw(st.integers(0, len(p.allowed_ips) - 1)))
    if bool(d.peers) and draw(st.booleans()):
        d.peers.pop(draw(st.integers(0, len(d.peers) - 1)))
    if bool(d.peers) and draw(st.booleans()):  # move an allowed IP to another peer
        src = draw(st.sampled_from(d.peers))
        dst = draw(st.sampled_from(d.peers))
        if src.allowed_ips and src is not dst:
            dst.allowed_ips.append(src.allowed_ips.pop())
    if draw(st.booleans()):
        d.private_key = None
    elif d.private_key is not None and draw(st.booleans()):
        flipped = bytearray(d.private_key.raw)
        flipped[0] ^= 7  # only clamped-away bits: the same private key
        d.private_key = Key(bytes(flipped))
    return d


def check_reaches(actual: Device, desired: Device, result: Device) -> None:
    """``result`` is what config_delta promises for ``desired``, given ``actual``."""
    assert {p.public_key for p in result.peers} == {p.public_key for p in desired.peers}
    assert len(result.peers) == len(desired.peers)
    for want in desired.peers:
        got = result.peer(want.public_key)
        assert got is not None
        assert set(got.allowed_ips) == set(want.allowed_ips)
        assert got.preshared_key == want.preshared_key
        assert got.persistent_keepalive == want.persistent_keepalive
        if want.endpoint is not None:
            assert got.endpoint == want.endpoint
        else:  # "any": whatever the peer roamed to is kept
            old = actual.peer(want.public_key)
            assert got.endpoint == (old.endpoint if old else None)
    assert result.fwmark == desired.fwmark
    if desired.listen_port:
        assert result.listen_port == desired.listen_port
    else:
        assert result.listen_port == actual.listen_port
    if desired.private_key is not None:
        assert result.private_key is not None
        assert result.private_key.same_private(desired.private_key)
    else:
        assert result.private_key == actual.private_key


@settings(max_examples=200)
@given(device_pairs())
def test_applying_the_delta_reaches_the_desired_state(pair: tuple[Device, Device]) -> None:
    actual, desired = pair
    delta = config_delta(actual, desired)
    assert not delta.replace_peers
    result = apply_config(actual, delta)
    check_reaches(actual, desired, result)
    again = config_delta(result, desired)
    assert again.is_empty(), again  # idempotent
    assert apply_config(result, again) == result


@settings(max_examples=100)
@given(device_pairs())
def test_replace_peers_on_request_reaches_the_same_state(pair: tuple[Device, Device]) -> None:
    actual, desired = pair
    delta = config_delta(actual, desired, replace_peers=True)
    assert delta.replace_peers
    assert not any(p.update_only or p.remove for p in delta.peers)
    result = apply_config(actual, delta)
    # Every peer is re-created, so no roamed endpoint survives an endpoint of "any".
    for want in desired.peers:
        got = result.peer(want.public_key)
        assert got is not None
        assert got.endpoint == want.endpoint
        assert set(got.allowed_ips) == set(want.allowed_ips)
        assert got.preshared_key == want.preshared_key
        assert got.persistent_keepalive == want.persistent_keepalive
    assert {p.public_key for p in result.peers} == {p.public_key for p in desired.peers}


@given(device_pairs())
def test_only_changed_peers_appear(pair: tuple[Device, Device]) -> None:
    actual, desired = pair
    delta = config_delta(actual, desired)
    keys_in_delta = [p.public_key for p in delta.peers]
    assert len(keys_in_delta) == len(set(keys_in_delta))  # each peer at most once
    for pc in delta.peers:
        old = actual.peer(pc.public_key)
        if pc.remove:
            assert old is not None
            assert desired.peer(pc.public_key) is None
        elif old is not None:
            assert pc.update_only  # never re-create a vanished peer from a partial config
        else:
            assert not pc.update_only


@given(device_pairs())
def test_delta_against_itself_is_empty(pair: tuple[Device, Device]) -> None:
    for d in pair:
        assert config_delta(d, d).is_empty()
        assert config_delta(d, copy.deepcopy(d)).is_empty()


@given(device_pairs())
def test_clamped_private_key_is_no_change(pair: tuple[Device, Device]) -> None:
    actual, _ = pair
    if actual.private_key is None:
        return
    desired = copy.deepcopy(actual)
    actual.private_key = actual.private_key.clamped()
    assert config_delta(actual, desired).private_key is None


# --- examples -----------------------------------------------------------------------------


def k(i: int) -> Key:
    return Key(i.to_bytes(2, "big") * 16)


def n(text: str) -> IPNetwork:
    return ipaddress.ip_network(text)


def hundred_peers() -> Device:
    return Device(
        name="wg0",
        kind=BackendKind.USERSPACE,
        private_key=Key.generate(),
        listen_port=51820,
        peers=[
            Peer(
                public_key=k(i),
                endpoint=UDPAddr.parse(f"192.0.2.{i}:51820"),
                persistent_keepalive=25,
                allowed_ips=[n(f"10.{i}.0.0/16")],
            )
            for i in range(1, 101)
        ],
    )


def test_changing_one_peer_among_a_hundred() -> None:
    actual = hundred_peers()
    desired = copy.deepcopy(actual)
    desired.peers[41].persistent_keepalive = 10
    delta = config_delta(actual, desired)
    assert delta.private_key is None
    assert delta.listen_port is None
    assert delta.fwmark is None
    assert not delta.replace_peers
    assert len(delta.peers) == 1
    (pc,) = delta.peers
    assert pc.public_key == k(42)
    assert pc.update_only
    assert not pc.remove
    assert pc.persistent_keepalive == 10
    assert pc.endpoint is None
    assert pc.preshared_key is None
    assert pc.allowed_ips == []
    assert not pc.replace_allowed_ips


def test_adding_allowed_ips_sends_only_the_new_ones() -> None:
    actual = hundred_peers()
    desired = copy.deepcopy(actual)
    desired.peers[0].allowed_ips += [n("172.16.0.0/12"), n("fd00::/64")]
    (pc,) = config_delta(actual, desired).peers
    assert not pc.replace_allowed_ips
    assert pc.allowed_ips == [n("172.16.0.0/12"), n("fd00::/64")]
    assert pc.update_only


def test_removing_an_allowed_ip_replaces_the_list() -> None:
    actual = hundred_peers()
    actual.peers[0].allowed_ips.append(n("172.16.0.0/12"))
    desired = copy.deepcopy(actual)
    desired.peers[0].allowed_ips = [n("10.1.0.0/16")]
    (pc,) = config_delta(actual, desired).peers
    assert pc.replace_allowed_ips
    assert pc.allowed_ips == [n("10.1.0.0/16")]


def test_swapping_an_allowed_ip_replaces_the_list() -> None:
    actual = hundred_peers()
    desired = copy.deepcopy(actual)
    desired.peers[0].allowed_ips = [n("10.200.0.0/16")]
    (pc,) = config_delta(actual, desired).peers
    assert pc.replace_allowed_ips
    assert pc.allowed_ips == [n("10.200.0.0/16")]


def test_removed_and_new_peers() -> None:
    actual = hundred_peers()
    desired = copy.deepcopy(actual)
    gone = desired.peers.pop(0)
    desired.peers.append(Peer(public_key=k(500), allowed_ips=[n("10.250.0.0/16")]))
    delta = config_delta(actual, desired)
    # Removals last: an allowed IP moved to a new peer never routes to no peer meanwhile.
    assert [(p.public_key, p.remove, p.update_only) for p in delta.peers] == [
        (k(500), False, False),
        (gone.public_key, True, False),
    ]
    new = delta.peers[0]
    assert new.allowed_ips == [n("10.250.0.0/16")]
    assert new.persistent_keepalive == 0
    result = apply_config(actual, delta)
    check_reaches(actual, desired, result)


def test_an_allowed_ip_moving_between_peers() -> None:
    actual = hundred_peers()
    desired = copy.deepcopy(actual)
    moved = desired.peers[0].allowed_ips.pop()
    desired.peers[1].allowed_ips.append(moved)
    delta = config_delta(actual, desired)
    assert len(delta.peers) == 2
    result = apply_config(actual, delta)
    check_reaches(actual, desired, result)
    assert result.peers[0].allowed_ips == []
    assert set(result.peers[1].allowed_ips) == {n("10.2.0.0/16"), moved}


def test_desired_endpoint_none_keeps_the_roamed_one() -> None:
    actual = hundred_peers()
    desired = copy.deepcopy(actual)
    for p in desired.peers:
        p.endpoint = None
    assert config_delta(actual, desired).is_empty()


def test_preshared_key_removal_sends_the_zero_key() -> None:
    actual = hundred_peers()
    actual.peers[3].preshared_key = Key.generate_preshared()
    desired = copy.deepcopy(actual)
    desired.peers[3].preshared_key = None
    (pc,) = config_delta(actual, desired).peers
    assert pc.preshared_key is not None
    assert pc.preshared_key.is_zero()
    assert apply_config(actual, Config(peers=[pc])).peers[3].preshared_key is None


def test_device_fields() -> None:
    actual = hundred_peers()
    desired = copy.deepcopy(actual)
    desired.listen_port = 0  # "leave as is"
    desired.private_key = None  # "leave as is"
    assert config_delta(actual, desired).is_empty()
    desired.fwmark = 0x10
    desired.listen_port = 4500
    desired.private_key = Key.generate()
    delta = config_delta(actual, desired)
    assert (delta.fwmark, delta.listen_port, delta.private_key) == (0x10, 4500, desired.private_key)
    assert delta.peers == []
    actual.fwmark = 0x10
    desired.fwmark = 0  # fwmark is always enforced: 0 clears it
    assert config_delta(actual, desired).fwmark == 0


def test_counters_and_handshakes_are_ignored() -> None:
    actual = hundred_peers()
    desired = copy.deepcopy(actual)
    for p in actual.peers:
        p.rx_bytes, p.tx_bytes = 10**9, 10**6
        p.last_handshake = datetime(2025, 1, 1, tzinfo=UTC)
    assert config_delta(actual, desired).is_empty()


def test_peer_configs_are_new_objects() -> None:
    # The delta must not alias the desired device's lists: callers mutate configs.
    actual = Device(name="wg0", kind=BackendKind.USERSPACE)
    desired = copy.deepcopy(hundred_peers())
    delta = config_delta(actual, desired)
    delta.peers[0].allowed_ips.append(n("192.168.0.0/16"))
    assert n("192.168.0.0/16") not in desired.peers[0].allowed_ips
    assert isinstance(delta.peers[0], PeerConfig)
