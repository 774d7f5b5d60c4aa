"""The driver's desired state: validation of remote endpoints, peers, routes, MTU, PSK."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from wgcable.cable.remote import shown
from wgcable.cable.types import Endpoint, NATEndpointInfo
from wgcable.cable.wireguard.desired import (
    DEFAULT_PORT,
    EndpointRejectedError,
    RemotePeer,
    desired_peer,
    desired_routes,
    local_sources,
    mtu_for,
    validate_remote,
)
from wgcable.cable.wireguard.host import overlaps
from wgcable.cable.wireguard.index import PeerIndex
from wgcable.cable.wireguard.psk import WELL_KNOWN
from wgcable.cable.wireguard.psk import check as check_psk
from wgcable.routing.table import Route
from wgcable.wgctrl import IPAddress, IPNetwork, Key, UDPAddr

LOCAL_ID = "east"
LOCAL_SUBNETS = ("10.0.0.0/16", "fd00:e::/64")
OWN_PRIVATE = Key(hashlib.sha256(b"own private key of the test gateway").digest()).clamped()
OWN_PUBLIC = OWN_PRIVATE.public_key()
PK = "backend_config.publicKey"
PORT = "backend_config.udp-port"
UNSPECIFIED_V4 = str(ipaddress.IPv4Address(0))  # "0.0.0.0"


def net(text: str) -> IPNetwork:
    return ipaddress.ip_network(text)


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def key_for(name: str) -> Key:
    """A deterministic public key per cluster name."""
    return Key(hashlib.sha256(f"public key of {name}".encode()).digest())


def local_endpoint(subnets: Sequence[str] = LOCAL_SUBNETS) -> Endpoint:
    return Endpoint(
        cluster_id=LOCAL_ID,
        subnets=list(subnets),
        private_ip="192.168.0.1",
        backend="wireguard",
        backend_config={"publicKey": OWN_PUBLIC.base64()},
    )


def local_nets(subnets: Sequence[str] = LOCAL_SUBNETS) -> list[IPNetwork]:
    return [net(s) for s in subnets]


def remote(
    cluster_id: str = "west",
    subnets: Sequence[str] = ("10.1.0.0/16",),
    *,
    use_ip: str = "203.0.113.7",
    use_nat: bool = False,
    backend_config: Mapping[str, str] | None = None,
) -> NATEndpointInfo:
    config = (
        {"publicKey": key_for(cluster_id).base64()}
        if backend_config is None
        else dict(backend_config)
    )
    ep = Endpoint(
        cluster_id=cluster_id,
        subnets=list(subnets),
        private_ip="192.168.9.9",
        public_ip=use_ip,
        backend="wireguard",
        backend_config=config,
    )
    return NATEndpointInfo(endpoint=ep, use_ip=use_ip, use_nat=use_nat)


def validate(
    info: NATEndpointInfo,
    others: Mapping[str, RemotePeer] | None = None,
    local_subnets: Sequence[str] = LOCAL_SUBNETS,
) -> RemotePeer:
    return validate_remote(
        info, local_endpoint(local_subnets), local_nets(local_subnets), OWN_PUBLIC, others or {}
    )


def accepted_peer(cluster_id: str, *subnets: str) -> RemotePeer:
    return validate(remote(cluster_id, subnets))


def refusal(
    info: NATEndpointInfo,
    others: Mapping[str, RemotePeer] | None = None,
    local_subnets: Sequence[str] = LOCAL_SUBNETS,
) -> EndpointRejectedError:
    with pytest.raises(EndpointRejectedError) as exc:
        validate(info, others, local_subnets)
    return exc.value


def assert_names(err: EndpointRejectedError, field: str, value: object) -> None:
    """The error carries the field and value (in its short form), and its message shows
    both."""
    assert err.field == field
    assert err.value == shown(value)
    message = str(err)
    assert field in message
    assert repr(shown(value)) in message
    assert OWN_PRIVATE.base64() not in message
    assert OWN_PRIVATE.hex() not in message


# --- accepted endpoints -----------------------------------------------------------------------


def test_accepts_a_good_endpoint() -> None:
    info = remote("west", ["10.1.0.0/16", "fd00:a::/64"], use_ip="203.0.113.7", use_nat=True)
    peer = validate(info)
    assert peer.cluster_id == "west"
    assert peer.public_key == key_for("west")
    assert peer.endpoint == UDPAddr(ip("203.0.113.7"), DEFAULT_PORT)
    assert peer.subnets == (net("10.1.0.0/16"), net("fd00:a::/64"))
    assert peer.using_ip == "203.0.113.7"
    assert peer.using_nat is True


def test_default_port_is_5871() -> None:
    assert DEFAULT_PORT == 5871
    assert validate(remote()).endpoint.port == 5871


def test_empty_udp_port_means_default() -> None:
    info = remote(backend_config={"publicKey": key_for("west").base64(), "udp-port": ""})
    assert validate(info).endpoint.port == DEFAULT_PORT


@pytest.mark.parametrize(("text", "port"), [("51820", 51820), ("1", 1), ("65535", 65535),
                                             ("04500", 4500)])
def test_port_from_udp_port(text: str, port: int) -> None:
    info = remote(backend_config={"publicKey": key_for("west").base64(), "udp-port": text})
    assert validate(info).endpoint.port == port


def test_ipv6_endpoint() -> None:
    peer = validate(remote(use_ip="2001:db8::7"))
    assert peer.endpoint == UDPAddr(ip("2001:db8::7"), DEFAULT_PORT)
    assert str(peer.endpoint) == "[2001:db8::7]:5871"


def test_subnets_are_normalised_and_deduplicated() -> None:
    info = remote(subnets=["10.1.0.0/16", "10.1.2.3/16", "10.1.0.0/16", "fd00:a::1/64"])
    assert validate(info).subnets == (net("10.1.0.0/16"), net("fd00:a::/64"))


def test_public_key_with_surrounding_whitespace_is_accepted() -> None:
    info = remote(backend_config={"publicKey": f" {key_for('west').base64()}\n"})
    assert validate(info).public_key == key_for("west")


def test_same_cluster_id_in_others_is_not_compared_with_itself() -> None:
    # The caller leaves the remote's own entry out; any other cluster's entry counts.
    other = accepted_peer("north", "10.2.0.0/16")
    assert validate(remote("west"), {"north": other}).cluster_id == "west"


@pytest.mark.parametrize(
    ("local", "mine"),
    [
        (("10.0.0.0/16",), ("::800:0/101",)),  # same integers, different IP versions
        (("10.0.0.0/16",), ("::a00:0/112",)),
        (("fd00:e::/64",), ("10.0.0.0/8",)),
        (("::/96",), ("16.0.0.0/4",)),
    ],
)
def test_different_ip_versions_never_overlap_local(
    local: tuple[str, ...], mine: tuple[str, ...]
) -> None:
    assert validate(remote("west", mine), local_subnets=local).subnets == tuple(map(net, mine))


def test_different_ip_versions_never_overlap_other_clusters() -> None:
    others = {"north": accepted_peer("north", "::800:0/101")}
    assert validate(remote("west", ["10.1.0.0/16"]), others).subnets == (net("10.1.0.0/16"),)
    others = {"north": accepted_peer("north", "10.1.0.0/16")}
    assert validate(remote("west", ["::a01:0/112"]), others).subnets == (net("::a01:0/112"),)


# --- refusals ---------------------------------------------------------------------------------


def test_refuses_missing_public_key() -> None:
    err = refusal(remote(backend_config={}))
    assert_names(err, PK, None)
    assert "missing" in str(err)
    assert err.cluster_id == "west"
    assert "'west'" in str(err)


def test_refuses_empty_public_key() -> None:
    assert_names(refusal(remote(backend_config={"publicKey": ""})), PK, "")


SHORT_KEY = base64.b64encode(bytes(31)).decode()  # 44 characters ending in "=="


@pytest.mark.parametrize(
    "text",
    [
        "not-a-key",
        "!" * 43 + "=",  # right length, not base64
        SHORT_KEY,  # 31 bytes
        base64.b64encode(bytes(33)).decode(),
        "é" * 43 + "=",  # not ASCII
        key_for("west").hex(),  # hex, not base64
    ],
)
def test_refuses_invalid_public_key(text: str) -> None:
    err = refusal(remote(backend_config={"publicKey": text}))
    assert_names(err, PK, text)  # a public key is public: echoing it is fine


@pytest.mark.parametrize("text", ["not-a-key", "!" * 43 + "=", SHORT_KEY, "é" * 43 + "="])
def test_validation_invalid_public_key_names_the_field_once(text: str) -> None:
    """Issue 21: "backend_config.publicKey='not-a-key': backend_config.publicKey: invalid
    key..." named the field twice."""
    msg = str(refusal(remote(backend_config={"publicKey": text})))
    assert msg.count(PK) == 1
    assert f"{PK}={shown(text)!r}: invalid key: " in msg


