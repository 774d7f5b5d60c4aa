"""Gateway high availability in the lab (issue 14): two gateway candidates per cluster, one
active by a lease; node death, handover, restarts and many failovers in a row.

Labs of 2 clusters of 3 nodes: candidates on nodes 0 and 1, and node 2 a plain worker, so
that a failover is seen from a pod on the new gateway's node and from one on neither.
Leases are the lab's (1.5 s, renew deadline 1 s, retry 0.2 s).
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import pytest

from slowness import scaled
from wgcable.lab.lab import GatewayState, Lab

from .labtools import MakeLab, Pinger, on_gateway, unreachable_pod_pairs, wait_for

pytestmark = pytest.mark.netns

DEADLINE = 30


def ha_lab(make_lab: MakeLab) -> Lab:
    lab = make_lab(2, nodes=3, gateways=2)
    for c in (1, 2):
        wait_for(lambda c=c: lab.active(c) is not None, DEADLINE, f"cluster{c}'s active gateway")
    assert unreachable_pod_pairs(lab, settle=30) == []
    return lab


def active(lab: Lab, cluster: int) -> GatewayState:
    gw = lab.active(cluster)
    assert gw is not None, f"cluster{cluster} has no single active gateway"
    return gw


def endpoints_of(lab: Lab, cluster: int) -> list[str]:
    cid = lab.gateway(cluster).cluster_id
    return sorted(p.stem for p in (lab.store_dir / "endpoints").iterdir()
                  if p.name.startswith(f"{cid}-"))


def lease(lab: Lab, cluster: int) -> dict[str, object]:
    doc = json.loads((lab.store_dir / "leases" / f"cluster{cluster}.json").read_text())
    spec: dict[str, object] = doc["spec"]
    return spec


def peers(lab: Lab, gw: GatewayState) -> list[str]:
    return on_gateway(lab, gw, "wg", "show", "subwg0", "peers").split()


def routes(lab: Lab, gw: GatewayState) -> str:
    """Table 220's routes ("" when the table does not exist: a passive that never had any)."""
    done = subprocess.run(lab.gateway_cmd(gw, "ip", "route", "show", "table", "220"),
                          capture_output=True, text=True, check=False)
    return done.stdout.strip()


def assert_clean(lab: Lab) -> None:
    """One Endpoint per cluster, the active gateway's; the active holds one peer per remote
    cluster, with the remote's active key; every other live candidate holds no peer and
    no route (device and key kept: warm)."""
    for c in (1, 2):
        gw = active(lab, c)
        st = lab.status(gw)
        assert st is not None
        own = st.gateway.local_endpoint
        assert endpoints_of(lab, c) == [own.object_name()]
        other = active(lab, 3 - c)
        other_st = lab.status(other)
        assert other_st is not None
        assert peers(lab, gw) == [other_st.gateway.local_endpoint.backend_config["publicKey"]]
        for cand in lab.candidates(c):
            if cand is gw or not lab.agent_alive(cand):
                continue
            wait_for(lambda cand=cand: peers(lab, cand) == [] and routes(lab, cand) == "",
                     DEADLINE, f"{cand.label}: no peers and no routes while passive")


