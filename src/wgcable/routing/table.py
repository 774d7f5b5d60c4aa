"""Routes of remote subnets through the device, in a dedicated table, and the rule for it.

The desired routes are computed by the driver; this module reads what the table holds,
changes only the difference (so existing routes never blink), and heals routes that
someone else removed on the next sync.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from wgcable.routing.iproute import IPRoute
from wgcable.wgctrl.types import IPAddress, IPNetwork


@dataclass(frozen=True, slots=True)
class Route:
    dst: IPNetwork
    dev: str
    src: IPAddress | None = None

    def __post_init__(self) -> None:
        # A zone is free text that str() renders into the ``ip -batch`` line: never ours.
        if _zoned(self.dst.network_address) or (self.src is not None and _zoned(self.src)):
            raise ValueError("a route with a zoned address is refused")

    def spec(self, table: int) -> str:
        s = f"{self.dst} dev {self.dev} table {table}"
        return s + (f" src {self.src}" if self.src else "")

    def text_key(self) -> tuple[str, str, str]:
        """(dst, dev, src) as ``ip -j route show`` prints them (a host route without its
        /32 or /128; no source: ""), to compare with a read without parsing it."""
        dst = self.dst
        text = str(dst.network_address) if dst.prefixlen == dst.max_prefixlen else str(dst)
        return text, self.dev, str(self.src) if self.src else ""


def _zoned(addr: IPAddress) -> bool:
    return isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None


class RouteTable:
    """One routing table of ours, plus the ``ip rule`` (per family) that consults it."""

    def __init__(self, ip: IPRoute, table: int, rule_priority: int) -> None:
        self.ip = ip
        self.table = table
        self.priority = rule_priority

    def _read(self) -> list[tuple[str, str, str]]:
        """Our unicast routes as printed: (dst, dev, src or "")."""
        found = []
        for fam in ("-4", "-6"):
            # A table that never held a route does not exist yet: that reads as empty.
            for r in self.ip.json(fam, "route", "show", "table", str(self.table), check=False):
                dst = r.get("dst")
                dev = r.get("dev")
                if not dst or not dev or r.get("type", "unicast") != "unicast":
                    continue
                if dst == "default":
                    continue
                found.append((str(dst), str(dev), str(r.get("prefsrc") or "")))
        return found

    def routes(self) -> set[Route]:
        return {Route(ipaddress.ip_network(dst, strict=False), dev,
                      ipaddress.ip_address(src) if src else None)
                for dst, dev, src in self._read()}

    def holds(self, keys: frozenset[tuple[str, str, str]], exactly: bool = True) -> bool:
        """Whether the table holds the routes of these ``Route.text_key()``s (and, with
        ``exactly``, no other): one read, compared as text. False may also mean "printed
        differently": then :meth:`sync` decides."""
        actual = self._read()
        if exactly and len(actual) != len(keys):
            return False
        have = set(actual)
        return have == keys if exactly else keys <= have

    def sync(self, desired: set[Route], remove_unknown: bool = True) -> tuple[int, int]:
        """Make the table hold ``desired``: add what is missing, replace what differs, and
        (with ``remove_unknown``) remove the rest. Returns (added, removed)."""
        actual = self.routes()
        add = desired - actual
        remove = actual - desired if remove_unknown else set()
        # A route whose destination stays (only src or dev changed) is replaced, not deleted.
        self.ip.batch(self.commands(add, remove, {r.dst for r in desired}))
        return len(add), len(remove)

    def commands(self, add: set[Route], remove: set[Route],
                 keep_dst: set[IPNetwork] | None = None) -> list[str]:
        """The ``ip -batch`` lines that replace ``add`` and delete ``remove``, except
        deletions of a destination in ``keep_dst`` (default: ``add``'s), which a replace
        covers."""
        keep = {r.dst for r in add} if keep_dst is None else keep_dst
        cmds = [f"route replace {r.spec(self.table)}" for r in sorted(add, key=str)]
        cmds += [f"route del {r.spec(self.table)}" for r in sorted(remove, key=str)
                 if r.dst not in keep]
        return cmds

    def apply(self, add: set[Route], remove: set[Route]) -> None:
        """Apply a known difference without reading the table (one ``ip -batch``): the
        caller trusts the table to hold what it last wrote. Fails (RoutingError) if a route
        to delete is not there; the caller then falls back to :meth:`sync`."""
        self.ip.batch(self.commands(add, remove))

    def has_rule(self, family: str) -> bool:
        for r in self.ip.json(family, "rule", "show"):
            if r.get("priority") == self.priority and str(r.get("table")) == str(self.table):
                return True
        return False

    def ensure_rules(self) -> None:
        for fam in ("-4", "-6"):
            if not self.has_rule(fam):
                self.ip.run(fam, "rule", "add", "priority", str(self.priority),
                            "table", str(self.table))

    def remove(self) -> None:
        """Remove our rules and every route in our table."""
        for fam in ("-4", "-6"):
            while self.has_rule(fam):
                self.ip.run(fam, "rule", "del", "priority", str(self.priority),
                            "table", str(self.table))
            self.ip.run(fam, "route", "flush", "table", str(self.table), check=False)
