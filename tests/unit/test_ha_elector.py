"""The elector's rules on a fake clock and a dict-backed lease: never two actives, fencing
by the renew deadline, the observed-time rule, the handover hold-off."""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable

import pytest

from wgcable.ha.elector import Elector, Role
from wgcable.ha.lease import LeaseConflictError, LeaseRecord, LeaseTiming, LeaseUnavailableError

TIMING = LeaseTiming(duration=15.0, renew_deadline=10.0, retry=2.0)


class Clock:
    """Monotonic time for one elector; ``wall`` deliberately disagrees between nodes."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Store:
    """One lease, shared by the backends of several candidates."""

    def __init__(self) -> None:
        self.record: LeaseRecord | None = None
        self.counter = 0
        self.writes = 0


class FakeLease:
    """A backend on ``store`` with optimistic concurrency; ``down`` makes it unreachable;
    ``on_read``/``on_write`` run before the operation (to advance a clock: a slow call)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.down = False
        self.on_read: Callable[[], None] | None = None
        self.on_write: Callable[[], None] | None = None

    def describe(self) -> str:
        return "fake lease"

    def read(self) -> LeaseRecord | None:
        if self.on_read is not None:
            self.on_read()
        if self.down:
            raise LeaseUnavailableError("fake lease: unreachable")
        return self.store.record

    def write(self, record: LeaseRecord, replaces: LeaseRecord | None) -> LeaseRecord:
        if self.on_write is not None:
            self.on_write()
        if self.down:
            raise LeaseUnavailableError("fake lease: unreachable")
        now = self.store.record
        if (now.version if now else None) != (replaces.version if replaces else None):
            raise LeaseConflictError("fake lease changed meanwhile")
        self.store.counter += 1
        self.store.writes += 1
        self.store.record = dataclasses.replace(record, version=str(self.store.counter))
        return self.store.record

    def close(self) -> None:
        pass


def candidate(store: Store, name: str, clock: Clock, wall_offset: float = 0.0,
              changes: list[Role] | None = None) -> tuple[Elector, FakeLease]:
    backend = FakeLease(store)
    e = Elector(backend, name, TIMING, changes.append if changes is not None else None,
                clock=clock, wall=lambda: 1.7e9 + clock.t + wall_offset)
    return e, backend


def held_by_other(store: Store, holder: str = "gw9", renew: float = 1.7e9) -> None:
    store.counter += 1
    store.record = LeaseRecord(holder, 15.0, renew, renew, 4, str(store.counter))


# --- taking, renewing, following ----------------------------------------------------------------


def test_a_free_lease_is_taken_and_renewed_and_others_follow() -> None:
    store, clock = Store(), Clock()
    changes: list[Role] = []
    a, _ = candidate(store, "gw1", clock, changes=changes)
    b, _ = candidate(store, "gw2", clock)
    assert a.role == Role.UNKNOWN  # before it has read anything
    assert a.step() == Role.ACTIVE
    assert store.record is not None
    assert store.record.holder == "gw1"
    assert store.record.transitions == 1
    assert b.step() == Role.PASSIVE
    assert b.holder == "gw1"
    acquired = store.record.acquire_time
    for _ in range(20):
        clock.t += TIMING.retry
        assert a.step() == Role.ACTIVE
        assert b.step() == Role.PASSIVE
    assert store.record.acquire_time == acquired  # a renewal keeps the acquire time
    assert store.record.transitions == 1
    assert changes == [Role.ACTIVE]  # told once, not at every renewal


def test_a_lease_held_by_another_is_taken_only_after_duration_by_the_observer_s_clock() -> None:
    # The holder's renewTime says it renewed a year from now (clocks disagree): ignored.
    # The lease expires duration seconds after *this* candidate first saw that record.
    store, clock = Store(), Clock()
    held_by_other(store, renew=1.7e9 + 365 * 86400)
    b, _ = candidate(store, "gw2", clock)
    assert b.step() == Role.PASSIVE
    first_seen = clock.t
    while clock.t - first_seen <= TIMING.duration:
        assert b.step() == Role.PASSIVE, clock.t - first_seen
        clock.t += 0.5
    assert b.step() == Role.ACTIVE
    assert store.record is not None
    assert store.record.holder == "gw2"
    assert store.record.transitions == 5


def test_a_renewal_seen_restarts_the_observed_time() -> None:
    store, clock = Store(), Clock()
    held_by_other(store)
    b, _ = candidate(store, "gw2", clock)
    assert b.step() == Role.PASSIVE
    clock.t += TIMING.duration - 1
    held_by_other(store, renew=1.7e9 + 5)  # the holder renewed
    assert b.step() == Role.PASSIVE
    clock.t += TIMING.duration - 1  # long after the first sight, not after the renewal
    assert b.step() == Role.PASSIVE
    clock.t += 2
    assert b.step() == Role.ACTIVE


