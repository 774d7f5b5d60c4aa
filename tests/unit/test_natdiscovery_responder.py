"""The NAT discovery responder: every response type, each NAT flag, and requests it must not
answer (pure: no socket)."""

from __future__ import annotations

import ipaddress

import pytest

from wgcable.natdiscovery.messages import (
    EndpointDetails,
    IPPort,
    Message,
    Request,
    Response,
    ResponseType,
)
from wgcable.natdiscovery.responder import LocalIdentity, answer, parse_ip

US = LocalIdentity.of("east", "submariner-cable-east-10-0-0-1", ["10.0.0.1", "fd00::1"])
THEM = EndpointDetails("west", "submariner-cable-west-10-1-0-1")
SOURCE = (ipaddress.ip_address("10.1.0.1"), 4490)
THEIR_SRC = IPPort("10.1.0.1", 4490)
OUR_DST = IPPort("10.0.0.1", 4490)


def _request(*, receiver: EndpointDetails | None = US.details,
             sender: EndpointDetails | None = THEM,
             using_src: IPPort | None = THEIR_SRC,
             using_dst: IPPort | None = OUR_DST,
             version: int = 1) -> Message:
    return Message(version, Request(77, sender, receiver, using_src, using_dst))


def _answer(msg: Message, source: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]
            = SOURCE) -> Response:
    response = answer(msg, source, US)
    assert response is not None
    return response


def test_ok_when_nothing_changed_on_the_way() -> None:
    response = _answer(_request())
    assert response == Response(
        request_number=77, response=ResponseType.OK, sender=US.details, receiver=THEM,
        received_src=IPPort("10.1.0.1", 4490))


def test_nat_detected_when_the_source_ip_changed() -> None:
    response = _answer(_request(), (ipaddress.ip_address("203.0.113.9"), 4490))
    assert response.response is ResponseType.NAT_DETECTED
    assert (response.src_ip_nat_detected, response.src_port_nat_detected,
            response.dst_ip_nat_detected) == (True, False, False)
    assert response.received_src == IPPort("203.0.113.9", 4490)


def test_nat_detected_when_the_source_port_changed() -> None:
    response = _answer(_request(), (ipaddress.ip_address("10.1.0.1"), 31337))
    assert response.response is ResponseType.NAT_DETECTED
    assert (response.src_ip_nat_detected, response.src_port_nat_detected,
            response.dst_ip_nat_detected) == (False, True, False)
    assert response.received_src == IPPort("10.1.0.1", 31337)


def test_nat_detected_when_the_destination_is_not_ours() -> None:
    # The requester probed our public IP, which a NAT in front of us owns.
    response = _answer(_request(using_dst=IPPort("198.51.100.1", 4490)))
    assert response.response is ResponseType.NAT_DETECTED
    assert (response.src_ip_nat_detected, response.src_port_nat_detected,
            response.dst_ip_nat_detected) == (False, False, True)


def test_any_local_address_is_a_destination_without_nat() -> None:
    # Submariner only knows its private IP; a public IP on the host itself is no NAT here.
    local = LocalIdentity.of(US.cluster_id, US.endpoint_id, ["10.0.0.1", "198.51.100.1"])
    response = answer(_request(using_dst=IPPort("198.51.100.1", 4490)), SOURCE, local)
    assert response is not None
    assert response.response is ResponseType.OK


def test_an_empty_source_ip_is_not_compared() -> None:
    # As Submariner: a requester that could not tell its source sends "".
    response = _answer(_request(using_src=IPPort("", 4490)),
                       (ipaddress.ip_address("203.0.113.9"), 4490))
    assert response.response is ResponseType.OK


def test_addresses_compare_as_addresses_not_text() -> None:
    local = LocalIdentity.of(US.cluster_id, US.endpoint_id, ["fd00::1"])
    msg = _request(using_src=IPPort("fd00:0:0::2", 4490), using_dst=IPPort("FD00:0::1", 4490))
    response = answer(msg, (ipaddress.ip_address("fd00::2"), 4490), local)
    assert response is not None
    assert response.response is ResponseType.OK
    assert response.received_src == IPPort("fd00::2", 4490)


def test_unknown_dst_cluster() -> None:
    response = _answer(_request(receiver=EndpointDetails("north", US.endpoint_id)))
    assert response.response is ResponseType.UNKNOWN_DST_CLUSTER
    assert response.receiver == THEM
    assert response.received_src == IPPort("10.1.0.1", 4490)
    assert not response.src_ip_nat_detected
    assert not response.dst_ip_nat_detected


