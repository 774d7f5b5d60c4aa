"""The benchmark runner still runs: ``python -m bench --quick`` on its two cheapest sections,
and the multinode section on its own.

It checks the shape of what is written (keys, positive figures, a PNG), never a timing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wgcable.lab.netns import list_namespaces

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]


def test_quick_bench_writes_table_json_and_plot(tmp_path: Path) -> None:
    before = set(list_namespaces())
    p = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--repeat", "1", "--only", "control,status",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads((tmp_path / "results.json").read_text())
    assert {"machine", "load_before", "load_after", "sections", "seconds"} <= doc.keys()
    assert set(doc["sections"]) == {"control", "status"}
    for name, sec in doc["sections"].items():
        assert "error" not in sec, sec.get("error")
        assert sec["rows"], name
        for row in sec["rows"]:
            assert {"metric", "impl", "n", "value", "unit"} <= row.keys()
            assert row["value"] > 0, row
            if "floor" in row:
                assert row["floor"] > 0, row
    control = doc["sections"]["control"]["result"]["levels"]
    assert set(control) == {"10", "100"}
    assert {"connect", "floor", "change", "floor_change"} <= control["10"].keys()
    assert "| control | connect N clusters from empty | 10 |" in p.stdout
    assert (tmp_path / "results.md").read_text().count("| status |") == 4
    png = tmp_path / "benchmarks.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Everything it made is gone again.
    assert not [n for n in set(list_namespaces()) - before if n.startswith("wgbc-")]


def test_quick_multinode_bench_rows(tmp_path: Path) -> None:
    """The multinode section in quick mode: a 2x2 lab, throughput both ways, route agent
    reaction and a gateway move; rows there with sane figures (no timing asserted)."""
    before = set(list_namespaces())
    p = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "multinode", "--out",
         str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    sec = json.loads((tmp_path / "results.json").read_text())["sections"]["multinode"]
    assert "error" not in sec, sec.get("error")
    rows = {(r["metric"], r["impl"]): r for r in sec["rows"]}
    assert len(rows) == len(sec["rows"]) == 8
    for r in rows.values():
        assert r["value"] > 0, r
        assert r["unit"] in ("Mbit/s", "ms"), r
    result = sec["result"]
    assert set(result["tcp"]) == {"workers", "gateways"}
    assert result["ratio"] > 0
    assert len(result["reaction"]["edit"]["samples"]) == 2
    assert len(result["reaction"]["restore"]["samples"]) == 2
    assert len(result["move"]["move"]["samples"]) == 1
    assert result["reaction"]["all"]["min"] > 0
    assert all(result["move"][k]["min"] > 0 for k in ("move", "routes", "ping", "published"))
    assert "| multinode | iperf3 TCP pod to pod across clusters" in p.stdout
    # Everything it made is gone again.
    assert not [n for n in set(list_namespaces()) - before if n.startswith("wglmb")]


_KUBE_NAT_CHECK = """
import os, sys
from bench.dataplane_bench import KUBE_TABLE, kube_nat, nat_chain_state, paired, spread
from wgcable.lab.netns import Namespace

assert paired([2.0, 3.0], [4.0, 3.0]) == [0.5, 1.0]
assert spread([0.5, 1.0, 0.75], ".2f") == "0.50-1.00"
ns = Namespace(sys.argv[1]).create()
try:
    kube_nat([ns.name], True)
    assert f"table ip {KUBE_TABLE}" in ns.run("nft", "list", "tables")
    chains = ns.run("nft", "list", "table", "ip", KUBE_TABLE)
    for hook in ("prerouting", "output", "postrouting"):
        assert f"type nat hook {hook}" in chains, chains
    ns.run("ping", "-c", "1", "-W", "1", "127.0.0.1")
    tracked = ns.run("cat", "/proc/net/nf_conntrack")
    assert "src=127.0.0.1" in tracked, tracked
    kube_nat([ns.name], False)
    assert KUBE_TABLE not in ns.run("nft", "list", "tables")
    assert nat_chain_state([ns.name]) == "absent"  # no agent, no table of ours
finally:
    ns.delete()
