"""The netlink layer: attributes, messages, errors with extended acks, the socket's reply
loop (against a socketpair playing the kernel), nlctrl and rtnetlink encodings."""

from __future__ import annotations

import errno
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgcable.netlink import attrs, genl, rtnl
from wgcable.netlink import message as nlmsg
from wgcable.netlink.message import DumpInterruptedError, NetlinkError
from wgcable.netlink.socket import NetlinkSocket

# --- attributes: exact bytes ------------------------------------------------------------


def test_scalar_attributes_exact_bytes() -> None:
    assert attrs.u8(3, 0x7F) == struct.pack("=HHB", 5, 3, 0x7F) + b"\0\0\0"
    assert attrs.u16(6, 51820) == struct.pack("=HHH", 6, 6, 51820) + b"\0\0"
    assert attrs.u32(7, 0xDEADBEEF) == struct.pack("=HHI", 8, 7, 0xDEADBEEF)
    assert attrs.u64(7, 2**64 - 1) == struct.pack("=HHQ", 12, 7, 2**64 - 1)


def test_string_is_nul_terminated_and_padded() -> None:
    assert attrs.string(2, "wg0") == struct.pack("=HH", 8, 2) + b"wg0\0"
    assert attrs.string(2, "wg10") == struct.pack("=HH", 9, 2) + b"wg10\0" + b"\0\0\0"
    with pytest.raises(ValueError, match="NUL"):
        attrs.string(2, "a\0b")


def test_nested_sets_flag_and_length() -> None:
    inner = attrs.u32(1, 5) + attrs.u8(2, 1)
    out = attrs.nested(8, [attrs.u32(1, 5), attrs.u8(2, 1)])
    length, typ = struct.unpack_from("=HH", out)
    assert typ == 8 | attrs.NLA_F_NESTED
    assert length == 4 + len(inner) == 20
    (a,) = attrs.parse(out)
    assert a.type == 8
    assert a.is_nested
    assert [(c.type, c.payload) for c in a.nested()] == [
        (1, struct.pack("=I", 5)),
        (2, b"\x01"),
    ]


def test_encode_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="type"):
        attrs.encode(0x4000, b"")
    with pytest.raises(ValueError, match="too long"):
        attrs.encode(1, bytes(70000))


def test_parse_offsets_and_flags_masked() -> None:
    net_order = struct.pack("=HH", 6, 3 | attrs.NLA_F_NET_BYTEORDER) + b"\x00\x50\0\0"
    data = attrs.u8(1, 9) + net_order
    a, b = attrs.parse(data, base=100)
    assert (a.type, a.offset, a.u8()) == (1, 100, 9)
    assert (b.type, b.offset, b.net_byteorder, b.payload) == (3, 108, True, b"\x00\x50")


def test_parse_rejects_truncation_and_garbage() -> None:
    good = attrs.u32(1, 1)
    with pytest.raises(attrs.AttrDecodeError, match="bad length"):
        attrs.parse(good[:-1])
    with pytest.raises(attrs.AttrDecodeError, match="bad length"):
        attrs.parse(struct.pack("=HH", 2, 1))  # length below the header size
    with pytest.raises(attrs.AttrDecodeError, match="truncated"):
        attrs.parse(good + b"\x01\x00")
    assert len(attrs.parse(good + b"\0\0")) == 1  # trailing padding is fine


def test_fixed_size_getters_check_length() -> None:
    (a,) = attrs.parse(attrs.u16(1, 7))
    assert a.u16() == 7
    with pytest.raises(attrs.AttrDecodeError, match="u32 needs 4 bytes, got 2"):
        a.u32()


def test_attr_repr_hides_payload() -> None:
    (a,) = attrs.parse(attrs.raw(3, b"\xab" * 32))
    assert "ab" not in repr(a).lower().replace("attr", "")
    assert "len=32" in repr(a)


def test_locate_descends_flagged_nests() -> None:
    leaf = attrs.u16(4, 1)
    data = attrs.u32(1, 0) + attrs.nested(8, [attrs.nested(0, [attrs.u8(1, 0), leaf])])
    # u32 attr: 8 bytes; outer nest header at 8, entry header at 12, u8 at 16, leaf at 24
    chain = attrs.locate(data, 24)
    assert [(a.type, a.offset) for a in chain] == [(8, 8), (0, 12), (4, 24)]
    assert [a.offset for a in attrs.locate(data, 12)] == [8, 12]
    assert attrs.locate(data, 400) == []


