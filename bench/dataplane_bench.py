"""Data plane: iperf3 pod to pod through the tunnel wgcable built, against references.

The paths, all between namespaces of our own (nothing in the root namespace):

- ``wgcable``: a 2-cluster lab (``wgcable.lab``) with a real agent per gateway, so the
  tunnel, its MTU (underlay 1500 - 60 = 1440), routes and nftables table (MSS clamp, SNAT
  exemption, no tracking of the cable's own UDP) are exactly what the driver built.
  pod1 -> pod2 (10.1.0.2 -> 10.2.0.2). The gateways have no NAT of their own, so the SNAT
  exemption's NAT chain is not loaded (``routing/hostnat.py``).
- ``wgcable-kube``: the same tunnel with a kube-proxy-like NAT table (``KUBE_NAT``) loaded
  in both gateways for these runs only, as on a real node: connection tracking is on for
  every packet whatever our table does, and the agents load their NAT chain (the runs
  wait for it).
- ``wgcable-nonft``: a second lab, agents run ``--no-snat-exemption --no-mss-clamp``: the
  driver writes no nftables table.
- ``handbuilt`` (baseline a): the same topology (``wgcable.lab.topology``) without agents;
  wireguard-go started by hand in each gateway namespace (private tmpfs on /run/wireguard,
  a session of its own as the agent gives it: see ``_hand_built``), configured with ``wg
  set`` and ``ip`` only: the same MTU and listen port, routes to the remote cluster's CIDRs
  through ``wg0``, no MSS clamp (PMTU discovery inside the namespaces covers it).
- ``handbuilt-kube`` (baseline b): that tunnel with the kube-proxy-like table loaded.
- ``handbuilt-rule-kube`` (c): a third hand-built tunnel whose gateways also have a policy
  rule of another's (``policy_rule``), with the kube-like table: a node where Submariner's
  route agent, Calico or Cilium has added a rule. Not a target: it separates what the
  agents' rule 220 costs by being a rule (every packet's route then looked up through the
  rule list) from the rest of the gap to (b).
- ``handbuilt-submariner-kube`` (d): a fourth hand-built tunnel with what a Submariner
  gateway adds to the bare tunnel (``submariner_like``): persistent keepalive 10 s, the
  routes in table 150 with ``src`` behind rule 150, an MSS clamp chain of type filter
  at mangle priority and a NAT chain that accepts cross-cluster traffic ahead of the
  masquerade; and the kube-like table. Not a target either: the reference's own feature
  set on the same daemon, to say whether the gap to (b) is more than those features.
- ``plain``: the same topology again, the gateways routing the remote pod CIDR straight
  over the underlay; ``veth``: gateway to gateway over the underlay, no forwarding.

Each agents' row says whether our NAT chain was loaded (``nat chain: loaded/absent``, our
table listed once per path, its first round).

Each round runs iperf3 TCP (one stream, ``-O 1`` to skip slow start) on every path, each
agents' path next to its baseline and the order reversed every other round (so each pair
runs A B, then B A), then UDP at each of ``UDP_RATES`` (1300-byte datagrams)
on ``wgcable`` and ``handbuilt``. Ratios are given as the ratio of medians and as per-round
ratios (both paths measured minutes apart at most, under the same load), with their
spread. During each TCP run the wireguard-go daemons' CPU (both ends, in % of one core)
and the machine's busy share are read from /proc. wireguard-go is CPU bound here: with 2
cores, the two daemons, iperf3's two ends and the kernel's forwarding all share them.
``dataplane_hypotheses`` takes the agents' tunnel apart one variable at a time.

**Pinned** (the default; ``WGCABLE_BENCH_PIN=0`` leaves placement to the scheduler): the
sending side (iperf3's client, gateway 1's wireguard-go, every thread of it) runs on one
CPU, the receiving side (gateway 2's wireguard-go, iperf3's server) on the other, the same
for every path. The kernel's forwarding runs in the softirq of the CPU that sent each
packet, so the tunnel becomes a two-stage pipeline. Left to the scheduler, six busy
threads move between two cores and a run's rate depends on where they land: measured on
a quiet machine, a hand-built tunnel's rounds varied by 5.5% (coefficient of variation)
free and by 1.0% pinned, and reached 660 against 1014 Mbit/s (docs/benchmarks.md). The
agents' Python processes are not pinned.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
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
from wgcable.cable.wireguard.userspace import LOG_LEVEL_ENV
from wgcable.lab.lab import Lab
from wgcable.lab.netns import Namespace
from wgcable.lab.topology import ClusterNet, Topology
from wgcable.wgctrl import Key

IPERF_PORT = 5301
UDP_RATES = ("100M", "300M")  # below and at the 2-core machine's CPU bound (see docs)
UDP_LEN = "1300"
WG_PORT = 5871  # the agents' port: the hand-built tunnel differs in nothing it need not
KUBE_TABLE = "wgcable_bench_kube"
# What a Kubernetes node holds anyway (kube-proxy's nftables mode, a CNI): NAT chains on
# every hook, so connection tracking is on for every packet. Service DNATs for ClusterIPs
# nothing here sends to, kube-proxy's masquerade of marked packets, and a CNI's masquerade
# of pod traffic leaving the cluster (not to 10.0.0.0/8: the other cluster's pods and
# services are not masqueraded by the CNI on a node running Submariner either).
KUBE_NAT = f"""table ip {KUBE_TABLE} {{
    chain services {{
        ip daddr 10.96.0.1 tcp dport 443 dnat to 198.18.250.1:6443
        ip daddr 10.96.0.10 udp dport 53 dnat to 10.1.0.53:53
        ip daddr 10.96.0.10 tcp dport 53 dnat to 10.1.0.53:53
        ip daddr 10.96.23.7 tcp dport 80 dnat to 10.1.0.80:8080
    }}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        jump services
    }}
    chain output {{
        type nat hook output priority -100; policy accept;
        jump services
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        meta mark & 0x4000 == 0x4000 masquerade
        ip saddr 10.0.0.0/8 ip daddr != 10.0.0.0/8 oifname != "cni0" masquerade
    }}
}}
"""
NO_NFT = ["--no-snat-exemption", "--no-mss-clamp"]  # the driver then writes no nft table
# The agents run as deployed, not as the lab runs them for tests: status every 5 s (the
# default; the lab reads every second so that tests see changes soon) and wireguard-go at
# its default log level (the lab's "verbose" logs every handshake to a file).
AS_DEPLOYED = ["--status-interval", "5"]
OUR_TABLE = "wgcable_subwg0"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PIN_ENV = "WGCABLE_BENCH_PIN"
# New wireguard-go daemons for every tunnel before each round but the first (the default;
# "0": one instance per tunnel for the whole run). A tunnel's speed relative to another
# held for a whole run but not across runs (two instances of one setup differed by up to
# 6%, in either direction): with new daemons each round, the median over rounds is also a
# median over instances.
RENEW_ENV = "WGCABLE_BENCH_RENEW"
POLICY_TABLE = "150"  # baseline (c)'s rule and table: Submariner's route agent's number
SUBMARINER_TABLE = "wgbench_submariner"  # baseline (d)'s nft table (``submariner_like``)
SUBMARINER_KEEPALIVE = 10  # Submariner's WireGuard driver's persistent keepalive, seconds


def pinned_cpus() -> tuple[int, int] | None:
    """The sending and the receiving side's CPU, or None: not pinned (``PIN_ENV=0``, or
    fewer than two CPUs to pin to)."""
    cpus = sorted(os.sched_getaffinity(0))
    if os.environ.get(PIN_ENV, "1") == "0" or len(cpus) < 2:
        return None
    return cpus[0], cpus[1]


def pin_process(pid: int, cpu: int) -> None:
    """Every thread of ``pid`` (one of our daemons) to ``cpu``; threads it starts later
    inherit it."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
            os.sched_setaffinity(int(tid), {cpu})


