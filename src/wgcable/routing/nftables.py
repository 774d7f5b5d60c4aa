"""The driver's own nftables table: SNAT exemption and TCP MSS clamping (``nft -f -``).

Two things, both in one table of ours (``inet wgcable_<device>``, so that two drivers never
share one), and nothing anywhere else:

- SNAT exemption: a CNI may masquerade everything its pods send off-cluster, which would
  hide the pod addresses from the remote cluster (and the remote WireGuard peer drops such
  packets: the gateway's address is not in its allowed IPs). An ``accept`` in our NAT chain
  does not stop another table's masquerade; a NAT binding does. So our postrouting NAT chain
  runs before the usual ``srcnat`` priority and maps local-to-remote traffic's source to
  itself (``snat ip to ip saddr``, a null binding); later NAT chains then leave it alone.
  ``notrack`` of that traffic would bypass NAT too, but CNI network policies rely on
  connection tracking of the pods' flows, so the inner traffic stays tracked.
  The chain is there only while the host has NAT of its own (another table's postrouting
  NAT chain, or legacy iptables' ``nat`` table: ``hostnat.py``): without any, it exempts
  from nothing and only turns connection tracking on for every packet (issue 16: TCP
  through the tunnel 0.89x of a hand-built one with it, 1.01x without). The driver
  follows the host's NAT through nftables notifications (``Rules.nat_chain``); the sets
  stay either way, so that the chain can come back with a write of the same table.
- No tracking of the cable's own outer packets: a NAT chain (ours, or kube-proxy's) turns
  connection tracking on for every packet, and the tunnel's encrypted UDP gains nothing
  from it (no NAT applies to it here, no policy looks into it). Chains at the ``raw``
  priority mark UDP to our listen port that is addressed to this host (``fib daddr type
  local``, looked up for that port only: never forwarded traffic, which a CNI may need to
  masquerade) and UDP sent from our listen port (only our socket holds it) ``notrack``.
  A host firewall that accepts the port explicitly (as it must: the remote side initiates
  handshakes too) still does. These chains too are there only while the host has NAT
  (``Rules.nat_chain``): without it nothing of ours turns tracking on, and each base chain
  is one more netfilter hook on every packet's path (a firewall of the host's own that
  tracks connections then tracks the tunnel's packets as well, and accepts them as
  established).
- MSS clamping: forwarded TCP SYNs leaving or entering through the device get their MSS
  lowered to what the route's MTU allows (this host's own SYNs advertise that already:
  the kernel takes it from the same route), so large transfers never depend on PMTU
  discovery through the tunnel. ``rt mtu`` takes the smaller of the route to the
  destination and the route back to the source: a SYN-ACK entering from a remote that does
  not clamp is lowered to the tunnel's MTU too (tests/integration/test_mtu_lab.py).

The table is written as one atomic transaction that (re)creates only our table: ``table
inet X {}`` (so that the delete never fails), ``delete table inet X``, then the whole table.
Reading, writing and removing touch no other table. ``netns`` acts in that namespace. The
commands run in this process through libnftables (``libnft.py``), or by starting ``nft``
where the library is missing.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from wgcable.routing import libnft
from wgcable.routing.iproute import RoutingError
from wgcable.wgctrl.types import IPNetwork

TABLE_PREFIX = "wgcable_"
# Earlier than the CNIs' masquerade chains (srcnat = 100): our null binding comes first.
NAT_PRIORITY = "srcnat - 10"
NAT_CHAIN = "postrouting"  # the SNAT exemption's chain in our table
SETS = ("local4", "remote4", "local6", "remote6")
_SYN = "tcp flags syn / syn,rst"
_CLAMP = "tcp option maxseg size set rt mtu"
_CLAMP_CHAIN = "clamp"  # a regular chain: the MSS rules, jumped to for SYNs only


class NftError(RoutingError):
    pass


def table_name(device: str) -> str:
    """``wgcable_<device>``, with any character nft does not take in a name replaced."""
    return TABLE_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", device)


def _quoted_device(device: str) -> str:
    if not device or not device.isprintable() or re.search(r'["\\\s]', device):
        raise ValueError(f"device name {device!r} cannot be quoted for nft")
    return f'"{device}"'


def _elements(nets: Iterable[IPNetwork], version: int) -> list[str]:
    """The networks of one family, merged (an interval set refuses overlapping elements),
    as the fewest prefixes. Worked on as integers and printed from them: a zone (free text)
    never reaches nft, and a thousand networks take a millisecond, not a hundred."""
    bits = 32 if version == 4 else 128
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    spans = sorted({(int(n.network_address), n.prefixlen) for n in nets
                    if n.version == version})
    merged: list[list[int]] = []
    for start, plen in spans:
        end = start + (1 << (bits - plen)) - 1
        if merged and start <= merged[-1][1] + 1:  # overlaps or touches the last one
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out = []
    size = bits // 8
    for lo, hi in merged:
        while lo <= hi:
            # The largest block aligned at lo that fits in what is left.
            align = (lo & -lo).bit_length() - 1 if lo else bits
            span = (hi - lo + 1).bit_length() - 1
            host = min(align, span)
            if version == 6 and lo >> 32 in (0, 0xFFFF):
                # inet_ntop writes these with a dotted quad (::0.64.0.0, ::ffff:1.2.3.4);
                # the canonical text is ipaddress's (::40:0), as everywhere else.
                text = str(ipaddress.IPv6Address(lo))
            else:
                text = socket.inet_ntop(family, lo.to_bytes(size, "big"))
            out.append(f"{text}/{bits - host}")
            lo += 1 << host
    return out


def _set(name: str, kind: str, elements: list[str]) -> list[str]:
    lines = [f"\tset {name} {{", f"\t\ttype {kind}", "\t\tflags interval"]
    if elements:
        lines.append(f"\t\telements = {{ {', '.join(elements)} }}")
    return [*lines, "\t}"]


@dataclass(frozen=True, slots=True)
class Rules:
    """What our table should hold: the pure input of ``render``."""

    device: str
    local: tuple[IPNetwork, ...] = ()
    remote: tuple[IPNetwork, ...] = ()
    snat_exemption: bool = True
    mss_clamp: bool = True
    # The device's UDP listen port: its outer packets are not tracked (None: no such chains).
    notrack_port: int | None = None
    # Whether the host has NAT of its own (``hostnat``; True where nobody looks): the SNAT
    # exemption's NAT chain and the notrack chains are there only then. Without NAT there
    # is nothing to exempt from, the chain would only turn connection tracking on, and
    # with tracking off there is nothing for notrack to do. The sets stay either way.
    nat_chain: bool = True

    @property
    def enabled(self) -> bool:
        return self.snat_exemption or self.mss_clamp

    @property
    def table(self) -> str:
        return table_name(self.device)


def render(rules: Rules) -> str | None:
    """The full table as nft text, or None when neither feature is on (no table at all)."""
    if not rules.enabled:
        return None
    dev = _quoted_device(rules.device)
    out = [f"table inet {rules.table} {{"]
    for name, kind, nets, version in (
        ("local4", "ipv4_addr", rules.local, 4),
        ("remote4", "ipv4_addr", rules.remote, 4),
        ("local6", "ipv6_addr", rules.local, 6),
        ("remote6", "ipv6_addr", rules.remote, 6),
    ):
        out += _set(name, kind, _elements(nets, version))
    if rules.snat_exemption and rules.nat_chain:
        out += [
            f"\tchain {NAT_CHAIN} {{",
            f"\t\ttype nat hook postrouting priority {NAT_PRIORITY}; policy accept;",
            "\t\tip saddr @local4 ip daddr @remote4 snat ip to ip saddr",
            "\t\tip6 saddr @local6 ip6 daddr @remote6 snat ip6 to ip6 saddr",
            "\t}",
        ]
    if rules.notrack_port is not None:
        port = int(rules.notrack_port)
        if not 0 < port < 65536:
            raise ValueError(f"notrack port {port} is not a UDP port")
    # Only where connection tracking is on because of NAT: without it there is nothing to
    # take the outer packets out of, and each base chain is one more netfilter hook that
    # every packet of its path runs through.
    notrack = rules.notrack_port is not None and rules.nat_chain
    if rules.mss_clamp:
        # Forwarded SYNs only: every other packet leaves the chain after one test. This
        # host's own connections need no clamp: the kernel derives the MSS they advertise
        # from the route's MTU, which is what ``rt mtu`` would set (an output chain for it
        # was one more hook on every packet sent, the tunnel's own included).
        out += [
            "\tchain forward {",
            "\t\ttype filter hook forward priority mangle; policy accept;",
            f"\t\t{_SYN} jump {_CLAMP_CHAIN}",
            "\t}",
            f"\tchain {_CLAMP_CHAIN} {{",
            f"\t\toifname {dev} {_CLAMP}",
            f"\t\tiifname {dev} {_CLAMP}",
            "\t}",
        ]
    if notrack:
        out += [
            "\tchain notrack_prerouting {",
            "\t\ttype filter hook prerouting priority raw; policy accept;",
            # The port first: the route lookup of ``fib`` then runs only for the cable's
            # packets, not for every packet that crosses prerouting.
            f"\t\tudp dport {port} fib daddr type local notrack",
            "\t}",
            "\tchain notrack_output {",
            "\t\ttype filter hook output priority raw; policy accept;",
            f"\t\tudp sport {port} notrack",
            "\t}",
        ]
    out.append("}")
    return "\n".join(out) + "\n"


def transaction(table: str, body: str | None) -> str:
    """One ``nft -f`` batch that replaces our table by ``body`` (None: removes it). The
    empty ``table`` line first makes the delete succeed whether or not the table exists."""
    head = f"table inet {table} {{}}\ndelete table inet {table}\n"
    return head + (body or "")


class NftTable:
    """Our one table in one namespace: apply, read, remove. Never touches another table."""

    def __init__(self, device: str, netns: str | None = None) -> None:
        self.device = device
        self.name = table_name(device)
        self.netns = netns
        self._ctx: libnft.Context | None = None
        self._use_lib = True  # until libnftables turns out missing

    def _base(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns, "nft"] if self.netns else ["nft"]

    def _context(self) -> libnft.Context | None:
        if self._ctx is None and self._use_lib:
            self._ctx = libnft.open_context(self.netns)
            self._use_lib = self._ctx is not None
        return self._ctx

    def _nft(self, command: str, json: bool = False) -> tuple[int, str, str]:
        """(status, output, error) of an nft command: in this process through libnftables,
        or, without it, by starting ``nft -f -`` (in the namespace)."""
        ctx = self._context()
        if ctx is not None:
            return ctx.run(command, json=json)
        if shutil.which("nft") is None:
            raise NftError("nft not found: install nftables, or turn off both the SNAT "
                           "exemption and MSS clamping")
        p = subprocess.run([*self._base(), *(["-j"] if json else []), "-f", "-"],
                           input=command, capture_output=True, text=True, timeout=30,
                           check=False)
        return p.returncode, p.stdout, p.stderr

    def available(self) -> bool:
        """Whether nftables can be used here at all (the library or the command)."""
        return libnft.open_available() or shutil.which("nft") is not None

    def close(self) -> None:
        """Release the in-process context (a later call opens another)."""
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            ctx.close()

    def _batch(self, text: str) -> None:
        rc, _, err = self._nft(text)
        if rc != 0:
            raise NftError(f"nft -f (table inet {self.name}): {err.strip() or rc}")

    def apply(self, body: str) -> None:
        """Atomically replace our table by ``body`` (as from ``render``)."""
        self._batch(transaction(self.name, body))

    def remove(self) -> None:
        """Delete our table; one that is not there is fine (and without nft there is none)."""
        if not self.available():
            return
        self._batch(transaction(self.name, None))

    def read(self) -> list[dict[str, Any]] | None:
        """Our table as ``nft -j`` objects (sets, chains, rules), or None if it is absent."""
        rc, out, err = self._nft(f"list table inet {self.name}", json=True)
        if rc != 0:
            if "No such file or directory" in err:
                return None
            raise NftError(f"nft list table inet {self.name}: {err.strip()}")
        doc = json.loads(out or "{}")
        items = doc.get("nftables", []) if isinstance(doc, dict) else []
        return [i for i in items if isinstance(i, dict) and "metainfo" not in i]

    def exists(self) -> bool:
        """Whether our table is there: the list of inet table names, not the table's
        contents (which grow with the number of remote clusters)."""
        rc, out, err = self._nft("list tables inet", json=True)
        if rc != 0:
            raise NftError(f"nft list tables inet: {err.strip()}")
        doc = json.loads(out or "{}")
        items = doc.get("nftables", []) if isinstance(doc, dict) else []
        return any(isinstance(i, dict) and isinstance(i.get("table"), dict)
                   and i["table"].get("name") == self.name
                   and i["table"].get("family") == "inet" for i in items)

    def chains(self, family: str | None = None) -> list[dict[str, Any]]:
        """Every chain of every table (of ``family``) as ``nft -j`` chain objects: names,
        types and hooks, no rules or set elements (small whatever the tables hold)."""
        what = f"list chains {family}" if family else "list chains"
        rc, out, err = self._nft(what, json=True)
        if rc != 0:
            raise NftError(f"nft {what}: {err.strip()}")
        doc = json.loads(out or "{}")
        items = doc.get("nftables", []) if isinstance(doc, dict) else []
        return [i["chain"] for i in items if isinstance(i, dict)
                and isinstance(i.get("chain"), dict)]

    def has_chain(self, name: str) -> bool:
        """Whether our table is there with chain ``name`` (the list of inet chains: no
        rules, no set elements)."""
        return any(c.get("table") == self.name and c.get("name") == name
                   and c.get("family") == "inet" for c in self.chains("inet"))

    def sets(self) -> dict[str, set[str]] | None:
        """Each of our sets' elements as text (``10.2.0.0/16``), or None without a table."""
        items = self.read()
        if items is None:
            return None
        found: dict[str, set[str]] = {}
        for item in items:
            s = item.get("set")
            if isinstance(s, dict):
                found[str(s.get("name"))] = {_element_text(e) for e in s.get("elem", [])}
        return found


def networks(elements: Iterable[str]) -> list[IPNetwork]:
    """Set elements as ``sets()`` gives them (prefix, ``a-b`` range or address) as networks;
    anything else is skipped (our sets hold only what we rendered)."""
    out: list[IPNetwork] = []
    for text in elements:
        try:
            if "-" in text:
                low, high = (ipaddress.ip_address(t.strip()) for t in text.split("-", 1))
                out += ipaddress.summarize_address_range(low, high)
            else:
                out.append(ipaddress.ip_network(text, strict=False))
        except (ValueError, TypeError):
            continue
    return out


def _element_text(elem: Any) -> str:
    """An nft JSON set element as ``addr/len`` (a prefix), ``a-b`` (a range) or ``addr``."""
    if isinstance(elem, dict) and "elem" in elem:  # an element with attributes
        elem = elem["elem"].get("val")
    if isinstance(elem, dict) and "prefix" in elem:
        return f"{elem['prefix']['addr']}/{elem['prefix']['len']}"
    if isinstance(elem, dict) and "range" in elem:
        low, high = elem["range"]
        return f"{low}-{high}"
    return str(elem)
