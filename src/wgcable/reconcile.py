"""Read, diff, apply: one reconciler per resource, the same rules for every resource.

A *resource* is one kind of thing on the host that an agent owns a part of: the WireGuard
device's own settings, its peers, the routes in our table, the ``ip rule``, our nftables
table (later: the route agent's VXLAN device, FDB and neighbour entries). Its state is a
mapping from a key to a value, holding only what the resource marks as its own (our routes:
our protocol on our device; our peers; our table). The resource knows how to read that and
how to write the difference between two such mappings; the rules of when to read and what
to keep live here, once:

- **Unknown is kept until synced.** Before the caller says every known object has been
  applied (``synced``), whatever the host holds of ours that is not desired is kept: after a
  restart it belongs to an object about to be re-applied, and removing it would cut a
  working tunnel. Once synced, it goes.
- **The delta is an optimisation, not a second path.** Once synced, a reconciler trusts
  the resource to hold what it last wrote, and writes the difference between that and the
  new desired state without reading. A write that fails, a caller in doubt (``verify``), or
  anything not yet synced reads the resource and diffs against what is really there.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Hashable, Mapping
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
_NONE = object()
V = TypeVar("V")


class Resource(Protocol[K, V]):
    """One kind of host state, as far as it is ours."""

    @property
    def name(self) -> str:
        """For log lines: ``peers``, ``routes``, ..."""
        ...

    def read(self) -> Mapping[K, V]:
        """What the host holds of ours now."""
        ...

    def write(self, have: Mapping[K, V], want: Mapping[K, V], *, trusted: bool,
              changed: Collection[K] | None = None) -> int:
        """Change the host from ``have`` to ``want``; the number of changes made.

        ``trusted``: ``have`` is what we last wrote, not a read, so a change that meets
        something else (a route someone added meanwhile) must fail rather than overwrite it;
        the reconciler then reads and tries again. ``changed``: when known, the only keys
        whose values may differ (the rest are the same objects): a resource may look at
        just those.
        """
        ...

    def holds(self, want: Mapping[K, V], *, exactly: bool) -> bool:
        """A cheap check that the host still holds ``want`` (and, with ``exactly``, nothing
        else of ours); False may be a false alarm: then a read decides."""
        ...


class Tracked(dict[K, V]):
    """A desired state's mapping that knows which keys changed since the mapping it was
    derived from (``parent``): ``touched`` holds them, and maybe keys put back equal, unless
    ``exact`` says it holds only keys whose values differ from the parent's. Never changed
    once made: a reconciler keeps a reference to the one it wrote, and the difference to a
    newer one costs O(changed), not O(N)."""

    __slots__ = ("exact", "parent", "touched")

    def __init__(self, items: Mapping[K, V], parent: Tracked[K, V] | None = None,
                 touched: frozenset[K] = frozenset(), *, exact: bool = False) -> None:
        super().__init__(items)
        self.parent = parent
        self.touched = touched
        self.exact = exact


def changed_since(want: Mapping[K, V], written: Mapping[K, V], depth: int = 64
                  ) -> set[K] | None:
    """The keys that may differ between ``written`` and ``want``, from ``want``'s lineage;
    None when ``want`` does not descend from ``written``."""
    keys: set[K] = set()
    m: Mapping[K, V] | None = want
    for _ in range(depth):
        if m is written:
            return keys
        if not isinstance(m, Tracked):
            return None
        keys |= m.touched
        m = m.parent
    return None


def keep_unknown(have: Mapping[K, V], want: Mapping[K, V]) -> dict[K, V]:
    """``want`` plus what ``have`` holds under other keys: the rule before sync."""
    kept = {k: v for k, v in have.items() if k not in want}
    kept.update(want)
    return kept


class Reconciler(Generic[K, V]):
    """Brings one resource to a desired state, reading it only when it must."""

    def __init__(self, resource: Resource[K, V]) -> None:
        self.resource = resource
        # What the resource holds as we last wrote it; None: unknown (read next time).
        self.written: Mapping[K, V] | None = None

    def forget(self) -> None:
        """Distrust the last write: the next reconcile reads (someone else may have changed
        the resource, or it was re-created)."""
        self.written = None

    @staticmethod
    def _keep(want: Mapping[K, V]) -> Mapping[K, V]:
        # A Tracked mapping is never changed: kept by reference, its lineage intact.
        return want if isinstance(want, Tracked) else dict(want)

    def reconcile(self, want: Mapping[K, V], *, synced: bool, verify: bool = False,
                  have: Mapping[K, V] | None = None) -> int:
        """Make the resource hold ``want`` (plus, until ``synced``, what it holds unknown
        to us). ``have``: a read the caller just made; ``verify``: read even if trusted.
        Returns the number of changes made."""
        written = self.written
        if synced and not verify and have is None and written is not None:
            changed: Collection[K] | None
            if isinstance(want, Tracked) and want.exact and want.parent is written:
                changed = want.touched  # one exact step: no second look at each key
            else:
                changed = changed_since(want, written)
                if changed is not None:  # over steps, a value may be changed and put back
                    changed = {k for k in changed
                               if want.get(k, _NONE) != written.get(k, _NONE)}
            if (changed is not None and not changed) or (changed is None and want == written):
                self.written = self._keep(want)  # equal: it anchors the next diff's lineage
                return 0
            try:
                n = self.resource.write(written, want, trusted=True, changed=changed)
            except Exception as e:
                log.info("%s: applying the change alone failed (%s); reading it to apply the "
                         "whole state", self.resource.name, e)
            else:
                self.written = self._keep(want)
                return n
        self.written = None  # unknown until the write below succeeds
        if have is None:
            have = self.resource.read()
        target = want if synced else keep_unknown(have, want)
        n = self.resource.write(have, target, trusted=False)
        # Before sync the host may hold unknown things we kept: not a state to trust.
        self.written = self._keep(target) if synced else None
        return n

    def check(self, want: Mapping[K, V], *, synced: bool) -> int:
        """Heal drift cheaply: a read only when the quick check fails."""
        if self.resource.holds(want, exactly=synced):
            return 0
        return self.reconcile(want, synced=synced, verify=True)

    def heal(self, want: Mapping[K, V], *, synced: bool) -> bool:
        """``check``, logged, for a periodic drift check that must go on whatever fails;
        False when the check or the restore failed (the resource may not hold ``want``)."""
        try:
            if n := self.check(want, synced=synced):
                log.warning("%s: restored %d change(s) someone else made", self.resource.name,
                            n)
        except Exception as e:  # the caller's next full pass reads everything anyway
            log.warning("checking the %s failed: %s", self.resource.name, e)
            return False
        return True
