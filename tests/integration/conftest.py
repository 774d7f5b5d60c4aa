"""Fixtures for tests against real wireguard-go daemons in network namespaces."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Iterator

import pytest

from wgcable.lab.netns import Namespace, WireGuardGo

_TOOLS = ("ip", "wg", "wireguard-go", "nsenter", "ping")
_seq = itertools.count()


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    absent = [t for t in _TOOLS if shutil.which(t) is None]
    if absent:
        return f"missing tools: {', '.join(absent)} (run scripts/install.sh)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = _missing()
    for item in items:
        if "netns" in item.keywords and reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def make_ns() -> Iterator[Callable[[], Namespace]]:
    """Creates namespaces named wgct-<pid>-<n>; all are deleted at teardown, pass or fail."""
    made: list[Namespace] = []

    def make() -> Namespace:
        ns = Namespace(f"wgct-{os.getpid()}-{next(_seq)}")
        made.append(ns)
        return ns.create()

    yield make
    for ns in reversed(made):
        ns.delete()


@pytest.fixture
def make_wg(make_ns: Callable[[], Namespace]) -> Iterator[Callable[..., WireGuardGo]]:
    """Starts wireguard-go devices (in a new namespace unless one is given); stops them all."""
    daemons: list[WireGuardGo] = []

    def make(ns: Namespace | None = None, ifname: str = "wgt0") -> WireGuardGo:
        d = WireGuardGo(ns or make_ns(), ifname)
        daemons.append(d)
        return d.wait_ready()

    yield make
    for d in daemons:
        d.stop()
