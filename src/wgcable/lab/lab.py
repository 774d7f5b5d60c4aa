"""A running lab: simulated clusters with a real `wgcable agent` on each gateway.

The lab's state (namespaces, PIDs, directories) is kept in ``<root>/<name>/lab.json``, so
a later command (`wgcable lab status`, `lab down`) finds it even after the CLI that started
it crashed. Every gateway has a long-lived holder process whose mount namespace carries a
private /run/wireguard; the agent and anything run "on the gateway" enter the holder's
network and mount namespaces, so they see the gateway's WireGuard socket.

A cluster may have several nodes (``nodes``): node 0 is the gateway node (the gateway's
namespace), the others are workers. Every node runs a `wgcable route-agent` in its network
namespace (no holder: it needs no WireGuard socket), once this wgcable has one.

A cluster may have several gateway candidates (``gateways``): nodes 0 to G-1 each run a
gateway agent, and a lease elects the active one. ``state.gateways`` holds node 0's, one per
cluster; ``state.standbys`` the others. Their leases are short (LAB_LEASE), so that a lab's
failover takes seconds.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from wgcable.agent.statusfile import AgentStatus, read_status_file
from wgcable.cable.remote import PUBLIC_KEY
from wgcable.cable.types import ConnectionStatus
from wgcable.cable.wireguard.userspace import (
    LOG_LEVEL_ENV,
    PRIVATE_SOCKET_DIR,
    process_running,
)
from wgcable.lab.kubeapi import LocalAPIServer, lease_namespace
from wgcable.lab.netns import LabError, Namespace, delete_namespaces, list_namespaces
from wgcable.lab.process import stop_pids
from wgcable.lab.topology import BROKER_IP, MAX_NODES, ClusterNet, Topology
from wgcable.netlink.netns import call_in_netns
from wgcable.store.open import DEFAULT_NAMESPACE, KUBERNETES

LAB_ROOT = "/run/wgcable-lab"
STORES = ("directory", KUBERNETES)
NS_PREFIX = "wgl"  # every namespace of every lab starts with this
# Every lab agent serves Prometheus metrics on this port of its gateway namespace's
# loopback (the agent's default address): reachable from inside the gateway only.
METRICS_PORT = 9898
# The lease timings of a lab with several gateways per cluster (duration, renew deadline,
# retry), stretched by the test VM's slowness: a failover in about 2 s.
LAB_LEASE = (1.5, 1.0, 0.2)
MAX_GATEWAYS = 3
# The underlay MTUs a lab takes: its tunnels (60 bytes less over IPv4) must still carry
# IPv6's minimum of 1280; 9000 is a jumbo frame.
MTU_RANGE = (1340, 9000)

log = logging.getLogger(__name__)


@dataclass
class GatewayState:
    index: int
    cluster_id: str
    gateway_ns: str
    pod_ns: list[str]
    private_ip: str
    public_ip: str
    nat: bool
    subnets: list[str]
    pod_ips: list[str]
    pod_ips6: list[str]
    health_check_ip: str
    holder_pid: int = 0
    agent_pid: int = 0
    node: int = 0  # the cluster's node it runs on (a candidate on a worker: >= 1)
    args: list[str] = field(default_factory=list)  # its own agent flags (after the lab's)

    @property
    def hostname(self) -> str:
        return f"gw{self.index}" if self.node == 0 else f"gw{self.index}-{self.node}"

    @property
    def label(self) -> str:
        """``cluster1`` for node 0's gateway, ``cluster1/node1`` for a standby's."""
        return self.cluster_id if self.node == 0 else f"{self.cluster_id}/node{self.node}"


@dataclass
class NodeState:
    """Node ``index`` of cluster ``cluster`` (0: the gateway node, whose namespace is the
    gateway's). Its pods sit behind its cni0, in its own pod CIDRs."""

    cluster: int
    index: int
    namespace: str
    hostname: str  # what its route agent is told (node 0: the gateway agent's hostname)
    node_ip: str
    node_ip6: str  # "" without IPv6
    pod_ns: list[str]
    pod_ips: list[str]
    pod_ips6: list[str]
    pod_cidrs: list[str]  # 10.<i>.<j>.0/24 (and fd00:<i>:0:<j>::/64)
    route_agent_pid: int = 0


@dataclass(frozen=True)
class Pod:
    """A pod of the lab, with where it runs."""

    cluster: int
    cluster_id: str
    node: int
    node_ns: str
    namespace: str
    ip: str
    ip6: str

    @property
    def label(self) -> str:
        """``cluster1/gw`` for the gateway node's pod, ``cluster1/node2`` for a worker's."""
        return f"{self.cluster_id}/{'gw' if self.node == 0 else f'node{self.node}'}"


@dataclass
class LabState:
    name: str
    prefix: str
    root: str
    ipv6: bool
    nat: bool
    snat: bool
    created: float
    gateways: list[GatewayState] = field(default_factory=list)
    extra_namespaces: list[str] = field(default_factory=list)
    store: str = "directory"  # or "kubernetes": an API server in the broker namespace
    broker_ns: str = ""
    etcd_pid: int = 0
    apiserver_pid: int = 0
    # While `lab up` builds: the clusters it was asked for and its PID. ``built`` turns true
    # at the end, so that a build killed half-way is told from a lab that is up. (A lab.json
    # written before these fields existed was complete.)
    clusters: int = 0
    builder_pid: int = 0
    built: bool = True
    # Nodes per cluster, and every node (node 0 of each cluster included). A lab.json from
    # before nodes has neither: each cluster then had its gateway node alone.
    nodes_per_cluster: int = 1
    nodes: list[NodeState] = field(default_factory=list)
    # Gateway candidates per cluster; the candidates on nodes 1.. (node 0's are `gateways`).
    gateways_per_cluster: int = 1
    standbys: list[GatewayState] = field(default_factory=list)
    mtu: int = 1500  # every link's: underlay, NAT routers' insides, cni0s and pods


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,15}", name):
        raise LabError(f"lab name {name!r}: use 1-16 lowercase letters, digits and '-'")