def test_refuses_own_public_key() -> None:
    own = OWN_PUBLIC.base64()
    err = refusal(remote(backend_config={"publicKey": own}))
    assert_names(err, PK, own)
    assert "own key" in str(err)


def test_refuses_a_key_used_by_another_cluster() -> None:
    others = {"north": accepted_peer("north", "10.2.0.0/16")}
    taken = key_for("north").base64()
    err = refusal(remote("west", backend_config={"publicKey": taken}), others)
    assert_names(err, PK, taken)
    assert "'north'" in str(err)


def test_refuses_local_cluster_id() -> None:
    assert_names(refusal(remote(LOCAL_ID, ["10.1.0.0/16"])), "cluster_id", LOCAL_ID)


def test_refuses_empty_cluster_id() -> None:
    err = refusal(remote("", ["10.1.0.0/16"]))
    assert_names(err, "cluster_id", "")
    assert "empty" in str(err)


@pytest.mark.parametrize("use_ip", [UNSPECIFIED_V4, "::", "224.0.0.1", "ff02::1",
                                    "239.255.255.250"])
def test_refuses_using_ip_that_is_not_a_unicast_ip(use_ip: str) -> None:
    assert_names(refusal(remote(use_ip=use_ip)), "using_ip", use_ip)


@pytest.mark.parametrize("use_ip", ["gateway.example.com", "203.0.113.7:4500", "10.0.0.256"])
def test_refuses_using_ip_that_is_not_an_ip_naming_the_field_it_came_from(use_ip: str) -> None:
    assert_names(refusal(remote(use_ip=use_ip)), "public_ip", use_ip)


