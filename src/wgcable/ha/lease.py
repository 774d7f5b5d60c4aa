"""The lease that elects a cluster's active gateway: its record and where it is kept.

A backend only reads and writes the record, with optimistic concurrency: a write names the
version it replaces and fails with ``LeaseConflictError`` when someone wrote in between. The
election rules (when a lease has expired, when the holder must stop acting) are the
elector's (``elector.py``), the same for every backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

API_VERSION = "coordination.k8s.io/v1"
DEFAULT_LEASE_NAME = "submariner-gateway-lock"  # Submariner's, in the local cluster


class LeaseUnavailableError(RuntimeError):
    """The lease cannot be read or written now (server unreachable, file system error)."""


class LeaseConflictError(RuntimeError):
    """Someone else wrote the lease since we read it: read again."""


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    """Client-go's three timings. ``duration``: a lease not renewed for this long (as seen by
    the other candidates) is free. ``renew_deadline``: an active that has not renewed for
    this long stops acting as active; shorter than ``duration``, so it has stopped before
    anyone else may start. ``retry``: how often candidates try, and the active renews."""

    duration: float
    renew_deadline: float
    retry: float

    def __post_init__(self) -> None:
        for name in ("duration", "renew_deadline", "retry"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"lease {name.replace('_', ' ')} must be a positive number "
                                 f"of seconds, not {value!r}")
        if self.renew_deadline >= self.duration:
            raise ValueError(f"lease renew deadline ({self.renew_deadline:g} s) must be shorter "
                             f"than the lease duration ({self.duration:g} s): an active gateway "
                             "must stop before another may take over")
        if self.retry >= self.renew_deadline:
            raise ValueError(f"lease retry ({self.retry:g} s) must be shorter than the renew "
                             f"deadline ({self.renew_deadline:g} s)")


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """A Lease's spec. ``holder`` "" is a released lease. ``version`` is the backend's
    (a resourceVersion), "" for a record not yet written."""

    holder: str
    duration: float
    acquire_time: float  # epoch seconds
    renew_time: float  # epoch seconds
    transitions: int
    version: str = ""

    def same_term(self, other: LeaseRecord | None) -> bool:
        """The same holder, renewal and transition count (whatever the version)."""
        return other is not None and (self.holder, _us(self.renew_time), self.transitions) == (
            other.holder, _us(other.renew_time), other.transitions)

    def spec(self) -> dict[str, object]:
        """As a coordination.k8s.io/v1 LeaseSpec (whole seconds, as the API has them)."""
        return {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": max(1, math.ceil(self.duration)),
            "acquireTime": micro_time(self.acquire_time),
            "renewTime": micro_time(self.renew_time),
            "leaseTransitions": self.transitions,
        }


def _us(epoch: float) -> int:
    return round(epoch * 1_000_000)


def micro_time(epoch: float) -> str:
    """Kubernetes' MicroTime: RFC 3339 with microseconds, UTC."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_micro_time(text: object, what: str) -> float:
    if not isinstance(text, str) or len(text) > 40:
        raise ValueError(f"{what} is not a time")
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    raise ValueError(f"{what} is not an RFC 3339 time")


def record_from_spec(spec: object, version: str) -> LeaseRecord:
    """A LeaseSpec as the API or a file has it; ValueError naming the field otherwise."""
    if not isinstance(spec, dict):
        raise ValueError("spec is not an object")
    holder = spec.get("holderIdentity") or ""
    if not isinstance(holder, str) or len(holder) > 253 or not holder.isprintable():
        raise ValueError("spec.holderIdentity is not a printable name of at most 253 characters")
    duration = spec.get("leaseDurationSeconds", 0)
    transitions = spec.get("leaseTransitions", 0) or 0
    for name, value in (("leaseDurationSeconds", duration), ("leaseTransitions", transitions)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
            raise ValueError(f"spec.{name} is not an int32")
    acquire = spec.get("acquireTime")
    renew = spec.get("renewTime")
    return LeaseRecord(
        holder=holder, duration=float(duration),
        acquire_time=parse_micro_time(acquire, "spec.acquireTime") if acquire else 0.0,
        renew_time=parse_micro_time(renew, "spec.renewTime") if renew else 0.0,
        transitions=transitions, version=version)


class LeaseBackend(Protocol):
    def read(self) -> LeaseRecord | None:
        """The record now; None when no lease exists. LeaseUnavailableError when unknown."""
        ...

    def write(self, record: LeaseRecord, replaces: LeaseRecord | None) -> LeaseRecord:
        """Write ``record`` if the lease is still ``replaces`` (None: if none exists);
        the record as written, with its new version. LeaseConflictError otherwise."""
        ...

    def describe(self) -> str:
        """Where the lease is, for messages."""
        ...

    def close(self) -> None: ...
