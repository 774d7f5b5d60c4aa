"""The kernel backend's codec (SET_DEVICE splitting, GET_DEVICE merging) and its error
mapping, plus the backend against a socketpair playing the kernel."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgcable.netlink import attrs
from wgcable.netlink import message as nlmsg
from wgcable.netlink.socket import NetlinkSocket
from wgcable.wgctrl.errors import (
    DeviceNotFoundError,
    InvalidConfigError,
    PermissionDeniedError,
    ProtocolError,
)
from wgcable.wgctrl.kernel import codec
from wgcable.wgctrl.kernel.backend import KernelBackend, to_wg_error
from wgcable.wgctrl.key import Key
from wgcable.wgctrl.types import BackendKind, Config, IPNetwork, PeerConfig, UDPAddr

NESTED = 0x8000


def nla(t: int, payload: bytes, nested: bool = False) -> bytes:
    """An attribute built by hand, the way the kernel lays it out (independent of attrs)."""
    n = 4 + len(payload)
    return struct.pack("=HH", n, t | (NESTED if nested else 0)) + payload + bytes(-n % 4)


def nest(t: int, *children: bytes) -> bytes:
    return nla(t, b"".join(children), nested=True)


def kernel_allowed_ip(net: str) -> bytes:
    n = ipaddress.ip_network(net)
    fam = 2 if n.version == 4 else 10
    # The kernel writes CIDR first: decoding must not depend on attribute order.
    return nest(
        0,
        nla(3, struct.pack("=B", n.prefixlen)),
        nla(1, struct.pack("=H", fam)),
        nla(2, n.network_address.packed),
    )


def sockaddr_in(ip: str, port: int) -> bytes:
    return struct.pack("=H", 2) + struct.pack("!H", port) + socket.inet_aton(ip) + bytes(8)


def sockaddr_in6(ip: str, port: int, flowinfo: int = 0, scope: int = 0) -> bytes:
    return (
        struct.pack("=H", 10)
        + struct.pack("!HI", port, flowinfo)
        + socket.inet_pton(socket.AF_INET6, ip)
        + struct.pack("=I", scope)
    )


PRIV = Key.generate()
PUB_A = Key(bytes(range(32)))
PUB_B = Key(bytes(range(100, 132)))
PUB_C = Key(b"\xcc" * 32)
PSK = Key(b"\x42" * 32)


def peer_a() -> bytes:
    return nest(
        0,
        nla(1, PUB_A.raw),
        nla(2, bytes(32)),  # all-zero preshared key: none
        nla(6, struct.pack("=qq", 1_700_000_000, 500_000_000)),
        nla(5, struct.pack("=H", 25)),
        nla(8, struct.pack("=Q", 2000)),
        nla(7, struct.pack("=Q", 1000)),
        nla(10, struct.pack("=I", 1)),
        nla(4, sockaddr_in("192.0.2.1", 51820)),
        nest(9, kernel_allowed_ip("10.0.0.0/24"), kernel_allowed_ip("fd00::/64")),
    )


def peer_b(*nets: str) -> bytes:
    return nest(
        0,
        nla(1, PUB_B.raw),
        nla(2, PSK.raw),
        nla(6, struct.pack("=qq", 0, 0)),
        nla(5, struct.pack("=H", 0)),
        nla(8, struct.pack("=Q", 0)),
        nla(7, struct.pack("=Q", 0)),
        nla(10, struct.pack("=I", 1)),
        nla(4, sockaddr_in6("2001:db8::1", 4500)),
        nest(9, *(kernel_allowed_ip(n) for n in nets)),
    )


def continuation(key: Key, *nets: str) -> bytes:
    return nest(0, nla(1, key.raw), nest(9, *(kernel_allowed_ip(n) for n in nets)))


def device_head(with_public: bool = True) -> bytes:
    out = (
        nla(6, struct.pack("=H", 51820))
        + nla(7, struct.pack("=I", 0x1234))
        + nla(1, struct.pack("=I", 5))
        + nla(2, b"wg0\0")
        + nla(3, PRIV.raw)
    )
    return out + nla(4, PRIV.public_key().raw) if with_public else out


# --- GET_DEVICE decoding ------------------------------------------------------------------


def test_decode_device_with_v4_and_v6_endpoints() -> None:
    msg = device_head() + nest(8, peer_a(), peer_b("10.1.0.0/16", "2001:db8:1::/48"))
    dev = codec.decode_get_device("wg0", [msg])
    assert dev.name == "wg0"
    assert dev.kind is BackendKind.KERNEL
    assert dev.private_key == PRIV
    assert dev.public_key == PRIV.public_key()
    assert (dev.listen_port, dev.fwmark) == (51820, 0x1234)
    a, b = dev.peers
    assert a.public_key == PUB_A
    assert a.preshared_key is None
    assert a.endpoint == UDPAddr(ipaddress.ip_address("192.0.2.1"), 51820)
    assert a.last_handshake == datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)
    assert (a.persistent_keepalive, a.rx_bytes, a.tx_bytes) == (25, 1000, 2000)
    assert a.protocol_version == 1
    assert [str(n) for n in a.allowed_ips] == ["10.0.0.0/24", "fd00::/64"]
    assert b.public_key == PUB_B
    assert b.preshared_key == PSK
    assert b.endpoint == UDPAddr(ipaddress.ip_address("2001:db8::1"), 4500)
    assert str(b.endpoint) == "[2001:db8::1]:4500"
    assert b.last_handshake is None
    assert [str(n) for n in b.allowed_ips] == ["10.1.0.0/16", "2001:db8:1::/48"]


def test_decode_derives_public_key_and_defaults() -> None:
    dev = codec.decode_get_device("wg0", [device_head(with_public=False)])
    assert dev.public_key == PRIV.public_key()
    assert dev.peers == []
    bare = codec.decode_get_device("wg1", [nla(2, b"wg1\0") + nla(6, struct.pack("=H", 0))])
    assert (bare.private_key, bare.public_key, bare.listen_port, bare.fwmark) == (
        None,
        None,
        0,
        0,
    )


def test_decode_v6_endpoint_scope_id() -> None:
    ep = codec.decode_sockaddr(sockaddr_in6("fe80::1", 51820, flowinfo=7, scope=3))
    assert ep is not None
    assert ep.port == 51820
    assert ep.ip == ipaddress.IPv6Address("fe80::1%3")
    assert codec.decode_sockaddr(bytes(16)) is None  # AF_UNSPEC: no endpoint


def test_decode_merges_a_peer_spilling_over_three_messages() -> None:
    msg1 = device_head() + nest(8, peer_a(), peer_b("10.1.0.0/16", "10.2.0.0/16"))
    msg2 = nla(2, b"wg0\0") + nest(8, continuation(PUB_B, "10.3.0.0/16", "2001:db8:3::/48"))
    msg3 = nla(2, b"wg0\0") + nest(
        8,
        continuation(PUB_B, "10.4.0.0/16"),
        nest(0, nla(1, PUB_C.raw), nest(9, kernel_allowed_ip("192.168.0.0/24"))),
    )
    dev = codec.decode_get_device("wg0", [msg1, msg2, msg3])
    assert [p.public_key for p in dev.peers] == [PUB_A, PUB_B, PUB_C]
    b = dev.peers[1]
    assert [str(n) for n in b.allowed_ips] == [
        "10.1.0.0/16",
        "10.2.0.0/16",
        "10.3.0.0/16",
        "2001:db8:3::/48",
        "10.4.0.0/16",
    ]
    # The continuations carry only the key: what the first part said must survive.
    assert b.preshared_key == PSK
    assert b.endpoint == UDPAddr(ipaddress.ip_address("2001:db8::1"), 4500)
    assert [str(n) for n in dev.peers[2].allowed_ips] == ["192.168.0.0/24"]
    assert dev.listen_port == 51820


def test_decode_malformed_names_the_attribute_without_key_material() -> None:
    with pytest.raises(ProtocolError) as info:
        codec.decode_get_device("wg0", [nla(3, PRIV.raw[:31])])
    assert info.value.errno == errno.EPROTO
    assert info.value.key == "WGDEVICE_A_PRIVATE_KEY"
    assert PRIV.raw[:31].hex() not in str(info.value)
    with pytest.raises(ProtocolError) as info:
        codec.decode_get_device("wg0", [nest(8, nest(0, nla(5, struct.pack("=H", 1))))])
    assert info.value.key == "WGPEER_A_PUBLIC_KEY"
    bad_ip = nest(0, nla(1, struct.pack("=H", 2)), nla(2, bytes(16)), nla(3, b"\x08"))
    with pytest.raises(ProtocolError) as info:
        codec.decode_get_device("wg0", [nest(8, nest(0, nla(1, PUB_A.raw), nest(9, bad_ip)))])
    assert info.value.key == "WGALLOWEDIP_A_IPADDR"
    with pytest.raises(ProtocolError) as info:
        codec.decode_get_device("wg0", [struct.pack("=HH", 12, 6) + b"\x01\x02"])  # truncated
    assert (info.value.errno, info.value.key) == (errno.EPROTO, None)


# --- SET_DEVICE encoding ------------------------------------------------------------------


def _device(msg: bytes) -> dict[int, attrs.Attr]:
    return attrs.by_type(attrs.parse(msg))


def _peers(msg: bytes) -> list[dict[int, attrs.Attr]]:
    p = _device(msg).get(codec.WGDEVICE_A_PEERS)
    if p is None:
        return []
    assert p.is_nested
    return [attrs.by_type(e.nested()) for e in p.nested()]


def _flags(peer: dict[int, attrs.Attr]) -> int:
    f = peer.get(codec.WGPEER_A_FLAGS)
    return f.u32() if f is not None else 0


def _ips(peer: dict[int, attrs.Attr]) -> int:
    a = peer.get(codec.WGPEER_A_ALLOWEDIPS)
    return len(a.nested()) if a is not None else 0


def net(text: str) -> IPNetwork:
    return ipaddress.ip_network(text)


def test_encode_device_and_peer_fields() -> None:
    cfg = Config(
        private_key=PRIV,
        listen_port=51820,
        fwmark=0,
        replace_peers=True,
        peers=[
            PeerConfig(
                PUB_A,
                preshared_key=Key.zero(),
                endpoint=UDPAddr.parse("192.0.2.1:51820"),
                persistent_keepalive=0,
                replace_allowed_ips=True,
                allowed_ips=[net("10.0.0.0/24"), net("fd00::/64")],
            ),
            PeerConfig(PUB_B, update_only=True, endpoint=UDPAddr.parse("[2001:db8::1]:4500")),
            PeerConfig(PUB_C, remove=True, allowed_ips=[net("10.9.0.0/16")], preshared_key=PSK),
        ],
    )
    (msg,) = codec.encode_set_device("wg0", cfg)
    dev = _device(msg)
    assert dev[codec.WGDEVICE_A_IFNAME].payload == b"wg0\0"
    assert dev[codec.WGDEVICE_A_PRIVATE_KEY].payload == PRIV.raw
    assert dev[codec.WGDEVICE_A_LISTEN_PORT].u16() == 51820
    assert dev[codec.WGDEVICE_A_FWMARK].u32() == 0  # 0 is sent: it clears the mark
    assert dev[codec.WGDEVICE_A_FLAGS].u32() == codec.WGDEVICE_F_REPLACE_PEERS
    a, b, c = _peers(msg)
    assert a[codec.WGPEER_A_PUBLIC_KEY].payload == PUB_A.raw
    assert _flags(a) == codec.WGPEER_F_REPLACE_ALLOWEDIPS
    assert a[codec.WGPEER_A_PRESHARED_KEY].payload == bytes(32)  # clears the PSK
    assert a[codec.WGPEER_A_ENDPOINT].payload == (
        struct.pack("=H", 2) + b"\xca\x6c" + bytes([192, 0, 2, 1]) + bytes(8)
    )
    assert a[codec.WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL].u16() == 0
    entries = a[codec.WGPEER_A_ALLOWEDIPS].nested()
    assert all(e.is_nested for e in entries)
    v4, v6 = (attrs.by_type(e.nested()) for e in entries)
    assert (v4[1].u16(), v4[2].payload, v4[3].u8()) == (2, bytes([10, 0, 0, 0]), 24)
    assert (v6[1].u16(), v6[2].payload, v6[3].u8()) == (10, b"\xfd" + bytes(15), 64)
    assert _flags(b) == codec.WGPEER_F_UPDATE_ONLY
    assert b[codec.WGPEER_A_ENDPOINT].payload == sockaddr_in6("2001:db8::1", 4500)
    assert codec.WGPEER_A_PRESHARED_KEY not in b
    assert codec.WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL not in b
    # A removal carries its key and REMOVE_ME, nothing else.
    assert set(c) == {codec.WGPEER_A_PUBLIC_KEY, codec.WGPEER_A_FLAGS}
    assert _flags(c) == codec.WGPEER_F_REMOVE_ME


def test_encode_omits_unset_fields_and_always_sends_one_message() -> None:
    (msg,) = codec.encode_set_device("wg0", Config())
    assert [a.type for a in attrs.parse(msg)] == [codec.WGDEVICE_A_IFNAME]
    (msg,) = codec.encode_set_device("wg0", Config(listen_port=0))
    assert set(_device(msg)) == {codec.WGDEVICE_A_IFNAME, codec.WGDEVICE_A_LISTEN_PORT}
    with pytest.raises(InvalidConfigError):
        codec.encode_set_device("a-name-too-long0", Config())


def _big_config() -> tuple[Config, PeerConfig]:
    def key(i: int) -> Key:
        return Key(i.to_bytes(2, "big") * 16)

    big = PeerConfig(
        key(9999),
        replace_allowed_ips=True,
        endpoint=UDPAddr.parse("198.51.100.7:51820"),
        preshared_key=PSK,
        persistent_keepalive=15,
        allowed_ips=[net(f"10.{i // 256}.{i % 256}.0/24") for i in range(600)],
    )
    peers = [
        PeerConfig(
            key(i),
            endpoint=UDPAddr.parse(f"203.0.113.{i}:{1000 + i}"),
            allowed_ips=[net(f"172.16.{i}.{j * 4}/30") for j in range(3)],
        )
        for i in range(100)
    ]
    peers.insert(50, big)
    return Config(private_key=PRIV, listen_port=1, replace_peers=True, peers=peers), big


def test_split_respects_limits_and_first_fragment_flags() -> None:
    cfg, big = _big_config()
    msgs = codec.encode_set_device("wg0", cfg)
    shape = [(len(_peers(m)), sum(_ips(p) for p in _peers(m))) for m in msgs]
    # Greedy packing, hand-computed: 32 small peers; 18 small + the big peer's first 202 IPs;
    # its next 256; its last 142 + 31 small; the other 19 small. 101 peers in 103 entries.
    assert shape == [(32, 96), (19, 256), (1, 256), (32, 235), (19, 57)]
    assert all(n <= codec.MAX_PEERS and ips <= codec.MAX_IPS for n, ips in shape)
    first, *rest = (_device(m) for m in msgs)
    assert first[codec.WGDEVICE_A_FLAGS].u32() == codec.WGDEVICE_F_REPLACE_PEERS
    assert codec.WGDEVICE_A_PRIVATE_KEY in first
    for d in rest:
        assert set(d) == {codec.WGDEVICE_A_IFNAME, codec.WGDEVICE_A_PEERS}
        assert d[codec.WGDEVICE_A_IFNAME].payload == b"wg0\0"
    frags = [p for m in msgs for p in _peers(m) if p[1].payload == big.public_key.raw]
    assert [_ips(p) for p in frags] == [202, 256, 142]
    assert _flags(frags[0]) == codec.WGPEER_F_REPLACE_ALLOWEDIPS
    assert frags[0][codec.WGPEER_A_PRESHARED_KEY].payload == PSK.raw
    assert codec.WGPEER_A_ENDPOINT in frags[0]
    for cont in frags[1:]:
        assert set(cont) == {codec.WGPEER_A_PUBLIC_KEY, codec.WGPEER_A_ALLOWEDIPS}


def test_split_fragments_decode_back_to_the_config() -> None:
    cfg, _ = _big_config()
    dev = codec.decode_get_device("wg0", codec.encode_set_device("wg0", cfg))
    assert len(dev.peers) == 101
    assert [p.public_key for p in dev.peers] == [p.public_key for p in cfg.peers]
    assert [p.allowed_ips for p in dev.peers] == [p.allowed_ips for p in cfg.peers]
    assert [p.endpoint for p in dev.peers] == [p.endpoint for p in cfg.peers]
    assert dev.peers[50].preshared_key == PSK
    assert dev.peers[50].persistent_keepalive == 15
    assert dev.private_key == PRIV
    assert dev.listen_port == 1


def test_split_keeps_update_only_on_every_fragment() -> None:
    p = PeerConfig(
        PUB_A,
        update_only=True,
        replace_allowed_ips=True,
        allowed_ips=[net(f"10.0.{i}.0/24") for i in range(256)]
        + [net(f"10.1.{i}.0/24") for i in range(44)],
    )
    msgs = codec.encode_set_device("wg0", Config(peers=[p]))
    frags = [peer for m in msgs for peer in _peers(m)]
    assert [_ips(f) for f in frags] == [256, 44]
    both = codec.WGPEER_F_UPDATE_ONLY | codec.WGPEER_F_REPLACE_ALLOWEDIPS
    assert [_flags(f) for f in frags] == [both, codec.WGPEER_F_UPDATE_ONLY]


@pytest.mark.parametrize(
    ("peers", "ips_each", "expected"),
    [(32, 0, [32]), (33, 0, [32, 1]), (1, 256, [1]), (1, 512, [1, 1]), (2, 256, [1, 1])],
)
def test_split_boundaries(peers: int, ips_each: int, expected: list[int]) -> None:
    cfg = Config(
        replace_peers=True,
        peers=[
            PeerConfig(
                Key(bytes([k + 1]) * 32),
                allowed_ips=[net(f"10.{k}.{i // 256}.{i % 256}/32") for i in range(ips_each)],
            )
            for k in range(peers)
        ],
    )
    msgs = codec.encode_set_device("wg0", cfg)
    assert [len(_peers(m)) for m in msgs] == expected
    assert [codec.WGDEVICE_A_FLAGS in _device(m) for m in msgs] == [True] + [False] * (
        len(msgs) - 1
    )


_nets = st.one_of(
    st.builds(
        lambda a, p: ipaddress.IPv4Network((a, p), strict=False),
        st.integers(0, 2**32 - 1),
        st.integers(0, 32),
    ),
    st.builds(
        lambda a, p: ipaddress.IPv6Network((a, p), strict=False),
        st.integers(0, 2**128 - 1),
        st.integers(0, 128),
    ),
)
_peer_configs = st.builds(
    lambda k, ips: PeerConfig(Key(k), allowed_ips=ips),
    st.binary(min_size=32, max_size=32),
    st.lists(_nets, max_size=300),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(_peer_configs, max_size=40, unique_by=lambda p: p.public_key.raw))
def test_split_round_trip_property(peers: list[PeerConfig]) -> None:
    msgs = codec.encode_set_device("wg0", Config(peers=peers))
    for m in msgs:
        ps = _peers(m)
        assert len(ps) <= codec.MAX_PEERS
        assert sum(_ips(p) for p in ps) <= codec.MAX_IPS
    dev = codec.decode_get_device("wg0", msgs)
    assert [(p.public_key, p.allowed_ips) for p in dev.peers] == [
        (p.public_key, p.allowed_ips) for p in peers
    ]


# --- errors -------------------------------------------------------------------------------


def _kernel_error(
    code: int, request: bytes, ext_message: str | None = None, offset: int | None = None
) -> nlmsg.NetlinkError:
    flags = nlmsg.NLM_F_REQUEST | nlmsg.NLM_F_ACK
    full = nlmsg.pack(0x15, flags, 9, nlmsg.pack_genl(1, 1, request))
    raw = nlmsg.pack_error(code, full, seq=9, ext_message=ext_message, offset=offset)
    (msg,) = nlmsg.parse(raw)
    err = nlmsg.error_of(msg)
    assert err is not None
    return err


def test_netlink_error_with_ext_ack_becomes_protocol_error_naming_the_attribute() -> None:
    cfg = Config(peers=[PeerConfig(PUB_A, endpoint=UDPAddr.parse("192.0.2.1:1"))])
    (request,) = codec.encode_set_device("wg0", cfg)
    endpoint = next(a for a in _walk_all(request) if a.type == codec.WGPEER_A_ENDPOINT)
    offset = 16 + 4 + endpoint.offset  # counted from the request's nlmsghdr
    err = _kernel_error(-errno.EINVAL, request, ext_message="bad endpoint", offset=offset)
    out = to_wg_error("wg0", "configure", err, request)
    assert isinstance(out, ProtocolError)
    assert out.errno == errno.EINVAL
    assert out.key == "WGPEER_A_ENDPOINT"
    assert "bad endpoint" in str(out)
    assert "EINVAL" in str(out)
    assert out.device == "wg0"


def _walk_all(data: bytes, base: int = 0) -> list[attrs.Attr]:
    """Every attribute in a tree, depth first (offsets relative to the top-level data)."""
    out: list[attrs.Attr] = []
    for a in attrs.parse(data, base):
        out.append(a)
        if a.is_nested:
            out.extend(_walk_all(a.payload, a.offset + 4))
    return out


def test_missing_attribute_is_named_from_the_ext_ack() -> None:
    (request,) = codec.encode_set_device("wg0", Config(peers=[PeerConfig(PUB_A)]))
    entry = attrs.locate(request, _device(request)[codec.WGDEVICE_A_PEERS].offset + 4)[-1]
    err = nlmsg.NetlinkError(-errno.EINVAL, missing_type=2, missing_nest=20 + entry.offset)
    out = to_wg_error("wg0", "configure", err, request)
    assert isinstance(out, ProtocolError)
    assert out.key == "WGPEER_A_PRESHARED_KEY"


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (errno.ENODEV, DeviceNotFoundError),
        (errno.EOPNOTSUPP, DeviceNotFoundError),
        (errno.ENOENT, DeviceNotFoundError),
        (errno.EPERM, PermissionDeniedError),
        (errno.EACCES, PermissionDeniedError),
        (errno.EADDRINUSE, ProtocolError),
    ],
)
def test_errno_mapping(code: int, kind: type[Exception]) -> None:
    err = _kernel_error(-code, codec.encode_get_device("wg0"))
    out = to_wg_error("wg0", "read", err)
    assert type(out) is kind
    if isinstance(out, ProtocolError):
        assert out.errno == code
        assert out.key is None


# --- the backend against a socketpair playing the kernel ----------------------------------

FAMILY = 0x1B


@pytest.fixture
def backend() -> tuple[KernelBackend, socket.socket]:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    kernel.settimeout(2)
    return KernelBackend(NetlinkSocket(16, timeout=2, sock=ours), FAMILY), kernel


def _reply(seq: int, attr_data: bytes, flags: int = nlmsg.NLM_F_MULTI) -> bytes:
    return nlmsg.pack(FAMILY, flags, seq, nlmsg.pack_genl(codec.WG_CMD_GET_DEVICE, 1, attr_data))


def _done(seq: int) -> bytes:
    return nlmsg.pack(nlmsg.NLMSG_DONE, nlmsg.NLM_F_MULTI, seq, struct.pack("=i", 0))


def test_backend_reads_a_multi_message_dump(backend: tuple[KernelBackend, socket.socket]) -> None:
    be, kernel = backend
    kernel.send(_reply(1, device_head() + nest(8, peer_a(), peer_b("10.1.0.0/16"))))
    kernel.send(_reply(1, nla(2, b"wg0\0") + nest(8, continuation(PUB_B, "10.2.0.0/16"))))
    kernel.send(_done(1))
    dev = be.device("wg0")
    assert [p.public_key for p in dev.peers] == [PUB_A, PUB_B]
    assert [str(n) for n in dev.peers[1].allowed_ips] == ["10.1.0.0/16", "10.2.0.0/16"]
    (sent,) = nlmsg.parse(kernel.recv(4096))
    assert sent.type == FAMILY
    assert sent.flags == nlmsg.NLM_F_REQUEST | nlmsg.NLM_F_DUMP
    cmd, version, data = nlmsg.parse_genl(sent.payload)
    assert (cmd, version) == (codec.WG_CMD_GET_DEVICE, 1)
    assert data == attrs.string(codec.WGDEVICE_A_IFNAME, "wg0")


def test_backend_retries_an_interrupted_dump(backend: tuple[KernelBackend, socket.socket]) -> None:
    be, kernel = backend
    intr = nlmsg.NLM_F_MULTI | nlmsg.NLM_F_DUMP_INTR
    kernel.send(_reply(1, device_head(), flags=intr) + _done(1))
    kernel.send(_reply(2, device_head() + nest(8, peer_a())) + _done(2))
    dev = be.device("wg0")
    assert [p.public_key for p in dev.peers] == [PUB_A]


def test_backend_dump_error_means_not_found(backend: tuple[KernelBackend, socket.socket]) -> None:
    be, kernel = backend
    kernel.send(nlmsg.pack_error(-errno.ENODEV, bytes(16), seq=1))
    with pytest.raises(DeviceNotFoundError):
        be.device("wg0")
    with pytest.raises(DeviceNotFoundError):
        be.device("name-too-long-00")


def test_backend_configure_sends_every_fragment_and_checks_each_ack(
    backend: tuple[KernelBackend, socket.socket],
) -> None:
    be, kernel = backend
    cfg = Config(peers=[PeerConfig(Key(bytes([i + 1]) * 32)) for i in range(70)])
    expected = codec.encode_set_device("wg0", cfg)
    assert len(expected) == 3
    kernel.send(nlmsg.pack_error(0, bytes(16), seq=1))
    kernel.send(nlmsg.pack_error(-errno.ENOMEM, bytes(16), seq=2, ext_message="no memory"))
    with pytest.raises(ProtocolError) as info:
        be.configure("wg0", cfg)
    assert info.value.errno == errno.ENOMEM
    assert "message 2 of 3" in str(info.value)
    assert "no memory" in str(info.value)
    sent = [nlmsg.parse(kernel.recv(65536))[0] for _ in range(2)]
    assert [s.flags for s in sent] == [nlmsg.NLM_F_REQUEST | nlmsg.NLM_F_ACK] * 2
    assert [nlmsg.parse_genl(s.payload)[2] for s in sent] == expected[:2]
    assert {nlmsg.parse_genl(s.payload)[0] for s in sent} == {codec.WG_CMD_SET_DEVICE}


def test_open_matches_the_host_kernel() -> None:
    """Unprivileged and safe anywhere: None exactly when the family is absent."""
    from wgcable.netlink import genl

    try:
        present = genl.resolve_family("wireguard") is not None
    except OSError:
        present = False
    be = KernelBackend.open()
    try:
        assert (be is not None) == present
    finally:
        if be is not None:
            be.close()
