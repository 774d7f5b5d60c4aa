"""Encoding and decoding of the kernel's ``wireguard`` generic netlink family (pure; no I/O).

Messages here are attribute payloads: what follows the genlmsghdr. Constants are those of
include/uapi/linux/wireguard.h (family version 1).

- SET_DEVICE is split like wgctrl-go splits it: at most MAX_PEERS peer entries and MAX_IPS
  allowed IPs per message. A peer whose allowed IPs do not fit continues in the next
  message as its public key plus more allowed IPs. REPLACE_PEERS, device attributes and a
  peer's REPLACE_ALLOWEDIPS/endpoint/keys go only into the first fragment, so later
  fragments add rather than reset. UPDATE_ONLY is repeated on every fragment: without it a
  continuation would create a peer that the first fragment rightly skipped.
- A GET_DEVICE dump spans messages and repeats a peer (key + more allowed IPs) when they
  did not fit; adjacent entries with the same key are merged.
- Every nest carries NLA_F_NESTED: kernels with the YNL-generated policy validate strictly.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
import struct
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from wgcable.netlink import attrs
from wgcable.netlink.attrs import Attr
from wgcable.wgctrl.errors import InvalidConfigError, InvalidKeyError, ProtocolError
from wgcable.wgctrl.key import Key
from wgcable.wgctrl.types import (
    BackendKind,
    Config,
    Device,
    IPAddress,
    IPNetwork,
    Peer,
    PeerConfig,
    UDPAddr,
)

WG_GENL_NAME = "wireguard"
WG_GENL_VERSION = 1
WG_CMD_GET_DEVICE = 0
WG_CMD_SET_DEVICE = 1

WGDEVICE_F_REPLACE_PEERS = 1 << 0
WGDEVICE_A_IFINDEX = 1
WGDEVICE_A_IFNAME = 2
WGDEVICE_A_PRIVATE_KEY = 3
WGDEVICE_A_PUBLIC_KEY = 4
WGDEVICE_A_FLAGS = 5
WGDEVICE_A_LISTEN_PORT = 6
WGDEVICE_A_FWMARK = 7
WGDEVICE_A_PEERS = 8

WGPEER_F_REMOVE_ME = 1 << 0
WGPEER_F_REPLACE_ALLOWEDIPS = 1 << 1
WGPEER_F_UPDATE_ONLY = 1 << 2
WGPEER_A_PUBLIC_KEY = 1
WGPEER_A_PRESHARED_KEY = 2
WGPEER_A_FLAGS = 3
WGPEER_A_ENDPOINT = 4
WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL = 5
WGPEER_A_LAST_HANDSHAKE_TIME = 6
WGPEER_A_RX_BYTES = 7
WGPEER_A_TX_BYTES = 8
WGPEER_A_ALLOWEDIPS = 9
WGPEER_A_PROTOCOL_VERSION = 10

WGALLOWEDIP_A_FAMILY = 1
WGALLOWEDIP_A_IPADDR = 2
WGALLOWEDIP_A_CIDR_MASK = 3

MAX_PEERS = 32  # peer entries per SET_DEVICE message (wgctrl-go's peerBatchChunk)
MAX_IPS = 256  # allowed IPs per SET_DEVICE message (wgctrl-go's ipBatchChunk)
IFNAMSIZ = 16

AF_INET = 2  # Linux values, as they appear on this wire
AF_INET6 = 10

_FAMILY = struct.Struct("=H")  # sa_family is host order
_PORT = struct.Struct("!H")  # sin_port / sin6_port are network order
_FLOWINFO = struct.Struct("!I")
_SCOPE = struct.Struct("=I")
_TIMESPEC = struct.Struct("=qq")  # struct __kernel_timespec: two s64
SOCKADDR_IN_LEN = 16
SOCKADDR_IN6_LEN = 28

DEVICE_ATTR_NAMES = {
    WGDEVICE_A_IFINDEX: "WGDEVICE_A_IFINDEX",
    WGDEVICE_A_IFNAME: "WGDEVICE_A_IFNAME",
    WGDEVICE_A_PRIVATE_KEY: "WGDEVICE_A_PRIVATE_KEY",
    WGDEVICE_A_PUBLIC_KEY: "WGDEVICE_A_PUBLIC_KEY",
    WGDEVICE_A_FLAGS: "WGDEVICE_A_FLAGS",
    WGDEVICE_A_LISTEN_PORT: "WGDEVICE_A_LISTEN_PORT",
    WGDEVICE_A_FWMARK: "WGDEVICE_A_FWMARK",
    WGDEVICE_A_PEERS: "WGDEVICE_A_PEERS",
}
PEER_ATTR_NAMES = {
    WGPEER_A_PUBLIC_KEY: "WGPEER_A_PUBLIC_KEY",
    WGPEER_A_PRESHARED_KEY: "WGPEER_A_PRESHARED_KEY",
    WGPEER_A_FLAGS: "WGPEER_A_FLAGS",
    WGPEER_A_ENDPOINT: "WGPEER_A_ENDPOINT",
    WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: "WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL",
    WGPEER_A_LAST_HANDSHAKE_TIME: "WGPEER_A_LAST_HANDSHAKE_TIME",
    WGPEER_A_RX_BYTES: "WGPEER_A_RX_BYTES",
    WGPEER_A_TX_BYTES: "WGPEER_A_TX_BYTES",
    WGPEER_A_ALLOWEDIPS: "WGPEER_A_ALLOWEDIPS",
    WGPEER_A_PROTOCOL_VERSION: "WGPEER_A_PROTOCOL_VERSION",
}
ALLOWEDIP_ATTR_NAMES = {
    WGALLOWEDIP_A_FAMILY: "WGALLOWEDIP_A_FAMILY",
    WGALLOWEDIP_A_IPADDR: "WGALLOWEDIP_A_IPADDR",
    WGALLOWEDIP_A_CIDR_MASK: "WGALLOWEDIP_A_CIDR_MASK",
}


def check_ifname(name: str) -> None:
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ or b"\0" in raw:
        raise InvalidConfigError("interface name", name, f"must be 1-{IFNAMSIZ - 1} bytes")


# --- SET_DEVICE ---------------------------------------------------------------------------


def encode_sockaddr(addr: UDPAddr) -> bytes:
    """sockaddr_in (16 bytes) or sockaddr_in6 (28 bytes) for an endpoint."""
    if addr.ip.version == 4:
        return _FAMILY.pack(AF_INET) + _PORT.pack(addr.port) + addr.ip.packed + bytes(8)
    scope = addr.ip.scope_id
    scope_id = int(scope) if scope is not None and scope.isdigit() else 0
    return (
        _FAMILY.pack(AF_INET6)
        + _PORT.pack(addr.port)
        + _FLOWINFO.pack(0)
        + addr.ip.packed
        + _SCOPE.pack(scope_id)
    )


def _allowed_ip(index: int, net: IPNetwork) -> bytes:
    family = AF_INET if net.version == 4 else AF_INET6
    return attrs.nested(
        index,
        [
            attrs.u16(WGALLOWEDIP_A_FAMILY, family),
            attrs.raw(WGALLOWEDIP_A_IPADDR, net.network_address.packed),
            attrs.u8(WGALLOWEDIP_A_CIDR_MASK, net.prefixlen),
        ],
    )


def _peer_entry(index: int, p: PeerConfig, ips: Sequence[IPNetwork], first: bool) -> bytes:
    out = [attrs.raw(WGPEER_A_PUBLIC_KEY, p.public_key.raw)]
    if p.remove:
        # A removed peer needs nothing else, and must never be split: a continuation
        # without REMOVE_ME would create the peer again.
        out.append(attrs.u32(WGPEER_A_FLAGS, WGPEER_F_REMOVE_ME))
        return attrs.nested(index, out)
    flags = WGPEER_F_UPDATE_ONLY if p.update_only else 0
    if first and p.replace_allowed_ips:
        flags |= WGPEER_F_REPLACE_ALLOWEDIPS
    if flags:
        out.append(attrs.u32(WGPEER_A_FLAGS, flags))
    if first:
        if p.preshared_key is not None:  # a zero key clears it on the device
            out.append(attrs.raw(WGPEER_A_PRESHARED_KEY, p.preshared_key.raw))
        if p.endpoint is not None:
            out.append(attrs.raw(WGPEER_A_ENDPOINT, encode_sockaddr(p.endpoint)))
        if p.persistent_keepalive is not None:
            out.append(attrs.u16(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, p.persistent_keepalive))
    if ips:
        entries = [_allowed_ip(i, n) for i, n in enumerate(ips)]
        out.append(attrs.nested(WGPEER_A_ALLOWEDIPS, entries))
    return attrs.nested(index, out)


def _device_attrs(ifname: str, config: Config, first: bool) -> list[bytes]:
    out = [attrs.string(WGDEVICE_A_IFNAME, ifname)]
    if not first:
        return out
    if config.private_key is not None:
        out.append(attrs.raw(WGDEVICE_A_PRIVATE_KEY, config.private_key.raw))
    if config.listen_port is not None:
        out.append(attrs.u16(WGDEVICE_A_LISTEN_PORT, config.listen_port))
    if config.fwmark is not None:
        out.append(attrs.u32(WGDEVICE_A_FWMARK, config.fwmark))
    if config.replace_peers:
        out.append(attrs.u32(WGDEVICE_A_FLAGS, WGDEVICE_F_REPLACE_PEERS))
    return out


def encode_set_device(ifname: str, config: Config) -> list[bytes]:
    """The SET_DEVICE attribute payloads for ``config``, in the order they must be sent.

    Always at least one message (device attributes alone when there are no peers).
    """
    check_ifname(ifname)
    messages: list[bytes] = []
    peers: list[bytes] = []
    ips = 0

    def flush() -> None:
        nonlocal peers, ips
        body = _device_attrs(ifname, config, first=not messages)
        if peers:
            body.append(attrs.nested(WGDEVICE_A_PEERS, peers))
        messages.append(b"".join(body))
        peers, ips = [], 0

    for p in config.peers:
        todo: Sequence[IPNetwork] = [] if p.remove else p.allowed_ips
        first = True
        while True:
            if len(peers) == MAX_PEERS or (todo and ips == MAX_IPS):
                flush()
            take = min(len(todo), MAX_IPS - ips)
            peers.append(_peer_entry(len(peers), p, todo[:take], first))
            ips += take
            todo = todo[take:]
            first = False
            if not todo:
                break
    if peers or not messages:
        flush()
    return messages


# --- GET_DEVICE ---------------------------------------------------------------------------


def encode_get_device(ifname: str) -> bytes:
    """The GET_DEVICE request's attributes (sent with NLM_F_DUMP)."""
    check_ifname(ifname)
    return attrs.string(WGDEVICE_A_IFNAME, ifname)


