"""The SNAT exemption's NAT chain only while the host has NAT of its own (issue 16).

Pure parts: host NAT from ``nft -j list chains`` objects and legacy iptables' table names
(``routing/hostnat.py``), our table rendered with and without the chain, the nftables
notifications the watcher reads (``netlink/nfwatch.py``), diagnose's verdicts. Then the
driver on fakes (``test_driver_delta.Rig``): the watcher's callback and status reads load
and remove the chain through the usual write path, write nothing when nothing changed, and
count the exemption in place for ``connected`` with the chain when it is needed, without
it when it is not.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from test_connected_status import CONNECTED, CONNECTING, _conn
from test_connected_status import synced as synced  # the fixture
from test_driver_delta import Rig
from test_driver_delta import rig as rig  # the fixture

from wgcable.cable.wireguard.natchain import NatChain
from wgcable.diagnose import masquerade
from wgcable.diagnose.result import Level
from wgcable.netlink import attrs
from wgcable.netlink import conntrack as ct
from wgcable.netlink import message as nlmsg
from wgcable.netlink.nfnetlink import msg_type
from wgcable.netlink.nfwatch import (
    NFNL_SUBSYS_NFTABLES,
    NFPROTO_INET,
    NFT_MSG_DELCHAIN,
    NFT_MSG_DELTABLE,
    NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWGEN,
    NFT_MSG_NEWRULE,
    NFT_MSG_NEWTABLE,
    Change,
    NftWatch,
    changes_in,
)
from wgcable.routing import hostnat
from wgcable.routing.nftables import NftError, Rules, render
from wgcable.routing.resources import NftResource

NFPROTO_IPV4 = 2
OURS = "wgcable_subwg0"


def chain(family: str, table: str, name: str = "postrouting", type_: str | None = "nat",
          hook: str | None = "postrouting") -> dict[str, Any]:
    c: dict[str, Any] = {"family": family, "table": table, "name": name, "handle": 1}
    if type_ is not None:
        c.update(type=type_, hook=hook, prio=100, policy="accept")
    return c


KUBE = chain("ip", "kube_nat_like")


# --- host NAT from the chains and from legacy iptables --------------------------------------


def test_another_tables_postrouting_nat_chain_is_host_nat() -> None:
    assert hostnat.nat_chains([KUBE]) == ["table ip kube_nat_like chain postrouting"]
    assert hostnat.found([KUBE], legacy=False) == (
        "host NAT found in table ip kube_nat_like chain postrouting")
    # iptables-nft's table counts, and any family does; whatever the chain holds.
    assert hostnat.nat_chains([chain("ip6", "nat", "POSTROUTING")]) == [
        "table ip6 nat chain POSTROUTING"]
    assert hostnat.nat_chains([chain("inet", "cni", "snat")]) == ["table inet cni chain snat"]
    # The lab's masquerade is named like ours but is not in the inet family.
    assert hostnat.nat_chains([chain("ip", "wgcable_lab_snat")]) == [
        "table ip wgcable_lab_snat chain postrouting"]


@pytest.mark.parametrize("c", [
    chain("inet", OURS),  # our own table's chain
    chain("inet", "wgcable_vx_submariner"),  # the route agent's: null bindings only
    chain("ip", "filter", "forward", "filter", "forward"),
    chain("ip", "kube", "postrouting", "filter", "postrouting"),  # not of type nat
    chain("ip", "kube", "prerouting", "nat", "prerouting"),  # DNAT: rewrites no source
    chain("ip", "kube", "services", None),  # a regular chain: no type, no hook
], ids=["ours", "route-agent", "filter", "filter-postrouting", "nat-prerouting", "regular"])
def test_chains_that_are_not_host_nat(c: dict[str, Any]) -> None:
    assert hostnat.nat_chains([c]) == []
    assert hostnat.found([c], legacy=False) is None


def test_legacy_iptables_nat_table_names() -> None:
    assert hostnat.legacy_nat(["filter\nnat\n"])
    assert hostnat.legacy_nat(["", "mangle\nnat\n"])  # ip6_tables_names
    assert not hostnat.legacy_nat(["filter\nmangle\nraw\n", ""])
    assert not hostnat.legacy_nat(["natural\n"])
    assert not hostnat.legacy_nat([])
    assert hostnat.found([], legacy=True) == "host NAT found in legacy iptables (table nat)"


def test_legacy_files_are_read_again_from_the_open_file(tmp_path: Path) -> None:
    """``present`` re-reads what was opened (pread at 0): a change shows, no reopen."""
    names = tmp_path / "ip_tables_names"
    names.write_text("filter\n")
    legacy = hostnat.LegacyNat(None)
    legacy._fds["ip_tables_names"] = os.open(names, os.O_RDONLY)
    try:
        assert not legacy.present()
        names.write_text("filter\nnat\n")
        assert legacy.present()
    finally:
        legacy.close()
    assert legacy._fds == {}


# --- our table with and without the chain ----------------------------------------------------


LOCAL = (ipaddress.ip_network("10.1.0.0/16"),)
REMOTE = (ipaddress.ip_network("10.2.0.0/16"),)


def test_render_without_host_nat_keeps_sets_and_clamps_only() -> None:
    with_chain = render(Rules("subwg0", LOCAL, REMOTE, notrack_port=5871))
    without = render(Rules("subwg0", LOCAL, REMOTE, notrack_port=5871, nat_chain=False))
    assert with_chain is not None
    assert without is not None
    assert "chain postrouting {" in with_chain
    assert "snat ip to ip saddr" in with_chain
    assert "chain postrouting {" not in without
    assert "snat" not in without
    assert "type nat" not in without
    for kept in ("set remote4 {", "elements = { 10.2.0.0/16 }", "maxseg size set rt mtu"):
        assert kept in without, kept
    # No tracking to take the tunnel's packets out of: no notrack chains (no hooks).
    assert "chain notrack_prerouting {" in with_chain
    assert "notrack" not in without


class _Nft:
    name = OURS

    def __init__(self, chains: list[dict[str, Any]]) -> None:
        self.body: str | None = None
        self.chain_list = chains
        self.applied = 0

    def apply(self, body: str) -> None:
        self.body, self.applied = body, self.applied + 1

    def exists(self) -> bool:
        return self.body is not None

    def has_chain(self, name: str) -> bool:
        return self.body is not None and f"chain {name} {{" in self.body

    def chains(self, family: str | None = None) -> list[dict[str, Any]]:
        return self.chain_list


def test_resource_holds_checks_the_chain_only_when_it_wrote_one() -> None:
    nft = _Nft([])
    res = NftResource(nft, "subwg0", LOCAL, True, True, 5871)  # type: ignore[arg-type]
    want = {REMOTE[0]: REMOTE[0]}
    res.write({}, want, trusted=False)
    assert "snat" in (nft.body or "")
    assert res.holds(want, exactly=True)
    nft.body = (nft.body or "").replace("chain postrouting {", "chain gone {")
    assert not res.holds(want, exactly=True)  # someone deleted the chain: a write heals it
    res.nat_chain = False
    res.write({}, want, trusted=False)
    assert "snat" not in (nft.body or "")
    assert res.holds(want, exactly=True)  # the table is there; no chain is expected


def test_resource_holds_lists_nothing_while_no_change_of_our_table_was_notified() -> None:
    """With a count of our table's notified changes, the drift check lists the table only
    when the count moved since the check last found it in place, and after our writes."""
    class Counting(_Nft):
        listed = 0

        def exists(self) -> bool:
            self.listed += 1
            return super().exists()

        def has_chain(self, name: str) -> bool:
            self.listed += 1
            return super().has_chain(name)

    nft = Counting([])
    res = NftResource(nft, "subwg0", LOCAL, True, True, 5871)  # type: ignore[arg-type]
    want = {REMOTE[0]: REMOTE[0]}
    res.write({}, want, trusted=False)
    assert (res.holds(want, exactly=True), nft.listed) == (True, 1)  # not watched: listed each time
    assert (res.holds(want, exactly=True), nft.listed) == (True, 2)
    count: list[int | None] = [7]
    res.changes = lambda: count[0]
    assert (res.holds(want, exactly=True), nft.listed) == (True, 3)  # the first check lists
    assert (res.holds(want, exactly=True), nft.listed) == (True, 3)  # nothing notified: no listing
    assert (res.holds(want, exactly=True), nft.listed) == (True, 3)
    nft.body = None  # someone deletes our table; the kernel says so
    count[0] = 8
    assert (res.holds(want, exactly=True), nft.listed) == (False, 4)
    assert (res.holds(want, exactly=True), nft.listed) == (False, 5)  # not in place: listed again
    res.write({}, want, trusted=False)  # the heal
    assert (res.holds(want, exactly=True), nft.listed) == (True, 6)  # after a write: listed once
    assert (res.holds(want, exactly=True), nft.listed) == (True, 6)
    count[0] = None  # the watcher died: every check lists again
    assert (res.holds(want, exactly=True), nft.listed) == (True, 7)


# --- the decision ------------------------------------------------------------------------


def test_decision_follows_the_chains_and_the_legacy_files() -> None:
    nft = _Nft([chain("inet", OURS)])  # our own chain: still no NAT
    nat = NatChain(nft, None, watch=False)
    assert nat.needed  # until known: the chain is kept
    assert nat.check(full=False)  # the first decision counts as a change
    assert not nat.needed
    assert nat.reason() == "no NAT on this host"
    assert not nat.check(full=False)
    nft.chain_list = [KUBE]
    assert nat.check(full=False)  # no watcher: every look lists the chains
    assert nat.needed
    assert nat.reason() == "host NAT found in table ip kube_nat_like chain postrouting"
    nft.chain_list = []
    nat._legacy.present = lambda: True  # type: ignore[method-assign]
    assert not nat.check(full=False)  # legacy iptables' nat: still needed
    assert nat.reason() == "host NAT found in legacy iptables (table nat)"
    nat.close()


# --- the notifications ------------------------------------------------------------------------


def nfmsg(kind: int, family: int, table: str | None, seq: int = 1) -> bytes:
    payload = bytes([family, 0, 0, 0])
    if table is not None:
        payload += attrs.string(1, table)  # NFTA_TABLE_NAME / NFTA_CHAIN_TABLE
    if kind in (NFT_MSG_NEWCHAIN, NFT_MSG_DELCHAIN):
        payload += attrs.string(3, "postrouting")  # NFTA_CHAIN_NAME
    return nlmsg.pack(msg_type(NFNL_SUBSYS_NFTABLES, kind), 0, seq, payload)


def test_notifications_parsed_by_message_type() -> None:
    data = b"".join([
        nfmsg(NFT_MSG_NEWTABLE, NFPROTO_IPV4, "kube"),
        nfmsg(NFT_MSG_NEWCHAIN, NFPROTO_IPV4, "kube"),
        nfmsg(NFT_MSG_NEWRULE, NFPROTO_IPV4, "kube"),  # rules do not matter
        nfmsg(NFT_MSG_NEWGEN, 0, None),  # nor does the batch's generation
        nfmsg(NFT_MSG_DELCHAIN, NFPROTO_INET, OURS),
        nfmsg(NFT_MSG_DELTABLE, NFPROTO_INET, OURS),
        nlmsg.pack(msg_type(1, 0), 0, 1, b"\0" * 8),  # another subsystem (conntrack)
    ])
    assert changes_in(data) == [
        Change(NFT_MSG_NEWTABLE, NFPROTO_IPV4, "kube"),
        Change(NFT_MSG_NEWCHAIN, NFPROTO_IPV4, "kube"),
        Change(NFT_MSG_DELCHAIN, NFPROTO_INET, OURS),
        Change(NFT_MSG_DELTABLE, NFPROTO_INET, OURS),
    ]


def test_unreadable_notifications_are_none() -> None:
    assert changes_in(nfmsg(NFT_MSG_NEWTABLE, NFPROTO_IPV4, None)) is None  # no name
    short = nlmsg.pack(msg_type(NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWCHAIN), 0, 1, b"\x02")
    assert changes_in(short) is None
    assert changes_in(b"\x40\0\0\0garbage") is None


def test_watch_ignores_our_table_and_sees_others() -> None:
    ours = (NFPROTO_INET, OURS)
    kernel, ours_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    watch = NftWatch(sock=ours_end)
    try:
        assert not watch.changed(ours)  # nothing waiting
        assert watch.own == 0
        kernel.send(nfmsg(NFT_MSG_DELTABLE, NFPROTO_INET, OURS)
                    + nfmsg(NFT_MSG_NEWTABLE, NFPROTO_INET, OURS))
        kernel.send(nfmsg(NFT_MSG_NEWCHAIN, NFPROTO_INET, OURS))
        kernel.send(nfmsg(NFT_MSG_NEWRULE, NFPROTO_IPV4, "kube"))
        assert not watch.changed(ours)  # our own writes, another table's rule
        assert watch.own == 2  # but our table's changes are counted (two datagrams)
        kernel.send(nfmsg(NFT_MSG_NEWCHAIN, NFPROTO_IPV4, "kube"))
        assert watch.changed(ours)
        kernel.send(nfmsg(NFT_MSG_NEWTABLE, NFPROTO_IPV4, OURS))  # same name, not inet
        assert watch.changed(ours)
        assert watch.own == 2
        kernel.send(b"\x40\0\0\0garbage")
        assert watch.changed(ours)  # unreadable: may be anything
        assert watch.own == 3  # ours too
        assert not watch.changed(ours)
    finally:
        watch.close()
        kernel.close()


def test_watch_counts_lost_notifications_as_a_change() -> None:
    class Lossy:
        def __init__(self) -> None:
            self.calls = 0

        def setblocking(self, flag: bool) -> None:
            pass

        def recv(self, n: int) -> bytes:
            self.calls += 1
            if self.calls == 1:
                raise OSError(errno.ENOBUFS, "No buffer space available")
            raise BlockingIOError

    watch = NftWatch(sock=Lossy())  # type: ignore[arg-type]
    assert watch.changed((NFPROTO_INET, OURS))
    assert watch.own == 1  # our table may have changed as well


# --- diagnose -----------------------------------------------------------------------------------


def test_diagnose_idle_exemption_passes_and_missing_chain_under_nat_does_not() -> None:
    idle = masquerade.check([], True, None, [], "the agent restores it", host_nat=None)
    assert idle.level is Level.PASS
    assert "no NAT on this host" in idle.detail
    why = "host NAT found in table ip kube chain postrouting"
    missing = masquerade.check([], True, None, [], "the agent restores it", host_nat=why)
    assert missing.level is Level.WARN
    assert why in missing.detail
    assert missing.fix == "the agent restores it"
    loaded = masquerade.check([], True, 90, [], "the agent restores it", host_nat=why)
    assert loaded.level is Level.PASS


# --- the driver on fakes --------------------------------------------------------------------------


def test_driver_without_host_nat_writes_no_chain_and_is_connected(synced: Rig) -> None:
    assert "snat" not in (synced.nft.body or "")
    assert "10.10.1.0/24" in (synced.nft.body or "")  # the sets are there
    assert [c.status for c in synced.driver.get_connections()] == [CONNECTED, CONNECTED]


def test_driver_callback_loads_and_removes_the_chain_once(synced: Rig) -> None:
    synced.nft.writes = 0
    synced.driver._host_nat_changed()  # the watcher's callback: nothing changed
    assert synced.nft.writes == 0
    synced.nft.others = [KUBE]
    synced.driver._host_nat_changed()
    assert synced.nft.writes == 1
    assert "snat ip to ip saddr" in (synced.nft.body or "")
    assert "10.10.2.0/24" in (synced.nft.body or "")
    synced.driver._host_nat_changed()  # our own write's notifications, say
    assert synced.nft.writes == 1
    assert _conn(synced, 1).status is CONNECTED
    synced.nft.others = []
    synced.driver._host_nat_changed()
    assert synced.nft.writes == 2
    assert "snat" not in (synced.nft.body or "")
    assert _conn(synced, 1).status is CONNECTED


def test_driver_status_read_loads_the_chain_for_legacy_nat(synced: Rig) -> None:
    """Legacy iptables sends no notifications: the status read's look finds it."""
    assert "snat" not in (synced.nft.body or "")
    synced.driver._nat_chain._legacy.present = lambda: True  # type: ignore[method-assign]
    assert _conn(synced, 1).status is CONNECTED
    assert "snat ip to ip saddr" in (synced.nft.body or "")