def taskset(cpu: int | None) -> list[str]:
    return [] if cpu is None else ["taskset", "-c", str(cpu)]


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
    # Put the path's state in place before its runs and undo it after (a table loaded in
    # the gateways): two paths can share one tunnel and differ only in that.
    before: Callable[[], None] = field(default=lambda: None)
    after: Callable[[], None] = field(default=lambda: None)
    # The agents' paths: whether our NAT chain is loaded ("loaded", "absent"); None: no
    # agents on this path.
    nat_chain: Callable[[], str] | None = None


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
def iperf_server(ns: str, cpu: int | None = None) -> Iterator[None]:
    """``iperf3 -s`` in ``ns`` (on ``cpu``), ours by PID, stopped on the way out."""
    p = subprocess.Popen(["ip", "netns", "exec", ns, *taskset(cpu), "iperf3", "-s", "-p",
                          str(IPERF_PORT)],
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
            p.terminate()  # our own child, by PID (ip netns exec and taskset exec in place)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def nat_chain_state(namespaces: list[str]) -> str:
    """Whether our table holds the SNAT exemption's NAT chain in each gateway: ``loaded``,
    ``absent`` (or both, named per gateway, when they differ)."""
    states = []
    for ns in namespaces:
        p = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet",
                            OUR_TABLE], capture_output=True, text=True, timeout=30,
                           check=False)
        states.append("loaded" if "type nat hook postrouting" in p.stdout else "absent")
    if len(set(states)) == 1:
        return states[0]
    return ", ".join(f"{ns}: {st}" for ns, st in zip(namespaces, states, strict=True))


