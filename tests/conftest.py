"""Shared pytest configuration for the wgcable test suite."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

# kernel_vm runs the tests marked `kernel` inside a virtme-ng VM when this kernel lacks WireGuard.
pytest_plugins = ["kernel_vm"]

# The tiers, most specific first: a test counts in the first whose marker it has.
TIERS = ("kernel", "kubernetes", "netns", "unit")
_tier_of: dict[str, str] = {}
_seconds: dict[str, float] = defaultdict(float)
_counts: dict[str, int] = defaultdict(int)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        _tier_of[item.nodeid] = next(
            (t for t in TIERS[:-1] if item.get_closest_marker(t) is not None), "unit")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    tier = _tier_of.get(report.nodeid, "unit")
    _seconds[tier] += report.duration  # setup, call and teardown
    if report.when == "call" or (report.when == "setup" and report.skipped):
        _counts[tier] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """What each tier cost in this run (the README's table comes from these lines). The
    kernel tier's figure is its tests' time inside the VM; the whole VM run, boot included,
    is in the kernel VM section."""
    if not _counts:
        return
    terminalreporter.write_sep("-", "time per tier")
    for tier in TIERS:
        if _counts.get(tier):
            terminalreporter.write_line(
                f"{tier:<11} {_counts[tier]:5d} tests  {_seconds[tier]:7.1f} s")
