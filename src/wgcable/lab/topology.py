"""Simulated clusters: an underlay bridge, and per cluster M nodes with pods behind them.

Cluster i, node j (node 0 is the gateway node, the only one with `--nodes 1`):

    hub br0 (198.18.0.0/16) ─┬─ eth0 gw<i>        198.18.0.<i>      (node 0, the gateway)
                             │     cni0 10.<i>.0.1 ── pod<i>-<n>       10.<i>.0.<n+2>
                             ├─ eth0 node<i>-<j>  198.18.<i>.<10+j> (worker j >= 1)
                             │     cni0 10.<i>.<j>.1 ── pod<i>-<j>-<n> 10.<i>.<j>.<n+2>
                             └─ eth0 broker 198.18.0.250, nat<i> 198.18.0.<100+i>

A cluster behind NAT (--nat) has its nodes on the router's inside bridge instead:
gateway 198.19.<i>.2/24, worker j 198.19.<i>.<10+j>/24, router 198.19.<i>.1.

Cluster i owns 10.<i>.0.0/16 (pods) and 10.<100+i>.0.0/16 (services); node j owns the pod
CIDR 10.<i>.<j>.0/24. The nodes route each other's pod CIDRs via their node IPs (a host-gw
CNI); nothing routes a worker's pods to other clusters: that is the route agent's job. With
IPv6 a cluster also owns fd00:<i>::/48 and fd00:<100+i>::/48, and node j fd00:<i>:0:<j>::/64
(node 0: fd00:<i>::/64); the nodes are fdce:18::<i> (gateway) and fdce:18::<i>:<j> (workers)
on the fdce:18::/64 underlay, or fdce:19:<i>::2 and fdce:19:<i>::<10+j> behind NAT. Every
node filters reverse paths strictly (rp_filter=1). Every namespace carries the lab's prefix,
so a teardown (or a later `lab down`) finds them all.

``mtu``: the MTU of every link of the lab (underlay, NAT routers' insides, cni0 and pods),
as on a network whose MTU is below Ethernet's 1500 (a cloud's 1400, say); None: 1500.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wgcable.lab.netns import Namespace, delete_namespaces, list_namespaces, veth_pair

UNDERLAY_PREFIX = "198.18.0"
UNDERLAY_PLEN = 16  # the hub's subnet 198.18.0.0/16: gateways, workers, broker, NAT routers
BROKER_IP = f"{UNDERLAY_PREFIX}.250"  # the Kubernetes broker's API server, on the underlay
UNDERLAY6_PREFIX = "fdce:18:"
TUNNEL_PORT = 5871
NATT_DISCOVERY_PORT = 4490  # forwarded too, as a cloud's NAT must be for Submariner
MAX_NODES = 8
# Strict reverse-path filtering, as RHEL ships it: whatever must accept asymmetric traffic
# (the route agent) has to loosen it where needed, as on a real node.
NODE_SYSCTLS = ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.default.rp_filter=1")


@dataclass
class NodeNet:
    """One node of a cluster: its namespace and the pods behind its cni0."""

    index: int  # 0: the gateway node
    ns: Namespace
    pods: list[Namespace] = field(default_factory=list)


@dataclass
class ClusterNet:
    index: int
    cluster_id: str
    gateway: Namespace
    pods: list[Namespace] = field(default_factory=list)  # the gateway node's pods
    ipv6: bool = False
    nat: bool = False  # behind a NAT router: private and public IPs differ
    nodes: list[NodeNet] = field(default_factory=list)  # [0] is the gateway node

    @property
    def underlay_ip(self) -> str:
        """The gateway's own address (its private IP)."""
        return self.node_ip(0)

    @property
    def public_ip(self) -> str:
        """Where other gateways reach it: the NAT router's outside address, if any."""
        return f"{UNDERLAY_PREFIX}.{100 + self.index}" if self.nat else self.underlay_ip

    @property
    def gateway_pod_ip(self) -> str:
        return self.cni_ip(0)

    @property
    def underlay_ip6(self) -> str:
        return f"{UNDERLAY6_PREFIX}:{self.index}"

    @property
    def gateway_pod_ip6(self) -> str:
        return self.cni_ip6(0)

    def pod_ip(self, n: int = 0, node: int = 0) -> str:
        return f"10.{self.index}.{node}.{n + 2}"

    def pod_ip6(self, n: int = 0, node: int = 0) -> str:
        return f"{self._v6_net(node)}{n + 2}"

    # --- per node -------------------------------------------------------------------------

    def node_ip(self, node: int) -> str:
        """Node ``node``'s address on its cluster's network (node 0: the gateway's)."""
        if self.nat:
            return f"198.19.{self.index}.{2 if node == 0 else 10 + node}"
        return f"{UNDERLAY_PREFIX}.{self.index}" if node == 0 else \
            f"198.18.{self.index}.{10 + node}"

    def node_plen(self) -> int:
        return 24 if self.nat else UNDERLAY_PLEN

    def node_ip6(self, node: int) -> str:
        if self.nat:
            return f"fdce:19:{self.index}::{2 if node == 0 else 10 + node}"
        return self.underlay_ip6 if node == 0 else f"{UNDERLAY6_PREFIX}:{self.index}:{node}"

    def pod_cidr(self, node: int) -> str:
        return f"10.{self.index}.{node}.0/24"

    def pod_cidr6(self, node: int) -> str:
        return f"{self._v6_net(node)}/64"

    def cni_ip(self, node: int) -> str:
        return f"10.{self.index}.{node}.1"

    def cni_ip6(self, node: int) -> str:
        return f"{self._v6_net(node)}1"

    def _v6_net(self, node: int) -> str:
        # Inside the cluster's fd00:<i>::/48, the node is the 4th group: fd00:<i>:0:<j>::/64
        # (fd00:<i>:<j>:: would be outside it). Node 0 keeps the spelling fd00:<i>::.
        return f"fd00:{self.index}::" if node == 0 else f"fd00:{self.index}:0:{node}::"

    @property
    def subnets(self) -> list[str]:
        v4 = [f"10.{self.index}.0.0/16", f"10.{100 + self.index}.0.0/16"]
        v6 = [f"fd00:{self.index}::/48", f"fd00:{100 + self.index}::/48"]
        return v4 + v6 if self.ipv6 else v4


