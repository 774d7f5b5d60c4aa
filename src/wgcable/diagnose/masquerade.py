"""Which source NAT rules of the ruleset would hit traffic from our pods to remote clusters,
and whether our exemption covers them (pure; input: ``nft -j list ruleset``).

A CNI that masquerades what its pods send off-cluster would hide their addresses from the
remote cluster (whose peer then drops the packets: the gateway's address is not in its
allowed IPs). Our table's null SNAT binding at ``srcnat - 10`` comes first and keeps them;
a NAT rule in a postrouting chain of an earlier priority is not covered, nor is a remote
subnet missing from our set. Matches on ``ip saddr``/``ip daddr`` are judged against the
networks (a rule that may hit some pod of a subnet counts); any other match is assumed to
hold (a rule is never excused by what we cannot read). iptables-nft's MASQUERADE and SNAT
targets count as NAT rules; legacy iptables rules are not in this ruleset.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wgcable.diagnose.result import Result, fail, passed, warn

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_NAT_STATEMENTS = ("masquerade", "snat")
_XT_TARGETS = ("MASQUERADE", "SNAT")
_PROTOCOLS = {"ip": 4, "ip6": 6}


@dataclass(frozen=True, slots=True)
class Hit:
    table: str  # "ip wgcable_lab_snat"
    chain: str
    priority: int
    source: Network
    destination: Network


def _networks(value: Any, sets: Mapping[tuple[str, str], list[Any]],
              table: tuple[str, str]) -> list[Network] | None:
    """The networks an nft JSON right-hand side names; None when it cannot be read."""
    if isinstance(value, str):
        if value.startswith("@"):
            elems = sets.get((table[0] + " " + table[1], value[1:]))
            return None if elems is None else _networks({"set": elems}, sets, table)
        try:
            return [ipaddress.ip_network(value, strict=False)]
        except ValueError:
            return None
    if isinstance(value, dict):
        if "prefix" in value and isinstance(value["prefix"], dict):
            p = value["prefix"]
            try:
                return [ipaddress.ip_network(f"{p.get('addr')}/{p.get('len')}", strict=False)]
            except ValueError:
                return None
        if "range" in value and isinstance(value["range"], list) and len(value["range"]) == 2:
            try:
                lo, hi = (ipaddress.ip_address(str(x)) for x in value["range"])
                return list(ipaddress.summarize_address_range(lo, hi))
            except (ValueError, TypeError):
                return None
        if "set" in value and isinstance(value["set"], list):
            out: list[Network] = []
            for elem in value["set"]:
                if isinstance(elem, dict) and "elem" in elem:
                    elem = elem["elem"].get("val") if isinstance(elem["elem"], dict) else None
                nets = _networks(elem, sets, table)
                if nets is None:
                    return None
                out += nets
            return out
    return None


def _may_match(op: str, net: Network, named: list[Network]) -> bool:
    same = [n for n in named if n.version == net.version]
    if op in ("==", "in"):
        return any(net.overlaps(n) for n in same)
    if op == "!=":  # matches some address of net unless the set covers all of it
        return not any(net.subnet_of(n) for n in same)  # type: ignore[arg-type]
    return True


def _null_binding(e: dict[str, Any]) -> bool:
    """``snat ip to ip saddr``: the source kept, an exemption (ours, the route agent's)."""
    snat = e.get("snat")
    addr = snat.get("addr") if isinstance(snat, dict) else None
    payload = addr.get("payload") if isinstance(addr, dict) else None
    return isinstance(payload, dict) and payload.get("field") == "saddr"


def _rule_may_hit(exprs: Sequence[Any], src: Network, dst: Network,
                  sets: Mapping[tuple[str, str], list[Any]], table: tuple[str, str]) -> bool:
    nat = False
    for e in exprs:
        if not isinstance(e, dict):
            continue
        if any(k in e for k in _NAT_STATEMENTS) and not _null_binding(e):
            nat = True
        xt = e.get("xt")
        if isinstance(xt, dict) and xt.get("name") in _XT_TARGETS:
            nat = True
        m = e.get("match")
        if not isinstance(m, dict):
            continue
        left = m.get("left")
        payload = left.get("payload") if isinstance(left, dict) else None
        if not isinstance(payload, dict) or payload.get("field") not in ("saddr", "daddr"):
            continue  # another match: assumed to hold
        if _PROTOCOLS.get(str(payload.get("protocol"))) not in (None, src.version):
            return False  # an IPv6 match never holds for IPv4 traffic, and back
        named = _networks(m.get("right"), sets, table)
        if named is None:
            continue
        net = src if payload["field"] == "saddr" else dst
        if not _may_match(str(m.get("op", "==")), net, named):
            return False
    return nat


def nat_hits(ruleset: Iterable[Any], local: Sequence[Network], remote: Sequence[Network],
             ours: str) -> list[Hit]:
    """Every (rule, local, remote) where a NAT rule of a postrouting chain outside our
    table ``ours`` may rewrite the source of local -> remote traffic."""
    items = [i for i in ruleset if isinstance(i, dict)]
    sets: dict[tuple[str, str], list[Any]] = {}
    chains: dict[tuple[str, str, str], int] = {}
    for i in items:
        s = i.get("set")
        if isinstance(s, dict):
            sets[(f"{s.get('family')} {s.get('table')}", str(s.get("name")))] = \
                list(s.get("elem") or [])
        c = i.get("chain")
        if isinstance(c, dict) and c.get("hook") == "postrouting" and c.get("type") == "nat":
            chains[(str(c.get("family")), str(c.get("table")), str(c.get("name")))] = \
                int(c.get("prio", 0))
    hits = []
    for i in items:
        r = i.get("rule")
        if not isinstance(r, dict):
            continue
        key = (str(r.get("family")), str(r.get("table")), str(r.get("chain")))
        if key not in chains or (key[0] == "inet" and key[1] == ours):
            continue
        family_versions = {"ip": {4}, "ip6": {6}}.get(key[0], {4, 6})
        for src in local:
            for dst in remote:
                if src.version != dst.version or src.version not in family_versions:
                    continue
                if _rule_may_hit(r.get("expr") or [], src, dst, sets, (key[0], key[1])):
                    hits.append(Hit(f"{key[0]} {key[1]}", key[2], chains[key], src, dst))
    return hits


def our_priority(ruleset: Iterable[Any], ours: str) -> int | None:
    """The priority of our table's postrouting NAT chain, None without one."""
    for i in ruleset:
        c = i.get("chain") if isinstance(i, dict) else None
        if (isinstance(c, dict) and c.get("family") == "inet" and c.get("table") == ours
                and c.get("hook") == "postrouting"):
            return int(c.get("prio", 0))
    return None


def check(hits: Sequence[Hit], exemption_on: bool, our_prio: int | None,
          exempt: Sequence[Network], repairs: str, host_nat: str | None = "") -> Result:
    """``exempt``: the remote networks in our table's set; ``repairs``: the fix for what
    the agent restores (our table, its set). ``host_nat``: why the host has NAT (as
    ``routing.hostnat.found`` says), None when it has none: the agent then loads no NAT
    chain (there is nothing to exempt from); "" when not known."""
    uncovered: list[str] = []
    fixes: list[str] = []
    for h in hits:
        if not exemption_on:
            why, fix = ("the SNAT exemption is off (--no-snat-exemption)",
                        "turn the SNAT exemption on (the default)")
        elif our_prio is None:
            why, fix = "our table (or its NAT chain) is missing", repairs
        elif h.priority <= our_prio:
            why, fix = (f"it runs at priority {h.priority}, not after ours ({our_prio})",
                        "make the CNI's masquerade chain run after srcnat - 10, or exempt "
                        "the remote clusters' CIDRs in the CNI")
        elif not any(h.destination.version == n.version
                     and h.destination.subnet_of(n) for n in exempt):  # type: ignore[arg-type]
            why, fix = f"{h.destination} is not in our exemption set", repairs
        else:
            continue
        uncovered.append(f"table {h.table} chain {h.chain} (priority {h.priority}) "
                         f"masquerades {h.source} -> {h.destination}, and our exemption "
                         f"does not cover it: {why}")
        fixes.append(fix)
    if uncovered:
        return fail("masquerade", "; ".join(dict.fromkeys(uncovered)),
                    "; ".join(dict.fromkeys(fixes)))
    if hits:
        tables = ", ".join(dict.fromkeys(f"{h.table} chain {h.chain}" for h in hits))
        return passed("masquerade", f"NAT in {tables} would hit traffic to remote clusters; "
                      f"our exemption (priority {our_prio}) comes first and covers it")
    if exemption_on and host_nat is None and our_prio is None:
        return passed("masquerade", "no NAT on this host: the SNAT exemption is idle (its "
                      "NAT chain is loaded only when the host has NAT to exempt from)")
    if exemption_on and host_nat and our_prio is None:
        return warn("masquerade", f"{host_nat} (no rule of it hits traffic to remote "
                    "clusters), but our NAT chain is missing: the agent loads it while the "
                    "host has NAT", repairs)
    return passed("masquerade", "no NAT rule hits traffic to remote clusters")