class _Bad(Exception):
    """A malformed attribute while decoding; turned into ProtocolError with its name."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(detail)
        self.key = key
        self.detail = detail


def decode_sockaddr(data: bytes) -> UDPAddr | None:
    """An endpoint from sockaddr_in/sockaddr_in6; None for AF_UNSPEC or unknown families."""
    if len(data) < _FAMILY.size:
        raise ValueError(f"sockaddr of {len(data)} bytes")
    (family,) = _FAMILY.unpack_from(data)
    if family == AF_INET:
        if len(data) < 8:
            raise ValueError(f"sockaddr_in of {len(data)} bytes")
        (port,) = _PORT.unpack_from(data, 2)
        ip: IPAddress = ipaddress.IPv4Address(data[4:8])
    elif family == AF_INET6:
        if len(data) < SOCKADDR_IN6_LEN:
            raise ValueError(f"sockaddr_in6 of {len(data)} bytes")
        (port,) = _PORT.unpack_from(data, 2)
        (scope,) = _SCOPE.unpack_from(data, 24)
        ip = ipaddress.IPv6Address(data[8:24])
        if scope:
            ip = ipaddress.IPv6Address(f"{ip}%{scope}")
    else:
        return None
    return UDPAddr(ip, port) if port else None


def _decode_allowed_ip(entry: Attr) -> IPNetwork:
    found = attrs.by_type(entry.nested())
    fam, addr, cidr = (
        found.get(WGALLOWEDIP_A_FAMILY),
        found.get(WGALLOWEDIP_A_IPADDR),
        found.get(WGALLOWEDIP_A_CIDR_MASK),
    )
    if fam is None or addr is None or cidr is None:
        raise _Bad("WGPEER_A_ALLOWEDIPS", "allowed IP without family, address or mask")
    family, raw, prefix = fam.u16(), addr.payload, cidr.u8()
    if family == AF_INET and len(raw) == 4:
        return ipaddress.IPv4Network((raw, prefix), strict=False)
    if family == AF_INET6 and len(raw) == 16:
        return ipaddress.IPv6Network((raw, prefix), strict=False)
    raise _Bad("WGALLOWEDIP_A_IPADDR", f"family {family} with a {len(raw)}-byte address")


def _handshake(data: bytes) -> datetime | None:
    if len(data) != _TIMESPEC.size:
        raise ValueError(f"timespec of {len(data)} bytes")
    sec, nsec = _TIMESPEC.unpack(data)
    if sec == 0 and nsec == 0:
        return None
    return datetime.fromtimestamp(sec, UTC) + timedelta(microseconds=nsec // 1000)


def _decode_peer(entry: Attr) -> Peer:
    """One peer entry; its fields are optional because continuations carry only the key."""
    items = entry.nested()
    key = attrs.first(items, WGPEER_A_PUBLIC_KEY)
    if key is None:
        raise _Bad("WGPEER_A_PUBLIC_KEY", "peer without a public key")
    peer = Peer(public_key=_key(key, "WGPEER_A_PUBLIC_KEY"))
    for a in items:
        name = PEER_ATTR_NAMES.get(a.type, str(a.type))
        try:
            if a.type == WGPEER_A_PRESHARED_KEY:
                psk = _key(a, name)
                peer.preshared_key = None if psk.is_zero() else psk
            elif a.type == WGPEER_A_ENDPOINT:
                peer.endpoint = decode_sockaddr(a.payload)
            elif a.type == WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL:
                peer.persistent_keepalive = a.u16()
            elif a.type == WGPEER_A_LAST_HANDSHAKE_TIME:
                peer.last_handshake = _handshake(a.payload)
            elif a.type == WGPEER_A_RX_BYTES:
                peer.rx_bytes = a.u64()
            elif a.type == WGPEER_A_TX_BYTES:
                peer.tx_bytes = a.u64()
            elif a.type == WGPEER_A_PROTOCOL_VERSION:
                peer.protocol_version = a.u32()
            elif a.type == WGPEER_A_ALLOWEDIPS:
                peer.allowed_ips.extend(_decode_allowed_ip(e) for e in a.nested())
        except ValueError as e:  # AttrDecodeError included
            raise _Bad(name, str(e)) from None
    return peer


def _key(a: Attr, name: str) -> Key:
    try:
        return Key(a.payload, name)
    except InvalidKeyError as e:
        raise _Bad(name, str(e)) from None


def _merge(peers: list[Peer], more: Peer) -> None:
    """Append ``more``, or fold it into the previous entry when it continues that peer."""
    if peers and peers[-1].public_key == more.public_key:
        peers[-1].allowed_ips.extend(more.allowed_ips)
    else:
        peers.append(more)


def decode_get_device(ifname: str, messages: Sequence[bytes]) -> Device:
    """A Device from the attribute payloads of a GET_DEVICE dump, in order.

    Raises ProtocolError (EPROTO) naming the attribute when something is malformed.
    """
    dev = Device(name=ifname, kind=BackendKind.KERNEL)
    try:
        for data in messages:
            for a in attrs.parse(data):
                _decode_device_attr(dev, a)
    except _Bad as e:
        raise ProtocolError(ifname, "read", _errno.EPROTO, e.key, e.detail) from None
    except attrs.AttrDecodeError as e:
        raise ProtocolError(ifname, "read", _errno.EPROTO, None, str(e)) from None
    if dev.public_key is None and dev.private_key is not None:
        dev.public_key = dev.private_key.public_key()
    return dev


def _decode_device_attr(dev: Device, a: Attr) -> None:
    name = DEVICE_ATTR_NAMES.get(a.type, str(a.type))
    try:
        if a.type == WGDEVICE_A_PRIVATE_KEY:
            dev.private_key = _key(a, name)
        elif a.type == WGDEVICE_A_PUBLIC_KEY:
            dev.public_key = _key(a, name)
        elif a.type == WGDEVICE_A_LISTEN_PORT:
            dev.listen_port = a.u16()
        elif a.type == WGDEVICE_A_FWMARK:
            dev.fwmark = a.u32()
        elif a.type == WGDEVICE_A_PEERS:
            for entry in a.nested():
                _merge(dev.peers, _decode_peer(entry))
    except ValueError as e:  # AttrDecodeError included
        raise _Bad(name, str(e)) from None


# --- extended-ack offsets -----------------------------------------------------------------

# For each nest: the names of its children, and which children are arrays of nests.
_SCHEMA: dict[str, tuple[dict[int, str], dict[int, str]]] = {
    "device": (DEVICE_ATTR_NAMES, {WGDEVICE_A_PEERS: "peer"}),
    "peer": (PEER_ATTR_NAMES, {WGPEER_A_ALLOWEDIPS: "allowedip"}),
    "allowedip": (ALLOWEDIP_ATTR_NAMES, {}),
}


def _walk(chain: Sequence[Attr]) -> tuple[str | None, str]:
    """For a chain of attributes from the outermost in: the last one's name, and the schema
    level that names the attributes inside it (meaningful when it is an array entry)."""
    level, name = "device", None
    i = 0
    while i < len(chain):
        names, arrays = _SCHEMA[level]
        name = names.get(chain[i].type)
        child = arrays.get(chain[i].type)
        if child is None:
            break
        i += 2  # skip the array entry: its type is only an index
        level = child
    return name, level


def attribute_name_at(attr_data: bytes, offset: int) -> str | None:
    """The UAPI name of the attribute at ``offset`` in a request's attributes, as an
    extended ack reports it (after subtracting the nlmsghdr and genlmsghdr)."""
    chain = attrs.locate(attr_data, offset)
    return _walk(chain)[0] if chain else None


def missing_attribute_name(attr_data: bytes, missing: int, nest_offset: int | None) -> str:
    """The name of the attribute an extended ack says is missing, inside the nest at
    ``nest_offset`` (top level when None)."""
    level = "device"
    if nest_offset is not None:
        chain = attrs.locate(attr_data, nest_offset)
        if chain:
            level = _walk(chain)[1]
    return _SCHEMA[level][0].get(missing, f"attribute {missing}")
