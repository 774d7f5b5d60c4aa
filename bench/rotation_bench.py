"""Key rotation (`wgcable rotate-key`) under traffic, with both stores.

A lab of 2 clusters (directory store, then the Kubernetes broker when its API server is
built). Pods ping each other ten times a second both ways, and a third ping goes every
10 ms from cluster 1 to cluster 2, while cluster 1's gateway rotates its key ``repeat``
times, 0.5 s apart (SIGUSR2, as `wgcable rotate-key`). Per store:

- *lost*: echoes never answered, of the two pings at 10/s (the brief's measure) and of
  the one at 100/s;
- *switch*: from the signal until the agent reports its new key (its status file), and
  until cluster 2's device had a handshake with it (the rotation is over);
- *extra latency*: the largest RTT of the 100/s echoes sent while a rotation was under way
  (from its signal until 0.2 s after its handshake), less the median RTT of all the others.

Run as root: ``.venv/bin/python -m bench --only rotation``. Prints figures; asserts nothing.
Everything lives in the labs' namespaces and a temp directory, removed on every exit.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from bench.common import Row, row, signals_held, summary
from bench.multinode_bench import _wait_for
from wgcable.lab.kubeapi import unavailable_reason
from wgcable.lab.lab import GatewayState, Lab
from wgcable.lab.netns import Namespace

_REPLY = re.compile(r"^\[([\d.]+)\] .*icmp_seq=(\d+) ttl=\d+ time=([\d.]+) ms")


class _Ping:
    """``ping -D`` at ``interval`` from one pod to an address: (reply epoch, seq, RTT ms)."""

    def __init__(self, ns: str, target: str, interval: float) -> None:
        self.replies: list[tuple[float, int, float]] = []
        self._proc = subprocess.Popen(
            Namespace(ns).cmd("ping", "-D", "-n", "-i", f"{interval:g}", "-W", "1", target),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.sent = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if m := _REPLY.match(line):
                self.replies.append((float(m.group(1)), int(m.group(2)), float(m.group(3))))
            elif m := re.search(r"(\d+) packets transmitted", line):
                self.sent = int(m.group(1))

    def stop(self) -> list[int]:
        """The sequence numbers never answered (the last echo, maybe in flight, aside)."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)  # ping prints its summary
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._reader.join(10)
        answered = {seq for _, seq, _ in self.replies}
        return [n for n in range(1, self.sent) if n not in answered]


def _key(lab: Lab, gw: GatewayState) -> str:
    st = lab.status(gw)
    return "" if st is None else st.gateway.local_endpoint.backend_config.get("publicKey", "")


def _handshaken(lab: Lab, gw: GatewayState) -> set[str]:
    out = subprocess.run(lab.gateway_cmd(gw, "wg", "show", "subwg0", "latest-handshakes"),
                         capture_output=True, text=True, check=True).stdout
    return {k for k, t in (line.split("\t") for line in out.splitlines() if line)
            if t.strip() != "0"}


def rotations(lab: Lab, rounds: int) -> dict[str, Any]:
    gw1, gw2 = lab.gateway(1), lab.gateway(2)
    pod1, pod2 = lab.node(1, 0), lab.node(2, 0)
    pings = [_Ping(pod1.pod_ns[0], pod2.pod_ips[0], 0.1),
             _Ping(pod2.pod_ns[0], pod1.pod_ips[0], 0.1)]
    fast = _Ping(pod1.pod_ns[0], pod2.pod_ips[0], 0.01)
    windows: list[tuple[float, float]] = []
    reported: list[float] = []
    done: list[float] = []
    try:
        _wait_for(lambda: all(len(p.replies) >= 5 for p in pings), 10, "replies before")
        for _ in range(rounds):
            old = _key(lab, gw1)
            t0, wall = time.monotonic(), time.time()
            lab.rotate_key(gw1)
            def rotated(old: str = old) -> bool:
                return _key(lab, gw1) not in ("", old)
            _wait_for(rotated, 10, "the new key", step=0.005)
            reported.append(time.monotonic() - t0)
            new = _key(lab, gw1)
            def handshaken(new: str = new) -> bool:
                return new in _handshaken(lab, gw2)
            _wait_for(handshaken, 10, "a handshake with the new key", step=0.005)
            done.append(time.monotonic() - t0)
            windows.append((wall, wall + done[-1] + 0.2))
            time.sleep(0.5)
        time.sleep(0.5)
    finally:
        lost = [p.stop() for p in pings]
        lost_fast = fast.stop()
    # An echo's send time is its reply's time less its RTT.
    during = [rtt for t, _, rtt in fast.replies
              if any(a <= t - rtt / 1000 <= b for a, b in windows)]
    calm = [rtt for t, _, rtt in fast.replies
            if not any(a <= t - rtt / 1000 <= b for a, b in windows)]
    return {"lost_10": [len(x) for x in lost], "sent_10": [p.sent for p in pings],
            "lost_100": len(lost_fast), "sent_100": fast.sent,
            "reported_s": reported, "handshake_s": done,
            "rtt_calm_ms": summary(calm) if calm else {},
            "rtt_during_ms": summary(during) if during else {}}