def test_refuses_empty_using_ip() -> None:
    assert_names(refusal(remote(use_ip="")), "using_ip", "")


@pytest.mark.parametrize(
    "port",
    ["abc", "0", "00", "65536", "99999", "-1", "+80", " 80", "80 ", "4500.0", "0x10",
     "²", "٣", "1" + "0" * 5000],
)
def test_refuses_udp_port_not_a_port_number(port: str) -> None:
    info = remote(backend_config={"publicKey": key_for("west").base64(), "udp-port": port})
    err = refusal(info)
    assert_names(err, PORT, port)
    assert "1-65535" in str(err)


@pytest.mark.parametrize("subnet", ["banana", "10.1.0.0/33", "10.1.0.0/16/8", "fd00::/129",
                                    "10.1.0.0/-1", ""])
def test_refuses_subnet_that_is_not_a_cidr(subnet: str) -> None:
    err = refusal(remote(subnets=["10.1.0.0/16", subnet]))
    assert_names(err, "subnets", subnet)
    assert "not a CIDR" in str(err)


@pytest.mark.parametrize("subnet", ["0.0.0.0/0", "::/0", "10.1.0.0/0"])
def test_refuses_default_route(subnet: str) -> None:
    err = refusal(remote(subnets=["10.1.0.0/16", subnet]))
    # Named as it would have been installed: the canonical network.
    assert_names(err, "subnets", str(ipaddress.ip_network(subnet, strict=False)))
    assert "default route" in str(err)


@pytest.mark.parametrize("subnet", ["127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4",
                                    "0.0.0.0/1", "255.255.255.255/32", "::1/128", "fe80::/64",
                                    "ff02::/16", "::/96"])
def test_refuses_subnets_no_remote_cluster_owns(subnet: str) -> None:
    err = refusal(remote("west", [subnet]))
    assert_names(err, "subnets", subnet)
    assert "no remote cluster owns" in err.reason


@pytest.mark.parametrize("subnet", ["192.168.0.0/16", "192.168.0.1/32", "192.168.0.0/23"])
def test_refuses_subnets_covering_this_gateways_own_address(subnet: str) -> None:
    with pytest.raises(EndpointRejectedError) as info:
        validate_remote(remote("west", [subnet]), local_endpoint(), local_nets(),
                        OWN_PUBLIC, {}, [ip("192.168.0.1")])
    assert "covers this gateway's own address 192.168.0.1" in str(info.value)


