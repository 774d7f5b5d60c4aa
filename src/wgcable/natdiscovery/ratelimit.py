"""Token buckets: how often we answer a source, how often we log something hostile (pure:
the time is passed in).

A UDP source address can be forged, so every answer we send could be aimed at a third
party. A bucket per source IP bounds what any one address receives from us, and one bucket
for all bounds the total however many addresses are forged. The table of sources is bounded
too: the oldest entry goes first (which hands a forged flood a fresh bucket now and then;
the total bucket still holds).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; starts full."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = now

    def take(self, now: float) -> bool:
        """One token if there is one. A clock that went back adds nothing."""
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class SourceLimiter:
    """A bucket per source (at most ``max_sources`` of them) and one for all."""

    def __init__(self, *, rate: float, burst: float, total_rate: float, total_burst: float,
                 max_sources: int, now: float) -> None:
        self._rate = rate
        self._burst = burst
        self._max = max_sources
        self._sources: OrderedDict[Hashable, TokenBucket] = OrderedDict()
        self._total = TokenBucket(total_rate, total_burst, now)

    def allow(self, source: Hashable, now: float) -> bool:
        bucket = self._sources.get(source)
        if bucket is None:
            bucket = self._sources[source] = TokenBucket(self._rate, self._burst, now)
            if len(self._sources) > self._max:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(source)
        # The source's own bucket first: a source over its limit spends nothing of the total.
        return bucket.take(now) and self._total.take(now)

    def __len__(self) -> int:
        return len(self._sources)
