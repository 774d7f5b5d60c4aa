"""Validation keeps the spans of the host's networks (local subnets, own addresses,
protected networks) between endpoints, keyed by the objects the driver passes
(``desired._host_spans``). New objects, a changed endpoint or another accepted cluster
must each be seen at once; a mutable list is never kept."""

from __future__ import annotations

import ipaddress
import re

import pytest

from wgcable.cable.types import Endpoint, NATEndpointInfo
from wgcable.cable.wireguard.desired import (
    PUBLIC_KEY,
    EndpointRejectedError,
    RemotePeer,
    validate_remote,
)
from wgcable.cable.wireguard.host import Protected
from wgcable.cable.wireguard.index import PeerIndex
from wgcable.wgctrl import IPAddress, IPNetwork, Key

OWN = Key(bytes(range(1, 33))).public_key()
LOCAL = Endpoint(cluster_id="local", subnets=[], private_ip="192.0.2.1", backend="wireguard")


def info(cid: str, *subnets: str, gw: str = "198.18.5.5") -> NATEndpointInfo:
    ep = Endpoint(cluster_id=cid, subnets=list(subnets), private_ip=gw, backend="wireguard",
                  backend_config={PUBLIC_KEY: Key(cid.encode().ljust(32, b"k")).base64()})
    return NATEndpointInfo(endpoint=ep, use_ip=gw, use_nat=False)


def net(text: str) -> IPNetwork:
    return ipaddress.ip_network(text)


def check(i: NATEndpointInfo, local: tuple[IPNetwork, ...], ips: frozenset[IPAddress],
          protected: tuple[Protected, ...] | list[Protected],
          index: PeerIndex | None = None) -> RemotePeer:
    return validate_remote(i, LOCAL, local, OWN, index or PeerIndex(), ips, protected)


def refused(text: str) -> pytest.RaisesContext[EndpointRejectedError]:
    return pytest.raises(EndpointRejectedError, match=re.escape(text))


LOCAL_NETS = (net("10.1.0.0/16"),)
IPS = frozenset({ipaddress.ip_address("192.0.2.1")})
FENCES: tuple[Protected, ...] = ((net("10.96.0.10/32"), "the nameserver 10.96.0.10"),)


def test_the_same_host_objects_again_give_the_same_answers() -> None:
    for _ in range(3):
        assert check(info("a", "10.2.0.0/16"), LOCAL_NETS, IPS, FENCES).cluster_id == "a"
        with refused("covers the nameserver 10.96.0.10"):
            check(info("b", "10.96.0.0/16"), LOCAL_NETS, IPS, FENCES)
        with refused("overlaps the local cluster's"):
            check(info("c", "10.1.2.0/24"), LOCAL_NETS, IPS, FENCES)
        with refused("own address 192.0.2.1"):
            check(info("d", "192.0.2.0/24"), LOCAL_NETS, IPS, FENCES)


def test_new_local_subnets_are_seen_at_once() -> None:
    assert check(info("a", "10.2.0.0/16"), LOCAL_NETS, IPS, FENCES)
    grown = (*LOCAL_NETS, net("10.2.128.0/17"))
    with refused("overlaps the local cluster's 10.2.128"):
        check(info("a", "10.2.0.0/16"), grown, IPS, FENCES)


def test_new_protected_networks_and_addresses_are_seen_at_once() -> None:
    assert check(info("a", "10.2.0.0/16"), LOCAL_NETS, IPS, FENCES)
    fences = (*FENCES, (net("10.2.3.0/24"), "the directly connected network 10.2.3.0/24"))
    with refused("covers the directly connected network"):
        check(info("a", "10.2.0.0/16"), LOCAL_NETS, IPS, fences)
    ips = frozenset({*IPS, ipaddress.ip_address("10.2.9.9")})
    with refused("own address 10.2.9.9"):
        check(info("a", "10.2.0.0/16"), LOCAL_NETS, ips, FENCES)


def test_a_mutable_list_is_read_at_every_call() -> None:
    fences: list[Protected] = list(FENCES)
    assert check(info("a", "10.2.0.0/16"), LOCAL_NETS, IPS, fences)
    fences.append((net("10.2.0.0/24"), "the broker"))
    with refused("covers the broker"):
        check(info("a", "10.2.0.0/16"), LOCAL_NETS, IPS, fences)


def test_a_changed_endpoint_and_other_clusters_are_checked_every_time() -> None:
    index = PeerIndex()
    index.add(check(info("a", "10.2.0.0/16"), LOCAL_NETS, IPS, FENCES, index))
    # The same cluster moves a subnet into a protected network: refused.
    with refused("covers the nameserver"):
        check(info("a", "10.96.0.0/24"), LOCAL_NETS, IPS, FENCES, index)
    # Another cluster claims an overlapping subnet: refused, though the host is unchanged.
    with refused("overlaps 10.2.0.0/16 of cluster 'a'"):
        check(info("b", "10.2.5.0/24", gw="198.18.6.6"), LOCAL_NETS, IPS, FENCES, index)
    # A cluster whose subnet covers another's gateway address.
    with refused("gateway address of cluster 'a'"):
        check(info("b", "198.18.5.0/24", gw="198.18.6.6"), LOCAL_NETS, IPS, FENCES, index)
