"""The one boundary for another cluster's text: a remote Endpoint's strings are parsed here,
once, into canonical values (addresses and networks without a zone, a port, a key, a
DNS-label cluster ID).

Everything that reaches UAPI, ``ip -batch``, nft, the health checker or a log line is
rendered from these values, never from the text the remote wrote: Python's ``ipaddress``
takes IPv6 zone IDs of any text, newlines included, and ``str()`` gives that text back.
Errors show a value only in its short, safe form (``shown``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass

from wgcable.cable.types import Endpoint
from wgcable.wgctrl import IPAddress, IPNetwork, Key
from wgcable.wgctrl.errors import InvalidKeyError

PUBLIC_KEY = "publicKey"
INTERFACE_NAME = "interface-name"
UDP_PORT = "udp-port"
DEFAULT_PORT = 5871  # the fixed port of the original 2020 driver

SHOWN_CHARS = 64  # of an untrusted string in a message
SHOWN_ITEMS = 4  # of an untrusted list in a message
MAX_TEXT = 253  # a host name's limit; free text fields (hostname, cable name) stay within it
MAX_CONFIG_ENTRIES = 32
MAX_LIST = 1024  # subnets or addresses of one endpoint; far beyond any real cluster
REPORTED_ITEMS = 64  # of a refused endpoint's lists, in the status

# Submariner's cluster IDs are DNS-1123 labels (subctl refuses others).
_CLUSTER_ID = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def shown(value: object) -> object:
    """A short form of an untrusted value for messages: strings cut at ``SHOWN_CHARS`` (the
    length said), lists at ``SHOWN_ITEMS``. Show it with ``!r``, which escapes control
    characters, so that a value can never start a line of its own in a log or protocol."""
    if isinstance(value, str):
        if len(value) <= SHOWN_CHARS:
            return value
        return f"{value[:SHOWN_CHARS]}...({len(value)} chars)"
    if isinstance(value, (list, tuple)):
        items = [shown(v) for v in value[:SHOWN_ITEMS]]
        if len(value) > SHOWN_ITEMS:
            items.append(f"...({len(value)} items)")
        return items
    return value


class EndpointRejectedError(ValueError):
    """A remote endpoint we refuse; ``field`` and ``value`` (in its short, safe form) say
    what is wrong."""

    def __init__(self, cluster_id: str, field: str, value: object, reason: str) -> None:
        self.cluster_id = cluster_id
        self.field = field
        self.value = shown(value)
        self.reason = reason
        super().__init__(
            f"endpoint of cluster {shown(cluster_id)!r}: {field}={self.value!r}: {reason}")


# A dotted-quad IPv4 address, optionally with a prefix length, in the one spelling that
# ipaddress accepts and prints alike (ASCII digits, no leading zeros, octets to 255, prefix
# to 32): read here from integers, it is the same value, at a fifth of the cost. Any other
# text goes through ipaddress (which refuses or accepts it as before).
_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_V4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(?:/(3[0-2]|[12]?[0-9]))?")


def _v4(text: str) -> tuple[int, int] | None:
    """(address, prefix length) of a plain dotted-quad text, else None; 32 without a prefix."""
    m = _V4.fullmatch(text)
    if m is None:
        return None
    a, b, c, d, plen = m.groups()
    return (int(a) << 24 | int(b) << 16 | int(c) << 8 | int(d)), int(plen or 32)


def parse_address(text: str, field: str, cluster_id: str) -> IPAddress:
    """An address of another cluster: a literal IP, without a zone."""
    if "%" in text:
        raise EndpointRejectedError(cluster_id, field, text,
                                    "a zone is not allowed on another cluster's address")
    if "/" not in text and (quad := _v4(text)) is not None:
        return ipaddress.IPv4Address(quad[0])
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise EndpointRejectedError(cluster_id, field, text, "not an IP address") from None
    return canonical_address(addr)


def parse_network(text: str, field: str, cluster_id: str) -> IPNetwork:
    """A network of another cluster (host bits are dropped), without a zone."""
    if "%" in text:
        raise EndpointRejectedError(cluster_id, field, text,
                                    "a zone is not allowed on another cluster's network")
    if (quad := _v4(text)) is not None:
        return ipaddress.IPv4Network(quad, strict=False)  # host bits dropped, as below
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise EndpointRejectedError(cluster_id, field, text, "not a CIDR") from None
    return canonical_network(net)


def canonical_address(addr: IPAddress) -> IPAddress:
    """The address rebuilt from its bits: whatever zone text it carried is gone. An exact
    IPv4Address has no zone to lose (and rebuilding thousands costs milliseconds)."""
    if type(addr) is ipaddress.IPv4Address:
        return addr
    return ipaddress.ip_address(addr.packed)


def canonical_network(net: IPNetwork) -> IPNetwork:
    if type(net) is ipaddress.IPv4Network:  # no zone, host bits already dropped
        return net
    return ipaddress.ip_network((net.network_address.packed, net.prefixlen))


Span = tuple[int, int, int]  # (IP version, first address, last address) as integers


def span(net: IPNetwork) -> Span:
    """``net`` as integers, for overlap and containment checks that validation runs many
    times per endpoint: ipaddress's ``broadcast_address`` builds an object on first use,
    its ``overlaps`` and ``in`` cost microseconds. ``net``'s host bits are zero (ipaddress
    drops them), so its last address is its first plus its size, less one."""
    first = int(net.network_address)
    return net.version, first, first + (1 << (net.max_prefixlen - net.prefixlen)) - 1


def parse_port(value: str | None, field: str, cluster_id: str, default: int) -> int:
    if value is None or value == "":
        return default
    # ASCII digits only: str.isdigit() also accepts "²" (int() fails) and "٣" (int() = 3);
    # and int() fails on thousands of digits, hence the length check.
    digits = value.isascii() and value.isdigit() and len(value.lstrip("0")) <= 5
    if not digits or not 0 < int(value) < 65536:
        raise EndpointRejectedError(cluster_id, field, value, "must be a port number 1-65535")
    return int(value)


def parse_cluster_id(text: str) -> str:
    if not text:
        raise EndpointRejectedError(text, "cluster_id", text, "empty")
    if not _CLUSTER_ID.fullmatch(text):
        raise EndpointRejectedError(text, "cluster_id", text,
                                    "not a DNS-1123 label (a-z, 0-9 and '-', at most 63)")
    return text


def _check_text(cid: str, field: str, text: str, limit: int = MAX_TEXT) -> None:
    """Free text that is only shown (status, metrics labels, ``wgcable show``): printable,
    so that it cannot forge lines or terminal sequences, and bounded."""
    if len(text) > limit:
        raise EndpointRejectedError(cid, field, text, f"longer than {limit} characters")
    if not text.isprintable():
        raise EndpointRejectedError(cid, field, text, "contains control characters")


@dataclass(frozen=True, slots=True)
class RemoteEndpoint:
    """A remote Endpoint's values, canonical. Addresses are ``None`` when not published."""

    cluster_id: str
    public_key: Key
    port: int
    private_ip: IPAddress | None
    public_ip: IPAddress | None
    subnets: tuple[IPNetwork, ...]  # as published, duplicates dropped; policy is the caller's
    health_check_ip: IPAddress | None
    private_ips: tuple[IPAddress, ...] = ()
    public_ips: tuple[IPAddress, ...] = ()
    health_check_ips: tuple[IPAddress, ...] = ()


