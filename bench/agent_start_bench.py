"""Benchmark: agent start-up, from exec to its first status, after a crash (SIGKILL).

Run as root from the repository root, natively or inside the kernel test VM
(bench/vm_agent_start.sh)::

    .venv/bin/python -m bench.agent_start_bench [--repeat 5] [--backend userspace|kernel]

A 2-cluster lab (real agents). Each round SIGKILLs gateway 1's agent and starts a new one
on the same state (it adopts the device), and measures from the start:

- first-log: the interpreter, the imports, the settings and the store, up to its first log line;
- adopted: the device adopted ("device subwg0 adopted" in the log);
- status: the new agent's first status file (its PID in it): what the fault test waits for.

The imports alone are also timed in a fresh interpreter (``python -c "import ..."``), the
workload that tests/slowness.py uses for the kernel VM's deadline factor. Figures are
printed, never asserted. The lab is removed on every exit.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from wgcable.lab.lab import Lab

DEVICE = "subwg0"
_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ (\S+): (.*)$", re.MULTILINE)


def _stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _log_events(log: str, since: float) -> dict[str, float]:
    """Seconds from ``since`` (epoch) to the first log lines of a start."""
    out: dict[str, float] = {}
    for m in _LINE.finditer(log):
        t = _stamp(m.group(1))
        if t < since - 0.002:
            continue
        out.setdefault("first-log", t - since)  # imports, settings, store opened
        if f"device {DEVICE} adopted" in m.group(3):
            out.setdefault("adopted", t - since)
    return out


def _imports(runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", "import wgcable.agent.run, wgcable.cli.main"],
                       check=True)
        times.append(time.monotonic() - t0)
    return times


def _fmt(name: str, xs: list[float]) -> str:
    return (f"{name:<10} min {min(xs):7.3f} s  median {statistics.median(xs):7.3f} s  "
            f"max {max(xs):7.3f} s  (n={len(xs)})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--backend", choices=["userspace", "kernel"], default="userspace")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args(argv)

    root = tempfile.mkdtemp(prefix="wgcable-astart-")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    lab = Lab.up(f"as{int(time.time()) % 10000}", 2, root=root,
                 agent_args=["--backend", args.backend])
    rounds: dict[str, list[float]] = {"first-log": [], "adopted": [], "status": []}
    try:
        deadline = time.monotonic() + args.timeout
        while not lab.all_connected():
            if time.monotonic() > deadline:
                raise SystemExit("the lab never connected")
            time.sleep(0.05)
        gw = lab.gateway(1)
        for _ in range(args.repeat):
            lab.stop_agent(1, signal.SIGKILL)
            since = time.time()
            t0 = time.monotonic()
            pid = lab.start_agent(1)
            while not ((s := lab.status(1)) is not None and s.pid == pid):
                if time.monotonic() - t0 > args.timeout:
                    raise SystemExit("the new agent wrote no status")
                time.sleep(0.005)
            rounds["status"].append(time.monotonic() - t0)
            events = _log_events(Path(lab.log_file(gw)).read_text(errors="replace"), since)
            for k in ("first-log", "adopted"):
                if k in events:
                    rounds[k].append(events[k])
        print(f"agent start-up after SIGKILL ({args.backend}, {args.repeat} rounds):")
        for name, xs in rounds.items():
            if xs:
                print("  " + _fmt(name, xs))
        print("  " + _fmt("imports", _imports(3)))
    finally:
        lab.down()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