# --- attributes: round trips ------------------------------------------------------------

_types = st.integers(min_value=0, max_value=attrs.NLA_TYPE_MASK)
_payloads = st.binary(max_size=80)


@given(st.lists(st.tuples(_types, _payloads), max_size=12))
def test_flat_round_trip(items: list[tuple[int, bytes]]) -> None:
    data = b"".join(attrs.encode(t, p) for t, p in items)
    assert len(data) % 4 == 0
    parsed = attrs.parse(data)
    assert [(a.type, a.payload) for a in parsed] == items
    assert all(a.offset % 4 == 0 for a in parsed)


@given(
    st.integers(min_value=0, max_value=2**8 - 1),
    st.integers(min_value=0, max_value=2**16 - 1),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.integers(min_value=0, max_value=2**64 - 1),
    # Encodable text: no NUL, no lone surrogates.
    st.text(
        alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
        max_size=30,
    ),
)
def test_typed_round_trip(a: int, b: int, c: int, d: int, s: str) -> None:
    data = attrs.u8(1, a) + attrs.u16(2, b) + attrs.u32(3, c) + attrs.u64(4, d)
    data += attrs.string(5, s)
    got = attrs.by_type(attrs.parse(data))
    assert (got[1].u8(), got[2].u16(), got[3].u32(), got[4].u64()) == (a, b, c, d)
    assert got[5].string() == s


_tree = st.recursive(
    _payloads,
    lambda children: st.lists(st.tuples(st.integers(0, 100), children), max_size=4),
    max_leaves=12,
)


def _enc(t: int, node: bytes | list[tuple[int, object]]) -> bytes:
    if isinstance(node, bytes):
        return attrs.encode(t, node)
    return attrs.nested(t, [_enc(ct, cn) for ct, cn in node])  # type: ignore[arg-type]


def _dec(a: attrs.Attr) -> bytes | list[tuple[int, object]]:
    if not a.is_nested:
        return a.payload
    return [(c.type, _dec(c)) for c in a.nested()]


@given(st.lists(st.tuples(st.integers(0, 100), _tree), max_size=4))
def test_nested_round_trip(tree: list[tuple[int, bytes | list[tuple[int, object]]]]) -> None:
    data = b"".join(_enc(t, n) for t, n in tree)
    assert [(a.type, _dec(a)) for a in attrs.parse(data)] == tree


# --- messages ---------------------------------------------------------------------------


def test_message_pack_parse_several() -> None:
    one = nlmsg.pack(0x20, nlmsg.NLM_F_MULTI, 7, b"abcde", pid=99)
    assert struct.unpack_from("=IHHII", one) == (21, 0x20, nlmsg.NLM_F_MULTI, 7, 99)
    assert len(one) == 24  # padded to 4
    two = nlmsg.pack(nlmsg.NLMSG_DONE, nlmsg.NLM_F_MULTI, 7, struct.pack("=i", 0))
    m1, m2 = nlmsg.parse(one + two)
    assert (m1.type, m1.seq, m1.pid, m1.payload) == (0x20, 7, 99, b"abcde")
    assert m2.type == nlmsg.NLMSG_DONE
    assert nlmsg.done_error(m2) is None
    with pytest.raises(nlmsg.MessageDecodeError):
        nlmsg.parse(one[:-4])


def test_genl_header() -> None:
    payload = nlmsg.pack_genl(1, 1, attrs.u32(1, 2))
    assert payload[:4] == b"\x01\x01\0\0"
    assert nlmsg.parse_genl(payload) == (1, 1, attrs.u32(1, 2))
    with pytest.raises(nlmsg.MessageDecodeError):
        nlmsg.parse_genl(b"\x01")


def _request() -> bytes:
    body = nlmsg.pack_genl(1, 1, attrs.string(2, "wg0") + attrs.u16(6, 0))
    return nlmsg.pack(0x1C, nlmsg.NLM_F_REQUEST | nlmsg.NLM_F_ACK, 5, body)