def _optional(text: str, field: str, cid: str) -> IPAddress | None:
    return parse_address(text, field, cid) if text else None


def _addresses(texts: list[str], field: str, cid: str) -> tuple[IPAddress, ...]:
    if len(texts) > MAX_LIST:
        raise EndpointRejectedError(cid, field, texts, f"more than {MAX_LIST} addresses")
    return tuple(parse_address(t, f"{field}[{i}]", cid) for i, t in enumerate(texts))


def parse_remote(ep: Endpoint) -> RemoteEndpoint:
    """Every value of ``ep`` that anything downstream uses, canonical; or
    EndpointRejectedError naming the first bad field and its value (short and safe)."""
    cid = parse_cluster_id(ep.cluster_id)
    _check_text(cid, "hostname", ep.hostname)
    _check_text(cid, "cable_name", ep.cable_name)
    _check_text(cid, "backend", ep.backend)
    if len(ep.backend_config) > MAX_CONFIG_ENTRIES:
        raise EndpointRejectedError(cid, "backend_config", list(ep.backend_config),
                                    f"more than {MAX_CONFIG_ENTRIES} entries")
    for k, v in ep.backend_config.items():
        _check_text(cid, "backend_config", k, SHOWN_CHARS)
        if k not in (PUBLIC_KEY, UDP_PORT):  # those two are parsed below
            _check_text(cid, f"backend_config.{k}", v)
    field = f"backend_config.{PUBLIC_KEY}"
    raw_key = ep.backend_config.get(PUBLIC_KEY)
    if not raw_key:
        raise EndpointRejectedError(cid, field, raw_key, "missing")
    try:
        key = Key.from_base64(raw_key, field)
    except InvalidKeyError as e:
        # The refusal names the field already: the key error's own "field: " would repeat it.
        raise EndpointRejectedError(cid, field, raw_key, f"invalid key: {e.reason}") from None
    except ValueError as e:  # non-ASCII text (b64decode's own ValueError)
        raise EndpointRejectedError(cid, field, raw_key, f"invalid key: {e}") from None
    port = parse_port(ep.backend_config.get(UDP_PORT), f"backend_config.{UDP_PORT}", cid,
                      DEFAULT_PORT)
    if len(ep.subnets) > MAX_LIST:
        raise EndpointRejectedError(cid, "subnets", ep.subnets, f"more than {MAX_LIST} subnets")
    subnets: list[IPNetwork] = []
    for s in ep.subnets:
        net = parse_network(s, "subnets", cid)
        if net not in subnets:
            subnets.append(net)
    return RemoteEndpoint(
        cluster_id=cid,
        public_key=key,
        port=port,
        private_ip=_optional(ep.private_ip, "private_ip", cid),
        public_ip=_optional(ep.public_ip, "public_ip", cid),
        subnets=tuple(subnets),
        health_check_ip=_optional(ep.health_check_ip, "healthCheckIP", cid),
        private_ips=_addresses(ep.private_ips, "private_ips", cid),
        public_ips=_addresses(ep.public_ips, "public_ips", cid),
        health_check_ips=_addresses(ep.health_check_ips, "healthCheckIPs", cid),
    )


