"""Fixtures for tests against real wireguard-go daemons in network namespaces."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from slowness import scaled
from wgcable.lab.lab import Lab
from wgcable.lab.netns import (
    KernelWireGuard,
    LabDevice,
    Namespace,
    WireGuardGo,
    delete_namespaces,
    list_namespaces,
)

from .labtools import MakeLab, print_agent_logs, wait_for

_TOOLS = ("ip", "wg", "nsenter", "ping")
_seq = itertools.count()



def _missing(kernel: bool) -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    tools = _TOOLS if kernel else (*_TOOLS, "wireguard-go")
    absent = [t for t in tools if shutil.which(t) is None]
    if absent:
        return f"missing tools: {', '.join(absent)} (run scripts/install.sh)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "netns" not in item.keywords:
            continue
        reason = _missing(kernel="kernel" in item.keywords)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def device_kind() -> str:
    """wireguard-go, unless the test is parametrized with `both_kinds`."""
    return "userspace"


@pytest.fixture
def make_ns() -> Iterator[Callable[[], Namespace]]:
    """Creates namespaces named wgct-<pid>-<n>; all are deleted at teardown, pass or fail."""
    made: list[Namespace] = []

    def make() -> Namespace:
        ns = Namespace(f"wgct-{os.getpid()}-{next(_seq)}")
        made.append(ns)
        return ns.create()

    yield make
    delete_namespaces([ns.name for ns in made])


@pytest.fixture
def make_wg(
    make_ns: Callable[[], Namespace], device_kind: str
) -> Iterator[Callable[..., LabDevice]]:
    """Makes WireGuard devices of this run's kind (in a new namespace unless one is given);
    removes them all."""
    daemons: list[LabDevice] = []

    def make(ns: Namespace | None = None, ifname: str = "wgt0") -> LabDevice:
        kind = KernelWireGuard if device_kind == "kernel" else WireGuardGo
        d = kind(ns or make_ns(), ifname)
        daemons.append(d)
        return d.wait_ready(scaled(10))

    yield make
    for d in daemons:
        d.stop()


def _labs(tmp_path: Path, kind: str) -> Iterator[MakeLab]:
    labs: list[Lab] = []
    # Under the VM's software emulation everything (Python start-up above all) is slower,
    # by the factor measured at its start.
    patience = scaled(30)

    def make(clusters: int, connected: bool = True, **kw: object) -> Lab:
        """``connected``: wait for every cable first."""
        name = f"t{os.getpid() % 10000}{len(labs)}"
        lab = Lab.up(name, clusters, root=str(tmp_path / "labs"),
                     agent_args=["--backend", kind], **kw)  # type: ignore[arg-type]
        labs.append(lab)
        if connected:
            wait_for(lab.all_connected, patience, "all cables connected")
        return lab

    yield make
    for lab in labs:
        print_agent_logs(lab)
        assert lab.down() == []
        assert not [n for n in list_namespaces() if n.startswith(f"{lab.state.prefix}-")]


@pytest.fixture
def make_lab(tmp_path: Path, device_kind: str) -> Iterator[MakeLab]:
    """Labs of real agents (`wgcable agent`) on this run's kind of device; all taken down at
    teardown, pass or fail."""
    yield from _labs(tmp_path, device_kind)


@pytest.fixture
def make_userspace_lab(tmp_path: Path) -> Iterator[MakeLab]:
    """For tests where the kind of device does not matter (store, engine) or must be
    wireguard-go (killing its daemon)."""
    yield from _labs(tmp_path, "userspace")
