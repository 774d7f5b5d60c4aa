"""Benchmark: the gateway agent in a lab: convergence time, and steady-state CPU and memory.

Run as root from the repository root::

    .venv/bin/python bench/agent_bench.py [--repeat 10] [--peers 100,1000] [--sample 30]

(a) Convergence. A 2-cluster lab (`wgcable.lab`) with both agents; then cluster 2's agent is
    stopped with SIGTERM (its device, peer and routes stay up, and it no longer re-publishes)
    and its endpoint file is removed, so gateway 1 tears its tunnel down. Each run writes the
    file back (temp file + rename) and times, from just before the rename, the first ping reply
    from cluster 1's pod to cluster 2's pod (ping every 20 ms, replies stamped by ping -D).
    Gateway 1's agent logs at debug level, so the run is split by its log timestamps into:
    file written -> driver accepted the endpoint ("connected cluster ..."), -> device and
    routes applied ("table 220: N route(s) added"), -> first reply (WireGuard handshake and
    the ping interval). Target: under 1 s.

(b) Steady state. A 2-cluster lab whose agents run with the default status interval (5 s;
    the lab passes 1 s, overridden through ``agent_args``), then N extra endpoints of fake
    clusters in the store (subnets 100.64.0.0/10 in /24s, private IPs in 198.18.128.0/17,
    which nothing in the lab answers: the lab's gateways have no route there, so their
    handshakes never complete; each has a healthCheckIP, so the health checker pings every one
    of them, as it would remote clusters that are down). Once every fake is in gateway 1's
    status, the agent's and its wireguard-go daemon's CPU (utime+stime from /proc/<pid>/stat)
    and RSS (VmRSS) are sampled every second for --sample seconds. A baseline with just the one
    real peer comes first; the peer counts are then reached in turn in the same lab. A count
    whose endpoints do not all show up within --budget seconds ends the series.

Everything lives in lab namespaces under a temporary root; nothing touches the root network
namespace. Labs are torn down (`Lab.down`: processes by PID, namespaces, files) on every exit,
including Ctrl-C, SIGTERM and SIGHUP. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType

from wgcable.cable.types import ConnectionStatus, Endpoint
from wgcable.lab.lab import Lab
from wgcable.lab.netns import Namespace
from wgcable.store.directory import atomic_write
from wgcable.wgctrl import Key

TARGET_MS = 1000.0
PING_INTERVAL = "0.02"
DEVICE = "subwg0"
TABLE = 220
CLK_TCK = os.sysconf("SC_CLK_TCK")
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# --- plumbing ---------------------------------------------------------------------------------


def on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally below


@contextlib.contextmanager
def running_lab(name: str, root: str, agent_args: Sequence[str]) -> Iterator[Lab]:
    """A 2-cluster lab, removed on the way out whatever happens (Lab.up cleans up itself if
    building fails)."""
    lab = Lab.up(name, 2, root=root, agent_args=agent_args)
    try:
        yield lab
    finally:
        # Further signals must not interrupt the teardown.
        old = {s: signal.getsignal(s) for s in _SIGNALS}
        for s in _SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        try:
            problems = lab.down()
            for p in problems:
                print(f"agent_bench: teardown: {p}", file=sys.stderr)
        finally:
            for s, h in old.items():
                signal.signal(s, h if h is not None else signal.SIG_DFL)


def wait_for(cond: Callable[[], object], timeout: float, what: str, step: float = 0.05) -> float:
    """Seconds until ``cond()`` held; RuntimeError after ``timeout``."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - t0


def connected_to(lab: Lab, at: int, cluster: str) -> bool:
    st = lab.status(at)
    return st is not None and any(
        c.endpoint.cluster_id == cluster and c.status == ConnectionStatus.CONNECTED
        for c in st.gateway.connections)


def endpoint_file(lab: Lab, cluster: str) -> Path:
    [path] = [p for p in (lab.store_dir / "endpoints").iterdir()
              if p.name.startswith(f"{cluster}-")]
    return path


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.bench")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def pct(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(samples)
    return s[max(0, math.ceil(q * len(s)) - 1)]


