"""The election of a cluster's active gateway, on a lease (client-go's rules).

- A lease is free when it was released (no holder), or when its record has not changed for
  ``duration`` seconds as this candidate observed it: by its own monotonic clock, from when
  it first saw that record, so clocks need not agree between nodes.
- The active renews every ``retry`` seconds. If it has not renewed for ``renew_deadline``
  (shorter than ``duration``) it stops acting as active: it is fenced before anyone else
  may take over. Never two actives.
- A fenced active, or a candidate that has never read the lease, is ``UNKNOWN``: it keeps
  what it has (tunnels, Endpoint) and changes nothing, as when the store is unreachable;
  it becomes passive once it sees another holder, or active again once it renews.
- ``hand_over()`` releases the lease at once and stays ``UNKNOWN`` (tunnels kept) until
  another candidate holds it: make before break. It does not take the lease back for one
  ``duration`` unless nobody else took it meanwhile (then it is a free lease like any).
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections.abc import Callable

from wgcable.ha.lease import (
    LeaseBackend,
    LeaseConflictError,
    LeaseRecord,
    LeaseTiming,
    LeaseUnavailableError,
)

log = logging.getLogger(__name__)


class Role(enum.StrEnum):
    ACTIVE = "active"
    PASSIVE = "passive"
    UNKNOWN = "unknown"  # fenced, handing over, or the lease never read: change nothing


class Elector:
    def __init__(
        self,
        backend: LeaseBackend,
        identity: str,
        timing: LeaseTiming,
        on_change: Callable[[Role], None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not identity or not identity.isprintable():
            raise ValueError(f"lease holder identity {identity!r} must be printable text")
        self.backend = backend
        self.identity = identity
        self.timing = timing
        self.on_change = on_change
        self.clock = clock
        self.wall = wall
        self._role = Role.UNKNOWN
        self.holder = ""  # the holder as last seen ("" unknown or released)
        self.problem = ""  # why the lease could not be read or renewed, "" when it could
        self.transitions = 0  # leaseTransitions as last seen
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._last_renew = -float("inf")  # monotonic time of our last successful renew
        self._hold_off_until = -float("inf")  # after a handover: let another take it
        self._released_transitions = -1  # the lease's transitions when we released it
        self._lock = threading.Lock()
        self._wake = threading.Event()

    @property
    def role(self) -> Role:
        """The role to act on now. An active one whose last renewal is older than the renew
        deadline is not active, even while its step is still blocked in a lease call (a
        hung API server): fenced by the clock, not by the next step."""
        role = self._role
        if role is Role.ACTIVE and self.clock() - self._last_renew > self.timing.renew_deadline:
            return Role.UNKNOWN
        return role

    # --- one try ------------------------------------------------------------------------------

    def step(self) -> Role:
        """Read the lease; renew it, take it or follow its holder. Returns the role."""
        with self._lock:
            now = self.clock()
            try:
                record = self.backend.read()
            except LeaseUnavailableError as exc:
                # Fenced by the time the read gave up, not by when it began: a read that
                # hung past the renew deadline must not leave us active.
                self._failed(self.clock(), str(exc))
                # Nothing is known of the holder meanwhile: once the lease is readable
                # again, it gets a whole duration to renew before anyone takes it (or an
                # outage that nobody could renew through would end in a failover).
                self._observed = None
                return self._role
            if record is None or not record.same_term(self._observed):
                self._observed, self._observed_at = record, now
            mine = record is not None and record.holder == self.identity
            released = record is None or record.holder == ""
            expired = (record is not None and not mine and not released
                       and now - self._observed_at > self.timing.duration)
            self.holder = record.holder if record is not None else ""
            self.transitions = record.transitions if record is not None else 0
            if not (mine or released or expired):
                self.problem = ""
                self._set(Role.PASSIVE, f"held by {record.holder!r}" if record else "")
                return self._role
            if (not mine and now < self._hold_off_until and record is not None
                    and record.transitions == self._released_transitions):
                # Handed over, and nobody has taken it since: the others' chance first.
                # (Once another held it, it is an ordinary free lease again.)
                self.problem = ""
                return self._role
            self._take(now, record, mine)
            return self._role

    def _take(self, now: float, record: LeaseRecord | None, mine: bool) -> None:
        wall = round(self.wall(), 6)
        new = LeaseRecord(
            holder=self.identity, duration=self.timing.duration,
            acquire_time=record.acquire_time if mine and record else wall, renew_time=wall,
            transitions=(record.transitions if record else 0) + (0 if mine else 1))
        try:
            written = self.backend.write(new, record)
        except LeaseConflictError:
            # Someone wrote first: the next read says who.
            self._failed(self.clock(), "", conflict=True)
            return
        except LeaseUnavailableError as exc:
            self._failed(self.clock(), str(exc))
            return
        self._observed, self._observed_at = written, now
        self._last_renew = now  # when this try began: the others saw the write after it
        took = self.clock() - now
        if took > self.timing.renew_deadline:
            # Written, but the answer came too late: the write may have landed long ago
            # and the lease expired for the others meanwhile. Not active on it; the next
            # prompt renewal makes us active again.
            self._failed(self.clock(), f"renewing the lease took {took:.1f} s, over the "
                         f"renew deadline ({self.timing.renew_deadline:g} s)")
            return
        self.holder, self.transitions, self.problem = self.identity, written.transitions, ""
        self._set(Role.ACTIVE, "renewed" if mine else
                  f"acquired (transition {written.transitions})")

    def _failed(self, now: float, why: str, conflict: bool = False) -> None:
        if why and why != self.problem:
            log.warning("lease: %s", why)
        if why:
            self.problem = why
        if self._role == Role.ACTIVE and now - self._last_renew > self.timing.renew_deadline:
            self._set(Role.UNKNOWN, f"not renewed for {now - self._last_renew:.1f} s (renew "
                      f"deadline {self.timing.renew_deadline:g} s): no longer acting as active"
                      "; tunnels kept as they are")

    def _set(self, role: Role, why: str) -> None:
        if role == self._role:
            return
        log.info("gateway %s -> %s: %s", self._role, role, why)
        self._role = role
        if self.on_change is not None:
            self.on_change(role)

    # --- the deliberate ways out --------------------------------------------------------------

    def hand_over(self) -> bool:
        """Release the lease now for another candidate to take; False if not held."""
        with self._lock:
            if self._role != Role.ACTIVE or self._observed is None:
                return False
            now = self.clock()
            released = LeaseRecord(holder="", duration=self.timing.duration,
                                   acquire_time=self._observed.acquire_time,
                                   renew_time=round(self.wall(), 6),
                                   transitions=self._observed.transitions)
            # Not active before the lease is free: nobody may see us active while another
            # candidate already is (our status says passive first).
            self._set(Role.UNKNOWN, "releasing the lease for a handover; tunnels kept until "
                      "another gateway holds it")
            try:
                self._observed = self.backend.write(released, self._observed)
            except (LeaseConflictError, LeaseUnavailableError) as exc:
                log.warning("handing over failed: %s", exc)
                self._set(Role.ACTIVE, "still the holder")  # the next step renews or fences
                return False
            self._observed_at = now
            self._hold_off_until = now + self.timing.duration
            self._released_transitions = self._observed.transitions
            self.holder = ""
        self._wake.set()
        return True

    # --- the loop -----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Try every ``retry`` seconds (candidates with up to 20% jitter, so that they do
        not all write at the same instant) until ``stop``."""
        while not stop.is_set():
            try:
                role = self.step()
            except Exception:
                log.exception("lease step failed; will retry")
                role = self._role
            wait = self.timing.retry
            if role != Role.ACTIVE:
                wait *= 1.0 + 0.2 * random.random()  # noqa: S311 (jitter, not a secret)
            self._wake.wait(wait)
            self._wake.clear()

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="lease", daemon=True)
        thread.start()
        return thread

    def wake(self) -> None:
        self._wake.set()