# What a lab agent's PID runs: `nsenter` execs the Python that runs `wgcable agent`.
_AGENT_NAMES = ("python", "python3", "wgcable", "nsenter")
# A route agent's: `ip netns exec` execs the Python that runs `wgcable route-agent`.
_ROUTE_AGENT_NAMES = ("python", "python3", "python3.11", "wgcable", "ip")


def is_lab_namespace(prefix: str, name: str) -> bool:
    """Whether ``name`` is one of the lab's namespaces. Exact suffixes, not a bare prefix
    match: lab "a"'s prefix "wgla-" would otherwise also match lab "a-1"'s "wgla-1-hub"."""
    rest = name.removeprefix(f"{prefix}-")
    return rest != name and re.fullmatch(
        r"hub|broker|gw\d+|nat\d+|node\d+-\d+|pod\d+-\d+|pod\d+-\d+-\d+", rest) is not None


def namespace_pids(ns: str) -> list[int]:
    """PIDs of the processes inside the named network namespace."""
    return pids_in_namespaces([ns]).get(ns, [])


def pids_in_namespaces(names: Sequence[str]) -> dict[str, list[int]]:
    """PIDs of the processes inside each named network namespace, in one pass over /proc
    (as `ip netns pids` finds them, but once for all names rather than a process each)."""
    wanted: dict[tuple[int, int], str] = {}
    for ns in names:
        with contextlib.suppress(OSError):
            st = os.stat(f"/run/netns/{ns}")
            wanted[(st.st_dev, st.st_ino)] = ns
    found: dict[str, list[int]] = {}
    if not wanted:
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        ns_name = wanted.get((st.st_dev, st.st_ino))
        if ns_name is not None:
            found.setdefault(ns_name, []).append(int(entry.name))
    return found


def end_processes_in(*names: str, rounds: int = 5) -> None:
    """End every process inside the named namespaces, by PID, all at once. Scanned again
    after each round: a process being stopped may just have started another (an agent
    starting its wireguard-go, in a session of its own so that it outlives the agent)."""
    for _ in range(rounds):
        pids = [p for ps in pids_in_namespaces(names).values() for p in ps]
        if not pids:
            return
        stop_pids([(pid, ()) for pid in pids])


def _slowness() -> float:
    """How many times slower than the host this machine runs (the test VM's measured
    factor, tests/slowness.py); 1 elsewhere."""
    try:
        return max(1.0, float(os.environ.get("WGCABLE_SLOWNESS", 1)))
    except ValueError:
        return 1.0


def _ping(namespace: str, target: str, count: int, timeout: float) -> float | None:
    """RTT in ms of ``count`` pings from ``namespace`` to ``target``, or None. A ping
    process that does not even end in time (starting one is slow under emulation) is an
    unanswered ping too."""
    try:
        out = subprocess.run(
            Namespace(namespace).cmd("ping", "-n", "-c", str(count), "-i", "0.2",
                                     "-W", str(timeout), target),
            capture_output=True, text=True, check=False,
            timeout=(count * (timeout + 1) + 5) * _slowness(),
        )
    except subprocess.TimeoutExpired:
        return None
    m = re.search(r"= [\d.]+/([\d.]+)/", out.stdout)
    return float(m.group(1)) if out.returncode == 0 and m else None


