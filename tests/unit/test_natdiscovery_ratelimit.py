"""Token buckets for NAT discovery answers and warnings, with a hand-moved clock."""

from __future__ import annotations

import pytest

from wgcable.natdiscovery.ratelimit import SourceLimiter, TokenBucket


def _takes(bucket: TokenBucket, now: float, n: int) -> int:
    return sum(bucket.take(now) for _ in range(n))


def test_bucket_gives_its_burst_then_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=5, now=0.0)
    assert _takes(bucket, 0.0, 10) == 5
    assert _takes(bucket, 0.5, 10) == 1
    assert _takes(bucket, 10.0, 10) == 5  # never more than the burst saved up


def test_bucket_gains_nothing_when_the_clock_goes_back() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, now=100.0)
    assert bucket.take(100.0)
    assert not bucket.take(50.0)
    assert not bucket.take(100.5)
    assert bucket.take(101.0)


def test_bucket_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate=0, burst=1, now=0)
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(rate=1, burst=0.5, now=0)


def _limiter(**kw: float) -> SourceLimiter:
    args: dict[str, float] = {"rate": 1.0, "burst": 3, "total_rate": 100.0, "total_burst": 100,
                              "max_sources": 10, "now": 0.0}
    args.update(kw)
    return SourceLimiter(rate=args["rate"], burst=args["burst"],
                         total_rate=args["total_rate"], total_burst=args["total_burst"],
                         max_sources=int(args["max_sources"]), now=args["now"])


def test_hostile_one_source_gets_its_own_limit_only() -> None:
    limiter = _limiter()
    assert sum(limiter.allow("192.0.2.1", 0.0) for _ in range(50)) == 3
    assert sum(limiter.allow("192.0.2.2", 0.0) for _ in range(50)) == 3  # others unaffected
    assert sum(limiter.allow("192.0.2.1", 1.0) for _ in range(50)) == 1


def test_hostile_many_forged_sources_are_held_by_the_total() -> None:
    limiter = _limiter(total_rate=5.0, total_burst=20, max_sources=1000)
    allowed = sum(limiter.allow(f"198.51.100.{i % 250}/{i}", 0.0) for i in range(500))
    assert allowed == 20
    # A source over its own limit spends nothing of the total.
    limiter2 = _limiter(total_rate=1.0, total_burst=5)
    for _ in range(100):
        limiter2.allow("203.0.113.1", 0.0)
    assert sum(limiter2.allow("203.0.113.2", 0.0) for _ in range(3)) == 2  # 5 - 3 used


def test_hostile_the_source_table_is_bounded() -> None:
    limiter = _limiter(max_sources=10)
    for i in range(1000):
        limiter.allow(i, float(i))
    assert len(limiter) == 10


def test_a_recently_seen_source_is_not_evicted_first() -> None:
    limiter = _limiter(max_sources=2, burst=1)
    assert limiter.allow("a", 0.0)
    assert limiter.allow("b", 0.0)
    assert not limiter.allow("a", 0.0)  # "a" is now the most recent, still empty
    assert limiter.allow("c", 0.0)  # evicts "b", the oldest
    assert not limiter.allow("a", 0.0)  # "a" kept its (empty) bucket