@pytest.mark.parametrize("capped", [True, False])
def test_error_with_extended_ack(capped: bool) -> None:
    req = _request()
    raw = nlmsg.pack_error(
        -errno.EINVAL, req, seq=5, capped=capped, ext_message="bad port", offset=28
    )
    (msg,) = nlmsg.parse(raw)
    assert msg.type == nlmsg.NLMSG_ERROR
    assert bool(msg.flags & nlmsg.NLM_F_CAPPED) == capped
    err = nlmsg.error_of(msg)
    assert isinstance(err, NetlinkError)
    assert err.errno == errno.EINVAL  # positive although the kernel sends -22
    assert err.ext_message == "bad port"
    assert err.offset == 28
    assert "Invalid argument: bad port" in str(err)


def test_error_without_ext_ack_and_plain_ack() -> None:
    req = _request()
    (err_msg,) = nlmsg.parse(nlmsg.pack_error(-errno.ENODEV, req, seq=5))
    err = nlmsg.error_of(err_msg)
    assert err is not None
    assert (err.errno, err.ext_message, err.offset) == (errno.ENODEV, None, None)
    (ack,) = nlmsg.parse(nlmsg.pack_error(0, req, seq=5))
    assert nlmsg.error_of(ack) is None


def test_done_with_error_and_ext_ack() -> None:
    tlv = attrs.string(nlmsg.NLMSGERR_ATTR_MSG, "gone") + attrs.u32(
        nlmsg.NLMSGERR_ATTR_MISS_TYPE, 2
    )
    raw = nlmsg.pack(
        nlmsg.NLMSG_DONE,
        nlmsg.NLM_F_MULTI | nlmsg.NLM_F_ACK_TLVS,
        3,
        struct.pack("=i", -errno.ENODEV) + tlv,
    )
    err = nlmsg.done_error(nlmsg.parse(raw)[0])
    assert err is not None
    assert (err.errno, err.ext_message, err.missing_type) == (errno.ENODEV, "gone", 2)
    empty = nlmsg.parse(nlmsg.pack(nlmsg.NLMSG_DONE, nlmsg.NLM_F_MULTI, 3, b""))[0]
    assert nlmsg.done_error(empty) is None


# --- the socket's reply loop, against a socketpair playing the kernel -------------------


@pytest.fixture
def pair() -> tuple[NetlinkSocket, socket.socket]:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    kernel.settimeout(2)
    return NetlinkSocket(16, timeout=2, sock=ours), kernel


def _data(seq: int, payload: bytes, flags: int = nlmsg.NLM_F_MULTI) -> bytes:
    return nlmsg.pack(0x1C, flags, seq, payload)


def _done(seq: int, flags: int = nlmsg.NLM_F_MULTI) -> bytes:
    return nlmsg.pack(nlmsg.NLMSG_DONE, flags, seq, struct.pack("=i", 0))


def test_socket_dump_collects_parts_until_done(
    pair: tuple[NetlinkSocket, socket.socket],
) -> None:
    nl, kernel = pair
    kernel.send(_data(0, b"stale"))  # an earlier request's leftover: skipped
    kernel.send(_data(1, b"one") + _data(1, b"two"))
    kernel.send(_data(1, b"three") + _done(1))
    got = nl.request(0x1C, b"req!", dump=True)
    assert [m.payload for m in got] == [b"one", b"two", b"three"]
    (sent,) = nlmsg.parse(kernel.recv(4096))
    assert sent.seq == 1
    assert sent.flags == nlmsg.NLM_F_REQUEST | nlmsg.NLM_F_DUMP
    assert sent.payload == b"req!"


def test_socket_request_waits_for_ack_and_raises_errors(
    pair: tuple[NetlinkSocket, socket.socket],
) -> None:
    nl, kernel = pair
    kernel.send(_data(1, b"reply", flags=0))
    kernel.send(nlmsg.pack_error(0, b"x" * 16, seq=1))
    assert [m.payload for m in nl.request(0x1C, b"")] == [b"reply"]
    (sent,) = nlmsg.parse(kernel.recv(4096))
    assert sent.flags == nlmsg.NLM_F_REQUEST | nlmsg.NLM_F_ACK

    kernel.send(nlmsg.pack_error(-errno.EPERM, b"x" * 16, seq=2, ext_message="nope"))
    with pytest.raises(NetlinkError) as info:
        nl.request(0x1C, b"")
    assert info.value.errno == errno.EPERM
    assert info.value.ext_message == "nope"


