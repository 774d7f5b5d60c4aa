"""The accepted remote clusters, indexed so that checking a newcomer stays cheap at scale.

A store flooded with thousands of endpoints must not make validation quadratic: subnet
overlaps are found by bisection over the (non-overlapping) accepted ranges, gateway
addresses inside a range by bisection over the sorted endpoint IPs, and key owners by a
dictionary.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import TYPE_CHECKING

from wgcable.cable.remote import Span, span
from wgcable.wgctrl import IPNetwork, Key

if TYPE_CHECKING:  # desired.py imports this module
    from wgcable.cable.wireguard.desired import RemotePeer


class PeerIndex:
    def __init__(self) -> None:
        self._peers: dict[str, RemotePeer] = {}
        self._keys: dict[Key, str] = {}
        # Per IP version, ranges sorted by start; accepted ranges never overlap.
        self._starts: dict[int, list[int]] = {4: [], 6: []}
        self._ranges: dict[int, list[tuple[int, int, str, IPNetwork]]] = {4: [], 6: []}
        self._v6_endpoints = 0  # peers reached over IPv6 (the MTU depends on it)
        # Per IP version, the peers' gateway addresses, sorted (several peers may share one).
        self._endpoint_ips: dict[int, list[tuple[int, str]]] = {4: [], 6: []}

    def __contains__(self, cluster_id: object) -> bool:
        return cluster_id in self._peers

    def __len__(self) -> int:
        return len(self._peers)

    def __iter__(self) -> Iterator[RemotePeer]:
        return iter(self._peers.values())

    def get(self, cluster_id: str) -> RemotePeer | None:
        return self._peers.get(cluster_id)

    @property
    def v6_endpoints(self) -> int:
        """How many accepted peers have an IPv6 endpoint (kept count, not a scan)."""
        return self._v6_endpoints

    def add(self, peer: RemotePeer) -> None:
        """Add (or replace) a cluster's peer. The caller has checked it overlaps nothing."""
        self.remove(peer.cluster_id)
        self._peers[peer.cluster_id] = peer
        self._keys[peer.public_key] = peer.cluster_id
        self._v6_endpoints += peer.endpoint.ip.version == 6
        bisect.insort(self._endpoint_ips[peer.endpoint.ip.version],
                      (int(peer.endpoint.ip), peer.cluster_id))
        for net in peer.subnets:
            version, start, end = span(net)
            i = bisect.bisect_left(self._starts[version], start)
            self._starts[version].insert(i, start)
            self._ranges[version].insert(i, (start, end, peer.cluster_id, net))

    def remove(self, cluster_id: str) -> None:
        peer = self._peers.pop(cluster_id, None)
        if peer is None:
            return
        if self._keys.get(peer.public_key) == cluster_id:
            del self._keys[peer.public_key]
        version = peer.endpoint.ip.version
        self._v6_endpoints -= version == 6
        ips, entry = self._endpoint_ips[version], (int(peer.endpoint.ip), cluster_id)
        i = bisect.bisect_left(ips, entry)
        if i < len(ips) and ips[i] == entry:
            del ips[i]
        for net in peer.subnets:
            version, start = net.version, int(net.network_address)
            starts, ranges = self._starts[version], self._ranges[version]
            i = bisect.bisect_left(starts, start)
            while i < len(ranges) and ranges[i][0] == start:
                if ranges[i][2] == cluster_id:
                    del starts[i], ranges[i]
                    break
                i += 1

    def key_owner(self, key: Key, exclude: str = "") -> str | None:
        owner = self._keys.get(key)
        return owner if owner != exclude else None

    def overlap(self, net: IPNetwork, exclude: str = "") -> tuple[IPNetwork, str] | None:
        """An accepted range of another cluster that overlaps ``net``, with its owner."""
        return self.overlap_span(span(net), exclude)

    def overlap_span(self, where: Span, exclude: str = "") -> tuple[IPNetwork, str] | None:
        """``overlap`` of a span (``remote.span``; an address is a span of one)."""
        version, start, end = where
        ranges = self._ranges[version]
        # Ranges are disjoint and sorted, so their ends are sorted too: walk back from the
        # last range starting at or before ``end`` while ranges still reach ``start``.
        i = bisect.bisect_right(self._starts[version], end) - 1
        while i >= 0 and ranges[i][1] >= start:
            if ranges[i][2] != exclude:
                return ranges[i][3], ranges[i][2]
            i -= 1
        return None

    def endpoint_in(self, net: IPNetwork, exclude: str = "") -> tuple[int, str] | None:
        """Another cluster's gateway address inside ``net`` (as an int), with its owner:
        a route for ``net`` would send that cluster's own tunnel packets into ours."""
        return self.endpoint_in_span(span(net), exclude)

    def endpoint_in_span(self, where: Span, exclude: str = "") -> tuple[int, str] | None:
        """``endpoint_in`` of a span (``remote.span``)."""
        version, start, end = where
        ips = self._endpoint_ips[version]
        i = bisect.bisect_left(ips, (start, ""))
        while i < len(ips) and ips[i][0] <= end:
            if ips[i][1] != exclude:
                return ips[i]
            i += 1
        return None