def test_driver_needed_chain_not_written_is_waited_for(
        synced: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(body: str) -> None:
        raise NftError("nft -f: Could not process rule: No such file or directory")

    monkeypatch.setattr(synced.nft, "apply", fail)
    synced.nft.others = [KUBE]
    synced.driver._host_nat_changed()
    c = _conn(synced, 1)
    assert c.status is CONNECTING
    assert c.status_message.startswith("waiting for: SNAT exemption in nftables table inet ")
    monkeypatch.undo()  # the next status read writes it
    assert _conn(synced, 1).status is CONNECTED
    assert "snat ip to ip saddr" in (synced.nft.body or "")


def test_driver_chain_deleted_behind_our_back_is_restored(synced: Rig) -> None:
    synced.nft.others = [KUBE]
    synced.driver._host_nat_changed()
    synced.nft.body = (synced.nft.body or "").replace("chain postrouting {", "chain x {")
    assert _conn(synced, 1).status is CONNECTED  # healed by that read
    assert "chain postrouting {" in (synced.nft.body or "")


# --- connection tracking entries bound before the chain --------------------------------------


def ct_entry(src: str, dst: str, reply_dst: str, status: int, family: int = socket.AF_INET,
             zone: int | None = None) -> nlmsg.Message:
    v4 = family == socket.AF_INET
    s_t, d_t = (ct.CTA_IP_V4_SRC, ct.CTA_IP_V4_DST) if v4 else (ct.CTA_IP_V6_SRC,
                                                                 ct.CTA_IP_V6_DST)

    def tup(kind: int, a: str, b: str) -> bytes:
        ip = attrs.nested(ct.CTA_TUPLE_IP, [
            attrs.raw(s_t, ipaddress.ip_address(a).packed),
            attrs.raw(d_t, ipaddress.ip_address(b).packed)])
        return attrs.nested(kind, [ip, attrs.nested(2, [attrs.u8(1, 1)])])  # proto: ICMP

    body = bytes([family, 0, 0, 0]) + tup(ct.CTA_TUPLE_ORIG, src, dst) + \
        tup(ct.CTA_TUPLE_REPLY, dst, reply_dst) + attrs.raw(ct.CTA_STATUS,
                                                           status.to_bytes(4, "big"))
    if zone is not None:
        body += attrs.raw(ct.CTA_ZONE, zone.to_bytes(2, "big"))
    return nlmsg.Message((ct.NFNL_SUBSYS_CTNETLINK << 8) | ct.IPCTNL_MSG_CT_NEW, 0, 1, 0,
                         body)


CT_LOCAL = [ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("fd00:1::/48")]
CT_REMOTE = [ipaddress.ip_network("10.2.0.0/16"), ipaddress.ip_network("fd00:2::/48")]
SNATTED = ct.IPS_SRC_NAT | (1 << 7)  # and IPS_SRC_NAT_DONE


@pytest.mark.parametrize(("msg", "doomed"), [
    (ct_entry("10.1.0.2", "10.2.0.2", "10.1.0.1", SNATTED), True),
    (ct_entry("fd00:1::2", "fd00:2::2", "fd00:1::1", SNATTED, socket.AF_INET6), True),
    (ct_entry("10.1.0.2", "10.2.0.2", "10.1.0.2", 1 << 7), False),  # our null binding
    (ct_entry("10.1.0.2", "10.2.0.2", "10.1.0.2", SNATTED), False),  # not rewritten
    (ct_entry("10.1.0.2", "10.2.0.2", "10.1.0.2", 0), False),  # never NATed
    (ct_entry("10.1.0.2", "8.8.8.8", "198.18.0.1", SNATTED), False),  # off-cluster: the CNI's
    (ct_entry("10.9.0.2", "10.2.0.2", "198.18.0.1", SNATTED), False),  # not a local source
], ids=["v4", "v6", "null-binding", "same-address", "untouched", "internet", "foreign"])
def test_only_masqueraded_local_to_remote_entries_are_doomed(msg: nlmsg.Message,
                                                             doomed: bool) -> None:
    entry = ct.parse_entry(msg)
    assert entry is not None
    assert ct.masqueraded(entry, CT_LOCAL, CT_REMOTE) is doomed


def test_an_entry_is_deleted_by_its_own_tuple_and_zone() -> None:
    entry = ct.parse_entry(ct_entry("10.1.0.2", "10.2.0.2", "10.1.0.1", SNATTED, zone=7))
    assert entry is not None
    [orig] = attrs.parse(entry.tuple_attr)
    assert orig.type == ct.CTA_TUPLE_ORIG
    assert orig.is_nested
    assert ct.parse_entry(nlmsg.Message(0, 0, 0, 0, b"\x02\0\0\0")) is None  # no tuple
    [zone] = attrs.parse(entry.zone_attr)
    assert zone.payload == (7).to_bytes(2, "big")


def test_driver_unbinds_once_after_the_chain_is_written(synced: Rig) -> None:
    calls: list[tuple[list[Any], list[Any]]] = []

    def unbind(local: list[Any], remote: list[Any]) -> int:
        calls.append((local, remote))
        return 1

    synced.driver._unbind = unbind
    synced.driver._host_nat_changed()  # no NAT: nothing to unbind
    assert calls == []
    synced.nft.others = [KUBE]
    synced.driver._host_nat_changed()
    assert len(calls) == 1
    assert ipaddress.ip_network("10.10.1.0/24") in calls[0][1]
    assert calls[0][0] == [ipaddress.ip_network("10.1.0.0/16")]
    synced.driver.get_connections()
    synced.driver.resync()
    assert len(calls) == 1  # once per appearance of host NAT