def wait_nat_chain(namespaces: list[str], want: str, timeout: float = 5) -> str:
    """Until our NAT chain is ``want`` in every gateway (the agents follow the host's NAT
    within milliseconds); the state found at the end, whatever it is."""
    deadline = time.monotonic() + timeout
    while (state := nat_chain_state(namespaces)) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    return state


def kube_nat(namespaces: list[str], load: bool) -> None:
    """Load (or remove) the kube-proxy-like NAT table in each namespace (ours)."""
    for ns in namespaces:
        text = KUBE_NAT if load else f"table ip {KUBE_TABLE} {{}}\ndelete table ip {KUBE_TABLE}\n"
        sh(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text)


def iperf(path: NetPath, seconds: int, udp: bool, rate: str = UDP_RATES[0],
          cpu: int | None = None) -> dict[str, Any]:
    argv = ["ip", "netns", "exec", path.client_ns, *taskset(cpu), "iperf3", "-c",
            path.target, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
    argv += ["-u", "-b", rate, "-l", UDP_LEN] if udp else ["-O", "1"]
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


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    """``name=value`` in this process's environment for the block (children inherit it)."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


class Setups:
    """Everything the four paths need; :meth:`close` removes it all."""

    def __init__(self) -> None:
        tag = os.getpid() % 100000
        self.root = tempfile.mkdtemp(prefix="wgcable-bench-")
        self.lab_cms = [agent_bench.running_lab(f"b{tag}d", self.root, AS_DEPLOYED),
                        agent_bench.running_lab(f"b{tag}e", self.root, [*AS_DEPLOYED, *NO_NFT])]
        self.labs: list[Lab] = []
        self.wg_topo = Topology(f"wgbw{tag}")
        self.plain_topo = Topology(f"wgbp{tag}")
        self.rule_topo = Topology(f"wgbr{tag}")  # baseline (c): a policy rule of a CNI's
        self.sub_topo = Topology(f"wgbs{tag}")  # baseline (d): Submariner's features
        self.daemons: list[Any] = []  # Sandbox, or what a _hand_built daemon() returns
        self.hand_nets: list[ClusterNet] = []  # the clusters of the last _hand_built
        self.mtu = 0
        # Each tunnel's "new daemons" (same configuration): between rounds, so that each
        # round measures other instances (see RENEW_ENV).
        self.renewals: list[Callable[[], None]] = []

    @property
    def hand_gws(self) -> list[str]:
        """The gateway namespaces of the last ``_hand_built`` tunnel."""
        return [c.gateway.name for c in self.hand_nets]

    def renew(self) -> None:
        for restart in self.renewals:
            restart()

    def start(self) -> list[NetPath]:
        agents = self._lab(0, "wgcable", "wgcable lab tunnel (agents)")
        hand = self._hand_built(self.wg_topo)
        lab = self.labs[0]
        lab_gws = [lab.gateway(1).gateway_ns, lab.gateway(2).gateway_ns]
        hand_gws = list(self.hand_gws)
        ruled = self._hand_built(self.rule_topo, "handbuilt-rule",
                                 "hand-built wireguard-go, a policy rule of another's")
        ruled_gws = list(self.hand_gws)
        policy_rule(ruled_gws)
        sub = self._hand_built(self.sub_topo, "handbuilt-submariner",
                               "hand-built, Submariner's features (d)",
                               keepalive=SUBMARINER_KEEPALIVE, table=POLICY_TABLE)
        sub_gws = list(self.hand_gws)
        submariner_like(list(self.hand_nets))
        nonft = self._lab(1, "wgcable-nonft", "wgcable lab tunnel, no nft table", udp=False)
        # Each agents' path next to its baseline: in the rounds run backwards the pair runs
        # the other way round (A B, then B A), so that neither always follows the other.
        # The agents' kube path sits between the target (b) and Submariner's features (d);
        # (c) follows (d).
        return [agents, hand, with_kube_nat(hand, hand_gws), with_kube_nat(agents, lab_gws),
                with_kube_nat(sub, sub_gws), with_kube_nat(ruled, ruled_gws), nonft,
                *self._plain()]

    def _lab(self, which: int, key: str, label: str, udp: bool = True) -> NetPath:
        with _env(LOG_LEVEL_ENV, "error"):  # the agents' wireguard-go inherit it
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

        def restart() -> None:
            """New daemons: the agents' own stopped (by the PIDs they recorded), and the
            agents left to start new ones, as they do for a daemon that dies."""
            old = lab_pids()
            for pid in old:
                os.kill(pid, signal.SIGTERM)

            def new_ones() -> bool:
                try:
                    return not set(lab_pids()) & set(old) and lab.ping(1, 2, timeout=1) is not None
                except (OSError, ValueError):  # a PID file being rewritten
                    return False
            agent_bench.wait_for(new_ones, 60, f"new wireguard-go daemons in {key}", step=0.2)

        self.renewals.append(restart)
        gws = [gw1.gateway_ns, gw2.gateway_ns]
        return NetPath(key, label, gw2.pod_ns[0], gw1.pod_ns[0], gw2.pod_ips[0], lab_pids,
                       udp=udp, nat_chain=lambda: nat_chain_state(gws))

    def _hand_built(self, topo: Topology, key: str = "handbuilt",
                    label: str = "hand-built wireguard-go (wg + ip)",
                    daemon: Callable[[str, str], Any] | None = None, keepalive: int = 0,
                    table: str | None = None) -> NetPath:
        """wireguard-go by hand in ``topo``'s gateways: ``daemon(netns, dev)`` starts one
        and returns an object with ``pid``, ``close()`` and ``wg(*args)`` (default: the
        recipe of the shared environment notes, ``Sandbox``). ``keepalive``: the peer's
        persistent keepalive (0: none); ``table``: the routes in that table, with the
        gateway's pod-side address as ``src``, behind a rule of the same number (None:
        in main, no ``src``, no rule)."""
        topo.build_underlay()
        nets = [topo.add_cluster(1), topo.add_cluster(2)]
        self.hand_nets = nets
        keys = [Key.generate() for _ in nets]
        daemons: list[Any] = []

        def start() -> None:
            """Both daemons (again: the old ones stopped first, by PID), configured."""
            for d in daemons:
                d.close()
                self.daemons.remove(d)
            daemons.clear()
            for i, c in enumerate(nets):
                other = nets[1 - i]
                if daemon is None:
                    # A session of its own, as the agent starts wireguard-go: with the
                    # kernel's autogroups (here every session is a scheduling group) a
                    # daemon that shares the bench's session shares iperf3's CPU share,
                    # which measured as a large difference on this loaded 2-core machine
                    # (dataplane_hypotheses, daemon-session). On a node each container is a
                    # cgroup of its own anyway.
                    sb = Sandbox(netns=c.gateway.name, dev="wg0", new_session=True)
                    self.daemons.append(sb)
                    sb.start()
                else:
                    sb = daemon(c.gateway.name, "wg0")
                    self.daemons.append(sb)
                daemons.append(sb)
                keyfile = os.path.join(self.root, f"{topo.prefix}-wg{c.index}.key")
                if not os.path.exists(keyfile):  # written once, 0600, read at each start
                    write_secret(keyfile, keys[i].base64() + "\n")
                sh(sb.wg("set", "wg0", "listen-port", str(WG_PORT), "private-key", keyfile,
                          "peer", keys[1 - i].public_key().base64(),
                          "endpoint", f"{other.underlay_ip}:{WG_PORT}",
                          *(["persistent-keepalive", str(keepalive)] if keepalive else []),
                          "allowed-ips", ",".join(other.subnets)))
                gw = c.gateway
                gw.run("ip", "link", "set", "wg0", "mtu", str(self.mtu), "up")
                where = ["table", table, "src", c.gateway_pod_ip] if table else []
                for s in other.subnets:
                    gw.run("ip", "route", "replace", s, "dev", "wg0", *where)
            ping_until(nets[0].pods[0].name, nets[1].pod_ip())

        if table:
            for c in nets:
                c.gateway.run("ip", "rule", "add", "priority", table, "table", table)
        start()
        self.renewals.append(start)
        return NetPath(key, label, nets[1].pods[0].name, nets[0].pods[0].name,
                       nets[1].pod_ip(), lambda: [d.pid for d in daemons])

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
            for topo in (self.wg_topo, self.plain_topo, self.rule_topo, self.sub_topo):
                topo.destroy()
            try:
                for cm, _lab in zip(self.lab_cms, self.labs, strict=False):
                    cm.__exit__(None, None, None)
            finally:
                shutil.rmtree(self.root, ignore_errors=True)


def policy_rule(namespaces: list[str]) -> None:
    """A policy rule of someone else's in each namespace, as a node running Submariner has
    (its route agent: rule and table 150; Calico's and Cilium's WireGuard modes have rules of
    their own): rule 150 to table 150, which routes only TEST-NET-1 (a blackhole; nothing
    here sends there). Once a namespace has had any rule of its own the kernel looks up
    every packet's route through the rule list (``fib_has_custom_rules``, not reset when the
    rule goes), where a namespace with the default rules alone makes one lookup of its
    local and main tables merged. The lab's gateways have that from the agents' rule 220."""
    for ns in namespaces:
        gw = Namespace(ns)
        gw.run("ip", "route", "add", "blackhole", "192.0.2.0/24", "table", POLICY_TABLE)
        gw.run("ip", "rule", "add", "priority", POLICY_TABLE, "table", POLICY_TABLE)


def ping_until(ns: str, target: str, timeout: float = 10) -> None:
    agent_bench.wait_for(
        lambda: subprocess.run(Namespace(ns).cmd("ping", "-c", "1", "-W", "1", target),
                               capture_output=True, check=False).returncode == 0,
        timeout, f"a ping {ns} -> {target}", step=0.2)


# --- the section ---------------------------------------------------------------------------


def submariner_like(nets: list[ClusterNet]) -> None:
    """Baseline (d)'s nftables part, in the gateway of each of the two clusters: what a
    Submariner gateway adds, written natively (Submariner writes it through iptables, whose
    nft back end makes chains of the same kind). An MSS clamp on forwarded SYNs between
    the clusters (a filter chain at mangle priority; Submariner's route agent clamps to the
    path MTU) and, ahead of the masquerade, a NAT chain that accepts cross-cluster traffic
    (Submariner's SNAT exemption: a NAT chain runs for a flow's first packet only). No
    notrack: Submariner has none."""
    for net in nets:
        other = next(n for n in nets if n is not net)
        local, remote = ", ".join(net.subnets), ", ".join(other.subnets)
        text = f"""table ip {SUBMARINER_TABLE} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat - 1; policy accept;
        ip saddr {{ {local} }} ip daddr {{ {remote} }} accept
    }}
    chain forward {{
        type filter hook forward priority mangle; policy accept;
        tcp flags syn / syn,rst ip daddr {{ {remote} }} tcp option maxseg size set rt mtu
        tcp flags syn / syn,rst ip saddr {{ {remote} }} tcp option maxseg size set rt mtu
    }}
}}
"""
        net.gateway.run("nft", "-f", "-", input=text)


def with_kube_nat(path: NetPath, gateways: list[str]) -> NetPath:
    """The same tunnel measured with the kube-proxy-like NAT table in both gateways (the
    agents' runs start once their NAT chain has followed it in)."""
    def before() -> None:
        kube_nat(gateways, True)
        if path.nat_chain is not None:
            wait_nat_chain(gateways, "loaded")

    def after() -> None:
        kube_nat(gateways, False)
        if path.nat_chain is not None:
            wait_nat_chain(gateways, "absent")

    return NetPath(f"{path.key}-kube", f"{path.label}, kube-proxy-like nat table",
                   path.server_ns, path.client_ns, path.target, path.wg_pids, udp=False,
                   before=before, after=after, nat_chain=path.nat_chain)


def measure(p: NetPath, seconds: int, udp_rates: tuple[str, ...], look: bool = False,
            cpus: tuple[int, int] | None = None,
            during: Callable[[], contextlib.AbstractContextManager[object]] | None = None,
            ) -> dict[str, Any]:
    """One TCP run on ``p`` (and UDP at each rate), with its state put in place around it;
    ``look``: with our NAT chain's state (``nat_chain``) as the run found it; ``cpus``:
    the sending and the receiving side pinned (``pinned_cpus``); ``during``: a context
    entered around the TCP run only (``dataplane_profile``'s recording)."""
    p.before()
    try:
        out: dict[str, Any] = {}
        if look and p.nat_chain is not None:
            out["nat_chain"] = p.nat_chain()
        send, receive = cpus if cpus else (None, None)
        if cpus:
            # Before every run: an agent may have restarted its daemon since the last.
            for pid, cpu in zip(p.wg_pids(), cpus, strict=False):  # gateway 1's first
                pin_process(pid, cpu)
        with iperf_server(p.server_ns, receive):
            with during() if during else contextlib.nullcontext():
                out["tcp"] = iperf(p, seconds, udp=False, cpu=send)
            for rate in udp_rates if p.udp else ():
                out[rate] = iperf(p, seconds, udp=True, rate=rate, cpu=send)
    finally:
        p.after()
    return out


def spread(values: list[float], fmt: str = ".0f") -> str:
    return f"{min(values):{fmt}}-{max(values):{fmt}}"


def paired(a: list[float], b: list[float]) -> list[float]:
    """Per-round ratios a/b: the two were measured in the same round, minutes apart at
    most, so the machine's load moves both."""
    return [x / y for x, y in zip(a, b, strict=True) if y]


def run(repeat: int, quick: bool = False) -> dict[str, Any]:
    seconds = 2 if quick else 8
    udp_rates: tuple[str, ...] = () if quick else UDP_RATES
    s = Setups()
    tcp: dict[str, list[dict[str, Any]]] = {}
    udp: dict[str, dict[str, list[dict[str, Any]]]] = {}
    labels: dict[str, str] = {}
    chains: dict[str, str] = {}  # agents' path -> our NAT chain, as its first round found it
    cpus = pinned_cpus()
    renew = os.environ.get(RENEW_ENV, "1") != "0"
    try:
        paths = s.start()
        for r in range(repeat):
            if r and renew:
                s.renew()
            # Alternate the order: no path always runs right after the same neighbour.
            for p in paths if r % 2 == 0 else paths[::-1]:
                labels[p.key] = p.label
                got = measure(p, seconds, udp_rates, look=p.key not in chains, cpus=cpus)
                if "nat_chain" in got:
                    chains[p.key] = got["nat_chain"]
                tcp.setdefault(p.key, []).append(got["tcp"])
                for rate in udp_rates if p.udp else ():
                    udp.setdefault(rate, {}).setdefault(p.key, []).append(got[rate])
                chain = f" (nat chain: {got['nat_chain']})" if "nat_chain" in got else ""
                print(f"  dataplane round {r + 1}/{repeat}: {p.label}: "
                      f"{got['tcp']['mbps']:.0f} Mbit/s TCP{chain}", file=sys.stderr,
                      flush=True)
    finally:
        s.close()
    rows: list[Row] = []
    mbps = {k: [x["mbps"] for x in v] for k, v in tcp.items()}
    med = {k: summary(v)["median"] for k, v in mbps.items()}
    # Each agents' path against its baseline: (a) bare, (b) a node with kube-proxy's NAT.
    floors = {"wgcable": ("handbuilt", "hand-built wireguard-go (a: bare)"),
              "wgcable-kube": ("handbuilt-kube", "hand-built, kube-like nat (b)"),
              "wgcable-nonft": ("handbuilt", "hand-built wireguard-go (a: bare)")}
    for key, runs in tcp.items():
        mb = summary(mbps[key])
        cpu = [x["wg_cpu_pct"] for x in runs if x["wg_cpu_pct"] is not None]
        busy = summary([x["machine_busy_pct"] for x in runs])["median"]
        note = f"rounds {spread(mbps[key])}; machine busy {busy:.0f}%; " + (
            f"pinned: sender CPU {cpus[0]}, receiver CPU {cpus[1]}" if cpus else "not pinned")
        if cpu:
            note += f"; both wireguard-go {summary(cpu)['median']:.0f}% of one core"
        if key in chains:
            note += f"; nat chain: {chains[key]}"
        floor_key, floor_impl = floors.get(key, ("", ""))
        if floor_key:
            ratios = paired(mbps[key], mbps[floor_key])
            note += (f"; per-round ratio {summary(ratios)['median']:.2f} "
                     f"({spread(ratios, '.2f')})")
            if key == "wgcable-kube":
                note += f"; vs bare (a) {med[key] / med['handbuilt']:.2f}"
                for other, what in (("handbuilt-rule-kube", "(c), a policy rule too"),
                                    ("handbuilt-submariner-kube", "(d), Submariner's "
                                     "features")):
                    if other in med:
                        c = paired(mbps[key], mbps[other])
                        note += (f"; vs {what}, {med[key] / med[other]:.2f} (per round "
                                 f"{summary(c)['median']:.2f}, {spread(c, '.2f')})")
        rows.append(row("iperf3 TCP, 1 stream", labels[key], None, mb["median"], "Mbit/s",
                        floor=med[floor_key] if floor_key else None, floor_impl=floor_impl,
                        note=note))
    for rate, per in udp.items():
        got = {k: [x["mbps"] for x in v] for k, v in per.items()}
        hand_udp = summary(got["handbuilt"])["median"]
        for key, runs in per.items():
            lost = [x["lost_pct"] for x in runs]
            note = f"lost {summary(lost)['median']:.1f}% ({spread(lost, '.1f')}); " \
                   f"rounds {spread(got[key])} Mbit/s"
            if key == "wgcable":
                note += f"; per-round ratio {spread(paired(got[key], got['handbuilt']), '.2f')}"
            if key in chains:
                note += f"; nat chain: {chains[key]}"
            rows.append(row(f"iperf3 UDP at {rate}bit/s, received", labels[key], None,
                            summary(got[key])["median"], "Mbit/s",
                            floor=hand_udp if key == "wgcable" else None,
                            floor_impl="hand-built wireguard-go" if key == "wgcable" else "",
                            note=note))
    return {"rows": rows, "mtu": s.mtu, "seconds": seconds, "nat_chain": chains,
            "pinned": list(cpus) if cpus else None,
            "renewed": renew,
            "tcp": {k: {"label": labels[k], "mbps": summary(mbps[k]), "runs": v}
                    for k, v in tcp.items()},
            "udp": {rate: {k: {"label": labels[k],
                               "mbps": summary([x["mbps"] for x in v]), "runs": v}
                           for k, v in per.items()} for rate, per in udp.items()}}


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
