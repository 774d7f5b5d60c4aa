"""The dataplane-profile section's arithmetic: perf's report read into groups per CPU, and
CPU time per Gbit (the lines below are in the format `perf report -n --sort
cpu,comm,dso,sym` prints)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]

REPORT = """\
# Samples: 48K of event 'cpu-clock'
#
# Overhead       Samples  CPU  Command          Shared Object      Symbol
# ........  ............  ...  ...............  .................  ......
#
     8.01%          3644  000  wireguard-go     [kernel.kallsyms]  [k] _raw_spin_unlock_irqrestore
     4.14%          1882  001  wireguard-go     [kernel.kallsyms]  [k] _raw_spin_unlock_irqrestore
     1.97%           896  000  swapper          [kernel.kallsyms]  [k] pv_native_safe_halt
     0.90%           400  001  wireguard-go     wireguard-go       [.] 0x000000000011b56c
     0.50%           200  001  wireguard-go     [kernel.kallsyms]  [k] fib_rules_lookup
     0.40%           160  001  wireguard-go     [kernel.kallsyms]  [k] fib4_rule_match
     0.30%           120  001  wireguard-go     [kernel.kallsyms]  [k] fib_table_lookup
     0.25%           100  001  wireguard-go     [kernel.kallsyms]  [k] nft_do_chain
     0.20%            80  001  wireguard-go     [kernel.kallsyms]  [k] __nf_conntrack_find_get
     0.15%            60  001  wireguard-go     [vdso]             [.] __vdso_clock_gettime
     0.10%            40  001  iperf3           libc.so.6          [.] __memmove_avx_unaligned
     0.05%            20  001  wireguard-go     [kernel.kallsyms]  [k] ip_forward
"""


@pytest.fixture
def prof(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT))  # `bench` is a folder of the repository
    from bench import dataplane_profile
    return dataplane_profile


def test_report_is_read_into_groups_per_cpu(prof: ModuleType) -> None:
    got = prof.parse_report(REPORT)
    assert set(got) == {"000", "001"}
    assert (prof.cpu_key(0), prof.cpu_key(1)) == ("000", "001")  # as the run looks them up
    assert got["000"] == {"scheduling and wake-ups": 3644, "idle": 896}
    one = got["001"]
    assert one["policy routing (rules)"] == 360
    assert one["route lookup (fib_table_lookup)"] == 120
    assert one["nftables"] == 100
    assert one["connection tracking and NAT"] == 80
    assert one["clock reads (vdso)"] == 60
    assert one[prof.USER] == 400  # stripped: an address, placed by its object
    assert one[prof.OTHER] == 40 + 20
    assert sum(one.values()) == 1882 + 400 + 200 + 160 + 120 + 100 + 80 + 60 + 40 + 20


def test_header_and_call_graph_lines_are_not_samples(prof: ModuleType) -> None:
    assert prof.parse_report("# Samples: 1K\n            |--7.77%--_raw_spin_unlock\n") == {}


def test_cpu_time_per_gbit(prof: ModuleType) -> None:
    # 4000 samples of 0.25 ms = 1 s of CPU, while 1000 Mbit/s ran for RECORD_S seconds.
    got = prof.per_gbit({"001": {"nftables": 4000}}, 1000.0)
    gbit = 1000.0 * prof.RECORD_S / 1000
    assert prof.PERIOD_NS == 250_000
    assert got == {"001": {"nftables": pytest.approx(1000 / gbit)}}  # 1000 ms of CPU


def test_means_over_runs(prof: ModuleType) -> None:
    got = prof.mean_costs([{"001": {"nftables": 2.0}}, {"001": {"nftables": 4.0, "idle": 1.0}}])
    assert got == {"001": {"nftables": 3.0, "idle": 0.5}}