def test_a_released_lease_is_taken_at_once() -> None:
    store, clock = Store(), Clock()
    held_by_other(store, holder="")
    b, _ = candidate(store, "gw2", clock)
    assert b.step() == Role.ACTIVE


# --- never two actives ---------------------------------------------------------------------------


def acting(e: Elector) -> bool:
    return e.role == Role.ACTIVE and e.clock() - e._last_renew <= e.timing.renew_deadline


@pytest.mark.parametrize("seed", range(30))
def test_never_two_actives_whatever_the_order_stalls_and_outages(seed: int) -> None:
    """Candidates step in random order, some stall (not stepped), some lose the lease's
    server for a while; at every instant at most one is acting as active (fenced by its
    renew deadline even when it is not stepped: a stalled process acts on nothing)."""
    rng = random.Random(seed)  # noqa: S311 (a reproducible schedule, not a secret)
    store, clock = Store(), Clock()
    electors = [candidate(store, f"gw{i}", clock, wall_offset=rng.uniform(-100, 100))
                for i in range(3)]
    stalled_until = [0.0] * 3
    actives_seen = set()
    for _ in range(2000):
        clock.t += rng.uniform(0.05, 1.0)
        for i in rng.sample(range(3), 3):
            e, backend = electors[i]
            if rng.random() < 0.01:
                stalled_until[i] = clock.t + rng.uniform(0, 3 * TIMING.duration)
            if rng.random() < 0.01:
                backend.down = not backend.down
            if clock.t >= stalled_until[i]:
                e.step()
            assert sum(acting(x) for x, _ in electors) <= 1
            actives_seen.update(x.identity for x, _ in electors if acting(x))
    assert len(actives_seen) >= 2  # there were takeovers: the test exercised something


# --- fencing by the renew deadline ---------------------------------------------------------------


def test_an_active_that_cannot_renew_is_fenced_after_the_renew_deadline_not_before() -> None:
    store, clock = Store(), Clock()
    a, backend = candidate(store, "gw1", clock)
    assert a.step() == Role.ACTIVE
    renewed_at = clock.t
    backend.down = True
    while clock.t - renewed_at <= TIMING.renew_deadline:
        assert a.step() == Role.ACTIVE
        assert a.problem == "fake lease: unreachable"
        clock.t += 0.25
    assert a.step() == Role.UNKNOWN  # tunnels kept, nothing changed
    backend.down = False
    assert a.step() == Role.ACTIVE  # still its lease: renewed
    assert a.problem == ""


def test_a_slow_read_that_fails_fences_by_the_time_it_returned() -> None:
    # The read hangs past the renew deadline, then fails: the active must not stay active
    # on the strength of the clock as it was *before* the read. (It did: the fencing check
    # used the time the step began, so a long-hanging call kept it active after others
    # could already have taken over.)
    store, clock = Store(), Clock()
    a, backend = candidate(store, "gw1", clock)
    assert a.step() == Role.ACTIVE
    clock.t += TIMING.retry

    def hang_then_fail() -> None:
        clock.t += TIMING.duration + 1
        backend.down = True

    backend.on_read = hang_then_fail
    assert a.step() == Role.UNKNOWN


def test_a_slow_renewal_that_succeeds_late_does_not_make_an_active() -> None:
    # The write was sent in time but its answer came after the renew deadline: by then the
    # others may have taken over (the write may have landed long before the answer came).
    store, clock = Store(), Clock()
    a, backend = candidate(store, "gw1", clock)
    b, _ = candidate(store, "gw2", clock)
    assert a.step() == Role.ACTIVE
    assert b.step() == Role.PASSIVE
    clock.t += TIMING.retry
    backend.on_write = lambda: setattr(clock, "t", clock.t + TIMING.renew_deadline + 1)
    assert a.step() != Role.ACTIVE
    backend.on_write = None
    assert a.step() == Role.ACTIVE  # a prompt renewal: active again


def test_a_conflicting_renewal_makes_the_active_follow_the_new_holder() -> None:
    store, clock = Store(), Clock()
    a, _ = candidate(store, "gw1", clock)
    assert a.step() == Role.ACTIVE
    held_by_other(store, holder="gw2")  # someone replaced it (an operator, say)
    assert a.step() == Role.PASSIVE
    assert a.holder == "gw2"


