"""The health checker against real ICMP, entirely inside two namespaces joined by a veth.

The checker runs in the test process but opens its sockets in namespace ``a``; every echo goes
to an address inside namespace ``b``'s subnet, never into the root namespace.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest

from wgcable.engine import health
from wgcable.engine.health import HealthChecker, HealthResult
from wgcable.lab.netns import Namespace, veth_pair

pytestmark = pytest.mark.netns

A4, B4, ABSENT4 = "198.18.0.1", "198.18.0.2", "198.18.0.9"
A6, B6, ABSENT6 = "fdce:18::1", "fdce:18::2", "fdce:18::9"
INTERVAL = 0.1
MAX_LOSSES = 3


@pytest.fixture
def pair() -> Iterator[tuple[Namespace, Namespace]]:
    made: list[Namespace] = []
    try:
        a = Namespace(f"wgct-h{os.getpid()}-a")
        made.append(a.create())
        b = Namespace(f"wgct-h{os.getpid()}-b")
        made.append(b.create())
        veth_pair(a, "vh-a", b, "vh-b")
        a.run("ip", "addr", "add", f"{A4}/24", "dev", "vh-a")
        b.run("ip", "addr", "add", f"{B4}/24", "dev", "vh-b")
        # nodad: usable at once, no duplicate address detection wait.
        a.run("ip", "-6", "addr", "add", f"{A6}/64", "dev", "vh-a", "nodad")
        b.run("ip", "-6", "addr", "add", f"{B6}/64", "dev", "vh-b", "nodad")
        yield a, b
    finally:
        for ns in reversed(made):
            ns.delete()


def _wait(checker: HealthChecker, cluster: str, ok: bool, timeout: float = 5.0) -> HealthResult:
    """Poll until the cluster's result is healthy with a latency (ok) or unhealthy."""
    deadline = time.monotonic() + timeout
    while True:
        r = checker.result(cluster)
        assert r is not None
        done = (r.healthy and r.latency is not None) if ok else not r.healthy
        if done or time.monotonic() > deadline:
            return r
        time.sleep(INTERVAL / 2)


def test_ping_v4_v6_and_an_absent_address(pair: tuple[Namespace, Namespace]) -> None:
    a, _ = pair
    checker = HealthChecker(interval=INTERVAL, max_losses=MAX_LOSSES, netns=a.name)
    checker.set_targets({"b4": B4, "b6": B6, "gone4": ABSENT4, "gone6": ABSENT6})
    with checker:
        for cluster in ("b4", "b6"):
            r = _wait(checker, cluster, ok=True)
            assert r.available, cluster
            assert r.healthy, cluster
            assert r.latency is not None, cluster
            assert 0 < r.latency.average < 1, r.latency
            assert r.latency.min <= r.latency.average <= r.latency.max
            assert r.last_reply_age is not None
            assert r.last_reply_age < 1
        for cluster in ("gone4", "gone6"):
            r = _wait(checker, cluster, ok=False)
            assert not r.healthy, cluster
            assert r.consecutive_losses > MAX_LOSSES
            assert r.latency is None
        # The reachable ones stayed healthy meanwhile.
        still = checker.result("b4")
        assert still is not None
        assert still.healthy
        assert still.consecutive_losses == 0


def test_source_ip_and_retarget(pair: tuple[Namespace, Namespace]) -> None:
    a, _ = pair
    checker = HealthChecker(interval=INTERVAL, max_losses=MAX_LOSSES, source_ip=[A4, A6],
                            netns=a.name)
    checker.set_targets({"b": ABSENT4})
    with checker:
        assert not _wait(checker, "b", ok=False).healthy
        # The cluster's health check IP moves to one that answers: it recovers, fresh stats.
        checker.set_targets({"b": B6})
        r = _wait(checker, "b", ok=True)
        assert r.healthy
        assert r.ip == B6
        checker.set_targets({})
        assert checker.result("b") is None
    # stop() returned: the thread is gone.
    assert checker._thread is None


def test_falls_back_to_ping_sockets(
    pair: tuple[Namespace, Namespace], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = pair
    # Ping sockets are allowed per namespace by group; let root's group use them in ``a``.
    a.run("sh", "-c", "echo 0 2147483647 > /proc/sys/net/ipv4/ping_group_range")
    make = health._make_socket

    def no_raw(
        family: socket.AddressFamily, kind: socket.SocketKind, source_ip: str | None
    ) -> socket.socket:
        if kind == socket.SOCK_RAW:
            raise PermissionError(1, "Operation not permitted")
        return make(family, kind, source_ip)

    monkeypatch.setattr(health, "_make_socket", no_raw)
    checker = HealthChecker(interval=INTERVAL, max_losses=MAX_LOSSES, netns=a.name)
    checker.set_targets({"b4": B4, "b6": B6, "gone4": ABSENT4})
    with checker:
        for cluster in ("b4", "b6"):
            r = _wait(checker, cluster, ok=True)
            assert r.healthy, cluster
            assert r.latency is not None, cluster
            assert 0 < r.latency.average < 1, r.latency
        assert not _wait(checker, "gone4", ok=False).healthy
        assert not any(s.raw for s in checker._socks.values())