def test_unknown_dst_cluster_is_checked_before_the_endpoint() -> None:
    response = _answer(_request(receiver=EndpointDetails("north", "other-cable")))
    assert response.response is ResponseType.UNKNOWN_DST_CLUSTER


def test_unknown_dst_endpoint() -> None:
    response = _answer(_request(receiver=EndpointDetails(US.cluster_id, "old-cable")))
    assert response.response is ResponseType.UNKNOWN_DST_ENDPOINT
    # A refusal names us as Submariner's dual-stack code does.
    assert response.sender == EndpointDetails(US.cluster_id, US.endpoint_id + "-v4")


@pytest.mark.parametrize(("asked_as", "source", "kind"), [
    (US.endpoint_id, "10.1.0.1", ResponseType.OK),  # Submariner before dual-stack
    (US.endpoint_id + "-v4", "10.1.0.1", ResponseType.OK),  # Submariner's dual-stack code
    (US.endpoint_id + "-v6", "fd00::2", ResponseType.OK),
    (US.endpoint_id + "-v6", "10.1.0.1", ResponseType.UNKNOWN_DST_ENDPOINT),  # family differs
    (US.endpoint_id + "-v4", "fd00::2", ResponseType.UNKNOWN_DST_ENDPOINT),
    (US.endpoint_id + "-v5", "10.1.0.1", ResponseType.UNKNOWN_DST_ENDPOINT),
])
def test_both_forms_of_our_endpoint_id(asked_as: str, source: str, kind: ResponseType) -> None:
    msg = _request(receiver=EndpointDetails(US.cluster_id, asked_as),
                   using_src=IPPort(source, 4490), using_dst=IPPort("", 0))
    response = _answer(msg, (ipaddress.ip_address(source), 4490))
    assert (response.response is ResponseType.NAT_DETECTED) == (kind is ResponseType.OK)
    if kind is ResponseType.OK:  # answered in the form it was asked by: its lookup key
        assert response.sender == EndpointDetails(US.cluster_id, asked_as)
    else:
        assert response.response is kind


@pytest.mark.parametrize("missing", ["sender", "receiver", "using_src", "using_dst"])
def test_malformed_when_a_part_is_missing(missing: str) -> None:
    parts: dict[str, object] = {missing: None}
    response = _answer(_request(**parts))  # type: ignore[arg-type]
    assert response.response is ResponseType.MALFORMED
    assert response.request_number == 77
    assert response.sender == EndpointDetails(US.cluster_id, US.endpoint_id + "-v4")
    assert response.receiver == (None if missing == "sender" else THEM)
    assert response.received_src == IPPort("10.1.0.1", 4490)


def test_version_0_is_answered() -> None:
    # Submariner never checks the version; its responses carry none (0).
    assert _answer(_request(version=0)).response is ResponseType.OK


@pytest.mark.parametrize("version", [2, -1, 2**31 - 1])
def test_hostile_unknown_version_is_not_answered(version: int) -> None:
    assert answer(_request(version=version), SOURCE, US) is None


def test_a_response_is_not_answered() -> None:
    msg = Message(1, Response(77, ResponseType.OK, THEM, US.details))
    assert answer(msg, SOURCE, US) is None


@pytest.mark.parametrize("text", ["fd00::1%eth0", "10.0.0.1\n", "host.example", "", "x" * 100])
def test_hostile_destination_text_is_not_a_local_address(text: str) -> None:
    response = _answer(_request(using_dst=IPPort(text, 4490)))
    assert response.dst_ip_nat_detected


def test_hostile_huge_ids_are_compared_not_trusted() -> None:
    huge = EndpointDetails("\x1b[31m" + "c" * 100_000, "e\n" * 50_000)
    response = _answer(_request(sender=huge, receiver=huge))
    assert response.response is ResponseType.UNKNOWN_DST_CLUSTER
    assert response.receiver == huge  # echoed as Submariner does; the datagram bound limits it


def test_parse_ip_refuses_zones_and_junk() -> None:
    assert parse_ip("fe80::1%eth0") is None
    assert parse_ip("010.0.0.1") is None
    assert parse_ip(" 10.0.0.1") is None
    assert parse_ip("::ffff:10.0.0.1") == ipaddress.ip_address("::ffff:10.0.0.1")
    assert parse_ip("10.0.0.1") == ipaddress.ip_address("10.0.0.1")


def test_local_identity_ignores_unparsable_addresses() -> None:
    local = LocalIdentity.of("c", "e", ["10.0.0.1", "junk", "fe80::1%eth0"])
    assert local.addresses == frozenset({ipaddress.ip_address("10.0.0.1")})