class Lab:
    def __init__(self, state: LabState) -> None:
        self.state = state
        self.dir = Path(state.root) / state.name

    # --- where things live ----------------------------------------------------------------

    @property
    def store_dir(self) -> Path:
        return self.dir / "store"

    @property
    def broker_dir(self) -> Path:
        return self.dir / "broker"

    def broker(self) -> LocalAPIServer:
        """The broker API server of a ``--store kubernetes`` lab (PIDs from the state)."""
        if self.state.store != KUBERNETES:
            raise LabError(f"lab {self.state.name!r} uses the {self.state.store} store, "
                           "not kubernetes")
        server = LocalAPIServer(self.state.broker_ns, self.broker_dir, BROKER_IP)
        server.etcd_pid, server.apiserver_pid = self.state.etcd_pid, self.state.apiserver_pid
        return server

    def record_broker(self, server: LocalAPIServer) -> None:
        self.state.etcd_pid, self.state.apiserver_pid = server.etcd_pid, server.apiserver_pid
        self.save()

    def state_dir(self, gw: GatewayState) -> Path:
        return self.dir / gw.hostname

    def daemon_log_file(self, gw: GatewayState) -> Path:
        """wireguard-go's own log (its handshakes, in a lab)."""
        return self.state_dir(gw) / "subwg0.wireguard-go.log"

    def log_file(self, gw: GatewayState) -> Path:
        return self.dir / f"{gw.hostname}.log"

    def gateway(self, which: int | str | GatewayState) -> GatewayState:
        """A cluster's gateway on node 0 (by index or ID), or the candidate given."""
        if isinstance(which, GatewayState):
            return which
        for g in self.state.gateways:
            if which in (g.index, g.cluster_id, str(g.index)):
                return g
        raise LabError(f"no cluster {which!r} in lab {self.state.name!r}")

    def candidates(self, which: int | str | None = None) -> list[GatewayState]:
        """A cluster's gateway candidates (or every cluster's), node 0's first."""
        if which is None:
            return sorted([*self.state.gateways, *self.state.standbys],
                          key=lambda g: (g.index, g.node))
        index = self.gateway(which).index
        return [self.gateway(index), *(g for g in self.state.standbys if g.index == index)]

    def candidate(self, which: int | str, node: int) -> GatewayState:
        for g in self.candidates(which):
            if g.node == node:
                return g
        raise LabError(f"no gateway candidate on node {node} of cluster {which!r}")

    def actives(self, which: int | str, fresh: float = 5.0) -> list[GatewayState]:
        """The candidates of a cluster whose running agent's fresh status says active."""
        now, out = time.time(), []
        for g in self.candidates(which):
            st = self.status(g)
            # The running agent's own status (a restarted one's file may still be its
            # predecessor's).
            if (st is not None and now - st.updated <= fresh and self.agent_alive(g)
                    and st.pid == g.agent_pid and st.gateway.ha_status == "active"):
                out.append(g)
        return out

    def active(self, which: int | str) -> GatewayState | None:
        """The cluster's active gateway; None if none (or, wrongly, several) say so."""
        found = self.actives(which)
        return found[0] if len(found) == 1 else None

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / ".lab.json.tmp"
        tmp.write_text(json.dumps(asdict(self.state), indent=1))
        os.replace(tmp, self.dir / "lab.json")

    @classmethod
    def load(cls, name: str = "default", root: str = LAB_ROOT) -> Lab:
        path = Path(root) / name / "lab.json"
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(f"no lab {name!r} (nothing at {path})") from None
        gws = [GatewayState(**g) for g in doc.pop("gateways")]
        standbys = [GatewayState(**g) for g in doc.pop("standbys", [])]
        nodes = [NodeState(**n) for n in doc.pop("nodes", [])]
        return cls(LabState(**doc, gateways=gws, standbys=standbys, nodes=nodes))

    # --- nodes and pods ---------------------------------------------------------------------

    def nodes(self, cluster: int | str | None = None) -> list[NodeState]:
        """The nodes of a cluster (or of all), node 0 first. A lab recorded before nodes
        existed has its gateway nodes only, which are made up from its gateways."""
        if self.state.nodes:
            nodes = self.state.nodes
        else:
            nodes = [NodeState(g.index, 0, g.gateway_ns, f"gw{g.index}", g.private_ip, "",
                               g.pod_ns, g.pod_ips, g.pod_ips6, []) for g in self.state.gateways]
        if cluster is None:
            return nodes
        index = self.gateway(cluster).index
        return [n for n in nodes if n.cluster == index]

    def node(self, cluster: int | str, node: int) -> NodeState:
        for n in self.nodes(cluster):
            if n.index == node:
                return n
        raise LabError(f"no node {node} in cluster {cluster!r} of lab {self.state.name!r}")

    def pods(self) -> list[Pod]:
        """Every pod of every node of every cluster, in that order."""
        out = []
        for n in self.nodes():
            cid = self.gateway(n.cluster).cluster_id
            for k, ns in enumerate(n.pod_ns):
                ip6 = n.pod_ips6[k] if k < len(n.pod_ips6) else ""
                out.append(Pod(n.cluster, cid, n.index, n.namespace, ns, n.pod_ips[k], ip6))
        return out

    # --- building ---------------------------------------------------------------------------

    @classmethod
    def up(
        cls,
        name: str = "default",
        clusters: int = 3,
        *,
        ipv6: bool = False,
        nat: bool = False,
        snat: bool = False,
        root: str = LAB_ROOT,
        agent_args: Sequence[str] = (),
        store: str = "directory",
        nodes: int = 1,
        gateways: int = 1,
        cluster_args: Mapping[int, Sequence[str]] | None = None,
        mtu: int = 1500,
    ) -> Lab:
        """Build the namespaces, start an agent per gateway, then a route agent per node
        (when this wgcable has one). ``nodes`` per cluster: 1 is the gateway node alone.
        ``gateways`` per cluster: gateway candidates on nodes 0 to ``gateways`` - 1 (there
        are at least as many nodes). ``cluster_args``: more agent flags for cluster i's
        gateways (e.g. what they publish about NAT), after the lab's own. ``mtu``: every
        link's MTU (the underlay's, and the pods'), 1500 by default.
        On any failure, everything made so far is removed before the error is raised."""
        _check_name(name)
        if not 2 <= clusters <= 50:
            raise LabError(f"--clusters {clusters}: must be 2-50")
        if not 1 <= nodes <= MAX_NODES:
            raise LabError(f"--nodes {nodes}: must be 1-{MAX_NODES}")
        if store not in STORES:
            raise LabError(f"--store {store!r}: must be one of {', '.join(STORES)}")
        if not 1 <= gateways <= MAX_GATEWAYS:
            raise LabError(f"--gateways {gateways}: must be 1-{MAX_GATEWAYS}")
        if not MTU_RANGE[0] <= mtu <= MTU_RANGE[1]:
            raise LabError(f"--mtu {mtu}: must be {MTU_RANGE[0]}-{MTU_RANGE[1]}")
        if gateways > 1 and nat:
            # The NAT router forwards the tunnel port to one node; a failover would need it
            # re-pointed. Not simulated yet.
            raise LabError("--gateways above 1 does not work with --nat yet")
        nodes = max(nodes, gateways)
        if (Path(root) / name / "lab.json").exists():
            raise LabError(f"lab {name!r} is already up; `wgcable lab down --name {name}` first")
        prefix = f"{NS_PREFIX}{name}"
        lab = cls(LabState(name, prefix, root, ipv6, nat, snat, time.time(), store=store,
                           clusters=clusters, builder_pid=os.getpid(), built=False,
                           nodes_per_cluster=nodes, gateways_per_cluster=gateways,
                           mtu=mtu))
        lab.save()  # recorded first, so that `lab down` can clean up a half-built lab
        try:
            lab._build(clusters, agent_args, cluster_args or {})
        except BaseException:
            lab.down()
            raise
        lab.state.built, lab.state.builder_pid = True, 0
        lab.save()
        return lab

    def build_state(self) -> str:
        """"built", "building" (its `lab up` still runs) or "interrupted" (it does not)."""
        if self.state.built:
            return "built"
        alive = self.state.builder_pid and process_running(self.state.builder_pid)
        return "building" if alive else "interrupted"

    def namespaces_present(self) -> list[str]:
        """Every namespace of this lab that exists, recorded in lab.json or not (a build
        killed half-way made some it never recorded)."""
        return sorted(n for n in list_namespaces() if is_lab_namespace(self.state.prefix, n))

    def _build(self, clusters: int, agent_args: Sequence[str],
               cluster_args: Mapping[int, Sequence[str]]) -> None:
        topo = Topology(self.state.prefix, ipv6=self.state.ipv6,
                        mtu=None if self.state.mtu == 1500 else self.state.mtu)
        topo.build_underlay()
        if self.state.store == KUBERNETES:
            self._start_broker(topo)
        else:
            self.store_dir.mkdir(parents=True, exist_ok=True)
        for i in range(1, clusters + 1):
            # With --nat, every second cluster sits behind a NAT router.
            c = topo.add_cluster(i, nat=self.state.nat and i % 2 == 0)
            gw = self._gateway_state(c)
            gw.args = list(cluster_args.get(i, ()))
            self.state.gateways.append(gw)
            broker = [topo.broker] if topo.broker else []
            self.state.extra_namespaces = [n.name for n in [topo.hub, *broker, *topo.routers]]
            self.state.nodes.append(self._node_state(c, 0))
            self.save()
            for j in range(1, self.state.nodes_per_cluster):
                topo.add_node(c, j)
                self.state.nodes.append(self._node_state(c, j))
                self.save()
            topo.route_nodes(c)
            if self.state.snat:
                for node in self.nodes(i):
                    self._snat(gw, node.namespace)
            gw.holder_pid = self._start_holder(gw)
            self.save()
            for j in range(1, self.state.gateways_per_cluster):
                standby = self._standby_state(gw, self.node(i, j))
                self.state.standbys.append(standby)
                standby.holder_pid = self._start_holder(standby)
                self.save()
        for gw in self.state.gateways:
            self.start_agent(gw, agent_args)
        for gw in self.state.standbys:
            self.start_agent(gw, agent_args)
        # A cluster of one node has no worker to route for: no route agent (under the test
        # VM's emulation each Python process costs seconds).
        if self.state.nodes_per_cluster > 1:
            for node in self.state.nodes:
                self.start_route_agent(node.cluster, node.index)

    def _start_broker(self, topo: Topology) -> None:
        broker = topo.add_broker()
        self.state.broker_ns = broker.name
        self.state.extra_namespaces = [topo.hub.name, broker.name]
        self.save()
        server = LocalAPIServer(broker.name, self.broker_dir, BROKER_IP)
        try:
            server.start()
        finally:
            self.record_broker(server)  # PIDs first: `lab down` must find them

    @staticmethod
    def _gateway_state(c: ClusterNet) -> GatewayState:
        return GatewayState(
            index=c.index, cluster_id=c.cluster_id, gateway_ns=c.gateway.name,
            pod_ns=[p.name for p in c.pods], private_ip=c.underlay_ip,
            public_ip=c.public_ip if c.nat else "", nat=c.nat, subnets=c.subnets,
            pod_ips=[c.pod_ip(n) for n in range(len(c.pods))],
            pod_ips6=[c.pod_ip6(n) for n in range(len(c.pods))] if c.ipv6 else [],
            health_check_ip=c.gateway_pod_ip,
        )

    @staticmethod
    def _standby_state(gw: GatewayState, node: NodeState) -> GatewayState:
        """A gateway candidate on worker ``node``: its address, pods and cni0."""
        return GatewayState(
            index=gw.index, cluster_id=gw.cluster_id, gateway_ns=node.namespace,
            pod_ns=list(node.pod_ns), private_ip=node.node_ip, public_ip="", nat=False,
            subnets=list(gw.subnets), pod_ips=list(node.pod_ips),
            pod_ips6=list(node.pod_ips6),
            health_check_ip=node.pod_cidrs[0].rsplit(".", 1)[0] + ".1", node=node.index)

    @staticmethod
    def _node_state(c: ClusterNet, j: int) -> NodeState:
        pods = c.nodes[j].pods
        cidrs = [c.pod_cidr(j), *([c.pod_cidr6(j)] if c.ipv6 else [])]
        return NodeState(
            cluster=c.index, index=j, namespace=c.nodes[j].ns.name,
            # Node 0's route agent must know itself as the gateway agent's host.
            hostname=f"gw{c.index}" if j == 0 else c.nodes[j].ns.name,
            node_ip=c.node_ip(j), node_ip6=c.node_ip6(j) if c.ipv6 else "",
            pod_ns=[p.name for p in pods], pod_ips=[c.pod_ip(n, j) for n in range(len(pods))],
            pod_ips6=[c.pod_ip6(n, j) for n in range(len(pods))] if c.ipv6 else [],
            pod_cidrs=cidrs,
        )

    def _snat(self, gw: GatewayState, namespace: str) -> None:
        """Masquerade everything the pods send off-cluster, as some CNIs do, on every
        node."""
        pods = ", ".join(s for s in gw.subnets if ":" not in s)
        rules = f"""
table ip wgcable_lab_snat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat;
        ip saddr {{ {pods} }} ip daddr != {{ {pods} }} masquerade
    }}
}}
"""
        Namespace(namespace).run("nft", "-f", "-", input=rules)

    def _start_holder(self, gw: GatewayState) -> int:
        script = f"{PRIVATE_SOCKET_DIR} && exec sleep infinity"
        p = subprocess.Popen(
            Namespace(gw.gateway_ns).cmd("sh", "-c", script),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise LabError(f"gateway {gw.cluster_id}: mount namespace holder exited")
            if Path(f"/proc/{p.pid}/comm").read_text().strip() == "sleep":
                return p.pid
            time.sleep(0.01)
        raise LabError(f"gateway {gw.cluster_id}: mount namespace holder did not start")

    # --- on a gateway -----------------------------------------------------------------------

    def gateway_cmd(self, gw: GatewayState, *args: str) -> list[str]:
        """A command line that runs on the gateway: its network and mount namespaces."""
        if not process_running(gw.holder_pid, "sleep"):
            raise LabError(f"gateway {gw.cluster_id}: its namespace holder is gone")
        return ["nsenter", "-t", str(gw.holder_pid), "-m", "-n", "--", *args]

    def store_args(self, gw: GatewayState) -> list[str]:
        """The store options of a cluster's agents: gateway and route agents alike."""
        if self.state.store == KUBERNETES:
            hosts = {g.hostname: g.private_ip for g in self.candidates(gw.index)}
            kubeconfig = self.broker().cluster_kubeconfig(gw.cluster_id, hosts)
            return ["--store", KUBERNETES, "--kubeconfig", str(kubeconfig),
                    "--namespace", DEFAULT_NAMESPACE]
        return ["--store", str(self.store_dir)]

    def lease_args(self, gw: GatewayState) -> list[str]:
        """Where a cluster's gateway lease is: with the Kubernetes store, on the broker's
        API server (the lab has no other), in a namespace of the cluster's own, as a
        cluster's own API server would have it; a file next to a directory store."""
        if self.state.store != KUBERNETES:
            return []
        kubeconfig = self.broker().cluster_kubeconfig(
            gw.cluster_id, {g.hostname: g.private_ip for g in self.candidates(gw.index)})
        return ["--lease-kubeconfig", str(kubeconfig),
                "--lease-namespace", lease_namespace(gw.cluster_id)]

    def agent_argv(self, gw: GatewayState, extra: Sequence[str] = ()) -> list[str]:
        # Pod CIDRs are 10.<i>.0.0/16 and fd00:<i>::/48 (prefix tests: IPv6 has no dots).
        cidrs = [s for s in gw.subnets
                 if s.startswith((f"10.{gw.index}.", f"fd00:{gw.index}::"))]
        services = [s for s in gw.subnets if s not in cidrs]
        argv = [
            sys.executable, "-m", "wgcable", "agent", *self.store_args(gw),
            *self.lease_args(gw),
            "--cluster-id", gw.cluster_id,
            "--cluster-cidr", ",".join(cidrs),
            "--service-cidr", ",".join(services),
            "--private-ip", gw.private_ip,
            "--hostname", gw.hostname,
            "--state-dir", str(self.state_dir(gw)),
            "--health-check-ip", gw.health_check_ip,
            "--status-interval", "1",
            "--metrics-port", str(METRICS_PORT),
        ]
        if gw.nat:
            argv += ["--public-ip", gw.public_ip, "--nat"]
        argv += gw.args
        if self.state.gateways_per_cluster > 1:
            duration, deadline, retry = (t * _slowness() for t in LAB_LEASE)
            argv += ["--lease-duration", f"{duration:g}", "--lease-renew-deadline",
                     f"{deadline:g}", "--lease-retry", f"{retry:g}"]
        return [*argv, *extra]

    def cleanup_cmd(self, gw: GatewayState) -> list[str]:
        """`wgcable cleanup` of the gateway, with its agent's settings, in its namespace."""
        return self.gateway_cmd(gw, *[a if a != "agent" else "cleanup"
                                      for a in self.agent_argv(gw)])

    def start_agent(self, which: int | str | GatewayState, extra: Sequence[str] = ()) -> int:
        gw = which if isinstance(which, GatewayState) else self.gateway(which)
        if gw.agent_pid and process_running(gw.agent_pid):
            raise LabError(f"gateway {gw.cluster_id}: agent already running (pid {gw.agent_pid})")
        self.state_dir(gw).mkdir(parents=True, exist_ok=True, mode=0o700)
        log = open(self.log_file(gw), "ab")  # noqa: SIM115 - handed to the child
        try:
            p = subprocess.Popen(
                self.gateway_cmd(gw, *self.agent_argv(gw, extra)),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                # A lab is for looking: wireguard-go logs every handshake (never a key).
                env={LOG_LEVEL_ENV: "verbose", **os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            log.close()
        gw.agent_pid = p.pid
        self.save()
        return p.pid

    def stop_agent(self, which: int | str | GatewayState, sig: int = signal.SIGTERM,
                   timeout: float = 10) -> None:
        """Stop the agent by its PID (SIGTERM leaves the tunnels up; SIGKILL is a crash)."""
        gw = self.gateway(which)
        pid = gw.agent_pid
        if pid and process_running(pid):
            os.kill(pid, sig)
            deadline = time.monotonic() + timeout
            while process_running(pid) and time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                time.sleep(0.02)
        gw.agent_pid = 0
        self.save()

    def move_gateway(self, which: int | str, node: int) -> float:
        """Make node ``node`` the cluster's gateway by hand, as an operator would: stop the
        gateway agent, `wgcable cleanup` on the old node (device, routes, Endpoint), start
        the agent on the new node with its address. The key (the lab's state directory of
        the cluster) goes with it. Returns the seconds the move took until the new agent
        was started. Directory stores only (a broker's RBAC names the gateway's IP)."""
        if self.state.store == KUBERNETES:
            raise LabError("moving a gateway needs the directory store")
        gw = self.gateway(which)
        target = self.node(gw.index, node)
        t0 = time.monotonic()
        self.stop_agent(gw.index)
        done = subprocess.run(self.cleanup_cmd(gw), capture_output=True, text=True,
                              timeout=60, check=False)
        if done.returncode != 0:
            raise LabError(f"cleanup on {gw.gateway_ns}: {done.stderr.strip()}")
        stop_pids([(gw.holder_pid, ("sleep",))])
        gw.gateway_ns, gw.private_ip = target.namespace, target.node_ip
        gw.health_check_ip = target.pod_cidrs[0].rsplit(".", 1)[0] + ".1"  # its cni0
        gw.holder_pid = self._start_holder(gw)
        self.save()
        self.start_agent(gw)
        return time.monotonic() - t0

    # --- gateway candidates ------------------------------------------------------------------

    def handover(self, which: int | str) -> GatewayState:
        """Ask the cluster's active gateway to hand its lease over (SIGUSR1, as `wgcable
        handover` does). Returns the gateway asked."""
        active = self.active(which)
        if active is None:
            raise LabError(f"cluster {which!r} has no single active gateway to hand over")
        os.kill(active.agent_pid, signal.SIGUSR1)
        return active

    def rotate_key(self, which: int | str | GatewayState) -> GatewayState:
        """Ask a gateway (a cluster's: its active one) to rotate its key pair (SIGUSR2, as
        `wgcable rotate-key` does). Returns the gateway asked."""
        gw = which if isinstance(which, GatewayState) else self.active(which)
        if gw is None or not gw.agent_pid:
            raise LabError(f"cluster {which!r} has no single active gateway with an agent")
        os.kill(gw.agent_pid, signal.SIGUSR2)
        return gw

    def kill_node(self, which: int | str, node: int) -> None:
        """Node ``node`` of a cluster dies: every process of it SIGKILLed by PID (a gateway
        agent and its wireguard-go, the route agent), and its links down. Its namespace
        stays (for the teardown), cut off from everything."""
        pids: list[tuple[int, Sequence[str]]] = []
        for gw in self.candidates(which):
            if gw.node != node:
                continue
            pids.append((gw.agent_pid, _AGENT_NAMES))
            pidfile = self.state_dir(gw) / "subwg0.wireguard-go.pid"
            with contextlib.suppress(OSError, ValueError):
                pids.append((int(pidfile.read_text()), ("wireguard-go",)))
            gw.agent_pid = 0
        n = self.node(which, node)
        pids.append((n.route_agent_pid, _ROUTE_AGENT_NAMES))
        n.route_agent_pid = 0
        stop_pids(pids, sig=signal.SIGKILL)
        Namespace(n.namespace).ip("link set eth0 down", "link set cni0 down")
        self.save()

    def revive_node(self, which: int | str, node: int, extra: Sequence[str] = ()) -> None:
        """Bring a node that ``kill_node`` killed back: its links up, its routes to the
        other nodes' pods again (a link down loses them), its route agent and gateway agent
        started (``extra``: the agent's arguments). IPv4 labs (IPv6 addresses go with the
        link)."""
        if self.state.ipv6:
            raise LabError("reviving a node needs an IPv4 lab")
        n = self.node(which, node)
        routes = [f"route replace {b.pod_cidrs[0]} via {b.node_ip}"
                  for b in self.nodes(n.cluster) if b.index != n.index]
        Namespace(n.namespace).ip("link set eth0 up", "link set cni0 up", *routes)
        if self.state.nodes_per_cluster > 1:
            self.start_route_agent(n.cluster, n.index)
        for gw in self.candidates(which):
            if gw.node == node:
                self.start_agent(gw, extra)

    # --- route agents, one per node --------------------------------------------------------

    def node_dir(self, node: NodeState) -> Path:
        return self.dir / f"node{node.cluster}-{node.index}"

    def route_agent_log(self, node: NodeState) -> Path:
        return self.dir / f"node{node.cluster}-{node.index}.route-agent.log"

    def route_agent_argv(self, node: NodeState) -> list[str]:
        gw = self.gateway(node.cluster)
        return [
            sys.executable, "-m", "wgcable.cli.main", "route-agent", *self.store_args(gw),
            "--cluster-id", gw.cluster_id,
            "--node-ip", node.node_ip,
            "--hostname", node.hostname,
            "--state-dir", str(self.node_dir(node)),
            "--log-level", "debug",
            # Its drift check starts a few processes: under the test VM's emulation, where
            # each costs seconds, as often in work, not in time (WGCABLE_SLOWNESS).
            "--check-interval", f"{5 * _slowness():g}",
        ]

    def start_route_agent(self, cluster: int | str, node: int) -> int:
        """Start node ``node``'s route agent in the node's network namespace; its PID is
        recorded at once, so that `lab down` finds it whatever fails next."""
        n = self.node(cluster, node)
        if n.route_agent_pid and process_running(n.route_agent_pid):
            raise LabError(f"node {n.namespace}: route agent already running "
                           f"(pid {n.route_agent_pid})")
        self.node_dir(n).mkdir(parents=True, exist_ok=True, mode=0o700)
        log = open(self.route_agent_log(n), "ab")  # noqa: SIM115 - handed to the child
        try:
            p = subprocess.Popen(
                Namespace(n.namespace).cmd(*self.route_agent_argv(n)),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            log.close()
        n.route_agent_pid = p.pid
        self.save()
        return p.pid

    def stop_route_agent(self, cluster: int | str, node: int, sig: int = signal.SIGTERM,
                         timeout: float = 10) -> None:
        """Stop node ``node``'s route agent by its PID (SIGKILL: a crash)."""
        n = self.node(cluster, node)
        if n.route_agent_pid:
            stop_pids([(n.route_agent_pid, _ROUTE_AGENT_NAMES)], timeout, sig=sig)
        n.route_agent_pid = 0
        self.save()

    def route_agent_alive(self, cluster: int | str, node: int) -> bool:
        pid = self.node(cluster, node).route_agent_pid
        return bool(pid) and process_running(pid)

    def agent_alive(self, which: int | str | GatewayState) -> bool:
        gw = self.gateway(which)
        return bool(gw.agent_pid) and process_running(gw.agent_pid)

    def status(self, which: int | str | GatewayState) -> AgentStatus | None:
        try:
            return read_status_file(self.state_dir(self.gateway(which)))
        except (FileNotFoundError, ValueError):
            return None

    def metrics(self, which: int | str | GatewayState, timeout: float = 5) -> str:
        """The gateway agent's Prometheus metrics, fetched from inside its namespace (the
        agent listens on the namespace's own 127.0.0.1)."""
        gw = self.gateway(which)

        def fetch() -> tuple[int, str]:
            conn = http.client.HTTPConnection("127.0.0.1", METRICS_PORT, timeout=timeout)
            try:
                conn.request("GET", "/metrics")
                reply = conn.getresponse()
                return reply.status, reply.read().decode(errors="replace")
            finally:
                conn.close()

        url = f"http://127.0.0.1:{METRICS_PORT}/metrics in {gw.gateway_ns}"
        try:
            status, body = call_in_netns(gw.gateway_ns, fetch)
        except OSError as e:
            alive = "running" if self.agent_alive(gw) else "not running"
            raise LabError(f"{gw.cluster_id}: no metrics at {url} (the agent is {alive}): "
                           f"{e}") from None
        if status != 200:
            raise LabError(f"{gw.cluster_id}: {url}: HTTP {status}")
        return body

    def all_connected(self) -> bool:
        """Every cluster's active gateway (the only one, with several candidates) reports
        every remote cluster connected, with the key that remote's gateway publishes now.

        ``connected`` is the agent's honest word (README, "Connection status"): peer, routes,
        rule, SNAT exemption, a handshake and the first health check reply. The keys make
        a status from before a remote's new key (or another remote gateway) not count."""
        statuses = []
        for gw in self.state.gateways:
            if self.state.standbys:
                active = self.active(gw.index)
                if active is None:
                    return False
                gw = active
            st = self.status(gw)
            # A fresh status of the running agent (a restarted one's file may be its
            # predecessor's for a moment).
            if st is None or time.time() - st.updated > 5 or st.pid != gw.agent_pid:
                return False
            statuses.append(st)
        keys = {st.gateway.local_endpoint.cluster_id:
                st.gateway.local_endpoint.backend_config.get(PUBLIC_KEY) for st in statuses}
        for st in statuses:
            own = st.gateway.local_endpoint.cluster_id
            ok = {c.endpoint.cluster_id for c in st.gateway.connections
                  if c.status == ConnectionStatus.CONNECTED
                  and c.endpoint.backend_config.get(PUBLIC_KEY) == keys.get(c.endpoint.cluster_id)}
            if ok != set(keys) - {own}:
                return False
        return True

    def ping(self, src: int | str, dst: int | str, *, count: int = 1, v6: bool = False,
             timeout: float = 2) -> float | None:
        """RTT in ms of a ping from ``src``'s first pod to ``dst``'s (the gateway nodes'),
        or None if unanswered."""
        s, d = self.gateway(src), self.gateway(dst)
        target = (d.pod_ips6 if v6 else d.pod_ips)[0]
        return _ping(s.pod_ns[0], target, count, timeout)

    def ping_pod(self, src_cluster: int | str, src_node: int, dst_cluster: int | str,
                 dst_node: int, *, v6: bool = False, count: int = 1,
                 timeout: float = 2) -> float | None:
        """RTT in ms of a ping from the first pod of one node to the first pod of another,
        or None if unanswered."""
        s, d = self.node(src_cluster, src_node), self.node(dst_cluster, dst_node)
        return _ping(s.pod_ns[0], (d.pod_ips6 if v6 else d.pod_ips)[0], count, timeout)

    def ping_between(self, src: Pod, dst: Pod, *, v6: bool = False, count: int = 1,
                     timeout: float = 2) -> float | None:
        """RTT in ms of a ping from pod ``src`` to pod ``dst``, or None if unanswered."""
        return _ping(src.namespace, dst.ip6 if v6 else dst.ip, count, timeout)

    # --- teardown ---------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove everything: agents, daemons and holders (by PID), namespaces, files.
        Goes on past failures and returns what it could not remove."""
        problems: list[str] = []
        # Agents first, all at once: an agent still running would restart the wireguard-go
        # that is stopped next. SIGKILL, not SIGTERM: an agent's orderly exit takes about
        # 1 s and only keeps tunnels and endpoints that are removed just below.
        # Route agents with them: one left running could re-add what is being removed.
        stop_pids([*((gw.agent_pid, _AGENT_NAMES) for gw in self.candidates()),
                   *((n.route_agent_pid, _ROUTE_AGENT_NAMES) for n in self.state.nodes)],
                  sig=signal.SIGKILL)
        # Then the daemons and holders, together.
        daemons: list[tuple[int, Sequence[str]]] = []
        for gw in self.candidates():
            pidfile = self.state_dir(gw) / "subwg0.wireguard-go.pid"
            with contextlib.suppress(OSError, ValueError):
                daemons.append((int(pidfile.read_text()), ("wireguard-go",)))
            daemons.append((gw.holder_pid, ("sleep",)))
        stop_pids(daemons)
        if self.state.broker_ns:
            self.broker().stop()
        mine = [n for n in list_namespaces() if is_lab_namespace(self.state.prefix, n)]
        # Whatever still runs in our namespaces is ours too (an agent whose PID was never
        # recorded, or whose comm the names above did not know, e.g. "python3.11"): end it
        # by PID, or it would outlive the namespace's name.
        end_processes_in(*mine)
        try:
            delete_namespaces(mine)
        except LabError as e:
            problems.append(str(e))
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.dir.exists():
            problems.append(f"could not remove {self.dir}")
        return problems
