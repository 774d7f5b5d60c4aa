"""Why the agents' tunnel is slower than a hand-built one: one variable at a time.

``python -m bench --only dataplane-hypotheses [--repeat N]``. One 2-cluster lab (agents,
default settings), one hand-built wireguard-go tunnel on the same topology
(``dataplane_bench``), and a second hand-built tunnel whose daemons are started the way
the agent starts them. For each hypothesis, every round measures iperf3 TCP pod to pod on
the lab's tunnel *with* the variable (as the agents build it) and *without* it, the order
flipped every round, and the hand-built tunnel in the same round as a reference. The row
is "without / with": above 1 means removing the variable made the tunnel faster.

``WGCABLE_BENCH_SUSPECTS=nft-table,notrack`` measures only those (the keys in the table).
What cannot be taken away from the lab is measured added to a hand-built tunnel instead:
how the daemon is started (``DAEMON_VARIANTS``) and a policy rule (``policy-rule``).
The agents are SIGSTOPped (by PID) for every hypothesis but their own, so that they do not
put back what a round took away; each hypothesis restores the lab before the next.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import dataplane_bench as dp
from bench.common import Row, row, summary
from bench.common import run as sh
from bench.wgctrl_bench import Sandbox
from wgcable.cable.wireguard.userspace import LOG_LEVEL_ENV, WireGuardGoProcess
from wgcable.lab.lab import Lab
from wgcable.lab.topology import Topology

DEV = "subwg0"
ONLY_ENV = "WGCABLE_BENCH_SUSPECTS"
TABLE = "wgcable_subwg0"


@dataclass
class Hypothesis:
    key: str
    what: str  # the variable, as the agents have it
    remove: Callable[[], None]  # take it away (the "without" state)
    restore: Callable[[], None]  # put it back (the "with" state, as the agents built it)
    agents_stopped: bool = True
    setup: Callable[[], None] = lambda: None  # for both states, around the whole hypothesis
    teardown: Callable[[], None] = lambda: None


class AgentStarted:
    """A hand-built tunnel's daemon started by the agent's own code (its environment,
    its ``ip netns exec sh -c`` start, its log file, at ``level``: the lab's ``verbose``
    by default)."""

    def __init__(self, root: str, netns: str, dev: str, level: str = "verbose") -> None:
        self.proc = WireGuardGoProcess(dev, netns=netns,
                                       log_path=os.path.join(root, f"{netns}.log"))
        old = os.environ.get(LOG_LEVEL_ENV)
        os.environ[LOG_LEVEL_ENV] = level  # as Lab.start_agent sets it
        try:
            self.proc.start()
        finally:
            if old is None:
                del os.environ[LOG_LEVEL_ENV]
            else:
                os.environ[LOG_LEVEL_ENV] = old
        assert self.proc.pid is not None
        self.pid = self.proc.pid

    def wg(self, *args: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-m", "-n", "wg", *args]

    def close(self) -> None:
        self.proc.stop()


def _sandbox(new_session: bool, log_level: str | None) -> Callable[[str, str, str], Any]:
    def make(_root: str, netns: str, dev: str) -> Sandbox:
        sb = Sandbox(netns=netns, dev=dev, new_session=new_session, log_level=log_level)
        sb.start()
        return sb
    return make


# The daemon's start, variable by variable: the agent's code as a whole, then its two
# differences from the shared environment notes' recipe, one at a time.
DAEMON_VARIANTS: list[tuple[str, str, Callable[[str, str, str], Any]]] = [
    ("daemon-start", "wireguard-go started by the agent's code (WireGuardGoProcess, the "
     "lab's verbose log)", AgentStarted),
    ("daemon-start-deployed", "wireguard-go started by the agent's code at the deployed log "
     "level (error)", functools.partial(AgentStarted, level="error")),
    ("daemon-session", "wireguard-go in a session of its own (start_new_session)",
     _sandbox(True, None)),
    ("daemon-verbose", "wireguard-go with LOG_LEVEL=verbose", _sandbox(False, "verbose")),
]


def _gw_cmd(lab: Lab, i: int, *argv: str) -> list[str]:
    pid = int((lab.state_dir(lab.gateway(i)) / f"{DEV}.wireguard-go.pid").read_text())
    # The daemon's own mount namespace: its socket is in its private /run/wireguard.
    return ["nsenter", "-t", str(pid), "-m", "-n", *argv]


def _lab_hypotheses(lab: Lab) -> list[Hypothesis]:
    gws = (1, 2)
    ns = {i: lab.gateway(i).gateway_ns for i in gws}
    saved: dict[str, Any] = {}

    def keepalive(value: str) -> None:
        for i in gws:
            dump = sh(_gw_cmd(lab, i, "wg", "show", DEV, "peers")).split()
            for peer in dump:
                sh(_gw_cmd(lab, i, "wg", "set", DEV, "peer", peer, "persistent-keepalive",
                           value))

    def routes(i: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = json.loads(
            sh(["ip", "-n", ns[i], "-j", "route", "show", "table", "220"]))
        return out

    def route_args(r: dict[str, Any], table: str, src: bool) -> list[str]:
        argv = [r["dst"], "dev", r["dev"], "table", table, "proto", str(r["protocol"])]
        return argv + (["src", r["prefsrc"]] if src and "prefsrc" in r else [])

    def no_src() -> None:
        for i in gws:
            saved[f"routes{i}"] = routes(i)
            for r in saved[f"routes{i}"]:
                sh(["ip", "-n", ns[i], "route", "replace", *route_args(r, "220", False)])

    def with_src() -> None:
        for i in gws:
            for r in saved[f"routes{i}"]:
                sh(["ip", "-n", ns[i], "route", "replace", *route_args(r, "220", True)])

    def main_table(src: bool = True) -> None:
        for i in gws:
            saved[f"routes{i}"] = routes(i)
            for r in saved[f"routes{i}"]:
                sh(["ip", "-n", ns[i], "route", "add", *route_args(r, "main", src)])
            sh(["ip", "-n", ns[i], "rule", "del", "priority", "220"])

    def table_220(src: bool = True) -> None:
        for i in gws:
            sh(["ip", "-n", ns[i], "rule", "add", "priority", "220", "table", "220",
                "proto", "87"])
            for r in saved[f"routes{i}"]:
                sh(["ip", "-n", ns[i], "route", "del", *route_args(r, "main", src)])

    def nft(i: int, text: str) -> None:
        sh(["ip", "netns", "exec", ns[i], "nft", "-f", "-"], input=text)

    def save_table() -> None:
        for i in gws:
            saved[f"nft{i}"] = sh(["ip", "netns", "exec", ns[i], "nft", "list", "table",
                                   "inet", TABLE])

    def restore_table() -> None:
        for i in gws:
            nft(i, f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\n" + saved[f"nft{i}"])

    def no_table() -> None:
        save_table()
        for i in gws:
            nft(i, f"delete table inet {TABLE}\n")

    def without_chains(*chains: str) -> Callable[[], None]:
        """Our table less the named chains, deleted in this order in one batch (a chain
        that jumps to another goes first)."""
        def drop() -> None:
            save_table()
            for i in gws:
                nft(i, "".join(f"delete chain inet {TABLE} {c}\n" for c in chains))
        return drop

    def agents(sig: int) -> Callable[[], None]:
        def send() -> None:
            for i in gws:
                pid = lab.gateway(i).agent_pid
                if pid:
                    os.kill(pid, sig)  # our lab's agent, by its recorded PID
        return send

    def everything_off() -> None:
        """The agents' tunnel as a hand-built one is (the agents are stopped around every
        suspect): no keepalive, the routes in main without ``src``, no rule, no table."""
        keepalive("0")
        main_table(src=False)
        no_table()

    def everything_on() -> None:
        restore_table()
        table_220(src=False)
        keepalive("10")

    kube = list(ns.values())
    return [
        Hypothesis("agents", "the agents running (status, health checks, reconciles)",
                   agents(signal.SIGSTOP), agents(signal.SIGCONT), agents_stopped=False),
        Hypothesis("keepalive", "persistent keepalive 10 s", lambda: keepalive("0"),
                   lambda: keepalive("10")),
        # The namespace keeps looking up through the rule list after the rule goes: this
        # is the rule's own lookup only; "policy-rule" measures the rest.
        Hypothesis("rule-220", "rule 220 + table 220 (vs the same routes in main, the "
                   "namespace having had a rule)",
                   main_table, table_220),
        Hypothesis("route-src", "route src (the gateway's pod-side address)", no_src,
                   with_src),
        Hypothesis("nft-table", "our nft table (SNAT exemption, MSS clamp, notrack)",
                   no_table, restore_table),
        Hypothesis("notrack", "the notrack chains of our table (with the kube-like table "
                   "loaded, as on a node)", without_chains("notrack_prerouting", "notrack_output"),
                   restore_table,
                   setup=lambda: dp.kube_nat(kube, True),
                   teardown=lambda: dp.kube_nat(kube, False)),
        # The table's parts beyond conntrack, on a node whose conntrack is on anyway.
        Hypothesis("nat-chain", "our NAT chain, the SNAT exemption's null binding (with "
                   "the kube-like table loaded)", without_chains("postrouting"),
                   restore_table, setup=lambda: dp.kube_nat(kube, True),
                   teardown=lambda: dp.kube_nat(kube, False)),
        Hypothesis("clamp", "our MSS clamp chains (with the kube-like table loaded)",
                   without_chains("forward", "clamp"), restore_table,
                   setup=lambda: dp.kube_nat(kube, True),
                   teardown=lambda: dp.kube_nat(kube, False)),
        Hypothesis("all", "all of the above at once but the agents (stopped in both): "
                   "keepalive, rule 220 and its table, route src, our nft table",
                   everything_off, everything_on),
        Hypothesis("kube-nat", "a kube-proxy-like nat table loaded (context: a node)",
                   lambda: dp.kube_nat(kube, False), lambda: dp.kube_nat(kube, True),
                   setup=lambda: dp.kube_nat(kube, True),
                   teardown=lambda: dp.kube_nat(kube, False)),
    ]


def _kube_loaded(namespaces: list[str]) -> bool:
    return all(dp.KUBE_TABLE in sh(["ip", "netns", "exec", ns, "nft", "list", "tables"])
               for ns in namespaces)


def run(repeat: int, quick: bool = False) -> dict[str, Any]:
    seconds = 2 if quick else 6
    s = dp.Setups()
    # One lab only: the second (no nft table) is dataplane's, not needed here.
    s.lab_cms = s.lab_cms[:1]
    tag = os.getpid() % 100000
    extra_topos: list[Topology] = []
    results: dict[str, Any] = {}
    rows: list[Row] = []
    cpus = dp.pinned_cpus()  # as the dataplane section: each side on a CPU of its own
    try:
        lab_path = s._lab(0, "wgcable", "wgcable lab tunnel (agents)")
        lab = s.labs[0]
        # The reference and the daemon variants' baseline: the environment notes' recipe
        # (the bench's own session), so that each variant differs from it in one thing.
        hand = s._hand_built(s.wg_topo, daemon=functools.partial(_sandbox(False, None), s.root))
        variants: list[tuple[str, str, dp.NetPath]] = []
        for i, (key, what, make) in enumerate(DAEMON_VARIANTS):
            topo = Topology(f"wgbv{i}{tag}")
            extra_topos.append(topo)
            variants.append((key, what, s._hand_built(
                topo, key, what, functools.partial(make, s.root))))
        # A rule cannot be taken away from the lab: once a namespace has had one, every
        # route is looked up through the rule list (see ``dp.policy_rule``). So the rule's
        # cost is measured the other way round, added to a hand-built tunnel.
        what = "a policy rule of another's (rule and table 150, as a node has)"
        ruled = s._hand_built(s.rule_topo, "policy-rule", what,
                              functools.partial(_sandbox(False, None), s.root))
        dp.policy_rule(list(s.hand_gws))
        variants.append(("policy-rule", what, ruled))
        plan = _lab_hypotheses(lab)
        stop, cont = plan[0].remove, plan[0].restore
        only = _chosen()
        for h in plan:
            if only and h.key not in only:
                continue
            with_: list[float] = []
            without: list[float] = []
            ref: list[float] = []
            # The set-up first (the kube-like table), then the agents stopped: they load
            # their NAT chain only while the host has NAT, and must have seen it.
            h.setup()
            gws = [lab.gateway(i).gateway_ns for i in (1, 2)]
            # With the kube-like table loaded the agents load their NAT chain, without it
            # they remove it: either way within milliseconds, before they are stopped.
            dp.wait_nat_chain(gws, "loaded" if _kube_loaded(gws) else "absent")
            if h.agents_stopped:
                stop()
            state = [True]  # the variable is there, as the agents built it

            def put(present: bool, h: Hypothesis = h, state: list[bool] = state) -> None:
                if present != state[0]:  # remove/restore only ever toggle
                    (h.restore if present else h.remove)()
                    state[0] = present

            try:
                for r in range(repeat):
                    order = [True, False] if r % 2 == 0 else [False, True]
                    for present in order:
                        put(present)
                        got = dp.measure(lab_path, seconds, (), cpus=cpus)["tcp"]["mbps"]
                        (with_ if present else without).append(got)
                    put(True)
                    ref.append(dp.measure(hand, seconds, (), cpus=cpus)["tcp"]["mbps"])
                    print(f"  hypotheses {h.key} round {r + 1}/{repeat}: with {with_[-1]:.0f}, "
                          f"without {without[-1]:.0f}, hand-built {ref[-1]:.0f} Mbit/s",
                          file=sys.stderr, flush=True)
            finally:
                put(True)
                h.teardown()
                if h.agents_stopped:
                    cont()
            results[h.key] = _row(rows, h.key, h.what, with_, without, ref)
        # How the daemon is started: hand-built tunnels that differ in that alone, each
        # against the plain hand-built one, alternating.
        for key, what, path in variants:
            if only and key not in only:
                continue
            a: list[float] = []
            b: list[float] = []
            for r in range(repeat):
                for first in ([True, False] if r % 2 == 0 else [False, True]):
                    (b if first else a).append(
                        dp.measure(path if first else hand, seconds, (), cpus=cpus)["tcp"]["mbps"])
                print(f"  hypotheses {key} round {r + 1}/{repeat}: with {b[-1]:.0f}, "
                      f"by hand {a[-1]:.0f} Mbit/s", file=sys.stderr, flush=True)
            results[key] = _row(rows, key, what + " (hand-built tunnels both)", b, a, a)
    finally:
        try:
            s.close()
        finally:
            for topo in extra_topos:
                topo.destroy()
    return {"rows": rows, "seconds": seconds, "hypotheses": results,
            "pinned": list(cpus) if cpus else None}


def _chosen() -> set[str]:
    """``WGCABLE_BENCH_SUSPECTS=nft-table,notrack``: only these suspects (default: all)."""
    return {k.strip() for k in os.environ.get(ONLY_ENV, "").split(",") if k.strip()}


def _row(rows: list[Row], key: str, what: str, with_: list[float], without: list[float],
         ref: list[float]) -> dict[str, Any]:
    ratios = dp.paired(without, with_)
    wm, wo = summary(with_)["median"], summary(without)["median"]
    rows.append(row(f"TCP without / with: {what}", key, None, summary(ratios)["median"],
                    "x", note=f"with {wm:.0f} ({dp.spread(with_)}), without {wo:.0f} "
                    f"({dp.spread(without)}) Mbit/s; per-round ratio "
                    f"{dp.spread(ratios, '.2f')}; hand-built {summary(ref)['median']:.0f}"))
    return {"what": what, "with": summary(with_), "without": summary(without),
            "ratio": summary(ratios), "handbuilt": summary(ref)}