def _store(store: str, rounds: int, root: str) -> dict[str, Any]:
    lab = Lab.up(f"rb{os.getpid() % 10000}{store[0]}", 2, root=root, store=store,
                 agent_args=["--backend", "userspace", "--log-level", "info"])
    try:
        _wait_for(lab.all_connected, 60, "all cables connected", step=0.1)
        return rotations(lab, rounds)
    finally:
        with signals_held():
            for problem in lab.down():
                print(f"rotation_bench: teardown: {problem}", file=sys.stderr)


def run(repeat: int, quick: bool = False) -> dict[str, Any]:
    root = tempfile.mkdtemp(prefix="wgcable-rotation-bench-")
    results: dict[str, Any] = {}
    try:
        results["directory"] = _store("directory", repeat, root)
        if (why := unavailable_reason()) is None:
            results["kubernetes"] = _store("kubernetes", repeat, root)
        else:
            print(f"rotation_bench: no Kubernetes figures: {why}", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows: list[Row] = []
    for store, r in results.items():
        n = len(r["handshake_s"])
        hs, rep = summary(r["handshake_s"]), summary(r["reported_s"])
        calm = r["rtt_calm_ms"].get("median", 0.0)
        extra = r["rtt_during_ms"].get("max", calm) - calm
        rows += [
            row("key rotation: pings lost at 10/s, both ways", store, n,
                float(sum(r["lost_10"])), "",
                note=f"of {sum(r['sent_10'])} sent; at 100/s: {r['lost_100']} of "
                f"{r['sent_100']}"),
            row("key rotation: signal -> remote handshake with the new key", store, n,
                hs["median"] * 1000, "ms", p90=hs["p90"] * 1000,
                note=f"max {hs['max'] * 1000:.0f} ms; new key reported after "
                f"{rep['median'] * 1000:.0f} ms median"),
            row("key rotation: extra RTT during the swap (100/s)", store, n, extra, "ms",
                note=f"max RTT {r['rtt_during_ms'].get('max', 0):.1f} ms during, "
                f"median {calm:.2f} ms otherwise"),
        ]
    return {"rows": rows, **results}


def plot(result: dict[str, Any], ax: Any) -> None:
    stores = [s for s in ("directory", "kubernetes") if s in result]
    data = [[t * 1000 for t in result[s]["handshake_s"]] for s in stores]
    if data:
        ax.boxplot(data, vert=False, widths=0.5)
        for i, d in enumerate(data, start=1):
            ax.plot(d, [i] * len(d), ".", alpha=0.5)
    ax.set_yticks(range(1, len(stores) + 1), stores, fontsize=7)
    ax.set_xlabel("ms, signal -> remote handshake with the new key")
    ax.set_title("Key rotation")
    lost = ", ".join(f"{s}: {sum(result[s]['lost_10'])} lost" for s in stores)
    ax.text(0.98, 0.05, f"pings at 10/s: {lost}", transform=ax.transAxes, ha="right",
            va="bottom", fontsize=7)
    ax.grid(True, axis="x", alpha=0.3)


if __name__ == "__main__":
    if os.geteuid() != 0:
        print("rotation_bench: needs root", file=sys.stderr)
        sys.exit(2)
    out = run(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
    for r in out["rows"]:
        print(f"{r['metric']:<60} {r['impl']:<11} {r['value']:8.1f} {r['unit']:<3} "
              f"{r.get('note', '')}")
