"""Routes and rules over rtnetlink (``wgcable.netlink.route``): the bytes we send, the
dumps we read, and the socket's batch and raw dump against a socketpair playing the kernel.
The same code against a real kernel: tests/integration/test_driver_e2e.py."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import ClassVar

import pytest

from wgcable.netlink import attrs
from wgcable.netlink import message as nlmsg
from wgcable.netlink import route as r
from wgcable.netlink.routewatch import RouteWatch, tables_in
from wgcable.netlink.socket import NETLINK_ROUTE, NetlinkSocket
from wgcable.routing import iproute
from wgcable.routing.iproute import RouteOp

RTMSG = struct.Struct("=BBBBBBBBI")
net = ipaddress.ip_network
addr = ipaddress.ip_address


def split(payload: bytes) -> tuple[tuple[int, ...], dict[int, bytes]]:
    head = RTMSG.unpack_from(payload)
    return head, {a.type: a.payload for a in attrs.parse(payload[RTMSG.size:])}


def test_add_is_exclusive_and_carries_packed_addresses_and_the_ifindex() -> None:
    t, flags, payload = r.encode_route(r.NEW, net("10.2.0.0/16"), 7, 220, 87,
                                       src=addr("10.1.0.1"))
    assert t == r.RTM_NEWROUTE
    assert flags == nlmsg.NLM_F_CREATE | nlmsg.NLM_F_EXCL
    head, found = split(payload)
    assert head == (socket.AF_INET, 16, 0, 0, 220, 87, r.RT_SCOPE_LINK, r.RTN_UNICAST, 0)
    assert found == {r.RTA_DST: bytes([10, 2, 0, 0]), r.RTA_TABLE: struct.pack("=I", 220),
                     r.RTA_OIF: struct.pack("=I", 7), r.RTA_PREFSRC: bytes([10, 1, 0, 1])}


def test_replace_and_delete() -> None:
    assert r.encode_route(r.REPLACE, net("fd00:2::/64"), 3, 220, 87)[1] == \
        nlmsg.NLM_F_CREATE | nlmsg.NLM_F_REPLACE
    t, flags, payload = r.encode_route(r.DELETE, net("10.2.0.0/16"), 7, 220, 87)
    assert (t, flags) == (r.RTM_DELROUTE, 0)
    head, found = split(payload)
    # A delete names our protocol and device: another owner's route never matches.
    assert head[5] == 87
    assert head[6] == r.RT_SCOPE_NOWHERE
    assert found[r.RTA_OIF] == struct.pack("=I", 7)


def test_next_hop_onlink_and_a_next_hop_of_the_other_family() -> None:
    _, _, payload = r.encode_route(r.REPLACE, net("10.9.0.0/16"), 4, 254, 88,
                                   via=addr("10.1.0.254"))
    head, found = split(payload)
    assert head[6] == r.RT_SCOPE_UNIVERSE
    assert head[8] == r.RTNH_F_ONLINK
    assert found[r.RTA_GATEWAY] == bytes([10, 1, 0, 254])
    _, _, payload = r.encode_route(r.REPLACE, net("10.9.0.0/16"), 4, 254, 88,
                                   via=addr("fd00::1"))
    _, found = split(payload)
    assert found[r.RTA_VIA] == struct.pack("=H", socket.AF_INET6) + addr("fd00::1").packed


def test_a_table_above_255_goes_in_the_attribute() -> None:
    head, found = split(r.encode_route(r.NEW, net("10.2.0.0/16"), 1, 1000, 87)[2])
    assert head[4] == r.RT_TABLE_COMPAT
    assert found[r.RTA_TABLE] == struct.pack("=I", 1000)


def test_unknown_verb_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'flush'"):
        r.encode_route("flush", net("10.2.0.0/16"), 1, 220, 87)


def test_route_op_text_is_the_ip_batch_line() -> None:
    op = RouteOp("add", net("10.2.0.0/16"), "subwg0", 220, 87, addr("10.1.0.1"))
    assert op.text() == "route add 10.2.0.0/16 dev subwg0 table 220 proto 87 src 10.1.0.1"


def route_msg(family: int, dst: str, dst_len: int, *, table: int = 220, proto: int = 87,
              rtype: int = r.RTN_UNICAST, oif: int | None = 5, src: str | None = None,
              gw: bytes | None = None, via: bytes | None = None) -> bytes:
    body = [RTMSG.pack(family, dst_len, 0, 0, min(table, 252), proto, 253, rtype, 0),
            attrs.u32(r.RTA_TABLE, table)]
    if dst_len:
        body.append(attrs.raw(r.RTA_DST, addr(dst).packed))
    if src:
        body.append(attrs.raw(r.RTA_PREFSRC, addr(src).packed))
    if oif is not None:
        body.append(attrs.u32(r.RTA_OIF, oif))
    if gw is not None:
        body.append(attrs.raw(r.RTA_GATEWAY, gw))
    if via is not None:
        body.append(attrs.raw(r.RTA_VIA, via))
    return b"".join(body)


def parts(*payloads: bytes) -> list[tuple[bytes, int, int]]:
    data = b"".join(nlmsg.pack(r.RTM_NEWROUTE, nlmsg.NLM_F_MULTI, 1, p) for p in payloads)
    out, pos = [], 0
    for p in payloads:
        out.append((data, pos + 16, pos + 16 + len(p)))
        pos += nlmsg.align(16 + len(p))
    return out


def test_route_rows_keep_unicast_routes_of_the_family_and_table() -> None:
    v4 = socket.AF_INET
    rows = r.route_rows(parts(
        route_msg(v4, "10.2.0.0", 16, src="10.1.0.1"),
        route_msg(v4, "10.3.3.3", 32, gw=bytes([10, 1, 0, 9])),
        route_msg(v4, "10.4.0.0", 16, via=struct.pack("=H", socket.AF_INET6)
                  + addr("fd00::9").packed),
        route_msg(v4, "0.0.0.0", 0),  # noqa: S104  the default: never ours
        route_msg(v4, "10.5.0.0", 16, table=254),  # another table (a kernel without STRICT)
        route_msg(v4, "10.6.0.0", 16, rtype=6),  # a prohibit route
        route_msg(v4, "10.7.0.0", 16, oif=None),  # multipath: no single device
        route_msg(socket.AF_INET6, "fd00:2::", 64),  # the other family
    ), v4, 220)
    assert rows == [
        (bytes([10, 2, 0, 0]), 16, 5, bytes([10, 1, 0, 1]), 87, b"", 0),
        (bytes([10, 3, 3, 3]), 32, 5, b"", 87, bytes([10, 1, 0, 9]), 0),
        (bytes([10, 4, 0, 0]), 16, 5, b"", 87, addr("fd00::9").packed, socket.AF_INET6),
    ]


@pytest.mark.parametrize("bad", [
    route_msg(socket.AF_INET, "10.2.0.0", 16)[:-3],  # an attribute cut short
    route_msg(socket.AF_INET, "10.2.0.0", 16)[:10],  # shorter than rtmsg
    RTMSG.pack(socket.AF_INET, 16, 0, 0, 220, 87, 253, 1, 0) + attrs.u32(r.RTA_TABLE, 220)
    + attrs.raw(r.RTA_DST, bytes(16)) + attrs.u32(r.RTA_OIF, 1),  # an IPv6-sized address
])
def test_route_rows_refuse_malformed_messages(bad: bytes) -> None:
    with pytest.raises(nlmsg.MessageDecodeError):
        r.route_rows(parts(bad), socket.AF_INET, 220)


def test_rule_round_trip() -> None:
    payload = r.encode_rule(socket.AF_INET6, 220, 220, 87)
    assert r.parse_rule(payload) == r.RuleMsg(socket.AF_INET6, 220, 220, 87, r.FR_ACT_TO_TBL)
    assert r.FRA_PROTOCOL in {a.type for a in attrs.parse(payload[12:])}
    # Without a protocol, a delete matches a rule of any protocol.
    bare = r.encode_rule(socket.AF_INET, 220, 1000, None)
    assert r.FRA_PROTOCOL not in {a.type for a in attrs.parse(bare[12:])}
    assert r.parse_rule(bare).table == 1000


# --- the socket's batch and raw dump, against a socketpair playing the kernel -------------


@pytest.fixture
def kernel() -> Iterator[Callable[[Callable[[bytes], list[bytes]]], NetlinkSocket]]:
    """A NetlinkSocket whose other end answers each datagram with ``reply(datagram)``."""
    made: list[tuple[socket.socket, socket.socket, threading.Thread]] = []

    def start(reply: Callable[[bytes], list[bytes]]) -> NetlinkSocket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

        def serve() -> None:
            while data := theirs.recv(1 << 20):
                for out in reply(data):
                    theirs.send(out)
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        made.append((ours, theirs, t))
        return NetlinkSocket(NETLINK_ROUTE, sock=ours, timeout=5)

    yield start
    for ours, theirs, t in made:
        ours.shutdown(socket.SHUT_RDWR)
        t.join(5)
        ours.close()
        theirs.close()


def test_batch_sends_many_to_a_datagram_and_returns_each_result_in_order(
        kernel: Callable[[Callable[[bytes], list[bytes]]], NetlinkSocket]) -> None:
    datagrams: list[int] = []
    answers: list[int] = []

    def reply(data: bytes) -> list[bytes]:
        """As the kernel: in order, an error for a failed request, an ack where asked."""
        msgs = nlmsg.parse(data)
        datagrams.append(len(msgs))
        out = [nlmsg.pack_error(-errno.EEXIST if m.payload == b"fail" else 0,
                                nlmsg.pack(m.type, m.flags, m.seq, m.payload), seq=m.seq)
               for m in msgs if m.payload == b"fail" or m.flags & nlmsg.NLM_F_ACK]
        answers.append(len(out))
        return out

    s = kernel(reply)
    reqs = [(r.RTM_NEWROUTE, 0, b"fail" if i in (2, 299) else b"ok!!") for i in range(300)]
    results = s.batch(reqs)
    assert datagrams == [256, 44]
    assert answers == [2, 1]  # one failure and the ack; the last request's failure
    assert [i for i, e in enumerate(results) if e is not None] == [2, 299]
    err = results[2]
    assert err is not None
    assert err.errno == errno.EEXIST


def test_dump_raw_collects_until_done_and_raises_the_kernels_error(
        kernel: Callable[[Callable[[bytes], list[bytes]]], NetlinkSocket]) -> None:
    payload = route_msg(socket.AF_INET, "10.2.0.0", 16)

    def reply(data: bytes) -> list[bytes]:
        [m] = nlmsg.parse(data)
        if m.payload.startswith(b"\x0a"):  # AF_INET6: "not supported"
            return [nlmsg.pack_error(-errno.EAFNOSUPPORT, data, seq=m.seq)]
        part = nlmsg.pack(r.RTM_NEWROUTE, nlmsg.NLM_F_MULTI, m.seq, payload)
        stale = nlmsg.pack(r.RTM_NEWROUTE, nlmsg.NLM_F_MULTI, m.seq + 100, payload)
        return [part * 3 + stale, part,
                nlmsg.pack(nlmsg.NLMSG_DONE, nlmsg.NLM_F_MULTI, m.seq, struct.pack("=i", 0))]

    s = kernel(reply)
    got = s.dump_raw(r.RTM_GETROUTE, r.encode_dump_routes(socket.AF_INET, 220))
    assert len(got) == 4
    assert len(r.route_rows(got, socket.AF_INET, 220)) == 4
    with pytest.raises(nlmsg.NetlinkError) as e:
        s.dump_raw(r.RTM_GETROUTE, r.encode_dump_routes(socket.AF_INET6, 220))
    assert e.value.errno == errno.EAFNOSUPPORT


# --- route notifications ----------------------------------------------------------------


def notification(table: int, msg_type: int = r.RTM_NEWROUTE) -> bytes:
    return nlmsg.pack(msg_type, 0, 0, route_msg(socket.AF_INET, "10.2.0.0", 16, table=table))


def test_tables_in_names_each_changed_table_and_none_for_what_it_cannot_read() -> None:
    assert tables_in(notification(220) + notification(1000, r.RTM_DELROUTE)) == {220, 1000}
    assert tables_in(nlmsg.pack(r.RTM_NEWRULE, 0, 0, b"\0" * 12)) == set()  # not a route
    assert tables_in(notification(220)[:-2]) is None
    assert tables_in(nlmsg.pack(r.RTM_NEWROUTE, 0, 0, b"\0" * 8)) is None


def test_route_watch_drains_without_waiting() -> None:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    watch = RouteWatch(ours)
    try:
        assert watch.changed() == set()
        kernel.send(notification(254))
        kernel.send(notification(220))
        assert watch.changed() == {254, 220}
        assert watch.changed() == set()
        kernel.send(b"\xff" * 20)  # not netlink
        kernel.send(notification(220))
        assert watch.changed() is None
    finally:
        watch.close()
        kernel.close()


def test_each_table_keeps_the_changes_it_has_not_asked_about_yet(
        monkeypatch: pytest.MonkeyPatch) -> None:

    class Watch:
        pending: ClassVar[list[set[int] | None]] = []

        def changed(self) -> set[int] | None:
            return self.pending.pop(0) if self.pending else set()

        def close(self) -> None:
            pass

    monkeypatch.setattr(iproute, "RouteWatch", Watch)
    ip = iproute.IPRoute()
    assert not ip.routes_unchanged(220)  # the first time: unknown
    assert not ip.routes_unchanged(254)
    assert ip.routes_unchanged(220)
    Watch.pending += [{254}]
    assert ip.routes_unchanged(220)  # another table's change, seen here first...
    assert not ip.routes_unchanged(254)  # ...is still told to its own caller
    assert ip.routes_unchanged(254)
    Watch.pending += [None]  # lost notifications: every table may have changed
    assert not ip.routes_unchanged(220)
    assert not ip.routes_unchanged(254)
    ip.close()