def test_refuses_subnets_covering_the_remote_gateways_own_address() -> None:
    err = refusal(remote("west", ["172.16.0.0/12"], use_ip="172.16.0.9"))
    assert_names(err, "subnets", "172.16.0.0/12")
    assert "route into itself" in err.reason


def test_refuses_no_subnets() -> None:
    err = refusal(remote(subnets=[]))
    assert_names(err, "subnets", [])
    assert "no subnets" in str(err)


@pytest.mark.parametrize(
    ("subnet", "local"),
    [
        ("10.0.5.0/24", "10.0.0.0/16"),  # inside
        ("10.0.0.0/8", "10.0.0.0/16"),  # around
        ("10.0.0.0/16", "10.0.0.0/16"),  # the same
        ("fd00:e::/48", "fd00:e::/64"),
        ("fd00:e::8000:0:0:0/65", "fd00:e::/64"),
    ],
)
def test_refuses_subnet_overlapping_local_subnets(subnet: str, local: str) -> None:
    err = refusal(remote(subnets=["10.9.0.0/16", subnet]))
    assert_names(err, "subnets", str(net(subnet)))
    assert f"overlaps the local cluster's {local}" in str(err)


@pytest.mark.parametrize(
    ("theirs", "mine"),
    [
        ("10.2.0.0/16", "10.2.128.0/17"),
        ("10.2.0.0/16", "10.2.0.0/15"),
        ("10.2.3.4/32", "10.2.3.4/32"),
        ("fd00:b::/64", "fd00:b::/56"),
        ("fd00:b::/64", "fd00:b::42/128"),
    ],
)
def test_refuses_subnet_overlapping_another_cluster(theirs: str, mine: str) -> None:
    others = {
        "north": accepted_peer("north", "10.5.0.0/16"),
        "south": accepted_peer("south", "10.4.0.0/16", theirs),
    }
    err = refusal(remote("west", ["fd00:c::/64", mine]), others, local_subnets=("10.0.0.0/16",))
    assert_names(err, "subnets", str(net(mine)))
    assert f"overlaps {theirs} of cluster 'south'" in str(err)


@pytest.mark.parametrize(("gateway", "mine"), [
    ("203.0.113.50", "203.0.113.0/24"),
    ("203.0.113.50", "203.0.113.50/32"),
    ("2001:db8::50", "2001:db8::/64"),
])
def test_refuses_subnet_covering_another_cluster_s_gateway(gateway: str, mine: str) -> None:
    # Routing it into this tunnel would send that cluster's own tunnel packets in here.
    south = validate(remote("south", ["10.4.0.0/16"], use_ip=gateway))
    err = refusal(remote("west", [mine], use_ip="192.0.2.7"), {"south": south})
    assert_names(err, "subnets", str(net(mine)))
    assert f"covers {gateway}, the gateway address of cluster 'south'" in str(err)


def test_refuses_a_gateway_inside_another_cluster_s_subnet() -> None:
    south = accepted_peer("south", "198.51.100.0/24")
    err = refusal(remote("west", ["10.1.0.0/16"], use_ip="198.51.100.9"), {"south": south})
    assert_names(err, "using_ip", "198.51.100.9")
    assert "inside 198.51.100.0/24 of cluster 'south'" in str(err)


def test_a_cluster_s_own_gateway_and_subnets_never_clash_with_themselves_or_the_departed() -> None:
    index = PeerIndex()
    south = validate(remote("south", ["10.4.0.0/16"], use_ip="203.0.113.50"))
    index.add(south)
    # Its own update is not a clash (its old entry is excluded).
    validate_remote(remote("south", ["10.4.0.0/16"], use_ip="203.0.113.51"), local_endpoint(),
                    local_nets(), OWN_PUBLIC, index)
    index.remove("south")
    # Gone: its address may now be covered by someone else.
    validate_remote(remote("west", ["203.0.113.0/24"], use_ip="192.0.2.7"), local_endpoint(),
                    local_nets(), OWN_PUBLIC, index)


def test_refusal_is_a_value_error() -> None:
    assert issubclass(EndpointRejectedError, ValueError)


