"""The rules every reconciler follows (``wgcable.reconcile``), on a resource in memory that
counts its reads and writes: unknown kept until synced, the delta without a read once
synced, a read after any doubt or failure."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import pytest

from wgcable.reconcile import Reconciler, Tracked, changed_since, keep_unknown


class Box:
    """A resource: a dict on the "host"; ``fail_trusted`` makes trusted writes fail once."""

    name = "box"

    def __init__(self, held: dict[str, int] | None = None) -> None:
        self.held: dict[str, int] = dict(held or {})
        self.reads = 0
        self.writes: list[tuple[bool, dict[str, int]]] = []
        self.fail_trusted = False
        self.checks = 0
        self.hints: list[set[str] | None] = []

    def read(self) -> dict[str, int]:
        self.reads += 1
        return dict(self.held)

    def write(self, have: Mapping[str, int], want: Mapping[str, int], *, trusted: bool,
              changed: Collection[str] | None = None) -> int:
        self.hints.append(None if changed is None else set(changed))
        if trusted and self.fail_trusted:
            self.fail_trusted = False
            raise RuntimeError("someone changed it meanwhile")
        changes = {k: v for k, v in want.items() if have.get(k) != v}
        gone = [k for k in have if k not in want]
        if trusted and any(k not in self.held for k in gone):
            raise RuntimeError("removing what is not there")
        self.held.update(changes)
        for k in gone:
            self.held.pop(k, None)
        self.writes.append((trusted, dict(want)))
        return len(changes) + len(gone)

    def holds(self, want: Mapping[str, int], *, exactly: bool) -> bool:
        self.checks += 1
        if exactly:
            return self.held == dict(want)
        return all(self.held.get(k) == v for k, v in want.items())


def test_reconcile_keep_unknown_is_want_plus_the_rest() -> None:
    assert keep_unknown({"a": 1, "b": 2}, {"b": 3, "c": 4}) == {"a": 1, "b": 3, "c": 4}


def test_reconcile_before_sync_keeps_what_it_does_not_know_and_always_reads() -> None:
    box = Box({"left-by-earlier-run": 7})
    rec = Reconciler(box)
    rec.reconcile({"a": 1}, synced=False)
    rec.reconcile({"a": 1, "b": 2}, synced=False)
    assert box.held == {"left-by-earlier-run": 7, "a": 1, "b": 2}
    assert box.reads == 2  # nothing is trusted before sync: what is there is unknown
    rec.reconcile({"a": 1, "b": 2}, synced=True, verify=True)  # the engine's mark_synced
    assert box.held == {"a": 1, "b": 2}


def test_reconcile_once_synced_a_change_is_written_without_a_read() -> None:
    box = Box()
    rec = Reconciler(box)
    rec.reconcile({"a": 1}, synced=True)
    assert box.reads == 1
    assert rec.reconcile({"a": 1, "b": 2}, synced=True) == 1
    assert rec.reconcile({"b": 3}, synced=True) == 2
    assert box.reads == 1  # the delta against what we wrote: no read
    assert box.held == {"b": 3}
    assert [trusted for trusted, _ in box.writes] == [False, True, True]
    assert rec.reconcile({"b": 3}, synced=True) == 0  # nothing changed: nothing written
    assert len(box.writes) == 3


def test_reconcile_a_failed_delta_falls_back_to_read_and_diff() -> None:
    box = Box()
    rec = Reconciler(box)
    rec.reconcile({"a": 1, "b": 2}, synced=True)
    del box.held["b"]  # someone removed it: our removal of it will fail
    assert rec.reconcile({"a": 1}, synced=True) == 0
    assert box.reads == 2
    assert box.held == {"a": 1}
    box.fail_trusted = True
    rec.reconcile({"a": 5}, synced=True)
    assert box.held == {"a": 5}
    assert box.reads == 3


def test_reconcile_a_failed_read_and_diff_leaves_the_state_unknown() -> None:
    box = Box()
    rec = Reconciler(box)
    rec.reconcile({"a": 1}, synced=True)

    def broken(*args: object, **kwargs: object) -> int:
        raise OSError("device gone")

    box.write = broken  # type: ignore[method-assign]
    with pytest.raises(OSError, match="device gone"):
        rec.reconcile({"a": 2}, synced=True, verify=True)
    assert rec.written is None  # the next pass reads again


def test_reconcile_check_reads_only_when_the_quick_check_fails() -> None:
    box = Box()
    rec = Reconciler(box)
    rec.reconcile({"a": 1}, synced=True)
    assert rec.check({"a": 1}, synced=True) == 0
    assert box.reads == 1
    box.held["a"] = 9  # drift
    box.held["x"] = 1  # and something of ours nobody wants
    assert rec.check({"a": 1}, synced=True) == 2
    assert box.reads == 2
    assert box.held == {"a": 1}


def test_reconcile_check_before_sync_tolerates_unknown_entries() -> None:
    box = Box({"unknown": 1})
    rec = Reconciler(box)
    rec.reconcile({"a": 1}, synced=False)
    assert rec.check({"a": 1}, synced=False) == 0
    assert box.held == {"unknown": 1, "a": 1}


def test_reconcile_tracked_lineage_limits_the_write_to_what_changed() -> None:
    box = Box()
    rec = Reconciler(box)
    a = Tracked({"x": 1, "y": 2})
    rec.reconcile(a, synced=True)
    b = Tracked({"x": 1, "y": 3, "z": 4}, a, frozenset({"y", "z"}))
    c = Tracked({"x": 1, "y": 3, "z": 4}, b, frozenset({"x"}))  # touched, put back equal
    assert changed_since(c, a) == {"x", "y", "z"}
    assert changed_since(a, c) is None  # not a descendant: unknown
    assert rec.reconcile(c, synced=True) == 2
    assert box.hints[-1] == {"y", "z"}  # "x" was touched but is equal: not a change
    assert box.held == {"x": 1, "y": 3, "z": 4}
    d = Tracked({"x": 1, "y": 3, "z": 4}, c, frozenset({"z"}))
    writes = len(box.writes)
    assert rec.reconcile(d, synced=True) == 0  # nothing differs: nothing written
    assert len(box.writes) == writes
    assert box.reads == 1


def test_reconcile_an_equal_state_anchors_the_lineage_of_the_next_diff() -> None:
    """A state equal to what was written (a new lineage, or nothing changed) becomes the
    reference: later states descend from it, and their diff stays O(changed)."""
    box = Box()
    rec = Reconciler(box)
    rec.reconcile(Tracked({"x": 1, "y": 2}), synced=True)
    fresh = Tracked({"x": 1, "y": 2})  # equal, but not a descendant of what was written
    assert rec.reconcile(fresh, synced=True) == 0
    rec.reconcile(Tracked({"x": 5, "y": 2}, fresh, frozenset({"x"})), synced=True)
    assert box.hints[-1] == {"x"}  # known from the lineage, not found by comparing all


def test_reconcile_exact_step_is_written_as_its_touched_keys() -> None:
    """An ``exact`` Tracked one step from what was written (what ``StateBuilder`` makes):
    its touched keys are the change, not compared again; over more steps, or without
    ``exact``, they are."""
    box = Box()
    rec = Reconciler(box)
    a = Tracked({"x": 1, "y": 2})
    rec.reconcile(a, synced=True)
    b = Tracked({"x": 1, "y": 3, "z": 4}, a, frozenset({"y", "z"}), exact=True)
    assert rec.reconcile(b, synced=True) == 2
    assert box.hints[-1] == {"y", "z"}
    c = Tracked({"x": 1, "y": 3}, b, frozenset({"z"}), exact=True)
    d = Tracked({"x": 1, "y": 3, "z": 4}, c, frozenset({"z"}), exact=True)  # z back
    writes = len(box.writes)
    assert rec.reconcile(d, synced=True) == 0  # two steps: z compared, equal: no write
    assert len(box.writes) == writes
    assert box.held == {"x": 1, "y": 3, "z": 4}
    assert box.reads == 1
