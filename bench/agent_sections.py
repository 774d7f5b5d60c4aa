"""The agent benchmark (bench/agent_bench.py) as two sections of ``python -m bench``.

- ``convergence``: ``agent_bench.convergence``: a 2-cluster lab with real agents; cluster
  2's endpoint file is removed, then renamed back into the store, and the time to the first
  ping reply pod 1 -> pod 2 through the rebuilt tunnel is taken (split by gateway 1's debug
  log into: store noticed + driver accepted, device and routes applied, first reply).
- ``agent``: ``agent_bench.steady``: gateway 1's agent and its wireguard-go, with 1 real
  remote cluster and 9, 99 and 999 fake ones (10, 100, 1000 peers) that never answer, each
  with a healthCheckIP: CPU (utime+stime) and RSS sampled every second.

Both build their lab under a temporary root and remove it (and the root) on every exit.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from typing import Any

from bench import agent_bench
from bench.common import Row, pct, plain_log_axes, row, summary

CONVERGENCE_SEGMENTS = (
    ("accepted", "file written -> driver accepted the endpoint"),
    ("applied", "accepted -> device and routes applied"),
    ("reply", "applied -> first ping reply"),
)


def _tag() -> str:
    return f"b{os.getpid() % 100000}"


def run_convergence(repeat: int, quick: bool = False) -> dict[str, Any]:
    root = tempfile.mkdtemp(prefix="wgcable-bench-")
    try:
        runs = agent_bench.convergence(root, f"{_tag()}c", repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    total = [r.reply * 1000 for r in runs]
    seg: dict[str, list[float]] = {"accepted": [], "applied": [], "reply": []}
    for r in runs:
        if r.accepted is not None:
            seg["accepted"].append(r.accepted * 1000)
            if r.applied is not None:
                seg["applied"].append((r.applied - r.accepted) * 1000)
        if r.applied is not None:
            seg["reply"].append((r.reply - r.applied) * 1000)
    rows: list[Row] = [row("endpoint written -> first ping reply", "wgcable agent (lab)", None,
                           statistics.median(total), "ms", p90=pct(total, 0.9),
                           note=f"max {max(total):.0f} ms over {len(total)} runs; ping "
                                f"every {float(agent_bench.PING_INTERVAL) * 1000:.0f} ms")]
    for key, label in CONVERGENCE_SEGMENTS:
        if seg[key]:
            rows.append(row(f"  {label}", "", None, statistics.median(seg[key]), "ms",
                            p90=pct(seg[key], 0.9)))
    return {"rows": rows, "total_ms": summary(total),
            "segments_ms": {k: summary(v) for k, v in seg.items() if v}}


def plot_convergence(result: dict[str, Any], ax: Any) -> None:
    data = [result["total_ms"]["samples"]]
    labels = ["total"]
    for key, label in CONVERGENCE_SEGMENTS:
        if key in result["segments_ms"]:
            data.append(result["segments_ms"][key]["samples"])
            labels.append(label.replace(" -> ", "\n-> "))
    ax.boxplot(data, orientation="horizontal", tick_labels=labels)
    for i, d in enumerate(data, start=1):
        ax.plot(d, [i] * len(d), "o", alpha=0.4, color="C0", markersize=3)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("ms")
    ax.set_title("Convergence: endpoint written -> first reply")
    ax.grid(True, axis="x", alpha=0.3)


def run_agent(repeat: int, quick: bool = False) -> dict[str, Any]:
    """``repeat`` is not used: each peer count is one sampling window."""
    counts = [9] if quick else [9, 99, 999]
    seconds = 3.0 if quick else 20.0
    root = tempfile.mkdtemp(prefix="wgcable-bench-")
    try:
        levels, note = agent_bench.steady(root, f"{_tag()}s", counts, seconds, 120.0, True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows: list[Row] = []
    out_levels = []
    for lv in levels:
        a, w = lv.agent, lv.wg
        if lv.converge is None:  # the 1-peer baseline: in the JSON and the plot only
            out_levels.append(_level(lv))
            continue
        conv = "" if lv.converge is None else f"; all in the status {lv.converge:.1f} s after " \
            "the files were written"
        rows += [
            row("agent CPU (steady state)", "wgcable agent", lv.peers, a.cpu_mean, "%",
                p90=None, note=f"busiest second {a.cpu_max:.1f}%{conv}"),
            row("agent RSS", "wgcable agent", lv.peers, a.rss_mean, "MiB",
                note=_growth(a)),
            row("wireguard-go CPU (steady state)", "its wireguard-go", lv.peers, w.cpu_mean,
                "%", note=f"busiest second {w.cpu_max:.1f}%"),
            row("wireguard-go RSS", "its wireguard-go", lv.peers, w.rss_mean, "MiB",
                note=_growth(w)),
        ]
        out_levels.append(_level(lv))
    return {"rows": rows, "levels": out_levels, "sample_s": seconds, "note": note}


def _growth(u: agent_bench.Usage) -> str:
    """A note only when memory still grew during the window."""
    if u.rss_last > u.rss_mean * 1.05:
        return f"still growing: max {u.rss_max:.1f}, last {u.rss_last:.1f} MiB"
    return ""


def _level(lv: agent_bench.Level) -> dict[str, Any]:
    return {"peers": lv.peers, "converge_s": lv.converge, "on_device": lv.on_device,
            "statuses": lv.statuses, "ping_ms": lv.ping_ms, "real": lv.real,
            "agent": vars(lv.agent), "wireguard_go": vars(lv.wg)}


def plot_agent(result: dict[str, Any], ax: Any) -> None:
    lv = result["levels"]
    peers = [x["peers"] for x in lv]
    ax.plot(peers, [x["agent"]["cpu_mean"] for x in lv], "o-", color="C0", label="agent CPU%")
    ax.plot(peers, [x["wireguard_go"]["cpu_mean"] for x in lv], "s-", color="C1",
            label="wireguard-go CPU%")
    plain_log_axes(ax, y=False)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("peers (1 real + fakes that never answer)")
    ax.set_ylabel("CPU, % of one core (mean)")
    ax2 = ax.twinx()
    ax2.plot(peers, [x["agent"]["rss_mean"] for x in lv], "o--", color="C0", alpha=0.6,
             label="agent RSS")
    ax2.plot(peers, [x["wireguard_go"]["rss_mean"] for x in lv], "s--", color="C1", alpha=0.6,
             label="wireguard-go RSS")
    ax2.set_ylabel("RSS MiB (dashed)")
    ax2.set_ylim(bottom=0)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    ax.set_title("Agent steady state: CPU and RSS")
    ax.grid(True, which="both", alpha=0.3)