# --- desired peer -----------------------------------------------------------------------------


def test_desired_peer() -> None:
    peer = validate(remote("west", ["10.1.0.0/16", "fd00:a::/64"], use_ip="203.0.113.7",
                           backend_config={"publicKey": key_for("west").base64(),
                                           "udp-port": "4500"}))
    psk = Key.generate_preshared()
    p = desired_peer(peer, 10, psk)
    assert p.public_key == key_for("west")
    assert p.preshared_key == psk
    assert p.endpoint == UDPAddr(ip("203.0.113.7"), 4500)
    assert p.persistent_keepalive == 10
    assert p.allowed_ips == [net("10.1.0.0/16"), net("fd00:a::/64")]


def test_desired_peer_without_psk_and_keepalive() -> None:
    p = desired_peer(accepted_peer("west", "10.1.0.0/16"), 0, None)
    assert p.preshared_key is None
    assert p.persistent_keepalive == 0
    assert p.allowed_ips == [net("10.1.0.0/16")]


# --- routes -----------------------------------------------------------------------------------


def test_desired_routes_one_per_subnet_with_source_of_its_version() -> None:
    peers = [accepted_peer("west", "10.1.0.0/16", "fd00:a::/64"),
             accepted_peer("north", "10.2.0.0/16")]
    sources = {4: ip("10.0.0.1"), 6: ip("fd00:e::1")}
    assert desired_routes(peers, "subwg0", sources) == {
        Route(net("10.1.0.0/16"), "subwg0", ip("10.0.0.1")),
        Route(net("fd00:a::/64"), "subwg0", ip("fd00:e::1")),
        Route(net("10.2.0.0/16"), "subwg0", ip("10.0.0.1")),
    }


def test_desired_routes_without_source_for_a_version() -> None:
    peers = [accepted_peer("west", "10.1.0.0/16", "fd00:a::/64")]
    assert desired_routes(peers, "wg1", {4: ip("10.0.0.1")}) == {
        Route(net("10.1.0.0/16"), "wg1", ip("10.0.0.1")),
        Route(net("fd00:a::/64"), "wg1", None),
    }
    assert desired_routes(peers, "wg1", {}) == {
        Route(net("10.1.0.0/16"), "wg1", None),
        Route(net("fd00:a::/64"), "wg1", None),
    }


def test_desired_routes_empty() -> None:
    assert desired_routes([], "subwg0", {4: ip("10.0.0.1")}) == set()


# --- local sources ----------------------------------------------------------------------------


def test_local_sources_first_address_inside_local_subnets_per_version() -> None:
    addresses = [
        ("lo", "127.0.0.1", 8),
        ("subwg0", "10.0.0.99", 32),  # the device itself: skipped
        ("subwg0", "fd00:e::99", 128),
        ("eth0", "192.168.0.1", 24),  # outside the local subnets
        ("eth0", "fe80::1", 64),
        ("cni0", "10.0.0.1", 24),
        ("cni1", "10.0.0.2", 24),
        ("cni0", "fd00:e::1", 64),
        ("cni1", "fd00:e::2", 64),
    ]
    assert local_sources(addresses, local_nets(), "subwg0") == {
        4: ip("10.0.0.1"),
        6: ip("fd00:e::1"),
    }


def test_local_sources_only_the_device_inside() -> None:
    addresses = [("subwg0", "10.0.0.99", 32), ("eth0", "192.168.0.1", 24)]
    assert local_sources(addresses, local_nets(), "subwg0") == {}


def test_local_sources_other_device_name() -> None:
    addresses = [("subwg0", "10.0.0.99", 32), ("wg7", "10.0.0.7", 32)]
    assert local_sources(addresses, local_nets(), "wg7") == {4: ip("10.0.0.99")}


def test_local_sources_without_subnets() -> None:
    assert local_sources([("eth0", "10.0.0.1", 24)], [], "subwg0") == {}


# --- MTU --------------------------------------------------------------------------------------


def test_mtu_for() -> None:
    assert mtu_for(1500, False) == 1440
    assert mtu_for(1500, True) == 1420
    assert mtu_for(9001, False) == 8941


# --- preshared keys ---------------------------------------------------------------------------


