"""Benchmark: how soon a gateway is back after its wireguard-go daemon is killed.

Run as root from the repository root::

    .venv/bin/python -m bench.recovery_bench [--repeat 10]

A 2-cluster lab (`wgcable.lab`, real agents, wireguard-go devices). Cluster 1's pod pings
cluster 2's pod every 10 ms all along (ping -D stamps every reply). Each round SIGKILLs
gateway 1's wireguard-go (by the PID in its state directory) and measures, from the kill:

- state: the agent's log says the device is back ("device subwg0 is back"): a new daemon
  with its key, every peer, the link up, routes, rules and nftables table re-applied;
- traffic: the first ping reply after the outage (includes the new WireGuard handshake).

Target (issue 9): back within 2 s. Everything lives in lab namespaces under a temporary
root; nothing touches the root network namespace; the lab is torn down on every exit,
including Ctrl-C and SIGTERM. Figures are printed, never asserted. ``run()`` is importable
by another runner.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from types import FrameType
from typing import Any

from bench.common import row
from wgcable.cable.wireguard.userspace import process_running
from wgcable.lab.lab import Lab
from wgcable.lab.netns import Namespace

TARGET_S = 2.0
DEVICE = "subwg0"
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_BACK = re.compile(rf"^(\S+ \S+) INFO \S+: device {DEVICE} is back", re.MULTILINE)
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from")


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally below


def _wait_for(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


@contextlib.contextmanager
def _lab(root: str) -> Iterator[Lab]:
    lab = Lab.up(f"rb{os.getpid() % 100000}", 2, root=root,
                 agent_args=["--backend", "userspace", "--log-level", "info"])
    try:
        yield lab
    finally:
        old = {s: signal.getsignal(s) for s in _SIGNALS}
        for s in _SIGNALS:  # a second Ctrl-C must not interrupt the teardown
            signal.signal(s, signal.SIG_IGN)
        try:
            for problem in lab.down():
                print(f"recovery_bench: teardown: {problem}", file=sys.stderr)
        finally:
            for s, h in old.items():
                signal.signal(s, h if h is not None else signal.SIG_DFL)


class _Pinger:
    """A continuous ping whose reply times (epoch, from ping -D) are collected."""

    def __init__(self, lab: Lab) -> None:
        src, dst = lab.gateway(1), lab.gateway(2)
        self.replies: list[float] = []
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            Namespace(src.pod_ns[0]).cmd("ping", "-D", "-n", "-i", "0.01", "-W", "1",
                                         dst.pod_ips[0]),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if m := _REPLY.match(line):
                with self._lock:
                    self.replies.append(float(m.group(1)))

    def first_after_outage(self, since: float) -> float | None:
        """The first reply after the longest silence following ``since`` (epoch)."""
        with self._lock:
            times = [t for t in self.replies if t >= since - 0.05]
        if len(times) < 2:
            return None
        gaps = [(b - a, b) for a, b in itertools.pairwise(times)]
        return max(gaps)[1]

    def stop(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(5)


def _log_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _one_kill(lab: Lab, pinger: _Pinger, timeout: float) -> tuple[float, float]:
    """(state, traffic) seconds after one SIGKILL of gateway 1's wireguard-go."""
    gw = lab.gateway(1)
    pidfile = lab.state_dir(gw) / f"{DEVICE}.wireguard-go.pid"
    log = lab.log_file(gw)
    old = int(pidfile.read_text())
    if not process_running(old, "wireguard-go"):
        raise RuntimeError(f"pid {old} in {pidfile} is not a running wireguard-go")
    seen = len(_BACK.findall(log.read_text()))
    t_kill = time.time()
    os.kill(old, signal.SIGKILL)
    _wait_for(lambda: len(_BACK.findall(log.read_text())) > seen, timeout,
              "the agent to bring the device back")
    back = _log_time(_BACK.findall(log.read_text())[seen])

    def replied() -> bool:
        first = pinger.first_after_outage(t_kill)
        return first is not None and first > t_kill and time.time() - first > 0.2

    _wait_for(replied, timeout, "pings to pass again")
    first = pinger.first_after_outage(t_kill)
    assert first is not None
    return back - t_kill, first - t_kill