class Topology:
    """Builds and removes the namespaces of a lab. ``prefix`` names every namespace."""

    def __init__(self, prefix: str, ipv6: bool = False, mtu: int | None = None) -> None:
        self.prefix = prefix
        self.ipv6 = ipv6
        self.mtu = mtu
        self.hub = Namespace(f"{prefix}-hub")
        self.clusters: list[ClusterNet] = []
        self.routers: list[Namespace] = []
        self.broker: Namespace | None = None

    def namespaces(self) -> list[Namespace]:
        out = [self.hub, *self.routers, *([self.broker] if self.broker else [])]
        for c in self.clusters:
            out += [c.gateway, *c.pods]
            for node in c.nodes[1:]:
                out += [node.ns, *node.pods]
        return out

    def build_underlay(self) -> None:
        self.hub.create()
        self.hub.ip(f"link add br0{self._mtu} type bridge", "link set br0 up")

    def add_broker(self) -> Namespace:
        """A namespace on the underlay for the broker's API server (``BROKER_IP``)."""
        broker = Namespace(f"{self.prefix}-broker").create()
        self.broker = broker
        veth_pair(broker, "eth0", self.hub, "broker",
                  a_then=[f"addr add {BROKER_IP}/{UNDERLAY_PLEN} dev eth0"],
                  b_then=["link set broker master br0"], mtu=self.mtu)
        return broker

    def add_cluster(self, index: int, pods: int = 1, nat: bool = False) -> ClusterNet:
        """The cluster and its gateway node (node 0); ``add_node`` adds workers."""
        if not 0 < index < 100:
            raise ValueError(f"cluster index {index}: must be 1-99")
        cid = f"cluster{index}"
        c = ClusterNet(index, cid, Namespace(f"{self.prefix}-gw{index}"), ipv6=self.ipv6,
                       nat=nat)
        self.clusters.append(c)
        gw = c.gateway.create()
        c.nodes.append(NodeNet(0, gw, c.pods))
        if nat:
            self._nat_router(c)
        self._node(c, 0, pods)
        return c

    def add_node(self, c: ClusterNet, index: int, pods: int = 1) -> NodeNet:
        """Worker node ``index`` (1 or more) of cluster ``c``, on the cluster's network."""
        if not 0 < index < MAX_NODES:
            raise ValueError(f"node index {index}: must be 1-{MAX_NODES - 1}")
        node = NodeNet(index, Namespace(f"{self.prefix}-node{c.index}-{index}").create())
        c.nodes.append(node)
        self._node(c, index, pods)
        return node

    def _node(self, c: ClusterNet, j: int, pods: int) -> None:
        """Addresses, sysctls, cni0 and pods of node ``j`` (its namespace exists)."""
        node = c.nodes[j]
        ns = node.ns
        ns.run("sysctl", "-qw", *NODE_SYSCTLS)
        # Pods hang off a bridge, as on a node with a bridge CNI. (nodad: IPv6 addresses
        # usable at once, no duplicate detection to wait for in a private network.)
        then = [f"link add cni0{self._mtu} type bridge", f"addr add {c.cni_ip(j)}/24 dev cni0",
                "link set cni0 up"]
        if self.ipv6:
            then.append(f"addr add {c.cni_ip6(j)}/64 dev cni0 nodad")
        eth0 = [f"addr add {c.node_ip(j)}/{c.node_plen()} dev eth0"]
        if self.ipv6:
            # (Behind NAT this is an inside address, fdce:19:<i>::: the nodes route each
            # other's IPv6 pods over it; the cables themselves run over IPv4.)
            eth0.append(f"addr add {c.node_ip6(j)}/64 dev eth0 nodad")
        if c.nat:
            router = Namespace(f"{self.prefix}-nat{c.index}")
            veth_pair(router, f"in{j}", ns, "eth0", a_then=[f"link set in{j} master inside"],
                      b_then=[*eth0, f"route add default via 198.19.{c.index}.1", *then],
                      mtu=self.mtu)
        else:
            hub_if = f"gw{c.index}" if j == 0 else f"n{c.index}-{j}"
            veth_pair(ns, "eth0", self.hub, hub_if, a_then=[*eth0, *then],
                      b_then=[f"link set {hub_if} master br0"], mtu=self.mtu)
        for n in range(pods):
            name = f"{self.prefix}-pod{c.index}-{n}" if j == 0 else \
                f"{self.prefix}-pod{c.index}-{j}-{n}"
            pod = Namespace(name)
            node.pods.append(pod.create())
            pod_then = [f"addr add {c.pod_ip(n, j)}/24 dev eth0",
                        f"route add default via {c.cni_ip(j)}"]
            if self.ipv6:
                pod_then += [f"addr add {c.pod_ip6(n, j)}/64 dev eth0 nodad",
                             f"route add default via {c.cni_ip6(j)}"]
            veth_pair(ns, f"vpod{n}", pod, "eth0", a_then=[f"link set vpod{n} master cni0"],
                      b_then=pod_then, mtu=self.mtu)

    def route_nodes(self, c: ClusterNet) -> None:
        """Host-gw routing inside cluster ``c``: every node routes every other node's pod
        CIDR via that node's IP."""
        for a in c.nodes:
            routes = []
            for b in c.nodes:
                if b is a:
                    continue
                routes.append(f"route add {c.pod_cidr(b.index)} via {c.node_ip(b.index)}")
                if self.ipv6:
                    routes.append(f"route add {c.pod_cidr6(b.index)} "
                                  f"via {c.node_ip6(b.index)}")
            if routes:
                a.ns.ip(*routes)

    def _nat_router(self, c: ClusterNet) -> None:
        """A router namespace between the cluster's nodes and the underlay that masquerades
        them and forwards the tunnel port and NAT discovery's to the gateway, as a cloud NAT
        gateway would. The nodes share its inside bridge."""
        i = c.index
        router = Namespace(f"{self.prefix}-nat{i}").create()
        self.routers.append(router)
        router.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        router.ip(f"link add inside{self._mtu} type bridge",
                  f"addr add 198.19.{i}.1/24 dev inside",
                  "link set inside up")
        veth_pair(router, "eth0", self.hub, f"nat{i}",
                  a_then=[f"addr add {c.public_ip}/{UNDERLAY_PLEN} dev eth0"],
                  b_then=[f"link set nat{i} master br0"], mtu=self.mtu)
        rules = f"""
table ip wgcable_lab_nat {{
    chain prerouting {{
        type nat hook prerouting priority dstnat;
        iifname "eth0" udp dport {{ {TUNNEL_PORT}, {NATT_DISCOVERY_PORT} }} dnat to {c.underlay_ip}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat;
        oifname "eth0" masquerade
    }}
}}
"""
        router.run("nft", "-f", "-", input=rules)

    @property
    def _mtu(self) -> str:
        """`` mtu N`` for an ``ip link add`` of a bridge, or nothing for the default."""
        return f" mtu {self.mtu}" if self.mtu is not None else ""

    def destroy(self) -> None:
        """Delete every namespace with our prefix, including ones a crashed run left."""
        delete_namespaces([n for n in list_namespaces() if n.startswith(f"{self.prefix}-")])