WEAK_PSKS = {
    "zero": bytes(32),
    "repeated 0x01": bytes([1]) * 32,
    "repeated 0xff": bytes([0xFF]) * 32,
    "sha256 of empty": hashlib.sha256(b"").digest(),
    "sha256 of 'default psk'": hashlib.sha256(b"default psk").digest(),
    "sha256 of 'default'": hashlib.sha256(b"default").digest(),
}


@pytest.mark.parametrize("raw", list(WEAK_PSKS.values()), ids=list(WEAK_PSKS))
def test_check_psk_refuses_guessable_keys(raw: bytes) -> None:
    key = Key(raw)
    with pytest.raises(ValueError, match="preshared key refused") as exc:
        check_psk(key, "/etc/wgcable/psk")
    message = str(exc.value)
    assert "/etc/wgcable/psk" in message
    assert key.base64() not in message
    assert key.hex() not in message


@given(st.integers(0, 255))
def test_check_psk_refuses_any_repeated_byte(byte: int) -> None:
    with pytest.raises(ValueError, match="preshared key refused"):
        check_psk(Key(bytes([byte]) * 32), "psk")


def test_check_psk_accepts_a_random_key() -> None:
    key = Key.generate_preshared()
    assert check_psk(key, "psk") is key


@given(st.binary(min_size=32, max_size=32).filter(lambda b: len(set(b)) > 1))
def test_check_psk_accepts_varied_keys(raw: bytes) -> None:
    assume(raw not in WELL_KNOWN)
    assert check_psk(Key(raw), "psk") == Key(raw)


# --- many clusters (hypothesis) ---------------------------------------------------------------


HYPO_LOCAL = ("100.64.0.0/16", "fd00:ffff::/48")


@dataclass
class Cluster:
    name: str
    subnets: list[str] = field(default_factory=list)


def subnet_in_slot(slot: int, v6: bool, prefix_extra: int, offset: int) -> str:
    """A subnet inside slot ``slot`` (10.slot.0.0/16 or fd00:slot::/48): distinct slots never
    overlap each other or HYPO_LOCAL."""
    base = net(f"fd00:{slot:x}::/48") if v6 else net(f"10.{slot}.0.0/16")
    prefix = base.prefixlen + prefix_extra
    size = 1 << (base.max_prefixlen - prefix)
    start = int(base.network_address) + (offset % (1 << prefix_extra)) * size
    return str(ipaddress.ip_network((start, prefix)))


@st.composite
def disjoint_clusters(draw: st.DrawFn) -> list[Cluster]:
    n = draw(st.integers(1, 6))
    per = draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
    slots = draw(st.lists(st.integers(1, 250), min_size=sum(per), max_size=sum(per),
                          unique=True))
    clusters: list[Cluster] = []
    it = iter(slots)
    for i, count in enumerate(per):
        c = Cluster(f"cluster-{i}")
        for _ in range(count):
            v6 = draw(st.booleans())
            extra = draw(st.integers(0, 16))
            offset = draw(st.integers(0, 1 << 16))
            c.subnets.append(subnet_in_slot(next(it), v6, extra, offset))
        clusters.append(c)
    return clusters


def validate_all(clusters: Sequence[Cluster]) -> dict[str, RemotePeer]:
    accepted: dict[str, RemotePeer] = {}
    for c in clusters:
        accepted[c.name] = validate(remote(c.name, c.subnets), accepted, HYPO_LOCAL)
    return accepted


@given(data=st.data(), clusters=disjoint_clusters())
def test_disjoint_clusters_are_all_accepted_in_any_order(
    data: st.DataObject, clusters: list[Cluster]
) -> None:
    order = data.draw(st.permutations(clusters))
    accepted = validate_all(order)
    assert set(accepted) == {c.name for c in clusters}
    for c in clusters:
        assert accepted[c.name].subnets == tuple(net(s) for s in c.subnets)


@given(data=st.data(), clusters=disjoint_clusters())
def test_a_cluster_overlapping_an_accepted_one_is_refused(
    data: st.DataObject, clusters: list[Cluster]
) -> None:
    accepted = validate_all(data.draw(st.permutations(clusters)))
    victim = data.draw(st.sampled_from(clusters))
    target = net(data.draw(st.sampled_from(victim.subnets)))
    # Any network holding an address of the target overlaps it, whatever its prefix.
    address = int(target.network_address) + data.draw(st.integers(0, target.num_addresses - 1))
    prefix = data.draw(st.integers(1, target.max_prefixlen))
    intruder = str(ipaddress.ip_network((address, prefix), strict=False))
    harmless = "10.251.0.0/16"  # a slot no generated cluster uses
    subnets = data.draw(st.permutations([harmless, intruder]))
    err = refusal(remote("intruder", subnets), accepted, HYPO_LOCAL)
    assert_names(err, "subnets", intruder)
    assert "overlaps" in str(err)


