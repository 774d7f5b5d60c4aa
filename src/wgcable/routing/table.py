"""Routes of remote subnets through the device, in a dedicated table, and the rule for it.

The desired routes are computed by the driver; this module reads what the table holds,
changes only the difference (so existing routes never blink), and heals routes that
someone else removed on the next sync.

Ownership: the table may be shared (220 with priority 220 is also strongSwan's default,
and two agents with different devices share it on one host). Our routes carry a private
route protocol number (``proto``) and our device; only routes with both are read as
ours, diffed, replaced or deleted. A route of another owner for a destination we want is
left alone (and ours is not installed): ``ip route replace`` would overwrite it. The rule
is added with our protocol only when no rule for the table exists, and removed only when it
is ours and the table is empty (another wgcable device or another owner may still use it).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from wgcable.routing.iproute import IPRoute, RouteOp
from wgcable.wgctrl.types import IPAddress, IPNetwork

log = logging.getLogger(__name__)

# Unassigned in linux/rtnetlink.h and iproute2's rt_protos (the kernel ignores protocols
# above RTPROT_STATIC): 87 is ASCII "W". Marks our routes and our rule.
ROUTE_PROTOCOL = 87

FAMILIES = ("-4", "-6")

# (dst, dev, src or "", protocol, gateway or "") as `ip -N -j` prints them (IPRoute.routes)
_Row = tuple[str, str, str, str, str]
_Key = tuple[str, str, str, str]  # (dst, dev, src or "", gateway or "")


@dataclass(frozen=True, slots=True)
class Route:
    dst: IPNetwork
    dev: str
    src: IPAddress | None = None
    # A next hop on the device (the route agent's gateway VTEP), reached ``onlink``; an
    # IPv6 route may have an IPv4 one (``via inet``).
    via: IPAddress | None = None
    # Hashing an ipaddress network is slow (about 5 us): sets and dicts of thousands of
    # routes are compared on every change, so the hash is computed once.
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        # A zone is free text that str() renders into the ``ip -batch`` line: never ours.
        # (Spelled out, not a generator over the three: thousands of routes are made.)
        src, via = self.src, self.via
        if _zoned(self.dst.network_address) or (src is not None and _zoned(src)) or \
                (via is not None and _zoned(via)):
            raise ValueError("a route with a zoned address is refused")
        object.__setattr__(self, "_hash", hash((self.dst, self.dev, self.src, self.via)))

    def __hash__(self) -> int:
        return self._hash

    def op(self, verb: str, table: int, protocol: int) -> RouteOp:
        return RouteOp(verb, self.dst, self.dev, table, protocol, self.src, self.via)

    def spec(self, table: int, protocol: int) -> str:
        s = f"{self.dst} dev {self.dev} table {table} proto {protocol}"
        if self.via is not None:
            family = "inet " if self.via.version != self.dst.version else ""
            s += f" via {family}{self.via} onlink"
        return s + (f" src {self.src}" if self.src else "")

    def text_key(self) -> _Key:
        """(dst, dev, src) as ``ip -j route show`` prints them (a host route without its
        /32 or /128; no source: ""), to compare with a read without parsing it."""
        dst = self.dst
        text = str(dst.network_address) if dst.prefixlen == dst.max_prefixlen else str(dst)
        return (text, self.dev, str(self.src) if self.src else "",
                str(self.via) if self.via else "")


def order(r: Route) -> tuple[int, int, int, str, int, int]:
    """A stable order of routes for output, from integers: sorting by ``str`` renders each
    route's dataclass repr (about 40 us a route)."""
    src = -1 if r.src is None else int(r.src)
    via = -1 if r.via is None else int(r.via)
    return (r.dst.version, int(r.dst.network_address), r.dst.prefixlen, r.dev, src, via)


def _zoned(addr: IPAddress) -> bool:
    return isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None


def network(text: str) -> IPNetwork:
    return ipaddress.ip_network(text, strict=False)