def test_socket_dump_interrupted(pair: tuple[NetlinkSocket, socket.socket]) -> None:
    nl, kernel = pair
    kernel.send(_data(1, b"a", nlmsg.NLM_F_MULTI | nlmsg.NLM_F_DUMP_INTR) + _done(1))
    with pytest.raises(DumpInterruptedError) as info:
        nl.request(0x1C, b"", dump=True)
    assert info.value.errno == errno.EINTR


def test_socket_receives_datagrams_larger_than_its_buffer(
    pair: tuple[NetlinkSocket, socket.socket],
) -> None:
    nl, kernel = pair
    big = bytes(range(256)) * 300  # 76800 bytes, more than the initial 64 KiB buffer
    kernel.send(_data(1, big) + _done(1))
    (msg,) = nl.request(0x1C, b"", dump=True)
    assert msg.payload == big


# --- nlctrl and rtnetlink encodings -----------------------------------------------------


def test_genl_family_request_and_reply() -> None:
    req = genl.encode_get_family("wireguard")
    assert req[:4] == bytes([genl.CTRL_CMD_GETFAMILY, 2, 0, 0])
    assert attrs.parse(req[4:])[0].string() == "wireguard"
    reply = nlmsg.pack_genl(
        genl.CTRL_CMD_NEWFAMILY,
        2,
        attrs.u16(genl.CTRL_ATTR_FAMILY_ID, 0x1F)
        + attrs.string(genl.CTRL_ATTR_FAMILY_NAME, "wireguard")
        + attrs.u32(genl.CTRL_ATTR_VERSION, 1)
        + attrs.u32(genl.CTRL_ATTR_MAXATTR, 8),
    )
    assert genl.parse_family(reply) == genl.Family(0x1F, "wireguard", 1, 8)


def test_rtnl_parse_link_with_unflagged_linkinfo() -> None:
    info = attrs.encode(rtnl.IFLA_LINKINFO, attrs.string(rtnl.IFLA_INFO_KIND, "wireguard"))
    payload = (
        struct.pack("=BxHiII", 0, 65534, 7, rtnl.IFF_UP, 0)
        + attrs.string(rtnl.IFLA_IFNAME, "wg0")
        + attrs.u32(rtnl.IFLA_MTU, 1420)
        + info
    )
    assert rtnl.parse_link(payload) == rtnl.Link(7, "wg0", "wireguard", rtnl.IFF_UP, 1420)


def test_rtnl_create_request_bytes() -> None:
    req = rtnl.encode_create("wg0", "wireguard")
    assert req[:16] == bytes(16)  # AF_UNSPEC, index 0, no flags
    name, info = attrs.parse(req[16:])
    assert (name.type, name.string()) == (rtnl.IFLA_IFNAME, "wg0")
    assert info.type == rtnl.IFLA_LINKINFO
    assert info.is_nested
    assert info.nested()[0].payload == b"wireguard\0"


@pytest.mark.parametrize("bad", ["", "a" * 16, "a/b", "a b", "..", "x:1"])
def test_rtnl_rejects_bad_names(bad: str) -> None:
    with pytest.raises(ValueError, match="interface name"):
        rtnl.encode_by_name(bad)


# --- live, unprivileged: the host's own netlink -----------------------------------------


def _netlink_available() -> bool:
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _netlink_available(), reason="no AF_NETLINK here")
def test_live_host_links_and_families() -> None:
    links = rtnl.list_links()
    lo = next(link for link in links if link.name == "lo")
    assert lo.index >= 1
    assert rtnl.get_link("lo") == lo
    assert rtnl.get_link("no-such-link0") is None
    assert genl.resolve_family("nlctrl") == genl.GENL_ID_CTRL
    assert genl.resolve_family("no-such-family") is None
