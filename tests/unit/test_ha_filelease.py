"""The lease file, on real files: optimistic concurrency under flock, and files that are
not what they should be (corrupt, symlinked, huge, hard-linked) taken as free, never a
crash and never their content in a message."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from pathlib import Path

import pytest

from wgcable.ha import filelease
from wgcable.ha.elector import Elector, Role
from wgcable.ha.filelease import FileLease
from wgcable.ha.lease import (
    LeaseConflictError,
    LeaseRecord,
    LeaseTiming,
    LeaseUnavailableError,
)


def rec(holder: str, renew: float = 1.7e9, transitions: int = 1) -> LeaseRecord:
    return LeaseRecord(holder, 15.0, renew - 1, renew, transitions)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path


def test_create_read_renew_and_stale_writes_conflict(root: Path) -> None:
    lease = FileLease(root, "gateway")
    assert lease.read() is None
    first = lease.write(rec("gw1"), None)
    got = lease.read()
    assert got is not None
    assert got.same_term(first)
    assert got.version == first.version
    renewed = lease.write(rec("gw1", 1.7e9 + 2), got)
    assert renewed.version != got.version
    with pytest.raises(LeaseConflictError):
        lease.write(rec("gw2"), got)  # the version before the renewal
    with pytest.raises(LeaseConflictError):
        lease.write(rec("gw2"), None)  # exists: no second create
    now = lease.read()
    assert now is not None
    assert now.holder == "gw1"
    assert now.version == renewed.version
    obj = json.loads(lease.path.read_text())
    assert obj["kind"] == "Lease"
    assert obj["spec"] == rec("gw1", 1.7e9 + 2).spec()


def test_a_lock_held_by_another_fails_the_write_after_the_wait(
    root: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(filelease, "LOCK_WAIT", 0.2)
    a, b = FileLease(root, "gateway"), FileLease(root, "gateway")
    a.write(rec("gw1"), None)
    with a._locked():  # a stuck holder of the lock (another process: same semantics)
        with pytest.raises(LeaseUnavailableError, match="lock has been held"):
            b.write(rec("gw2"), b.read())
        got = b.read()  # reading needs no lock
        assert got is not None
        assert got.holder == "gw1"
    assert b.write(rec("gw2"), b.read()).holder == "gw2"


def test_racing_writers_of_the_same_version_exactly_one_wins(root: Path) -> None:
    for round_ in range(20):
        leases = [FileLease(root, f"race{round_}") for _ in range(4)]
        base = leases[0].write(rec("gw0"), None)
        go = threading.Barrier(len(leases))
        results: list[object] = [None] * len(leases)

        def run(i: int, leases: list[FileLease] = leases, base: LeaseRecord = base,
                go: threading.Barrier = go, results: list[object] = results) -> None:
            go.wait()
            try:
                results[i] = leases[i].write(rec(f"gw{i + 1}", transitions=2), base)
            except (LeaseConflictError, LeaseUnavailableError) as exc:
                results[i] = exc

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(leases))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        won = [r for r in results if isinstance(r, LeaseRecord)]
        assert len(won) == 1, results
        stored = leases[0].read()
        assert stored is not None
        assert stored.holder == won[0].holder  # type: ignore[union-attr]


def test_the_version_is_not_reused_after_the_file_is_removed(root: Path) -> None:
    # gw1 holds version v; the file is removed (or replaced as unreadable) and gw2 creates
    # it again. gw1's renewal naming v must conflict, not overwrite gw2's lease. (It did
    # not: the counter started at 1 again, so the old version matched: two actives.)
    a, b = FileLease(root, "gateway"), FileLease(root, "gateway")
    mine = a.write(rec("gw1"), None)
    a.path.unlink()
    theirs = b.write(rec("gw2", transitions=2), None)
    assert theirs.version != mine.version
    with pytest.raises(LeaseConflictError):
        a.write(rec("gw1", 1.7e9 + 2), mine)
    now = b.read()
    assert now is not None
    assert now.holder == "gw2"


def test_the_version_is_not_reused_after_an_unreadable_file_is_replaced(root: Path) -> None:
    a, b = FileLease(root, "gateway"), FileLease(root, "gateway")
    mine = a.write(rec("gw1"), None)
    a.path.write_text("{ broken")
    free = b.read()
    assert free is not None
    assert free.holder == ""
    b.write(rec("gw2", transitions=2), free)
    with pytest.raises(LeaseConflictError):
        a.write(rec("gw1", 1.7e9 + 2), mine)


# --- files that are not a lease -----------------------------------------------------------------


def _assert_free_and_replaceable(lease: FileLease, caplog: pytest.LogCaptureFixture,
                                 never_shown: str = "") -> None:
    with caplog.at_level(logging.WARNING):
        got = lease.read()
        assert got is not None
        assert got.holder == ""
        assert got.version.startswith("unreadable:")
        assert lease.read() == got
    warnings = [r.getMessage() for r in caplog.records if "taken as free" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert all(ch.isprintable() for ch in warnings[0])
    if never_shown:
        assert never_shown not in warnings[0]
    written = lease.write(rec("gw2"), got)  # free: replaceable by its version
    again = lease.read()
    assert again is not None
    assert again.holder == "gw2"
    assert again.version == written.version
    assert lease.path.is_file()
    assert not lease.path.is_symlink()


@pytest.mark.parametrize("content", [
    b"{ not json", b"[]", b'{"kind": "Secret"}', b"\xff\xfe\x00garbage",
    b'{"kind": "Lease", "metadata": {"resourceVersion": "1"}, "spec": {"holderIdentity": '
    b'"gw1\\u001b[2J\\nforged"}}',
    b'{"kind": "Lease", "metadata": {"resourceVersion": "1"}, "spec": {"holderIdentity": "'
    + b"g" * 10000 + b'"}}',
    b'{"kind": "Lease", "metadata": {"resourceVersion": "1"}, "spec": {"leaseTransitions": -1}}',
    b'{"kind": "Lease", "metadata": {"resourceVersion": "1"}, "spec": {"renewTime": "soon"}}',
    b'{"kind": "Lease", "metadata": {"resourceVersion": "x"}, "spec": {}}',
    b"[" * 100000,
])
def test_a_corrupt_lease_file_is_free(root: Path, content: bytes,
                                      caplog: pytest.LogCaptureFixture) -> None:
    lease = FileLease(root, "gateway")
    lease.dir.mkdir()
    lease.path.write_bytes(content)
    _assert_free_and_replaceable(lease, caplog, never_shown="forged")


def test_a_huge_lease_file_is_free_and_not_read_whole(root: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    lease = FileLease(root, "gateway")
    lease.dir.mkdir()
    with lease.path.open("wb") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB
    _assert_free_and_replaceable(lease, caplog)


def test_a_symlinked_lease_file_is_free_and_its_target_untouched(
    root: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    target = root / "private.key"
    target.write_text("SECRET-KEY-MATERIAL")
    lease = FileLease(root, "gateway")
    lease.dir.mkdir()
    lease.path.symlink_to(target)
    _assert_free_and_replaceable(lease, caplog, never_shown="SECRET")
    assert target.read_text() == "SECRET-KEY-MATERIAL"


def test_a_hard_linked_lease_file_is_free_and_the_other_link_untouched(
    root: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    other = root / "other.json"
    good = FileLease(root, "elsewhere")
    good.write(rec("gw1"), None)
    os.link(good.path, other)
    lease = FileLease(root, "gateway")
    os.link(other, lease.path)
    before = other.read_bytes()
    _assert_free_and_replaceable(lease, caplog)
    assert other.read_bytes() == before


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_lease_path_that_is_no_file_never_hangs_or_crashes(root: Path, kind: str,
                                                             caplog: pytest.LogCaptureFixture,
                                                             ) -> None:
    lease = FileLease(root, "gateway")
    lease.dir.mkdir()
    if kind == "fifo":
        os.mkfifo(lease.path)
        _assert_free_and_replaceable(lease, caplog)
    else:
        lease.path.mkdir()
        got = lease.read()
        assert got is not None
        assert got.holder == ""
        with pytest.raises(LeaseUnavailableError):  # a directory cannot be replaced
            lease.write(rec("gw2"), got)


def test_a_missing_store_directory_is_unavailable(tmp_path: Path) -> None:
    lease = FileLease(tmp_path / "gone", "gateway")
    with pytest.raises(LeaseUnavailableError, match="missing"):
        lease.read()


def test_an_unwritable_lock_is_unavailable_not_a_crash(root: Path) -> None:
    lease = FileLease(root, "gateway")
    lease.dir.mkdir()
    lease.lock_path.mkdir()  # the lock path is a directory: it cannot be opened for writing
    with pytest.raises(LeaseUnavailableError, match="lock"):
        lease.write(rec("gw1"), None)


def test_the_flock_is_exclusive_between_objects(root: Path) -> None:
    a, b = FileLease(root, "gateway"), FileLease(root, "gateway")
    with a._locked():
        fd = os.open(b.lock_path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(b.lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released on leaving
    finally:
        os.close(fd)


def test_two_electors_on_one_file_never_both_active(root: Path) -> None:
    t = [0.0]
    timing = LeaseTiming(15.0, 10.0, 2.0)
    electors = [Elector(FileLease(root, "gateway"), f"gw{i}", timing, clock=lambda: t[0],
                        wall=lambda: 1.7e9 + t[0]) for i in range(2)]
    for _ in range(50):
        for e in electors:
            e.step()
        assert sorted(e.role for e in electors) == [Role.ACTIVE, Role.PASSIVE]
        t[0] += 2.0
