"""The nft text of the driver's own table (pure rendering; no nft run here)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from wgcable.routing.nftables import (
    NAT_PRIORITY,
    Rules,
    _element_text,
    _elements,
    render,
    table_name,
    transaction,
)
from wgcable.wgctrl.types import IPNetwork


def nets(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


LOCAL = nets("10.1.0.0/16", "10.101.0.0/16", "fd00:1::/48")
REMOTE = nets("10.2.0.0/16", "10.102.0.0/16", "fd00:2::/48", "10.4.0.0/16")


def lines(text: str | None) -> list[str]:
    assert text is not None
    return [line.strip() for line in text.splitlines()]


def chain(got: list[str], name: str) -> list[str]:
    """The lines of chain ``name`` (between its opening line and its closing brace)."""
    start = got.index(f"chain {name} {{") + 1
    return got[start:got.index("}", start)]


def set_elements(text: str | None, name: str) -> str | None:
    """The ``elements = ...`` line of set ``name``, or None if it has none."""
    got = lines(text)
    start = got.index(f"set {name} {{")
    end = got.index("}", start)
    for line in got[start:end]:
        if line.startswith("elements = "):
            return line
    return None


def test_table_name_per_device() -> None:
    assert table_name("subwg0") == "wgcable_subwg0"
    assert table_name("wg-a.1@x") == "wgcable_wg_a_1_x"
    assert table_name("subwg0") != table_name("subwg1")


def test_full_table() -> None:
    text = render(Rules("subwg0", LOCAL, REMOTE))
    got = lines(text)
    assert got[0] == "table inet wgcable_subwg0 {"
    assert got[-1] == "}"
    assert set_elements(text, "local4") == "elements = { 10.1.0.0/16, 10.101.0.0/16 }"
    assert set_elements(text, "remote4") == (
        "elements = { 10.2.0.0/16, 10.4.0.0/16, 10.102.0.0/16 }")
    assert set_elements(text, "local6") == "elements = { fd00:1::/48 }"
    assert set_elements(text, "remote6") == "elements = { fd00:2::/48 }"
    assert "type ipv4_addr" in got
    assert "type ipv6_addr" in got
    assert got.count("flags interval") == 4
    assert f"type nat hook postrouting priority {NAT_PRIORITY}; policy accept;" in got
    assert "ip saddr @local4 ip daddr @remote4 snat ip to ip saddr" in got
    assert "ip6 saddr @local6 ip6 daddr @remote6 snat ip6 to ip6 saddr" in got
    # Forwarded SYNs (and SYN-ACKs) only, in a regular chain that the forward chain jumps
    # to: every other packet leaves our chain after one test. No output chain: this host's
    # own SYNs advertise the route's MTU already.
    clamp = "tcp option maxseg size set rt mtu"
    assert chain(got, "clamp") == [f'oifname "subwg0" {clamp}', f'iifname "subwg0" {clamp}']
    assert chain(got, "forward") == [
        "type filter hook forward priority mangle; policy accept;",
        "tcp flags syn / syn,rst jump clamp"]
    assert not [line for line in got if "hook output" in line]
    # Never anything that would stop other tables' rules or bypass conntrack.
    assert "notrack" not in (text or "")
    assert "drop" not in (text or "")


def test_notrack_only_the_cables_own_udp() -> None:
    """Issue 16: the tunnel's outer UDP (our listen port, to this host or from our socket)
    is not tracked; nothing else is: the pods' flows keep their tracking (the null SNAT
    binding and CNI policies need it), and so does forwarded UDP to the same port."""
    text = render(Rules("subwg0", LOCAL, REMOTE, notrack_port=5871))
    got = lines(text)
    assert [line for line in got if "notrack" in line and "chain" not in line] == [
        "udp dport 5871 fib daddr type local notrack",  # no route lookup for others
        "udp sport 5871 notrack",
    ]
    assert chain(got, "notrack_prerouting") == [
        "type filter hook prerouting priority raw; policy accept;",
        "udp dport 5871 fib daddr type local notrack"]
    assert chain(got, "notrack_output") == [
        "type filter hook output priority raw; policy accept;",
        "udp sport 5871 notrack"]
    # The rest of the table is what it is without the port.
    rest = lines(render(Rules("subwg0", LOCAL, REMOTE)))
    assert set(got) - set(rest) == {
        "chain notrack_prerouting {", "type filter hook prerouting priority raw; policy accept;",
        "udp dport 5871 fib daddr type local notrack", "chain notrack_output {",
        "type filter hook output priority raw; policy accept;", "udp sport 5871 notrack"}


def test_notrack_needs_the_table_and_a_real_port() -> None:
    # No table at all stays no table at all: notrack alone never makes one.
    assert render(Rules("subwg0", LOCAL, REMOTE, snat_exemption=False, mss_clamp=False,
                        notrack_port=5871)) is None
    for port in (0, 65536, -1):
        with pytest.raises(ValueError, match="not a UDP port"):
            render(Rules("subwg0", LOCAL, REMOTE, notrack_port=port))


def test_nat_chain_runs_before_srcnat() -> None:
    assert NAT_PRIORITY == "srcnat - 10"


def test_empty_sets_have_no_elements_line() -> None:
    text = render(Rules("subwg0", nets("10.1.0.0/16"), ()))
    assert set_elements(text, "remote4") is None
    assert set_elements(text, "local6") is None
    assert set_elements(text, "remote6") is None
    assert set_elements(text, "local4") == "elements = { 10.1.0.0/16 }"


def test_overlapping_and_adjacent_networks_are_merged() -> None:
    # An interval set refuses overlapping elements.
    text = render(Rules("subwg0", nets("10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/24",
                                       "192.168.1.0/24"), ()))
    assert set_elements(text, "local4") == "elements = { 10.0.0.0/8, 192.168.0.0/23 }"


def test_only_snat_exemption() -> None:
    got = lines(render(Rules("subwg0", LOCAL, REMOTE, mss_clamp=False)))
    assert "chain postrouting {" in got
    assert "chain forward {" not in got
    assert "chain clamp {" not in got


def test_only_mss_clamp() -> None:
    got = lines(render(Rules("subwg0", LOCAL, REMOTE, snat_exemption=False)))
    assert "chain postrouting {" not in got
    assert "chain forward {" in got
    assert "chain clamp {" in got
    assert not [line for line in got if "snat" in line]


def test_both_off_no_table() -> None:
    assert render(Rules("subwg0", LOCAL, REMOTE, snat_exemption=False,
                        mss_clamp=False)) is None


def test_same_input_same_text() -> None:
    a = render(Rules("subwg0", LOCAL, REMOTE))
    b = render(Rules("subwg0", LOCAL[::-1], REMOTE[::-1]))
    assert a == b


@pytest.mark.parametrize("device", ['wg"0', "wg\\0", "wg 0", ""])
def test_unquotable_device_refused(device: str) -> None:
    with pytest.raises(ValueError, match="cannot be quoted"):
        render(Rules(device, LOCAL, REMOTE))


def test_transaction_replaces_only_our_table() -> None:
    body = render(Rules("subwg0", LOCAL, REMOTE))
    assert body is not None
    text = transaction("wgcable_subwg0", body)
    head = text.splitlines()[:2]
    assert head == ["table inet wgcable_subwg0 {}", "delete table inet wgcable_subwg0"]
    assert text.endswith(body)
    assert "flush ruleset" not in text
    # Removal: the same two lines, nothing after.
    assert transaction("wgcable_subwg0", None).splitlines() == head


@pytest.mark.parametrize(("elem", "text"), [
    ({"prefix": {"addr": "10.2.0.0", "len": 16}}, "10.2.0.0/16"),
    ({"range": ["10.0.0.1", "10.0.0.5"]}, "10.0.0.1-10.0.0.5"),
    ("10.9.9.9", "10.9.9.9"),
    ({"elem": {"val": {"prefix": {"addr": "fd00:2::", "len": 48}}}}, "fd00:2::/48"),
])
def test_element_text(elem: object, text: str) -> None:
    assert _element_text(elem) == text


def test_injection_zoned_network_reaches_nft_without_its_zone() -> None:
    zoned = ipaddress.ip_network("fd00:5::%x\n}\nflush ruleset\n/64")
    text = render(Rules("subwg0", LOCAL, (zoned,)))
    assert text is not None
    assert "flush" not in text
    assert "%" not in text
    assert set_elements(text, "remote6") == "elements = { fd00:5::/64 }"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(8, 32)), max_size=40),
       st.lists(st.tuples(st.integers(0, 2**128 - 1), st.integers(16, 128)), max_size=20))
# Once found at random: inet_ntop writes ::/96 and ::ffff:0:0/96 with a dotted quad.
@example([], [(0x400000, 106), ((0xFFFF << 32) | 0x01020300, 120)])
def test_elements_are_what_ipaddress_collapses_them_to(
        v4: list[tuple[int, int]], v6: list[tuple[int, int]]) -> None:
    """The integer merge in ``_elements`` gives exactly ``collapse_addresses``' prefixes."""
    nets4 = [ipaddress.IPv4Network((a, p), strict=False) for a, p in v4]
    nets6 = [ipaddress.IPv6Network((a, p), strict=False) for a, p in v6]
    both: list[IPNetwork] = [*nets4, *nets6]
    assert _elements(both, 4) == [str(n) for n in ipaddress.collapse_addresses(nets4)]
    assert _elements(both, 6) == [str(n) for n in ipaddress.collapse_addresses(nets6)]
