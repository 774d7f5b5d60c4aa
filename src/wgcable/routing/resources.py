"""The routing layer's resources for ``wgcable.reconcile``: our routes in a table, the
``ip rule`` for it, and the remote CIDRs of our nftables table.

Each holds only what is ours: routes with our protocol on our device (``table.py``), our
rule, our own nftables table (``nftables.py``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Mapping

from wgcable.routing import nftables
from wgcable.routing.table import Route, RouteTable, network
from wgcable.wgctrl.types import IPNetwork

log = logging.getLogger(__name__)


class RouteResource:
    """Our routes in one table: ``{route: route}``."""

    name = "routes"

    def __init__(self, table: RouteTable) -> None:
        self.table = table
        self._taken: frozenset[IPNetwork] = frozenset()  # others' destinations, last read
        self._keys_for: Mapping[Route, Route] | None = None
        self._keys: frozenset[tuple[str, str, str, str]] = frozenset()

    def read(self) -> dict[Route, Route]:
        rows = self.table.read_rows()
        # A route on our own device without our protocol was written by an older version
        # (or by hand for our tunnel): replacing it adopts it. Another device's is not ours.
        self._taken = frozenset(network(row[0]) for row in rows if row[1] != self.table.device)
        ours = {RouteTable.route_of(row[0], row[1], row[2], row[4]) for row in rows
                if self.table.ours(row)}
        return {r: r for r in ours}

    def _blocked(self, add: set[Route]) -> set[Route]:
        blocked = {r for r in add if r.dst in self._taken}
        dsts = frozenset(r.dst for r in blocked)
        if dsts != self.table.blocked:
            if dsts:
                log.warning("table %d: %s already routed by another owner; not replacing",
                            self.table.table, ", ".join(sorted(map(str, dsts))))
            self.table.blocked = dsts
        return blocked

    def write(self, have: Mapping[Route, Route], want: Mapping[Route, Route], *,
              trusted: bool, changed: Collection[Route] | None = None) -> int:
        look = want.keys() if changed is None else changed
        add = {r for r in look if r in want and r not in have}
        look = have.keys() if changed is None else changed
        remove = {r for r in look if r in have and r not in want}
        if not add and not remove:
            return 0
        if trusted:
            # Added, not replaced: a destination someone took meanwhile fails, and then
            # the reconciler reads the table.
            self.table.apply(add, remove)
        else:
            add -= self._blocked(add)
            # A route whose destination stays (only src changed) is replaced, not deleted.
            self.table.ip.change_routes(self.table.ops(add, remove, {r.dst for r in want}))
        log.debug("table %d: %d route(s) added, %d removed", self.table.table, len(add),
                  len(remove))
        return len(add) + len(remove)

    def holds(self, want: Mapping[Route, Route], *, exactly: bool) -> bool:
        """One read compared as text (no parsing when all is well); routes another owner
        holds the destination of are not expected."""
        if want is not self._keys_for:
            self._keys = frozenset(r.text_key() for r in want if r.dst not in
                                   self.table.blocked)
            self._keys_for = want
        return self.table.holds(self._keys, exactly=exactly)


class RuleResource:
    """The rule per family that sends to our table: ``{"-4": True, "-6": True}``. Added
    only when no rule for the table exists (strongSwan's, another device's); removed only
    by ``RouteTable.remove`` at clean-up."""

    name = "rules"

    def __init__(self, table: RouteTable) -> None:
        self.table = table

    def read(self) -> dict[str, bool]:
        return {fam: True for fam in self.table.families if self.table.has_rule(fam)}

    def write(self, have: Mapping[str, bool], want: Mapping[str, bool], *,
              trusted: bool, changed: Collection[str] | None = None) -> int:
        missing = [fam for fam in want if fam not in have]
        for fam in missing:
            self.table.add_rule(fam)
        return len(missing)

    def holds(self, want: Mapping[str, bool], *, exactly: bool) -> bool:
        return all(self.table.has_rule(fam) for fam in want)


class NftResource:
    """The remote CIDRs of our nftables table, ``{net: net}``; the rest of the table (local
    CIDRs, the features) is fixed for the agent's life and rendered with them, but for
    ``nat_chain``: whether the SNAT exemption's NAT chain is loaded (the host has NAT of its
    own, ``routing/hostnat.py``). Its owner changes it and then writes the table again."""

    name = "nftables"

    def __init__(self, nft: nftables.NftTable, device: str, local: tuple[IPNetwork, ...],
                 snat_exemption: bool, mss_clamp: bool,
                 notrack_port: int | None = None, nat_chain: bool = True) -> None:
        self.nft = nft
        self.rules = nftables.Rules(device=device, local=local,
                                    snat_exemption=snat_exemption, mss_clamp=mss_clamp,
                                    notrack_port=notrack_port)
        self.nat_chain = nat_chain
        self.written: str | None = None  # the table text last written
        self._chain_written = False  # whether that text has the NAT chain
        # A count of our table's changes the kernel notified (``NatChain.own_changes``; None:
        # not watched), and its value when the drift check last found the table in place:
        # while it stands still, the check lists nothing.
        self.changes: Callable[[], int | None] = lambda: None
        self._verified: int | None = None

    def read(self) -> dict[IPNetwork, IPNetwork]:
        sets = self.nft.sets() if self.rules.snat_exemption else None
        if not sets:
            return {}
        nets = nftables.networks(sets.get("remote4", set()) | sets.get("remote6", set()))
        return {n: n for n in nets}

    def write(self, have: Mapping[IPNetwork, IPNetwork], want: Mapping[IPNetwork, IPNetwork],
              *, trusted: bool, changed: Collection[IPNetwork] | None = None) -> int:
        remote = tuple(want)  # in any order: render sorts the elements as integers
        rules = dataclasses.replace(self.rules, remote=remote, nat_chain=self.nat_chain)
        body = nftables.render(rules)
        # After a read the table is written whatever it held: that heals a table someone
        # edited (a read of its sets does not show its rules).
        if trusted and body == self.written:
            return 0
        self.written = None  # unknown until the write succeeds
        self._verified = None  # listed again at the next check, whatever was notified
        if body is None:
            self.nft.remove()  # turned off: a table left by an earlier run goes
        else:
            self.nft.apply(body)
            log.debug("nftables table inet %s written", self.nft.name)
        self.written = body
        self._chain_written = rules.snat_exemption and rules.nat_chain
        return 1

    def holds(self, want: Mapping[IPNetwork, IPNetwork], *, exactly: bool) -> bool:
        """Whether our table is there (the list of table names, not its contents, which
        grow with the number of remote clusters), with its NAT chain when it has one (the
        list of inet chains: as small). No listing at all while the kernel notified no
        change of our table since the last check found it in place."""
        if self.written is None:
            return True
        mark = self.changes()
        if mark is not None and mark == self._verified:
            return True
        held = (self.nft.has_chain(nftables.NAT_CHAIN) if self._chain_written
                else self.nft.exists())
        # The count read before the listing: a change during it is listed again next time.
        self._verified = mark if held else None
        return held