print("ok")
"""


def test_dataplane_kube_like_nat_table_loads_and_goes() -> None:
    """Baseline (b) of the dataplane section: the kube-proxy-like NAT table loads in a
    namespace (nft accepts it), turns connection tracking on (what it is there for), and
    comes out again. Under a second, no lab (the bench is not importable from pytest's
    path: a child process in the repository root)."""
    p = subprocess.run([sys.executable, "-c", _KUBE_NAT_CHECK, f"wgbk{os.getpid()}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip() == "ok"


def _run_check(script: str, timeout: float) -> None:
    """``script`` in a Python of its own (a bench set-up's signal handling and teardown,
    as when run by ``python -m bench``): it must print "ok" last and leave no namespace."""
    before = set(list_namespaces())
    p = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().endswith("ok")
    assert set(list_namespaces()) == before


_RENEW_CHECK = """
import sys
from bench import dataplane_bench as dp
s = dp.Setups()
s.lab_cms = s.lab_cms[:1]  # the agents' lab, defaults as deployed
try:
    paths = [s._lab(0, "wgcable", "agents"), s._hand_built(s.wg_topo)]
    paths.append(s._hand_built(s.rule_topo, "handbuilt-rule", "baseline (c)"))
    ruled = list(s.hand_gws)
    dp.policy_rule(ruled)
    paths.append(s._hand_built(s.sub_topo, "handbuilt-submariner", "baseline (d)",
                               keepalive=dp.SUBMARINER_KEEPALIVE, table=dp.POLICY_TABLE))
    sub, sub_nets = list(s.hand_gws), list(s.hand_nets)
    dp.submariner_like(sub_nets)
    cpus = dp.pinned_cpus()
    for _ in range(2):
        before = [p.wg_pids() for p in paths]
        s.renew()
        after = [p.wg_pids() for p in paths]
        for b, a in zip(before, after):
            assert len(a) == 2 and not set(a) & set(b), (b, a)
        for p in paths:  # the new daemons carry traffic, pinned
            got = dp.measure(p, 1, (), cpus=cpus)["tcp"]["mbps"]
            assert got > 1, (p.key, got)
            if cpus:
                import os
                tids = os.listdir(f"/proc/{p.wg_pids()[0]}/task")
                assert all(os.sched_getaffinity(int(t)) == {cpus[0]} for t in tids)
        for ns in ruled:  # (c)'s rule outlives its daemons
            import subprocess
            rules = subprocess.run(["ip", "-n", ns, "rule"], capture_output=True, text=True,
                                   check=True).stdout
            assert "150:\tfrom all lookup 150" in rules, rules
        assert len(s.daemons) >= 2 and len(sub) == 2
        run = lambda *a: subprocess.run(a, capture_output=True, text=True,
                                        check=True).stdout
        for d, ns, net, other in zip(s.daemons[-2:], sub, sub_nets, sub_nets[::-1]):
            # (d)'s features, on the new daemons too: keepalive, routes with src in table
            # 150 behind its rule, the clamp and the NAT chain.
            assert run(*d.wg("show", "wg0", "persistent-keepalive")).split()[1] == "10"
            routes = run("ip", "-n", ns, "route", "show", "table", "150")
            assert f"{other.subnets[0]} dev wg0 scope link src {net.gateway_pod_ip}" in routes
            assert "150:\tfrom all lookup 150" in run("ip", "-n", ns, "rule")
            table = run("ip", "netns", "exec", ns, "nft", "list", "table", "ip",
                        dp.SUBMARINER_TABLE)
            assert table.count("tcp option maxseg size set rt mtu") == 2, table
            assert "type nat hook postrouting priority srcnat - 1" in table, table
finally:
    s.close()
print("ok")
"""


def test_dataplane_renews_every_tunnels_daemons() -> None:
    """The dataplane section's new daemons between rounds: the agents' lab (its
    wireguard-go stopped by PID, the agents start new ones) and the hand-built tunnels
    (restarted; baseline (c)'s keeping its policy rule, (d)'s its keepalive, routes, rule
    and chains) get other PIDs, carry TCP again, and the sender's daemon is pinned. No
    namespace or daemon is left behind."""
    _run_check(_RENEW_CHECK, timeout=240)


_PROFILE_CHECK = """
import os, sys, tempfile
from bench import dataplane_bench as dp
from bench import dataplane_profile as prof
s = dp.Setups()
s.lab_cms = []
s.mtu = 1440
tmp = tempfile.mkdtemp()
try:
    hand = s._hand_built(s.wg_topo)
    cpus = dp.pinned_cpus()
    data = os.path.join(tmp, "hand.data")
    mbps = prof.record(hand, cpus, data)
    got = prof.report(data)
    recv = got[prof.cpu_key(cpus[1])]
    send = got[prof.cpu_key(cpus[0])]
    busy = {g: n for g, n in recv.items() if g != "idle"}
    # 6 s at one sample per 0.25 ms: about 24000 samples on each CPU, idle included.
    assert 12000 < sum(recv.values()) < 36000, recv
    assert 12000 < sum(send.values()) < 36000, send
    assert busy.get(prof.USER, 0) > 1000, recv  # the receiving daemon decrypts
    assert mbps > 10, mbps
    print(round(mbps), dict(recv))
finally:
    s.close()
    import shutil
    shutil.rmtree(tmp)
print("ok")
"""


@pytest.mark.skipif(shutil.which("perf") is None, reason="perf is not installed (linux-perf)")
def test_dataplane_profile_records_and_groups_a_real_run() -> None:
    """The dataplane-profile section's perf command lines on a real tunnel: a pinned TCP
    run recorded on both CPUs, read back into groups, the receiving daemon's own code
    among them; nothing left behind."""
    _run_check(_PROFILE_CHECK, timeout=180)
