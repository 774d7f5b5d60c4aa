"""Everything the driver wants on the host, from the accepted endpoints (pure).

One function, ``desired_state``, turns the accepted remote clusters, the driver's settings
and the host's facts into the desired state of every resource the driver owns: the device's
own settings, its peers, the routes in our table, the rules, and the remote CIDRs of our
nftables table. The reconcilers (``resources.py``, ``routing/resources.py``) make the host
match it; what the host holds of ours unknown to this state (after a restart) is their
concern, by one rule (``wgcable.reconcile``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from wgcable.cable.wireguard import desired
from wgcable.cable.wireguard.desired import RemotePeer
from wgcable.cable.wireguard.facts import HostFacts
from wgcable.reconcile import Tracked
from wgcable.routing.table import Route
from wgcable.routing.table import order as route_order
from wgcable.wgctrl import IPNetwork, Key, Peer

LINK = "link"  # the one key of the link resource
_K = TypeVar("_K")
_V = TypeVar("_V")
_NONE = object()


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """The device's own settings: its key, port, firewall mark and MTU (and it is up)."""

    private_key: Key
    listen_port: int
    fwmark: int
    mtu: int

    def __repr__(self) -> str:  # the key is a secret even in a debug log
        return f"LinkSettings(port={self.listen_port}, fwmark={self.fwmark}, mtu={self.mtu})"


@dataclass(frozen=True, slots=True)
class Settings:
    """The driver's inputs that do not come from endpoints or the host."""

    device: str
    private_key: Key
    port: int
    fwmark: int = 0
    keepalive: int = 0
    psk: Key | None = None
    mtu: int | None = None  # None: from the underlay

    def __repr__(self) -> str:
        return (f"Settings(device={self.device!r}, port={self.port}, fwmark={self.fwmark}, "
                f"keepalive={self.keepalive}, psk={'set' if self.psk else 'none'}, "
                f"mtu={self.mtu})")


@dataclass(frozen=True, slots=True)
class DesiredState:
    link: Mapping[str, LinkSettings]
    peers: Mapping[Key, Peer]
    routes: Mapping[Route, Route]
    rules: Mapping[str, bool]  # "-4"/"-6": a rule for our table
    nft_remote: Mapping[IPNetwork, IPNetwork]  # exempt from SNAT, in our nftables table


def mtu(settings: Settings, facts: HostFacts, v6_endpoints: bool) -> int:
    if settings.mtu:
        return settings.mtu
    return desired.mtu_for(facts.underlay_mtu, facts.underlay_v6 or v6_endpoints)


@dataclass(frozen=True, slots=True)
class _Part:
    """One cluster's share of the desired state."""

    source: RemotePeer
    peer: Peer
    routes: tuple[Route, ...]


def _part(p: RemotePeer, settings: Settings, facts: HostFacts) -> _Part:
    routes = desired.desired_routes([p], settings.device, facts.sources)
    if not facts.ipv6:  # without IPv6 on the host, IPv6 routes cannot exist
        routes = {r for r in routes if r.dst.version == 4}
    return _Part(p, desired.desired_peer(p, settings.keepalive, settings.psk),
                 tuple(sorted(routes, key=route_order)))


def desired_state(accepted: list[RemotePeer], settings: Settings, facts: HostFacts
                  ) -> DesiredState:
    """The desired state of every resource, from scratch."""
    return StateBuilder().build(accepted, settings, facts)