def health_check_target(ep: Endpoint) -> IPAddress | None:
    """The address to ping for ``ep`` (canonical), or None when it publishes none.

    Only inside the remote's own subnets: those are what its tunnel carries. Anything else
    (a neighbour of ours, the API server, a zone) would have us send ICMP where the remote
    chose, out of the tunnel. Refused with EndpointRejectedError naming ``healthCheckIP``.
    """
    if not ep.health_check_ip:
        return None
    cid = ep.cluster_id
    ip = parse_address(ep.health_check_ip, "healthCheckIP", cid)
    nets = [parse_network(s, "subnets", cid) for s in ep.subnets[:MAX_LIST]]
    if not any(n.version == ip.version and ip in n for n in nets):
        raise EndpointRejectedError(cid, "healthCheckIP", str(ip),
                                    "outside the cluster's own subnets: not pinged")
    return ip


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else f"{text[:MAX_TEXT]}...({len(text)} chars)"


def bounded(ep: Endpoint) -> Endpoint:
    """A refused endpoint as it may be reported (gateway status, metrics, ``wgcable show``):
    every string cut at ``MAX_TEXT``, every list at ``REPORTED_ITEMS``. What we refused is
    still shown, but a remote cannot make our status objects megabytes long."""
    def cut_list(items: list[str]) -> list[str]:
        return [_cut(s) for s in items[:REPORTED_ITEMS]]

    return dataclasses.replace(
        ep,
        cluster_id=_cut(ep.cluster_id), cable_name=_cut(ep.cable_name),
        health_check_ip=_cut(ep.health_check_ip), hostname=_cut(ep.hostname),
        subnets=cut_list(ep.subnets), private_ip=_cut(ep.private_ip),
        public_ip=_cut(ep.public_ip), backend=_cut(ep.backend),
        backend_config={_cut(k): _cut(v) for k, v in
                        list(ep.backend_config.items())[:MAX_CONFIG_ENTRIES]},
        private_ips=cut_list(ep.private_ips), public_ips=cut_list(ep.public_ips),
        health_check_ips=cut_list(ep.health_check_ips),
    )