class ActiveSampler:
    """Samples, every 20 ms, which candidates of a cluster say they are active (running
    agents, fresh status): the most seen at once."""

    def __init__(self, lab: Lab, cluster: int) -> None:
        self.lab, self.cluster = lab, cluster
        self.most = 0
        self.samples = 0
        self.seen_two: list[list[str]] = []  # (time, labels...) of each such sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            now = [g.label for g in self.lab.actives(self.cluster)]
            self.samples += 1
            self.most = max(self.most, len(now))
            if len(now) > 1:
                self.seen_two.append([time.strftime("%H:%M:%S"), f"{time.time() % 1:.3f}",
                                      *now])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_failover_node_death_every_surviving_pod_reaches_the_other_cluster(
        make_userspace_lab: MakeLab) -> None:
    """Cluster 1's active gateway node dies (processes SIGKILLed by PID, links down): the
    standby takes the lease once it expires, publishes its Endpoint and removes the dead
    one's; cluster 2 follows; the route agents follow. Pods on the new gateway's node and on
    the plain worker reach cluster 2 again, and cluster 2's pods reach them."""
    lab = ha_lab(make_userspace_lab)
    old = active(lab, 1)
    standby = next(g for g in lab.candidates(1) if g is not old)
    survivors = [n.index for n in lab.nodes(1) if n.index != old.node]
    pingers = [Pinger(lab, 1, 2, src_node=j) for j in survivors]
    pingers += [Pinger(lab, 2, 1, dst_node=j) for j in survivors]
    try:
        for p in pingers:
            p.wait_replies(5, DEADLINE, "before the node dies")
        before = [p.replies() for p in pingers]
        t0 = time.monotonic()
        lab.kill_node(1, old.node)
        took: list[float] = []
        for p, n in zip(pingers, before, strict=True):
            wait_for(lambda p=p, n=n: p.replies() > n + 1, DEADLINE,
                     "pings through the new gateway")
            took.append(time.monotonic() - t0)
    finally:
        for p in pingers:
            p.stop()
    print(f"node death to pings through the new gateway: "
          f"{', '.join(f'{t:.2f}' for t in took)} s")
    assert lab.active(1) is standby
    assert lease(lab, 1)["holderIdentity"] == f"{standby.hostname}-submariner-gateway"
    assert_clean(lab)


def test_handover_makes_before_it_breaks(make_userspace_lab: MakeLab) -> None:
    """`wgcable handover` (SIGUSR1) of the active gateway, while a worker of cluster 2 pings
    a worker of cluster 1 ten times a second: the standby takes over, then back again.
    Make before break: a handover loses at most the pings of the moment the route agents
    lag the remote cluster (the issue's target, at most 1, is the bench's to check: `ha`,
    0-1 here; under a CI run's load 2 were seen); a break before make loses many more."""
    lab = ha_lab(make_userspace_lab)
    for _ in range(2):
        old = active(lab, 1)
        with Pinger(lab, 2, 1, src_node=2, dst_node=2) as ping:
            ping.wait_replies(10, DEADLINE, "before the handover")
            lab.handover(1)
            wait_for(lambda old=old: lab.active(1) not in (None, old), DEADLINE,
                     "the standby to be active")
            ping.wait_replies(15, DEADLINE, "after the handover")
            sent, lost = ping.stop()
        print(f"handover {old.label} -> {active(lab, 1).label}: {len(lost)} of {sent} lost")
        assert len(lost) <= 3, ping.output[-2000:]
    assert_clean(lab)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_failover_none_when_the_active_agent_restarts(make_userspace_lab: MakeLab,
                                                      sig: signal.Signals) -> None:
    """The active gateway's agent killed or stopped, then started again: it is still the
    holder (its lease did not expire, or it renews its own), the standby never acts, and no
    ping is lost."""
    lab = ha_lab(make_userspace_lab)
    gw = active(lab, 1)
    transitions = lease(lab, 1)["leaseTransitions"]
    sampler = ActiveSampler(lab, 1)
    with Pinger(lab, 2, 1, src_node=2, dst_node=2) as ping:
        ping.wait_replies(10, DEADLINE, "before the restart")
        lab.stop_agent(gw, sig)
        lab.start_agent(gw)
        wait_for(lambda: (s := lab.status(gw)) is not None and s.pid == gw.agent_pid
                 and s.gateway.ha_status == "active", DEADLINE, "the restarted agent")
        ping.wait_replies(15, DEADLINE, "after the restart")
        _, lost = ping.stop()
    sampler.stop()
    assert lost == [], ping.output[-2000:]
    assert lab.active(1) is gw
    assert lease(lab, 1)["leaseTransitions"] == transitions
    standby = next(g for g in lab.candidates(1) if g is not gw)
    assert "passive -> active" not in lab.log_file(standby).read_text()
    assert sampler.most == 1, sampler.seen_two