# --- (a) convergence ------------------------------------------------------------------------------

_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from ")


class AgentLog:
    """Lines appended to an agent's log since the last ``mark()``, with their timestamps."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def lines(self) -> list[tuple[float, str]]:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            text = f.read().decode(errors="replace")
        out = []
        for line in text.splitlines():
            m = _LOG_TIME.match(line)
            if m:
                when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                out.append((when, line))
        return out

    def first(self, pattern: str, after: float = 0.0) -> float | None:
        rx = re.compile(pattern)
        # Log times have millisecond resolution: allow the line to be stamped up to 1 ms early.
        return next((t for t, line in self.lines() if t >= after - 0.001 and rx.search(line)),
                    None)


class Pinger:
    """``ping -D -i 0.02`` from a pod, in the background; remembers the first reply's time."""

    def __init__(self, pod_ns: str, target: str) -> None:
        self.proc = subprocess.Popen(
            Namespace(pod_ns).cmd("ping", "-n", "-D", "-O", "-i", PING_INTERVAL, "-W", "1",
                                    target),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, start_new_session=True)
        self.sent = threading.Event()  # some output: it is running
        self.replied = threading.Event()
        self.first_reply: float | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.sent.set()
            m = _REPLY.match(line)
            if m and self.first_reply is None:
                self.first_reply = float(m.group(1))
                self.replied.set()

    def stop(self) -> None:
        # Our own child, by PID (ip netns exec execs ping in place).
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._thread.join(5)


@dataclass
class Run:
    accepted: float | None  # seconds from the rename to the driver accepting the endpoint
    applied: float | None  # ... to device and routes applied
    reply: float  # ... to the first ping reply


def convergence(root: str, name: str, repeat: int) -> list[Run]:
    runs: list[Run] = []
    with running_lab(name, root, ["--log-level", "debug"]) as lab:
        wait_for(lambda: connected_to(lab, 1, "cluster2") and connected_to(lab, 2, "cluster1"),
                 30, "the lab's tunnel")
        wait_for(lambda: lab.ping(1, 2, timeout=1) is not None, 10, "a ping 1 -> 2")
        gw1, gw2 = lab.gateway(1), lab.gateway(2)
        lab.stop_agent(2)  # SIGTERM: tunnels stay up, and it will not re-publish
        if lab.agent_alive(2):
            raise RuntimeError("agent 2 did not stop")
        path = endpoint_file(lab, "cluster2")
        content = path.read_bytes()
        log = AgentLog(lab.log_file(gw1))
        for i in range(repeat + 1):  # run 0 is an untimed warm-up
            log.mark()
            path.unlink()
            wait_for(lambda: log.first(r"table \d+: \d+ route\(s\) added, [1-9]") is not None,
                     10, "gateway 1 to remove cluster 2's routes")
            time.sleep(0.3)
            pinger = Pinger(gw1.pod_ns[0], gw2.pod_ips[0])
            try:
                if not pinger.sent.wait(5):
                    raise RuntimeError("ping printed nothing")
                time.sleep(0.1)
                log.mark()
                t0 = time.time()
                write_atomic(path, content)
                if not pinger.replied.wait(10):
                    raise RuntimeError(f"run {i}: no ping reply within 10 s")
            finally:
                pinger.stop()
            assert pinger.first_reply is not None
            accepted = log.first(r"\bconnected cluster cluster2 at ", t0)
            applied = log.first(r"table \d+: [1-9]\d* route\(s\) added", t0)
            run = Run(None if accepted is None else accepted - t0,
                      None if applied is None else applied - t0,
                      pinger.first_reply - t0)
            if i:
                runs.append(run)
            print(f"  run {i}{' (warm-up)' if not i else ''}: first reply after "
                  f"{run.reply * 1000:.0f} ms", file=sys.stderr, flush=True)
            time.sleep(0.5)
    return runs


