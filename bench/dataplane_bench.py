"""Data plane: iperf3 pod to pod through the tunnel wgcable built, against references.

Five paths, all between namespaces of our own (nothing in the root namespace):

- ``wgcable``: a 2-cluster lab (``wgcable.lab``) with a real agent per gateway, so the
  tunnel, its MTU (underlay 1500 - 60 = 1440), routes and nftables table (MSS clamp, SNAT
  exemption) are exactly what the driver built. pod1 -> pod2 (10.1.0.2 -> 10.2.0.2).
- ``wgcable, no nft table``: the same, with agents run ``--no-snat-exemption
  --no-mss-clamp``: the driver writes no nftables table, so connection tracking stays off
  in the gateway namespaces (as on the hand-built path).
- ``hand-built wireguard-go``: the same topology (``wgcable.lab.topology``: pods on a
  bridge behind each gateway, gateways on a hub bridge) without agents; wireguard-go started
  by hand in each gateway namespace (the recipe of docs: private tmpfs on /run/wireguard)
  and configured with ``wg set`` and ``ip`` only: the same MTU, routes to the remote
  cluster's CIDRs through ``wg0``, no MSS clamp (PMTU discovery inside the namespaces
  covers it). pod1 -> pod2.
- ``no WireGuard``: the same topology again, the gateways routing the remote pod CIDR
  straight over the underlay (``ip route add 10.2.0.0/16 via 198.18.0.2``). pod1 -> pod2.
- ``bare veth``: in that last topology, gateway to gateway over the underlay (veth, hub
  bridge, veth), no forwarding.

Each round runs iperf3 TCP (one stream, ``-O 1`` to skip slow start) on every path, then
UDP at a fixed rate (1300-byte datagrams) on the WireGuard paths. During each TCP run the
wireguard-go daemons' CPU (both ends, in % of one core) and the machine's busy share are
read from /proc. wireguard-go is CPU bound here: with 2 cores, the two daemons, iperf3's
two ends and the kernel's forwarding all share them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import agent_bench
from bench.common import Row, plain_log_axes, row, signals_held, summary
from bench.common import run as sh
from bench.wgctrl_bench import Sandbox, write_secret
from wgcable.lab.lab import Lab
from wgcable.lab.netns import Namespace
from wgcable.lab.topology import Topology
from wgcable.wgctrl import Key

IPERF_PORT = 5301
UDP_RATE = "300M"
UDP_LEN = "1300"
WG_PORT = 51820
NO_NFT = ["--no-snat-exemption", "--no-mss-clamp"]  # the driver then writes no nft table
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class NetPath:
    """One path to measure: where the server and client run, and the daemons on the way."""

    key: str
    label: str
    server_ns: str
    client_ns: str
    target: str
    wg_pids: Callable[[], list[int]] = field(default=lambda: [])
    udp: bool = True


# --- /proc sampling ------------------------------------------------------------------------


def _proc_ticks(pid: int) -> int:
    rest = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(rest[11]) + int(rest[12])


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


# --- iperf3 --------------------------------------------------------------------------------


@contextlib.contextmanager
def iperf_server(ns: str) -> Iterator[None]:
    """``iperf3 -s`` in ``ns``, ours by PID, stopped on the way out."""
    p = subprocess.Popen(["ip", "netns", "exec", ns, "iperf3", "-s", "-p", str(IPERF_PORT)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while True:
            out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Hltn",
                                  f"sport = :{IPERF_PORT}"], capture_output=True, text=True,
                                 check=False).stdout
            if out.strip():
                break
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"iperf3 server in {ns} did not start")
            time.sleep(0.05)
        yield
    finally:
        if p.poll() is None:
            p.terminate()  # our own child, by PID (ip netns exec execs iperf3 in place)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def iperf(path: NetPath, seconds: int, udp: bool) -> dict[str, Any]:
    argv = ["ip", "netns", "exec", path.client_ns, "iperf3", "-c", path.target, "-p",
            str(IPERF_PORT), "-t", str(seconds), "-J"]
    argv += ["-u", "-b", UDP_RATE, "-l", UDP_LEN] if udp else ["-O", "1"]
    pids = path.wg_pids()
    wg0 = sum(_proc_ticks(p) for p in pids)
    busy0, total0 = _machine_ticks()
    t0 = time.monotonic()
    last = ""
    for _attempt in range(3):  # a server still busy with the previous test says so: retry
        p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30,
                           check=False)
        doc = json.loads(p.stdout) if p.stdout.strip() else {}
        if p.returncode == 0 and "error" not in doc:
            break
        last = doc.get("error", p.stderr.strip())
        time.sleep(1)
    else:
        raise RuntimeError(f"iperf3 {path.label}: {last}")
    span = time.monotonic() - t0
    wg1 = sum(_proc_ticks(p) for p in pids)
    busy1, total1 = _machine_ticks()
    end = doc["end"]
    out: dict[str, Any] = {
        "wg_cpu_pct": (wg1 - wg0) / CLK_TCK / span * 100 if pids else None,
        "machine_busy_pct": (busy1 - busy0) / max(1, total1 - total0) * 100,
    }
    if udp:
        s = end["sum"]
        out["mbps"] = s["bits_per_second"] * (1 - s["lost_percent"] / 100) / 1e6
        out["lost_pct"] = s["lost_percent"]
    else:
        out["mbps"] = end["sum_received"]["bits_per_second"] / 1e6
        out["retransmits"] = end["sum_sent"].get("retransmits", 0)
    return out


# --- the set-ups ---------------------------------------------------------------------------


class Setups:
    """Everything the four paths need; :meth:`close` removes it all."""

    def __init__(self) -> None:
        tag = os.getpid() % 100000
        self.root = tempfile.mkdtemp(prefix="wgcable-bench-")
        self.lab_cms = [agent_bench.running_lab(f"b{tag}d", self.root, []),
                        agent_bench.running_lab(f"b{tag}e", self.root, NO_NFT)]
        self.labs: list[Lab] = []
        self.wg_topo = Topology(f"wgbw{tag}")
        self.plain_topo = Topology(f"wgbp{tag}")
        self.daemons: list[Sandbox] = []
        self.mtu = 0

    def start(self) -> list[NetPath]:
        paths = [self._lab(0, "wgcable", "wgcable lab tunnel (agents)")]
        paths.append(self._lab(1, "wgcable-nonft", "wgcable lab tunnel, no nft table"))
        paths.append(self._hand_built())
        paths += self._plain()
        return paths

    def _lab(self, which: int, key: str, label: str) -> NetPath:
        lab = self.lab_cms[which].__enter__()
        self.labs.append(lab)
        agent_bench.wait_for(lambda: agent_bench.connected_to(lab, 1, "cluster2")
                             and agent_bench.connected_to(lab, 2, "cluster1"), 30,
                             "the lab's tunnel")
        agent_bench.wait_for(lambda: lab.ping(1, 2, timeout=1) is not None, 10, "a ping 1 -> 2")
        gw1, gw2 = lab.gateway(1), lab.gateway(2)
        link = json.loads(sh(["ip", "-n", gw1.gateway_ns, "-j", "link", "show", "subwg0"]))
        self.mtu = int(link[0]["mtu"])
        state = {g.index: lab.state_dir(g) for g in (gw1, gw2)}

        def lab_pids() -> list[int]:
            return [int((state[i] / "subwg0.wireguard-go.pid").read_text()) for i in (1, 2)]

        return NetPath(key, label, gw2.pod_ns[0], gw1.pod_ns[0], gw2.pod_ips[0], lab_pids)

    def _hand_built(self) -> NetPath:
        topo = self.wg_topo
        topo.build_underlay()
        nets = [topo.add_cluster(1), topo.add_cluster(2)]
        keys = [Key.generate() for _ in nets]
        for i, c in enumerate(nets):
            other = nets[1 - i]
            sb = Sandbox(netns=c.gateway.name, dev="wg0")
            self.daemons.append(sb)
            sb.start()
            keyfile = os.path.join(self.root, f"wg{c.index}.key")
            write_secret(keyfile, keys[i].base64() + "\n")
            sh(sb.wg("set", "wg0", "listen-port", str(WG_PORT), "private-key", keyfile,
                      "peer", keys[1 - i].public_key().base64(),
                      "endpoint", f"{other.underlay_ip}:{WG_PORT}",
                      "allowed-ips", ",".join(other.subnets)))
            gw = c.gateway
            gw.run("ip", "link", "set", "wg0", "mtu", str(self.mtu), "up")
            for s in other.subnets:
                gw.run("ip", "route", "add", s, "dev", "wg0")
        daemons = list(self.daemons)
        ping_until(nets[0].pods[0].name, nets[1].pod_ip())
        return NetPath("handbuilt", "hand-built wireguard-go (wg + ip)", nets[1].pods[0].name,
                     nets[0].pods[0].name, nets[1].pod_ip(), lambda: [d.pid for d in daemons])

    def _plain(self) -> list[NetPath]:
        topo = self.plain_topo
        topo.build_underlay()
        nets = [topo.add_cluster(1), topo.add_cluster(2)]
        for i, c in enumerate(nets):
            other = nets[1 - i]
            for s in other.subnets:
                c.gateway.run("ip", "route", "add", s, "via", other.underlay_ip)
        ping_until(nets[0].pods[0].name, nets[1].pod_ip())
        return [
            NetPath("plain", "no WireGuard (routed pod to pod)", nets[1].pods[0].name,
                  nets[0].pods[0].name, nets[1].pod_ip(), udp=False),
            NetPath("veth", "bare veth (gateway to gateway)", nets[1].gateway.name,
                  nets[0].gateway.name, nets[1].underlay_ip, udp=False),
        ]

    def close(self) -> None:
        with signals_held():
            for d in self.daemons:
                d.close()
            for topo in (self.wg_topo, self.plain_topo):
                topo.destroy()
            try:
                for cm, _lab in zip(self.lab_cms, self.labs, strict=False):
                    cm.__exit__(None, None, None)
            finally:
                shutil.rmtree(self.root, ignore_errors=True)


def ping_until(ns: str, target: str, timeout: float = 10) -> None:
    agent_bench.wait_for(
        lambda: subprocess.run(Namespace(ns).cmd("ping", "-c", "1", "-W", "1", target),
                               capture_output=True, check=False).returncode == 0,
        timeout, f"a ping {ns} -> {target}", step=0.2)


# --- the section ---------------------------------------------------------------------------


def run(repeat: int, quick: bool = False) -> dict[str, Any]:
    seconds = 2 if quick else 8
    s = Setups()
    tcp: dict[str, list[dict[str, Any]]] = {}
    udp: dict[str, list[dict[str, Any]]] = {}
    labels: dict[str, str] = {}
    try:
        paths = s.start()
        for r in range(repeat):
            for p in paths:
                labels[p.key] = p.label
                with iperf_server(p.server_ns):
                    tcp.setdefault(p.key, []).append(iperf(p, seconds, udp=False))
                    if p.udp and not quick:
                        udp.setdefault(p.key, []).append(iperf(p, seconds, udp=True))
                print(f"  dataplane round {r + 1}/{repeat}: {p.label}: "
                      f"{tcp[p.key][-1]['mbps']:.0f} Mbit/s TCP", file=sys.stderr, flush=True)
    finally:
        s.close()
    rows: list[Row] = []
    hand = summary([x["mbps"] for x in tcp["handbuilt"]])["median"]
    for key, runs in tcp.items():
        mb = summary([x["mbps"] for x in runs])
        cpu = [x["wg_cpu_pct"] for x in runs if x["wg_cpu_pct"] is not None]
        busy = summary([x["machine_busy_pct"] for x in runs])["median"]
        note = f"machine busy {busy:.0f}% during the runs"
        if cpu:
            note += f"; both wireguard-go {summary(cpu)['median']:.0f}% of one core"
        rows.append(row("iperf3 TCP, 1 stream", labels[key], None, mb["median"], "Mbit/s",
                        p90=None,
                        floor=hand if key == "wgcable" else None,
                        floor_impl="hand-built wireguard-go" if key == "wgcable" else "",
                        note=note))
    if udp:
        hand_udp = summary([x["mbps"] for x in udp["handbuilt"]])["median"]
        for key, runs in udp.items():
            mb = summary([x["mbps"] for x in runs])
            lost = summary([x["lost_pct"] for x in runs])["median"]
            rows.append(row(f"iperf3 UDP at {UDP_RATE}bit/s, received", labels[key], None,
                            mb["median"], "Mbit/s",
                            floor=hand_udp if key == "wgcable" else None,
                            floor_impl="hand-built wireguard-go" if key == "wgcable" else "",
                            note=f"{lost:.1f}% lost"))
    return {"rows": rows, "mtu": s.mtu, "seconds": seconds,
            "tcp": {k: {"label": labels[k], "mbps": summary([x["mbps"] for x in v]),
                        "runs": v} for k, v in tcp.items()},
            "udp": {k: {"label": labels[k], "mbps": summary([x["mbps"] for x in v]),
                        "runs": v} for k, v in udp.items()}}


def plot(result: dict[str, Any], ax: Any) -> None:
    keys = list(result["tcp"])
    vals = [result["tcp"][k]["mbps"]["median"] for k in keys]
    labels = [result["tcp"][k]["label"].replace(" (", "\n(").replace(", ", ",\n")
              for k in keys]
    bars = ax.barh(range(len(keys)), vals, color=[f"C{i}" for i in range(len(keys))])
    for b, v in zip(bars, vals, strict=True):
        ax.annotate(f" {v:.0f}", (v, b.get_y() + b.get_height() / 2), va="center",
                    fontsize=7)
    ax.set_yticks(range(len(keys)), labels, fontsize=7)
    ax.invert_yaxis()
    plain_log_axes(ax, y=False)
    ax.set_xlim(right=max(vals) * 3)
    ax.set_xlabel("Mbit/s (median, log)")
    ax.set_title(f"Data plane: iperf3 TCP pod to pod (tunnel MTU {result['mtu']})")
    ax.grid(True, axis="x", which="both", alpha=0.3)