# --- hostile text: zones, control characters, oversized values (issue 15) ------------------

# Python's ipaddress takes any text after '%' as an IPv6 zone; str() gives it back, so
# rendered into UAPI it would add lines of the remote's choosing.
INJECTED = "%x\npublic_key=" + "ab" * 32 + "\nremove=true"


def hostile_remote(**fields: str) -> NATEndpointInfo:
    """A remote endpoint (not behind NAT: the private IP is used) with ``fields`` replaced."""
    ep = Endpoint(
        cluster_id=fields.pop("cluster_id", "west"),
        subnets=[fields.pop("subnet", "10.1.0.0/16")],
        private_ip=fields.pop("private_ip", "2001:db8::7"),
        public_ip=fields.pop("public_ip", ""),
        hostname=fields.pop("hostname", "gw-west"),
        backend="wireguard",
        backend_config={"publicKey": key_for("west").base64()},
    )
    assert not fields
    return NATEndpointInfo(endpoint=ep, use_ip=ep.private_ip)


def assert_safe_message(err: EndpointRejectedError) -> None:
    message = str(err)
    assert message.isprintable(), message  # no newline, CR, NUL or other control character
    assert len(message) < 400, len(message)


@pytest.mark.parametrize(("field", "value"), [
    ("private_ip", "2001:db8::7" + INJECTED),
    ("public_ip", "2001:db8::8" + INJECTED),
    ("subnets", "fd00:5::" + INJECTED + "/64"),
    ("subnets", "fd00:6::%eth0/64"),
    ("private_ip", "fe80::1%eth0"),
])
def test_injection_zoned_address_or_network_is_refused_naming_the_field(
    field: str, value: str
) -> None:
    key = "subnet" if field == "subnets" else field
    err = refusal(hostile_remote(**{key: value}))
    assert err.field == field
    assert "zone" in err.reason
    assert_safe_message(err)


@pytest.mark.parametrize(("field", "value"), [
    ("hostname", "gw\nwest"),
    ("hostname", "gw\u2028west"),
    ("hostname", "gw\x1b[2Jwest"),
    ("hostname", "h" * 5000),
    ("cluster_id", "west\nremove=true"),
    ("cluster_id", "w" * 5000),
    ("cluster_id", "WEST"),
])
def test_hostile_text_fields_are_refused_with_a_short_safe_value(field: str, value: str) -> None:
    err = refusal(hostile_remote(**{field: value}))
    assert err.field == field
    assert_safe_message(err)


@pytest.mark.parametrize("field", ["private_ip", "subnet"])
def test_hostile_oversized_value_is_shown_short(field: str) -> None:
    err = refusal(hostile_remote(**{field: "1" * 100_000}))
    assert err.field == ("subnets" if field == "subnet" else field)
    assert_safe_message(err)


def test_injection_accepted_values_are_canonical() -> None:
    """What the peer carries is rebuilt from bits, not the published text."""
    peer = validate(hostile_remote(private_ip="2001:DB8:0::7", subnet="fd00:5:0::1/64"))
    assert peer.using_ip == "2001:db8::7"
    assert str(peer.endpoint) == "[2001:db8::7]:5871"
    assert [str(n) for n in peer.subnets] == ["fd00:5::/64"]


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(0, 2**32 - 1),
       st.integers(0, 32), st.booleans())
def test_overlaps_as_integers_is_ipaddress_overlaps(a: int, pa: int, b: int, pb: int,
                                                    v6: bool) -> None:
    x = ipaddress.IPv4Network((a, pa), strict=False)
    y: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.IPv4Network((b, pb),
                                                                              strict=False)
    if v6:  # the other family never overlaps
        y = ipaddress.IPv6Network((b, pb), strict=False)
        assert not overlaps(x, y)
        return
    assert overlaps(x, y) == x.overlaps(y)