def run(repeat: int, timeout: float = 30.0) -> dict[str, float]:
    """Kill gateway 1's wireguard-go ``repeat`` times in one lab; seconds to recovery:
    median and max of the state (device re-applied) and of the traffic (first reply)."""
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    root = tempfile.mkdtemp(prefix="wgcable-recovery-bench-")
    state: list[float] = []
    traffic: list[float] = []
    try:
        with _lab(root) as lab:
            _wait_for(lab.all_connected, 60, "all cables connected")
            pinger = _Pinger(lab)
            try:
                for _ in range(repeat):
                    time.sleep(1.0)  # steady traffic before each kill
                    s, t = _one_kill(lab, pinger, timeout)
                    state.append(s)
                    traffic.append(t)
                    # Progress on stderr: stdout is for the table `python -m bench` prints.
                    print(f"  kill {len(state)}: state back {s * 1000:6.0f} ms, "
                          f"first reply {t * 1000:6.0f} ms", file=sys.stderr, flush=True)
            finally:
                pinger.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return result_of(state, traffic)


def result_of(state: list[float], traffic: list[float]) -> dict[str, Any]:
    """The section's figures (seconds, for the plot and results.json) and its table rows,
    named as a reader would name them (not by their keys), in ms as the other sections."""
    result: dict[str, Any] = {
        "repeat": float(len(state)),
        "state_median_s": statistics.median(state),
        "state_max_s": max(state),
        "traffic_median_s": statistics.median(traffic),
        "traffic_max_s": max(traffic),
    }
    result["rows"] = [
        row(what, "wgcable agent (lab)", None, result[f"{key}_median_s"] * 1000, "ms",
            note=f"max {result[f'{key}_max_s'] * 1000:.0f} ms over {len(state)} kills")
        for what, key in (
            ("wireguard-go SIGKILLed -> device, peers, routes, rules back", "state"),
            ("wireguard-go SIGKILLed -> first ping reply", "traffic"))
    ]
    return result


def plot(result: dict[str, Any], ax: Any) -> None:
    """The figure's panel: median and max, in ms, of state and traffic back."""
    labels = ["device, peers, routes\nback (median)", "(max)",
              "first ping reply\n(median)", "(max)"]
    keys = ["state_median_s", "state_max_s", "traffic_median_s", "traffic_max_s"]
    vals = [result[k] * 1000 for k in keys]
    bars = ax.barh(range(len(vals)), vals, color=["C0", "C0", "C1", "C1"])
    for b, v in zip(bars, vals, strict=True):
        ax.annotate(f" {v:.0f}", (v, b.get_y() + b.get_height() / 2), va="center",
                    fontsize=7)
    ax.set_yticks(range(len(vals)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(right=max(vals) * 1.3)
    ax.set_xlabel("ms after SIGKILL")
    ax.set_title(f"wireguard-go SIGKILLed ({result['repeat']:.0f} times): back after")
    ax.grid(True, axis="x", alpha=0.3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--repeat", type=int, default=10, help="kills (default 10)")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if os.geteuid() != 0:
        print("recovery_bench: needs root (network namespaces, wireguard-go)", file=sys.stderr)
        return 2
    for tool in ("ip", "nsenter", "wg", "wireguard-go", "ping", "nft"):
        if shutil.which(tool) is None:
            print(f"recovery_bench: {tool} not found; run scripts/install.sh", file=sys.stderr)
            return 2
    for s in _SIGNALS:
        signal.signal(s, _on_signal)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"wgcable recovery benchmark: wireguard-go SIGKILLed {args.repeat} times; "
          f"{os.cpu_count()} CPUs, load average {load}, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    try:
        figures = run(args.repeat)
    finally:
        for s in _SIGNALS:
            signal.signal(s, signal.SIG_IGN)
    print()
    print("| after a SIGKILL of wireguard-go | median | max | target |")
    print("|---|---|---|---|")
    for what, key in (("device, peers, routes, rules back (agent log)", "state"),
                      ("first ping reply through the tunnel", "traffic")):
        print(f"| {what} | {figures[f'{key}_median_s'] * 1000:.0f} ms "
              f"| {figures[f'{key}_max_s'] * 1000:.0f} ms | {TARGET_S:g} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