class StateBuilder:
    """``desired_state`` for a driver that calls it after every change: the same result,
    but only the clusters whose ``RemotePeer`` changed (by identity) are computed again,
    and the mappings are patched, not rebuilt (hashing 2000 ipaddress networks costs 10 ms;
    one cluster's change should not). Each new mapping records which keys changed since
    the previous one (``reconcile.Tracked``), so that the reconcilers' diff against what
    they last wrote is O(changed) too. Settings or facts that change start from scratch."""

    LINEAGE = 32  # a mapping's ancestors kept for the reconcilers' diffs, at most

    def __init__(self) -> None:
        self._inputs: tuple[Settings, HostFacts] | None = None
        self._reset()

    def _reset(self) -> None:
        self._parts: dict[str, _Part] = {}
        self._peers: dict[Key, Peer] = {}
        self._routes: dict[Route, Route] = {}
        self._nets: dict[IPNetwork, IPNetwork] = {}
        self._last: DesiredState | None = None
        self._depth = 0
        self._v6 = 0  # accepted peers with an IPv6 endpoint: 20 more bytes of header
        # Per build, the keys added (or replaced) and the keys dropped, per mapping.
        self._touched: tuple[set[Key], set[Route], set[IPNetwork]] = (set(), set(), set())
        self._dropped: tuple[set[Key], set[Route], set[IPNetwork]] = (set(), set(), set())

    def build(self, accepted: Iterable[RemotePeer], settings: Settings, facts: HostFacts,
              *, changed: Collection[str] | None = None,
              lookup: Callable[[str], RemotePeer | None] | None = None) -> DesiredState:
        """``changed`` and ``lookup``: the cluster IDs that may have changed since the last
        build, and how to find each one's accepted peer now; without them, ``accepted`` is
        scanned whole."""
        self._touched = (set(), set(), set())
        self._dropped = (set(), set(), set())
        if self._inputs != (settings, facts):
            self._reset()
            self._inputs = (settings, facts)
            changed = None
        if changed is not None and lookup is not None and self._last is not None:
            for cid in changed:
                p, part = lookup(cid), self._parts.get(cid)
                if part is not None and part.source is not p:
                    self._drop(self._parts.pop(cid))
                if p is not None and cid not in self._parts:
                    self._add(p, settings, facts)
        else:
            now = {p.cluster_id: p for p in accepted}
            for cid in [c for c, part in self._parts.items() if now.get(c) is not part.source]:
                self._drop(self._parts.pop(cid))
            for cid, p in now.items():
                if cid not in self._parts:
                    self._add(p, settings, facts)
        tp, tr, tn = self._touched
        dp, dr, dn = self._dropped
        last = self._last
        self._depth = 0 if last is None or self._depth >= self.LINEAGE else self._depth + 1
        fresh = self._depth == 0
        self._last = DesiredState(
            link={LINK: LinkSettings(settings.private_key, settings.port, settings.fwmark,
                                     mtu(settings, facts, self._v6 > 0))},
            peers=_next(self._peers, None if fresh or last is None else last.peers, tp, dp),
            routes=_next(self._routes, None if fresh or last is None else last.routes, tr, dr),
            rules=dict.fromkeys(("-4", "-6") if facts.ipv6 else ("-4",), True),
            nft_remote=_next(self._nets, None if fresh or last is None else last.nft_remote,
                             tn, dn),
        )
        return self._last

    def _add(self, p: RemotePeer, settings: Settings, facts: HostFacts) -> None:
        tp, tr, tn = self._touched
        part = self._parts[p.cluster_id] = _part(p, settings, facts)
        self._peers[p.public_key] = part.peer
        self._routes.update((r, r) for r in part.routes)
        self._nets.update((n, n) for n in p.subnets)
        self._v6 += p.endpoint.ip.version == 6
        tp.add(p.public_key)
        tr.update(part.routes)
        tn.update(p.subnets)

    def _drop(self, part: _Part) -> None:
        # Only what this cluster put there: validation keeps clusters' keys and subnets
        # apart, but a stale entry must never take another cluster's with it.
        tp, tr, tn = self._dropped
        self._v6 -= part.source.endpoint.ip.version == 6
        _take(self._peers, part.source.public_key, part.peer, tp)
        for r in part.routes:
            _take(self._routes, r, r, tr)
        for n in part.source.subnets:
            _take(self._nets, n, n, tn)


def _take(current: dict[_K, _V], key: _K, value: _V, touched: set[_K]) -> None:
    """Remove ``key`` if it maps to ``value`` (this cluster's), noting it in ``touched``; an
    entry of another cluster stays. One lookup: hashing a network costs a microsecond."""
    held = current.pop(key, _NONE)
    if held is value:
        touched.add(key)
    elif held is not _NONE:
        current[key] = held  # type: ignore[assignment]  # not ours: put back


def _next(current: dict[_K, _V], parent: Mapping[_K, _V] | None, added: set[_K],
          dropped: set[_K]) -> Mapping[_K, _V]:
    """The next mapping: the parent itself when nothing changed (an identity check for
    the reconcilers), else a copy of ``current`` that knows its parent and what changed.
    (A copy of a dict keeps its stored hashes: cheap.)"""
    if isinstance(parent, Tracked):
        # Dropped and put back equal (a new endpoint keeps the routes): not a change.
        # Absent on one side is a change, without asking the value (an ipaddress network
        # compared with anything else raises and catches an AttributeError).
        # Only added keys are looked up: one dropped and not added again is gone from
        # ``current`` and was in the parent (this builder's last mapping), so it changed
        # (two lookups less per key: hashing a network costs a microsecond).
        same = [k for k in added
                if (a := parent.get(k, _NONE)) is (b := current.get(k, _NONE))
                or (a is not _NONE and b is not _NONE and a == b)]
        # From the sets themselves: their stored hashes are reused.
        touched = added | dropped if dropped else added
        changed = frozenset(touched.difference(same) if same else touched)
        if not changed:
            return parent
        return Tracked(current, parent, changed, exact=True)
    return Tracked(current)
