"""Where each tunnel's CPU goes: ``perf`` samples during pinned iperf3 runs, per Gbit.

``python -m bench --only dataplane-profile [--repeat N]``. The agents' tunnel (a 2-cluster
lab, as deployed) and a hand-built one (``dataplane_bench``), both with the kube-like NAT
table loaded (baseline b, the unmet target) and, with ``WGCABLE_BENCH_PROFILE_BARE=1``,
without it (baseline a). Each round gives both tunnels new daemons and runs each, in
alternating order, pinned as ``dataplane`` pins them, with ``perf record -e cpu-clock``
on both CPUs for the middle of the run.

The figure that compares two paths that move different amounts of data is CPU time per
Gbit carried, per CPU: the receiving CPU is the bottleneck here (no idle samples on it,
some on the sender's), so a path that costs more of it per Gbit is that much slower.
The samples are grouped by what the agents add on the packet path (policy routing,
nftables, connection tracking, wireguard-go's own code and its clock reads for timers)
and the rest, and each group's difference between the paths is printed. ``cpu-clock``
because this VM has no hardware counters (``perf stat -e cycles`` reports "not
supported"); it samples at a fixed period of CPU time, idle included (``swapper``).
Recording costs throughput (about 5% at this period, both paths alike): the rates here
are not the dataplane section's.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from bench import dataplane_bench as dp
from bench.common import Row, row, summary
from bench.common import run as sh

PERIOD_NS = 250_000  # one sample per 0.25 ms of CPU time, on each CPU
RECORD_S = 6  # within each 8 s iperf3 run, from its first second
RUN_S = 8
BARE_ENV = "WGCABLE_BENCH_PROFILE_BARE"

# Kernel symbols by what puts them on the path. Policy routing: what the kernel does once a
# namespace has a rule of its own (every lookup through the rule list; fib_table_lookup
# is in every path, more often with rules, so it is counted apart).
GROUPS: list[tuple[str, re.Pattern[str]]] = [
    ("policy routing (rules)", re.compile(
        r"^(fib_rules_lookup|fib_get_table|fib4_rule_\w+|__fib_lookup|l3mdev_\w+)$")),
    ("route lookup (fib_table_lookup)", re.compile(r"^fib_table_lookup$")),
    ("nftables", re.compile(r"^(nft_\w+|nf_hook_slow|nf_tables_\w+)$")),
    ("connection tracking and NAT", re.compile(
        r"^(nf_conntrack_\w+|__nf_conntrack_\w+|nf_ct_\w+|ipv[46]_conntrack_\w+|nf_nat_\w+|"
        r"hash_conntrack_raw|__siphash_\w+|nf_confirm|ipv4_get_l4proto|nf_ct_get_tuple)$")),
    ("clock reads (vdso)", re.compile(r"^__vdso_clock_gettime$")),
    ("scheduling and wake-ups", re.compile(
        r"^(finish_task_switch\S*|_raw_spin_unlock_irqrestore|__schedule|schedule\w*|"
        r"try_to_wake_up|ttwu_\w+|futex_\w+|__futex_\w+)$")),
    ("copies to and from user", re.compile(r"^(_copy_to_iter|_copy_from_iter|_copy_to_user|"
                                            r"_copy_from_user|copy_\w+_user\w*)$")),
]
USER = "wireguard-go's own code"
OTHER = "everything else"
LINE = re.compile(r"^\s*[\d.]+%\s+(\d+)\s+(\d+)\s+(\S+)\s+(\S+)\s+\[(.)\]\s+(\S+)")


def group_of(comm: str, dso: str, sym: str) -> str:
    """The group a sample's symbol belongs to (``USER`` for wireguard-go's own code, which
    is stripped: its symbols are addresses)."""
    if dso == "wireguard-go" or dso.endswith("/wireguard-go"):
        return USER
    for name, pattern in GROUPS:
        if pattern.match(sym):
            return name
    return OTHER


def parse_report(text: str) -> dict[str, Counter[str]]:
    """``perf report --stdio -n -g none --sort cpu,comm,dso,sym`` as samples per CPU per
    group; idle (``swapper``) under ``"idle"``."""
    out: dict[str, Counter[str]] = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        samples, cpu, comm, dso, _, sym = m.groups()
        group = "idle" if comm == "swapper" else group_of(comm, dso, sym)
        out.setdefault(cpu, Counter())[group] += int(samples)
    return out


def per_gbit(samples: dict[str, Counter[str]], mbps: float) -> dict[str, dict[str, float]]:
    """CPU milliseconds per Gbit carried, per CPU and group (the run moved ``mbps`` for the
    RECORD_S seconds recorded)."""
    gbit = mbps * RECORD_S / 1000
    ms = PERIOD_NS / 1e6
    return {cpu: {g: n * ms / gbit for g, n in groups.items()}
            for cpu, groups in samples.items()}


def cpu_key(cpu: int) -> str:
    """How ``perf report --sort cpu`` names a CPU (``parse_report``'s keys)."""
    return f"{cpu:03d}"


@contextlib.contextmanager
def recording(data: str) -> Iterator[None]:
    """``perf record`` on every CPU into ``data``, for RECORD_S seconds from one second in:
    started with the run it records, it leaves out the run's first second (slow start)."""
    perf = subprocess.Popen(
        ["sh", "-c", 'sleep 1 && exec perf record -q -e cpu-clock -c "$0" -a '
         '-o "$1" -- sleep "$2"', str(PERIOD_NS), data, str(RECORD_S)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        _, err = perf.communicate(timeout=RUN_S + 30)
    if perf.returncode != 0:
        raise RuntimeError(f"perf record failed: {err.decode(errors='replace')}")


def record(p: dp.NetPath, cpus: tuple[int, int], data: str) -> float:
    """One pinned TCP run on ``p`` (``dataplane``'s ``measure``) with ``perf record`` on
    both CPUs; its Mbit/s."""
    got = dp.measure(p, RUN_S, (), cpus=cpus, during=lambda: recording(data))
    return float(got["tcp"]["mbps"])


def report(data: str) -> dict[str, Counter[str]]:
    return parse_report(sh(["perf", "report", "-i", data, "--stdio", "-n", "-g", "none",
                            "--no-children", "--sort", "cpu,comm,dso,sym"]))


def mean_costs(runs: Iterable[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    runs = list(runs)
    out: dict[str, dict[str, float]] = {}
    for r in runs:
        for cpu, groups in r.items():
            for g, v in groups.items():
                out.setdefault(cpu, {}).setdefault(g, 0.0)
                out[cpu][g] += v / len(runs)
    return out


def run(repeat: int, quick: bool = False) -> dict[str, Any]:
    if shutil.which("perf") is None:
        raise RuntimeError("perf not found (Debian: apt-get install linux-perf)")
    cpus = dp.pinned_cpus()
    if cpus is None:
        raise RuntimeError("dataplane-profile needs two CPUs to pin the tunnel's sides to")
    s = dp.Setups()
    s.lab_cms = s.lab_cms[:1]
    tmp = tempfile.mkdtemp(prefix="wgcable-profile-")
    pairs: list[tuple[str, dp.NetPath, dp.NetPath]] = []
    mbps: dict[str, list[float]] = {}
    costs: dict[str, list[dict[str, dict[str, float]]]] = {}
    try:
        agents = s._lab(0, "wgcable", "wgcable lab tunnel (agents)")
        hand = s._hand_built(s.wg_topo)
        lab = s.labs[0]
        lab_gws = [lab.gateway(1).gateway_ns, lab.gateway(2).gateway_ns]
        pairs.append(("b", dp.with_kube_nat(agents, lab_gws),
                      dp.with_kube_nat(hand, list(s.hand_gws))))
        if os.environ.get(BARE_ENV) == "1":
            pairs.append(("a", agents, hand))
        for r in range(repeat):
            if r:
                s.renew()
            for base, ours, theirs in pairs:
                for p in (ours, theirs) if r % 2 == 0 else (theirs, ours):
                    data = os.path.join(tmp, f"{p.key}-{r}.data")
                    got = record(p, cpus, data)
                    mbps.setdefault(p.key, []).append(got)
                    costs.setdefault(p.key, []).append(per_gbit(report(data), got))
                    os.unlink(data)
                    print(f"  dataplane-profile ({base}) round {r + 1}/{repeat}: {p.key}: "
                          f"{got:.0f} Mbit/s", file=sys.stderr, flush=True)
    finally:
        try:
            s.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    rows: list[Row] = []
    result: dict[str, Any] = {"cpus": list(cpus), "period_ns": PERIOD_NS}
    means = {key: mean_costs(runs) for key, runs in costs.items()}
    result["paths"] = {key: {"mbps": summary(mbps[key]), "cpu_ms_per_gbit": means[key]}
                       for key in costs}
    receiver, sender = cpu_key(cpus[1]), cpu_key(cpus[0])
    for base, ours, theirs in pairs:
        mine, ref = means[ours.key], means[theirs.key]
        for cpu, side in ((receiver, "receiving"), (sender, "sending")):
            a, b = mine.get(cpu, {}), ref.get(cpu, {})
            busy_a = sum(v for g, v in a.items() if g != "idle")
            busy_b = sum(v for g, v in b.items() if g != "idle")
            rows.append(row(f"CPU ms per Gbit, {side} CPU, baseline ({base})", "all busy", None,
                            busy_a, "ms/Gbit", floor=busy_b, floor_impl="hand-built",
                            note=f"{(busy_a / busy_b - 1) * 100:+.1f}%; idle "
                                 f"{a.get('idle', 0):.1f} against {b.get('idle', 0):.1f} "
                                 f"ms/Gbit; {summary(mbps[ours.key])['median']:.0f} against "
                                 f"{summary(mbps[theirs.key])['median']:.0f} Mbit/s"))
            for g in sorted((set(a) | set(b)) - {"idle"},
                            key=lambda g: -(a.get(g, 0) - b.get(g, 0))):
                d = a.get(g, 0) - b.get(g, 0)
                rows.append(row(f"CPU ms per Gbit, {side} CPU, baseline ({base})", g, None,
                                a.get(g, 0), "ms/Gbit", floor=b.get(g, 0),
                                floor_impl="hand-built",
                                note=f"{d:+.2f} ms/Gbit, {d / busy_b * 100:+.1f}% of the "
                                     "hand-built tunnel's busy time on this CPU"))
    result["rows"] = rows
    return result