class RouteTable:
    """Our routes in one routing table, plus the ``ip rule`` (per family) that consults it."""

    def __init__(self, ip: IPRoute, table: int, rule_priority: int, device: str,
                 protocol: int = ROUTE_PROTOCOL) -> None:
        self.ip = ip
        self.table = table
        self.priority = rule_priority
        self.device = device
        self.protocol = protocol
        self.families: tuple[str, ...] = FAMILIES  # "-4" only where IPv6 is off
        # Destinations another owner routes in the table, as last read: ours are not added.
        self.blocked: frozenset[IPNetwork] = frozenset()
        # The keys (and ``exactly``) the last read held: until the table changes, true.
        self._held: tuple[frozenset[_Key], bool] | None = None

    def read_rows(self) -> list[_Row]:
        """Every unicast route in the table, whoever owns it (one netlink dump per
        family; a table that never held a route reads as empty)."""
        found: list[_Row] = []
        for fam in self.families:
            found += self.ip.read_routes(fam, self.table)
        return found

    def ours(self, row: _Row) -> bool:
        return row[1] == self.device and row[3] == str(self.protocol)

    def _read(self) -> list[_Key]:
        """Our routes as printed: (dst, dev, src or "", gateway or "")."""
        return [(row[0], row[1], row[2], row[4]) for row in self.read_rows() if self.ours(row)]

    @staticmethod
    def route_of(dst: str, dev: str, src: str, via: str = "") -> Route:
        return Route(network(dst), dev, ipaddress.ip_address(src) if src else None,
                     ipaddress.ip_address(via) if via else None)

    def routes(self) -> set[Route]:
        return {self.route_of(*key) for key in self._read()}

    def holds(self, keys: frozenset[_Key], exactly: bool = True) -> bool:
        """Whether the table holds our routes of these ``Route.text_key()``s (and, with
        ``exactly``, no other of ours): one read, compared as text. False may also mean
        "printed differently": then :meth:`sync` decides. No read when the last one
        found these very keys and the kernel notified no change of the table since."""
        unchanged = self.ip.routes_unchanged(self.table)  # before the read: see there
        if unchanged and self._held is not None and self._held[0] is keys \
                and self._held[1] == exactly:
            return True
        self._held = None
        actual = self._read()
        if exactly and len(actual) != len(keys):
            return False
        have = set(actual)
        ok = have == keys if exactly else keys <= have
        if ok:
            self._held = (keys, exactly)
        return ok

    def routable(self, routes: Iterable[Route]) -> set[Route]:
        """Without IPv6 (off on this host or namespace) IPv6 routes cannot exist."""
        if "-6" in self.families:
            return set(routes)
        return {r for r in routes if r.dst.version == 4}

    def ops(self, add: set[Route], remove: set[Route],
            keep_dst: set[IPNetwork] | None = None, replace: bool = True) -> list[RouteOp]:
        """The changes that replace (or, without ``replace``, add) ``add`` and delete
        ``remove``, except deletions of a destination in ``keep_dst`` (default: ``add``'s),
        which a replace covers. Deletions name our device and protocol, so they never hit
        another owner's route."""
        verb = "replace" if replace else "add"
        t, p = self.table, self.protocol
        out = [r.op(verb, t, p) for r in sorted(add, key=order)]
        if not remove:
            return out
        keep = {r.dst for r in add} if keep_dst is None else keep_dst
        dels = sorted(remove, key=order)
        # Hashing an ipaddress network costs a microsecond: none when nothing is kept.
        out += [r.op("del", t, p) for r in dels if r.dst not in keep] if keep else \
            [r.op("del", t, p) for r in dels]
        return out

    def commands(self, add: set[Route], remove: set[Route],
                 keep_dst: set[IPNetwork] | None = None, replace: bool = True) -> list[str]:
        """:meth:`ops` as ``ip -batch`` lines."""
        return [op.text() for op in self.ops(add, remove, keep_dst, replace)]

    def apply(self, add: set[Route], remove: set[Route]) -> None:
        """Apply a known difference without reading the table (one round of netlink
        messages): the caller trusts the table to hold what it last wrote. A new
        destination is added, not replaced, so that it fails rather than overwrite another
        owner's route; a route to delete that is not there fails too (RoutingError): the
        caller then falls back to :meth:`sync`."""
        add, remove = self.routable(add), self.routable(remove)
        # Connecting or removing many clusters has only one side: no destination to look up.
        changed = {r.dst for r in remove} & {r.dst for r in add} if add and remove else set()
        if changed:
            ops = self.ops({r for r in add if r.dst in changed}, remove)
            ops += self.ops({r for r in add if r.dst not in changed}, set(), replace=False)
        else:
            ops = self.ops(set(), remove) + self.ops(add, set(), replace=False)
        self.ip.change_routes(ops)

    def _rules(self, family: str) -> list[int]:
        """The protocols of the rules that send to our table at our priority."""
        return [proto for prio, table, proto in self.ip.read_rules(family)
                if prio == self.priority and table == self.table]

    def has_rule(self, family: str) -> bool:
        return bool(self._rules(family))

    def has_rules(self) -> bool:
        return all(self.has_rule(fam) for fam in self.families)

    def ensure_rules(self) -> None:
        """A rule per family unless one for our table and priority exists (strongSwan's, or
        another wgcable device's): ours carries our protocol, so that cleanup knows it."""
        for fam in self.families:
            if not self.has_rule(fam):
                self.add_rule(fam)

    def add_rule(self, family: str) -> None:
        self.ip.add_rule(family, self.priority, self.table, self.protocol)

    def remove(self) -> None:
        """Remove our routes, and our rules where the table is left empty."""
        ours = self.routes()
        self.ip.change_routes([r.op("del", self.table, self.protocol)
                               for r in sorted(ours, key=order)], force=True)
        left = {network(row[0]).version for row in self.read_rows()}
        for fam in self.families:
            if (4 if fam == "-4" else 6) in left:
                continue  # someone else's routes still rely on a rule for this table
            for _ in range(self._rules(fam).count(self.protocol)):
                self.ip.del_rule(fam, self.priority, self.table, self.protocol)
