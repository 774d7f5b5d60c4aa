"""Run wgcable's benchmarks: one table, one JSON file, one plot.

As root, from the repository root::

    .venv/bin/python -m bench [--quick] [--only control,status,...] [--out bench/results]

Writes ``results.json`` (every figure and raw sample, the machine and its load),
``results.md`` (the table printed to stdout) and ``benchmarks.png`` into ``--out``.

Sections are pluggable: each entry of :data:`SECTIONS` names a module and a function
``run(repeat, [quick=...]) -> dict``. If the dict has ``"rows"`` (see ``bench.common.Row``)
they make the table; otherwise every number in it becomes a row of its own. An optional
``plot(result, ax)`` function draws the section's panel of the figure. Every section cleans
up after itself (namespaces, processes by PID, temp files), also on Ctrl-C and SIGTERM; a
section that fails is reported and the others still run. Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Row, load, signals_raise


@dataclass(frozen=True)
class Section:
    name: str
    module: str
    func: str = "run"
    plot: str = "plot"  # the module's plot(result, ax), if it has one
    repeat: int = 10  # full run
    quick_repeat: int = 2  # --quick
    what: str = ""
    default: bool = True  # False: runs only when named in --only (a long diagnosis)


SECTIONS: list[Section] = [
    Section("control", "bench.control_bench", "run_control", "plot_control", 10, 2,
            "peers + routes for N clusters: driver vs wg setconf + ip -batch"),
    Section("status", "bench.control_bench", "run_status", "plot_status", 20, 3,
            "get_connections() vs wg show dump"),
    Section("convergence", "bench.agent_sections", "run_convergence", "plot_convergence",
            10, 2, "endpoint written -> first ping reply through the tunnel"),
    Section("dataplane", "bench.dataplane_bench", "run", "plot", 5, 1,
            "iperf3 through the lab tunnel vs hand-built wireguard-go (bare, and with a "
            "kube-proxy-like nat table) vs no WireGuard"),
    Section("dataplane-hypotheses", "bench.dataplane_hypotheses", "run", "", 5, 1,
            "TCP through the lab tunnel with / without each suspect, one at a time "
            "(~17 min at 5 rounds; only with --only)", default=False),
    Section("dataplane-profile", "bench.dataplane_profile", "run", "", 5, 1,
            "perf samples per Gbit, agents' tunnel vs hand-built (kube-like nat table): "
            "where the receiving CPU's time goes (~2 min at 5 rounds; only with --only)",
            default=False),
    Section("agent", "bench.agent_sections", "run_agent", "plot_agent", 1, 1,
            "agent and wireguard-go CPU and RSS at 10/100/1000 peers"),
    Section("recovery", "bench.recovery_bench", repeat=10, quick_repeat=2,
            what="wireguard-go SIGKILLed -> device, peers, routes and pings back"),
    Section("broker", "bench.broker_bench", repeat=10, quick_repeat=2,
            what="Kubernetes broker: lab start, Endpoint created via the API -> first reply"),
    Section("multinode", "bench.multinode_bench", repeat=5, quick_repeat=1,
            what="2 nodes per cluster: route agents repointed, gateway moved, worker TCP"),
    Section("ha", "bench.ha_bench", repeat=5, quick_repeat=1,
            what="2 gateways per cluster: node death and handover to first ping; renewals"),
    Section("firstcontact", "bench.firstcontact_bench", repeat=20, quick_repeat=3,
            what="two gateways meet at once -> a ping each way: answer-first vs both initiate"),
    Section("natdiscovery", "bench.natdiscovery_bench", repeat=5, quick_repeat=1,
            what="NAT discovery: Endpoint appears -> path chosen -> first ping, per case"),
    Section("rotation", "bench.rotation_bench", repeat=10, quick_repeat=2,
            what="key rotation under pings, both stores: lost, time to handshake, extra RTT"),
    Section("scale-broker", "bench.scale_bench", "run_broker", "plot", 5, 2,
            "one agent, real API server, N = 10/100/1000 Endpoints: apply, RSS, API, 410"),
    Section("scale-directory", "bench.scale_bench", "run_directory", "plot", 5, 2,
            "one agent, directory store, N = 10/100/1000 files: apply, RSS, one change"),
]

TOOLS = ("ip", "nsenter", "wg", "wireguard-go", "ping", "iperf3", "nft")


# --- running -------------------------------------------------------------------------------


def call_section(sec: Section, repeat: int, quick: bool) -> dict[str, Any]:
    mod = importlib.import_module(sec.module)
    fn: Callable[..., dict[str, Any]] = getattr(mod, sec.func)
    kwargs: dict[str, Any] = {}
    if "quick" in inspect.signature(fn).parameters:
        kwargs["quick"] = quick
    result = fn(repeat, **kwargs)
    if not isinstance(result, dict):
        raise TypeError(f"{sec.module}.{sec.func} returned {type(result).__name__}, not a dict")
    return result


def flatten(result: dict[str, Any], prefix: str = "") -> list[Row]:
    """Rows for a section that returns no ``rows``: every number, named by its key path
    (a unit is guessed from a ``_ms``/``_s``/``_mib`` suffix)."""
    rows: list[Row] = []
    for k, v in result.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            rows += flatten(v, f"{key}.")
        elif isinstance(v, int | float) and not isinstance(v, bool):
            unit = next((u for s, u in (("_ms", "ms"), ("_s", "s"), ("_mib", "MiB"),
                                        ("_pct", "%")) if key.endswith(s)), "")
            rows.append({"metric": key, "impl": "", "n": None, "value": float(v), "unit": unit})
    return rows


def rows_of(result: dict[str, Any]) -> list[Row]:
    rows = result.get("rows")
    if isinstance(rows, list):
        return rows
    return flatten(result)


# --- the machine -------------------------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (p.stdout or p.stderr).strip()
    return text.splitlines()[0] if text else "?"


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kib = 0
    os_name = "?"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    root = Path(__file__).resolve().parent.parent
    return {
        "cpus": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kib / 2**20, 1),
        "os": os_name, "kernel": platform.release(), "python": platform.python_version(),
        "kvm": os.path.exists("/dev/kvm"),
        "wireguard_go": _first_line(["wireguard-go", "--version"]),
        "wg": _first_line(["wg", "--version"]).split(" - ")[0],
        "iperf3": _first_line(["iperf3", "--version"]),
        "commit": _first_line(["git", "-C", str(root), "describe", "--always", "--dirty"]),
    }


# --- output --------------------------------------------------------------------------------


def fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    a = abs(x)
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def table(sections: dict[str, Any]) -> str:
    head = ["section", "measurement", "N", "implementation", "median", "p90", "unit",
            "floor / reference", "ref", "x ref"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    notes: list[str] = []
    for name, sec in sections.items():
        if "error" in sec:
            lines.append(f"| {name} | FAILED: {sec['error']} |" + " |" * (len(head) - 2))
            continue
        for r in sec["rows"]:
            floor = r.get("floor")
            ratio = f"{r['value'] / floor:.2f}" if floor else ""
            n = "" if r.get("n") is None else str(r["n"])
            cells = [name, r["metric"], n, r["impl"].strip(), fmt(r["value"]),
                     fmt(r.get("p90")), r["unit"], r.get("floor_impl", ""), fmt(floor), ratio]
            lines.append("| " + " | ".join(cells) + " |")
            if r.get("note"):
                what = ", ".join(x for x in (name, r["metric"].strip(), r["impl"].strip(),
                                              f"N={n}" if n else "") if x)
                notes.append(f"- {what}: {r['note']}")
    out = "\n".join(lines)
    if notes:
        out += "\n\nNotes:\n\n" + "\n".join(notes)
    return out + "\n"


def header(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    return (f"wgcable benchmarks, {doc['started']} ({'quick' if doc['quick'] else 'full'} "
            f"run, {doc['seconds']:.0f} s), commit {m['commit']}\n"
            f"{m['cpus']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, {m['os']}, kernel "
            f"{m['kernel']}, KVM device {'present' if m['kvm'] else 'absent'}, Python "
            f"{m['python']}, {m['wireguard_go']}, {m['wg']}\n"
            f"load average (1/5/15 min): {doc['load_before']} at the start, "
            f"{doc['load_after']} at the end\n")


def plot(sections: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[Callable[[dict[str, Any], Any], None], dict[str, Any], str]] = []
    for name, sec in sections.items():
        if "error" in sec:
            continue
        spec = next(s for s in SECTIONS if s.name == name)
        mod = importlib.import_module(spec.module)
        fn = getattr(mod, spec.plot, None)
        panels.append((fn if callable(fn) else _plot_rows, sec["result"], name))
    if not panels:
        return
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.4 * cols, 4.2 * nrows), squeeze=False)
    flat = [ax for line in axes for ax in line]
    for (fn, result, name), ax in zip(panels, flat, strict=False):
        try:
            fn(result, ax)
        except Exception as e:  # a plot bug must not lose the figures: the JSON is written
            ax.text(0.5, 0.5, f"{name}: no plot ({e})", ha="center", wrap=True)
    for ax in flat[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _plot_rows(result: dict[str, Any], ax: Any) -> None:
    """The default panel: one bar per row."""
    rows = rows_of(result)[:16]
    ax.barh([f"{r['metric']} {r['impl']}".strip() + f" [{r['unit']}]" for r in rows],
            [r["value"] for r in rows])
    ax.tick_params(axis="y", labelsize=6)


# --- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    names = [s.name for s in SECTIONS]
    ap = argparse.ArgumentParser(prog="python -m bench",
                                 description="wgcable benchmarks: table, results.json, plot")
    ap.add_argument("--quick", action="store_true",
                    help="small N, few repeats, short samples: a smoke check (~80 s)")
    ap.add_argument("--only", help=f"comma-separated sections ({', '.join(names)})")
    ap.add_argument("--skip", help="comma-separated sections to leave out")
    ap.add_argument("--repeat", type=int, help="override every section's repeat count")
    ap.add_argument("--out", default="bench/results", help="output directory "
                    "(default bench/results)")
    ap.add_argument("--list", action="store_true", help="list the sections and exit")
    ap.add_argument("--replot", action="store_true", help="measure nothing: rewrite the "
                    "table and the plot from --out's results.json")
    args = ap.parse_args(argv)
    if args.list:
        for s in SECTIONS:
            print(f"{s.name:<15} {s.what} (repeat {s.repeat}, quick {s.quick_repeat})")
        return 0
    if args.replot:
        write(json.loads((Path(args.out) / "results.json").read_text()), Path(args.out))
        return 0
    chosen = [s.strip() for s in args.only.split(",")] if args.only else [
        s.name for s in SECTIONS if s.default]
    skip = {s.strip() for s in args.skip.split(",")} if args.skip else set()
    unknown = [s for s in [*chosen, *skip] if s not in names]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(names)}")
    if args.repeat is not None and args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces, wireguard-go)", file=sys.stderr)
        return 2
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        print(f"bench: missing {', '.join(missing)}; run scripts/install.sh", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "quick": args.quick,
        "argv": sys.argv[1:], "machine": machine(), "load_before": load(), "sections": {},
    }
    t_all = time.monotonic()
    failed = False
    with signals_raise():
        try:
            for sec in SECTIONS:
                if sec.name not in chosen or sec.name in skip:
                    continue
                repeat = args.repeat or (sec.quick_repeat if args.quick else sec.repeat)
                print(f"bench: {sec.name} (repeat {repeat}), load {load()}", file=sys.stderr,
                      flush=True)
                entry: dict[str, Any] = {"repeat": repeat, "load_before": load()}
                t0 = time.monotonic()
                try:
                    result = call_section(sec, repeat, args.quick)
                    entry["rows"] = rows_of(result)
                    entry["result"] = result
                except Exception as e:
                    traceback.print_exc()
                    entry["error"] = f"{type(e).__name__}: {e}"
                    failed = True
                entry["seconds"] = round(time.monotonic() - t0, 1)
                entry["load_after"] = load()
                doc["sections"][sec.name] = entry
                print(f"bench: {sec.name} done in {entry['seconds']:.0f} s", file=sys.stderr,
                      flush=True)
        finally:
            # Also after Ctrl-C: whatever was measured is written.
            doc["seconds"] = round(time.monotonic() - t_all, 1)
            doc["load_after"] = load()
            if doc["sections"]:
                write(doc, out)
    return 1 if failed else 0


def write(doc: dict[str, Any], out: Path) -> None:
    (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    text = header(doc) + "\n" + table(doc["sections"])
    (out / "results.md").write_text(text)
    print(text)
    title = (f"wgcable benchmarks {doc['started']}, {doc['machine']['cpus']} CPUs, "
             f"load {doc['load_before'][0]} -> {doc['load_after'][0]}"
             f"{' (quick)' if doc['quick'] else ''}")
    plot(doc["sections"], out / "benchmarks.png", title)
    print(f"bench: wrote {out}/results.json, results.md, benchmarks.png", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