def assert_lab_status_shows_roles(lab: Lab) -> None:
    """`wgcable lab status` (text and JSON) says active or passive for every candidate
    (checked on the fifty-failover test's lab: a lab of its own cost 8 s)."""
    from wgcable.cli.lab import status_json, status_text

    doc = status_json(lab)
    roles = {g["hostname"]: g["haStatus"] for c in doc["clusters"] for g in c["gateways"]}
    assert sorted(roles.values()) == ["active", "active", "passive", "passive"]
    text = status_text(lab)
    for g in lab.candidates():
        row = next(line for line in text.splitlines() if line.startswith(g.label + " "))
        assert row.split()[-1] == roles[g.hostname]


def test_failover_fifty_in_a_row_never_two_actives_nothing_stale(
        make_userspace_lab: MakeLab) -> None:
    """50 failovers of cluster 1: handovers, and every fifth the active agent SIGKILLed
    (the lease expires) and started again (as the passive one). Sampled every 20 ms: never
    two actives. At the end: one Endpoint per cluster, no stale peer or route anywhere,
    and every pod pair reachable."""
    lab = ha_lab(make_userspace_lab)
    assert_lab_status_shows_roles(lab)
    sampler = ActiveSampler(lab, 1)
    t0 = time.monotonic()
    new = active(lab, 1)
    try:
        for i in range(50):
            old = new
            if i % 5 == 4:
                lab.stop_agent(old, signal.SIGKILL)
            else:
                lab.handover(1)
            wait_for(lambda old=old: lab.active(1) not in (None, old), DEADLINE,
                     f"failover {i + 1}")
            new = active(lab, 1)
            if not lab.agent_alive(old):
                lab.start_agent(old)
                # Running before the next handover: a handover with no standby up goes back
                # to the same gateway (seen under load: "failover 11" never came).
                wait_for(lambda old=old: (s := lab.status(old)) is not None
                         and s.pid == old.agent_pid, DEADLINE, f"{old.label} running again")
    finally:
        sampler.stop()
    print(f"50 failovers in {time.monotonic() - t0:.1f} s; {sampler.samples} samples, "
          f"at most {sampler.most} active at once")
    assert sampler.samples > 100
    assert sampler.most == 1, sampler.seen_two[:5]
    wait_for(lambda: all(lab.status(g) is not None and lab.status(g).pid == g.agent_pid
                         for g in lab.candidates(1)), DEADLINE, "every agent's status")
    assert_clean(lab)
    assert unreachable_pod_pairs(lab, settle=scaled(10)) == []


def test_failover_none_while_nobody_can_reach_the_lease(make_userspace_lab: MakeLab) -> None:
    """The lease is unreachable for every candidate (its directory replaced by a file):
    the active gateway stops acting as active after its renew deadline (fenced: it says
    passive and changes nothing) but keeps its tunnels, nobody takes over, no ping is lost;
    once the lease is back, the same gateway is active again."""
    lab = ha_lab(make_userspace_lab)
    gw = active(lab, 1)
    leases = lab.store_dir / "leases"
    away = leases.with_name(".leases-away")
    with Pinger(lab, 2, 1, src_node=2, dst_node=2) as ping:
        ping.wait_replies(10, DEADLINE, "before the outage")
        leases.rename(away)
        leases.write_text("not a directory\n")
        try:
            wait_for(lambda: lab.actives(1) == [], DEADLINE, "the active gateway fenced")
            st = lab.status(gw)
            assert st is not None
            assert "gateway lease" in st.gateway.status_failure
            ping.wait_replies(20, DEADLINE, "with nobody active")
            assert peers(lab, gw) != []  # its tunnels are kept
        finally:
            leases.unlink()
            away.rename(leases)
        wait_for(lambda: lab.active(1) is gw, DEADLINE, "the same gateway active again")
        ping.wait_replies(10, DEADLINE, "after the outage")
        _, lost = ping.stop()
    assert lost == [], ping.output[-2000:]