def test_a_lost_race_is_not_an_error() -> None:
    store, clock = Store(), Clock()
    a, backend_a = candidate(store, "gw1", clock)
    b, _ = candidate(store, "gw2", clock)

    def b_first() -> None:
        backend_a.on_write = None
        assert b.step() == Role.ACTIVE

    backend_a.on_write = b_first
    assert a.step() == Role.UNKNOWN  # conflict: it has not read the winner yet
    assert a.problem == ""
    assert a.step() == Role.PASSIVE


# --- handover ------------------------------------------------------------------------------------


def test_hand_over_releases_and_the_other_takes_over_while_the_first_holds_off() -> None:
    store, clock = Store(), Clock()
    a, _ = candidate(store, "gw1", clock)
    b, _ = candidate(store, "gw2", clock)
    assert a.step() == Role.ACTIVE
    assert b.step() == Role.PASSIVE
    assert a.hand_over()
    assert a.role == Role.UNKNOWN  # make before break: tunnels kept until b holds it
    assert store.record is not None
    assert store.record.holder == ""
    assert a.step() == Role.UNKNOWN  # does not take it back at once
    clock.t += TIMING.retry
    assert b.step() == Role.ACTIVE  # within one retry
    assert a.step() == Role.PASSIVE
    assert not a.hand_over()  # not held: nothing to hand over


def test_hand_over_with_nobody_else_takes_it_back_after_one_duration() -> None:
    store, clock = Store(), Clock()
    a, _ = candidate(store, "gw1", clock)
    assert a.step() == Role.ACTIVE
    assert a.hand_over()
    start = clock.t
    for t in itertools.count():
        clock.t = start + t * 0.5
        role = a.step()
        if role == Role.ACTIVE:
            break
        assert role == Role.UNKNOWN
    assert clock.t - start >= TIMING.duration


def test_identity_must_be_printable() -> None:
    with pytest.raises(ValueError, match="printable"):
        Elector(FakeLease(Store()), "gw\n1", TIMING)
    with pytest.raises(ValueError, match="printable"):
        Elector(FakeLease(Store()), "", TIMING)


def test_failover_an_active_whose_step_hangs_is_fenced_by_the_clock_alone() -> None:
    """No step at all (its lease call hangs, its thread is starved): once the renew
    deadline has passed since its last renewal, the role read by the engine is no longer
    active, before any other candidate may take the lease."""
    store, clock = Store(), Clock()
    e, _ = candidate(store, "a", clock)
    assert e.step() == Role.ACTIVE
    clock.t += TIMING.renew_deadline - 0.1
    assert e.role == Role.ACTIVE
    clock.t += 0.2
    assert e.role == Role.UNKNOWN
    assert clock.t - 1000.0 < TIMING.duration  # before anyone else may take it
    assert e.step() == Role.ACTIVE  # renewed: active again
    assert e.role == Role.ACTIVE


def test_handover_back_at_once_once_another_held_the_lease() -> None:
    """a hands over to b, and b hands straight back (a drain of b's node): a's hold-off
    was for the lease it released, which b has held since: a takes it at once."""
    store, clock = Store(), Clock()
    a, _ = candidate(store, "gw1", clock)
    b, _ = candidate(store, "gw2", clock)
    assert a.step() == Role.ACTIVE
    assert b.step() == Role.PASSIVE
    assert a.hand_over()
    clock.t += TIMING.retry
    assert b.step() == Role.ACTIVE
    assert b.hand_over()
    clock.t += TIMING.retry
    assert a.step() == Role.ACTIVE  # well within a's hold-off of one duration
    assert b.step() == Role.PASSIVE


def test_failover_none_after_an_outage_nobody_could_renew_through() -> None:
    """The lease unreachable for everyone for longer than its duration, then back: the
    standby does not take it at once (it has not seen the holder fail to renew, only
    failed to look); the holder renews first."""
    store, clock = Store(), Clock()
    a, la = candidate(store, "gw1", clock)
    b, lb = candidate(store, "gw2", clock)
    assert a.step() == Role.ACTIVE
    assert b.step() == Role.PASSIVE
    la.down = lb.down = True
    for _ in range(10):
        clock.t += TIMING.retry * 2
        a.step()
        assert b.step() == Role.PASSIVE
    assert a.role == Role.UNKNOWN  # fenced: keeps its tunnels, changes nothing
    la.down = lb.down = False
    assert b.step() == Role.PASSIVE  # (it would have taken the lease: expired to its eyes)
    assert a.step() == Role.ACTIVE
    clock.t += TIMING.duration - 0.1
    assert a.step() == Role.ACTIVE
    assert b.step() == Role.PASSIVE
