"""The answer to a NAT discovery request, as Submariner's gateway gives it (pure).

In Submariner's order: a request lacking any of sender, receiver, using_src or using_dst is
MALFORMED; a receiver cluster that is not ours is UNKNOWN_DST_CLUSTER; a receiver endpoint
that is not ours is UNKNOWN_DST_ENDPOINT. Our endpoint ID is our cable name in either of
Submariner's forms: ``<cable>-v4``/``-v6`` (the family of the request's source, as its
dual-stack code) or the bare name (its earlier releases); the answer's sender is in the form
the request used, since the requester looks its answer up by that name.

Otherwise the answer is NAT_DETECTED when the source IP the sender says it used (if it says
one) or its source port differs from what the socket saw, or when the destination it used is
not one of our addresses; else OK. Every answer carries the source the request came from.

Addresses are compared as addresses, not as text (Submariner compares strings, so
``fd00::1`` and ``fd00:0::1`` differ there). Submariner compares the destination with its
Endpoint's private IP only; we take every local address, so a public IP that is configured
on the host is no NAT.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, replace

from wgcable.natdiscovery.messages import (
    KNOWN_VERSIONS,
    EndpointDetails,
    IPPort,
    Message,
    Request,
    Response,
    ResponseType,
    family_endpoint_id,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: str) -> IPAddress | None:
    """An address without zone, or None for anything else (a zone, a name, junk)."""
    if "%" in text or len(text) > 45:  # 45: the longest IPv6 text (with IPv4 tail)
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class LocalIdentity:
    """Who we are: our cluster ID, our cable name (endpoint ID) and our host's addresses."""

    cluster_id: str
    endpoint_id: str
    addresses: frozenset[IPAddress]

    @classmethod
    def of(cls, cluster_id: str, endpoint_id: str, local_ips: Iterable[str]) -> LocalIdentity:
        parsed = (parse_ip(ip) for ip in local_ips)
        return cls(cluster_id, endpoint_id, frozenset(a for a in parsed if a is not None))

    @property
    def details(self) -> EndpointDetails:
        return EndpointDetails(self.cluster_id, self.endpoint_id)

    def details_for(self, version: int) -> EndpointDetails:
        """Our endpoint details in Submariner's dual-stack form for IP ``version``."""
        return EndpointDetails(self.cluster_id, family_endpoint_id(self.endpoint_id, version))


def answer(msg: Message, source: tuple[IPAddress, int], local: LocalIdentity) -> Response | None:
    """Our response to ``msg`` received from ``source``, or None when it gets none (it is a
    response itself, or of a version we do not know)."""
    request = msg.body
    if not isinstance(request, Request) or msg.version not in KNOWN_VERSIONS:
        return None
    src_ip, src_port = source
    received = IPPort(str(src_ip), src_port)
    reply = _Reply(request.request_number, local.details_for(src_ip.version), request.sender,
                   received)
    if (request.sender is None or request.receiver is None
            or request.using_src is None or request.using_dst is None):
        return reply.of(ResponseType.MALFORMED)
    if request.receiver.cluster_id != local.cluster_id:
        return reply.of(ResponseType.UNKNOWN_DST_CLUSTER)
    if request.receiver not in (reply.sender, local.details):
        return reply.of(ResponseType.UNKNOWN_DST_ENDPOINT)
    reply = replace(reply, sender=request.receiver)  # answer in the form we were asked by
    # Submariner: an empty using_src IP means "not known", and is not compared.
    src_ip_nat = request.using_src.ip != "" and parse_ip(request.using_src.ip) != src_ip
    src_port_nat = request.using_src.port != src_port
    dst_ip_nat = parse_ip(request.using_dst.ip) not in local.addresses
    nat = src_ip_nat or src_port_nat or dst_ip_nat
    return reply.of(ResponseType.NAT_DETECTED if nat else ResponseType.OK,
                    src_ip_nat, src_port_nat, dst_ip_nat)


@dataclass(frozen=True)
class _Reply:
    number: int
    sender: EndpointDetails
    receiver: EndpointDetails | None
    received: IPPort

    def of(self, kind: ResponseType, src_ip_nat: bool = False, src_port_nat: bool = False,
           dst_ip_nat: bool = False) -> Response:
        return Response(self.number, kind, self.sender, self.receiver,
                        src_ip_nat, src_port_nat, dst_ip_nat, self.received)