def print_convergence(runs: list[Run], repeat: int) -> None:
    print(f"(a) convergence: endpoint file renamed into the store -> first ping reply "
          f"pod1 (cluster1) -> pod2 (cluster2); {repeat} runs after 1 untimed warm-up")
    print(f"    ping every {float(PING_INTERVAL) * 1000:.0f} ms (so replies are seen to within "
          "that); split from gateway 1's debug log (ms timestamps)")
    print()
    hdr = f"{'segment':<48} {'median':>8} {'p90':>8} {'max':>8}"
    print(hdr)
    print("-" * len(hdr))

    def row(label: str, values: list[float | None]) -> None:
        got = [v * 1000 for v in values if v is not None]
        if not got:
            print(f"{label:<48} {'n/a':>8} {'n/a':>8} {'n/a':>8}")
            return
        missing = f"  ({len(values) - len(got)} runs without a log line)" \
            if len(got) < len(values) else ""
        print(f"{label:<48} {statistics.median(got):>8.0f} {pct(got, 0.9):>8.0f} "
              f"{max(got):>8.0f}{missing}")

    def diff(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else b - a

    row("file written -> endpoint accepted by the driver", [r.accepted for r in runs])
    row("accepted -> device and routes applied", [diff(r.accepted, r.applied) for r in runs])
    row("applied -> first ping reply", [diff(r.applied, r.reply) for r in runs])
    row("total: file written -> first ping reply", [r.reply for r in runs])
    total = [r.reply * 1000 for r in runs]
    met = "met" if max(total) < TARGET_MS else (
        "met at the median" if statistics.median(total) < TARGET_MS else "NOT met")
    print()
    print(f"    times in ms (p90 nearest-rank). Target: under {TARGET_MS:.0f} ms: {met} "
          f"(max {max(total):.0f} ms).")
    print("    every run (ms): " + ", ".join(f"{t:.0f}" for t in total))
    print()


# --- (b) steady state ---------------------------------------------------------------------------


@dataclass
class Usage:
    cpu_mean: float  # % of one CPU over the whole window
    cpu_max: float  # the busiest 1 s sample
    rss_mean: float  # MiB
    rss_max: float
    rss_last: float  # the last sample: with 'max', shows whether memory still grows
    threads: int


def _ticks(pid: int) -> tuple[int, int]:
    """(utime + stime in clock ticks, threads) of ``pid``, all its threads included."""
    rest = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(rest[11]) + int(rest[12]), int(rest[17])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def sample(pids: dict[str, int], seconds: float) -> dict[str, Usage]:
    t_start = time.monotonic()
    first = {k: _ticks(p)[0] for k, p in pids.items()}
    last, t_last = dict(first), t_start
    peaks: dict[str, float] = dict.fromkeys(pids, 0.0)
    rss: dict[str, list[float]] = {k: [] for k in pids}
    threads: dict[str, int] = dict.fromkeys(pids, 0)
    while time.monotonic() - t_start < seconds:
        time.sleep(1)
        now = time.monotonic()
        for k, p in pids.items():
            ticks, n = _ticks(p)
            peaks[k] = max(peaks[k], (ticks - last[k]) / CLK_TCK / (now - t_last) * 100)
            last[k] = ticks
            rss[k].append(_rss_mib(p))
            threads[k] = max(threads[k], n)
        t_last = now
    span = t_last - t_start
    return {k: Usage((last[k] - first[k]) / CLK_TCK / span * 100, peaks[k],
                     statistics.mean(rss[k]), max(rss[k]), rss[k][-1], threads[k])
            for k in pids}


def fake_endpoint(i: int, health_ip: bool) -> Endpoint:
    net = f"100.{64 + i // 256}.{i % 256}"
    return Endpoint(
        cluster_id=f"fake{i}", cable_name="cable", hostname=f"fake{i}-gw",
        subnets=[f"{net}.0/24"], private_ip=f"198.18.{128 + i // 250}.{i % 250 + 1}",
        health_check_ip=f"{net}.1" if health_ip else "", backend="wireguard",
        backend_config={"publicKey": Key.generate().public_key().base64(),
                        "udp-port": "4500"})


@dataclass
class Level:
    peers: int  # remote clusters in the store (the real one included)
    converge: float | None  # seconds from writing the batch to all in gateway 1's status
    agent: Usage
    wg: Usage
    on_device: int
    statuses: dict[str, int] = field(default_factory=dict)
    ping_ms: float | None = None
    real: str = ""  # gateway 1's status of the real cluster, cluster2


def device_peers(lab: Lab) -> int:
    out = subprocess.run(lab.gateway_cmd(lab.gateway(1), "wg", "show", DEVICE, "peers"),
                         capture_output=True, text=True, check=False, timeout=30).stdout
    return len(out.split())


def steady(root: str, name: str, counts: list[int], seconds: float, budget: float,
           health_ips: bool) -> tuple[list[Level], str]:
    levels: list[Level] = []
    note = ""
    with running_lab(name, root, ["--status-interval", "5"]) as lab:
        gw1 = lab.gateway(1)
        wait_for(lambda: connected_to(lab, 1, "cluster2"), 60, "gateway 1 to connect cluster 2")
        pids = {"agent": gw1.agent_pid,
                "wg": int((lab.state_dir(gw1) / f"{DEVICE}.wireguard-go.pid").read_text())}
        for what, pid, comm in (("agent", pids["agent"], "python"),
                                ("wireguard-go", pids["wg"], "wireguard-go")):
            actual = Path(f"/proc/{pid}/comm").read_text().strip()
            if not actual.startswith(comm):
                raise RuntimeError(f"{what} PID {pid} runs {actual!r}, not {comm}")
        eps = lab.store_dir / "endpoints"
        written = 0
        for n in [0, *counts]:
            converge = None
            if n > written:
                t0 = time.monotonic()
                for i in range(written, n):
                    obj = fake_endpoint(i, health_ips).to_k8s_object()
                    atomic_write(eps, f"fake{i}-cable.json", json.dumps(obj).encode())
                written = n

                def all_in(want: int = n + 1) -> bool:
                    st = lab.status(1)
                    return st is not None and len(st.gateway.connections) >= want

                print(f"  {n} fake endpoints written in {time.monotonic() - t0:.1f} s; "
                      "waiting for gateway 1's status", file=sys.stderr, flush=True)
                try:
                    wait_for(all_in, budget - (time.monotonic() - t0), f"{n} peers", 0.2)
                except RuntimeError:
                    note = (f"{n} peers: not all in gateway 1's status within {budget:g} s; "
                            "stopped there")
                    break
                converge = time.monotonic() - t0
                time.sleep(6)  # one status interval and a bit: the burst is over
            print(f"  sampling {n + 1} peers for {seconds:g} s", file=sys.stderr, flush=True)
            usage = sample(pids, seconds)
            st = lab.status(1)
            statuses: dict[str, int] = {}
            for c in st.gateway.connections if st else []:
                statuses[c.status.value] = statuses.get(c.status.value, 0) + 1
            real = next((c for c in st.gateway.connections
                         if c.endpoint.cluster_id == "cluster2"), None) if st else None
            described = f"{real.status.value} ({real.status_message})" if real else "absent"
            levels.append(Level(n + 1, converge, usage["agent"], usage["wg"], device_peers(lab),
                                statuses, lab.ping(1, 2), described))
    return levels, note


def print_steady(levels: list[Level], note: str, seconds: float, health_ips: bool) -> None:
    print(f"(b) steady state on gateway 1: agent (Python) and its wireguard-go, sampled every "
          f"1 s for {seconds:g} s per row")
    print("    agent --status-interval 5 (the default), resync 30 s; 1 real remote cluster + "
          "N-1 fake ones that never answer"
          + (" (each with a healthCheckIP: pinged every second)" if health_ips else ""))
    print()
    hdr = (f"{'peers':>5} {'in status':>9} | {'agent CPU%':>10} {'max 1s':>6} {'RSS MiB':>7} "
           f"{'max':>5} {'last':>5} {'thr':>3} | {'wg-go CPU%':>10} {'max 1s':>6} "
           f"{'RSS MiB':>7} {'max':>5} {'last':>5} {'thr':>3} | {'device':>6} {'ping 1->2':>9}"
           "  statuses")
    print(hdr)
    print("-" * len(hdr))
    for lv in levels:
        conv = "-" if lv.converge is None else f"{lv.converge:.1f} s"
        a, w = lv.agent, lv.wg
        ping = "lost" if lv.ping_ms is None else f"{lv.ping_ms:.2f} ms"
        sts = ", ".join(f"{v} {k}" for k, v in sorted(lv.statuses.items()))
        print(f"{lv.peers:>5} {conv:>9} | {a.cpu_mean:>10.2f} {a.cpu_max:>6.1f} "
              f"{a.rss_mean:>7.1f} {a.rss_max:>5.1f} {a.rss_last:>5.1f} {a.threads:>3} | "
              f"{w.cpu_mean:>10.2f} {w.cpu_max:>6.1f} {w.rss_mean:>7.1f} {w.rss_max:>5.1f} "
              f"{w.rss_last:>5.1f} {w.threads:>3} | {lv.on_device:>6} {ping:>9}  {sts}")
    for lv in levels:
        if lv.ping_ms is None or not lv.real.startswith("connected"):
            print(f"    NOTE: at {lv.peers} peers gateway 1 reports cluster2 as {lv.real}")
    print()
    print("    CPU% = utime+stime over the window, in % of one CPU ('max 1s': busiest "
          "second); RSS = VmRSS (mean, max, last sample); thr = threads;")
    print("    'in status' = from writing the fake endpoint files to all of them in gateway "
          "1's status; device = peers on subwg0.")
    if note:
        print(f"    NOTE: {note}")
    print()


# --- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--repeat", type=int, default=10, help="convergence runs (default 10)")
    ap.add_argument("--peers", default="100,1000",
                    help="fake endpoint counts for the steady state, comma separated "
                         "(default 100,1000)")
    ap.add_argument("--sample", type=float, default=30, help="seconds sampled per row "
                    "(default 30)")
    ap.add_argument("--budget", type=float, default=120, help="seconds allowed for each peer "
                    "count to show up in the status (default 120)")
    ap.add_argument("--no-health-ips", dest="health_ips", action="store_false",
                    help="fake endpoints without a healthCheckIP")
    ap.add_argument("--only", choices=("convergence", "steady"), help="run one part only")
    args = ap.parse_args(argv)
    try:
        counts = sorted({int(c) for c in args.peers.split(",") if c.strip()})
    except ValueError:
        ap.error("--peers: comma-separated whole numbers")
    if any(not 1 <= c <= 1000 for c in counts):
        ap.error("--peers: each count must be 1-1000")
    if args.repeat < 1 or args.sample < 2:
        ap.error("--repeat must be at least 1 and --sample at least 2")
    if os.geteuid() != 0:
        print("agent_bench: needs root (network namespaces, wireguard-go)", file=sys.stderr)
        return 2
    for tool in ("ip", "nsenter", "wg", "wireguard-go", "ping"):
        if shutil.which(tool) is None:
            print(f"agent_bench: {tool} not found; run scripts/install.sh", file=sys.stderr)
            return 2
    for s in _SIGNALS:  # Ctrl-C too, even where it was inherited as ignored
        signal.signal(s, on_signal)
    root = tempfile.mkdtemp(prefix="wgcable-agent-bench-")
    tag = f"ab{os.getpid() % 100000}"
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"wgcable agent benchmark: Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
              f"load average {load} at the start, {time.strftime('%Y-%m-%d %H:%M:%S')}")
        print()
        if args.only in (None, "convergence"):
            runs = convergence(root, f"{tag}c", args.repeat)
            print_convergence(runs, args.repeat)
            sys.stdout.flush()
        if args.only in (None, "steady"):
            levels, note = steady(root, f"{tag}s", counts, args.sample, args.budget,
                                  args.health_ips)
            print_steady(levels, note, args.sample, args.health_ips)
    finally:
        for s in _SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
