"""Simulated clusters: an underlay bridge, and per cluster a gateway and a pod namespace.

    pod<i>-<n> (10.<i>.0.<n+2>) ── cni0 on gw<i> (10.<i>.0.1), eth0 (198.18.0.<i>) ── hub br0

Cluster i owns 10.<i>.0.0/16 (pods) and 10.<100+i>.0.0/16 (services); with IPv6 also
fd00:<i>::/48 and fd00:<100+i>::/48, over an fdce:18::/64 underlay. Every namespace carries
the lab's prefix, so a teardown (or a later `lab down`) finds them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wgcable.lab.netns import Namespace, delete_namespaces, list_namespaces, veth_pair

UNDERLAY_PREFIX = "198.18.0"
BROKER_IP = f"{UNDERLAY_PREFIX}.250"  # the Kubernetes broker's API server, on the underlay
UNDERLAY6_PREFIX = "fdce:18:"
TUNNEL_PORT = 5871


@dataclass
class ClusterNet:
    index: int
    cluster_id: str
    gateway: Namespace
    pods: list[Namespace] = field(default_factory=list)
    ipv6: bool = False
    nat: bool = False  # behind a NAT router: private and public IPs differ

    @property
    def underlay_ip(self) -> str:
        """The gateway's own address (its private IP)."""
        return f"198.19.{self.index}.2" if self.nat else f"{UNDERLAY_PREFIX}.{self.index}"

    @property
    def public_ip(self) -> str:
        """Where other gateways reach it: the NAT router's outside address, if any."""
        return f"{UNDERLAY_PREFIX}.{100 + self.index}" if self.nat else self.underlay_ip

    @property
    def gateway_pod_ip(self) -> str:
        return f"10.{self.index}.0.1"

    @property
    def underlay_ip6(self) -> str:
        return f"{UNDERLAY6_PREFIX}:{self.index}"

    @property
    def gateway_pod_ip6(self) -> str:
        return f"fd00:{self.index}::1"

    def pod_ip(self, n: int = 0) -> str:
        return f"10.{self.index}.0.{n + 2}"

    def pod_ip6(self, n: int = 0) -> str:
        return f"fd00:{self.index}::{n + 2}"

    @property
    def subnets(self) -> list[str]:
        v4 = [f"10.{self.index}.0.0/16", f"10.{100 + self.index}.0.0/16"]
        v6 = [f"fd00:{self.index}::/48", f"fd00:{100 + self.index}::/48"]
        return v4 + v6 if self.ipv6 else v4


class Topology:
    """Builds and removes the namespaces of a lab. ``prefix`` names every namespace."""

    def __init__(self, prefix: str, ipv6: bool = False) -> None:
        self.prefix = prefix
        self.ipv6 = ipv6
        self.hub = Namespace(f"{prefix}-hub")
        self.clusters: list[ClusterNet] = []
        self.routers: list[Namespace] = []
        self.broker: Namespace | None = None

    def namespaces(self) -> list[Namespace]:
        out = [self.hub, *self.routers, *([self.broker] if self.broker else [])]
        for c in self.clusters:
            out += [c.gateway, *c.pods]
        return out

    def build_underlay(self) -> None:
        self.hub.create()
        self.hub.ip("link add br0 type bridge", "link set br0 up")

    def add_broker(self) -> Namespace:
        """A namespace on the underlay for the broker's API server (``BROKER_IP``)."""
        broker = Namespace(f"{self.prefix}-broker").create()
        self.broker = broker
        veth_pair(broker, "eth0", self.hub, "broker",
                  a_then=[f"addr add {BROKER_IP}/24 dev eth0"],
                  b_then=["link set broker master br0"])
        return broker

    def add_cluster(self, index: int, pods: int = 1, nat: bool = False) -> ClusterNet:
        if not 0 < index < 100:
            raise ValueError(f"cluster index {index}: must be 1-99")
        cid = f"cluster{index}"
        c = ClusterNet(index, cid, Namespace(f"{self.prefix}-gw{index}"), ipv6=self.ipv6,
                       nat=nat)
        self.clusters.append(c)
        gw = c.gateway.create()
        gw.run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        # Pods hang off a bridge, as on a node with a bridge CNI. (nodad: IPv6 addresses
        # usable at once, no duplicate detection to wait for in a private network.)
        gw_then = ["link add cni0 type bridge", f"addr add {c.gateway_pod_ip}/24 dev cni0",
                   "link set cni0 up"]
        if self.ipv6:
            gw_then.append(f"addr add {c.gateway_pod_ip6}/64 dev cni0 nodad")
        if nat:
            self._nat_router(c)
            gw.ip(*gw_then)
        else:
            if self.ipv6:
                gw_then.append(f"addr add {c.underlay_ip6}/64 dev eth0 nodad")
            veth_pair(gw, "eth0", self.hub, f"gw{index}",
                      a_then=[f"addr add {c.underlay_ip}/24 dev eth0", *gw_then],
                      b_then=[f"link set gw{index} master br0"])
        for n in range(pods):
            pod = Namespace(f"{self.prefix}-pod{index}-{n}")
            c.pods.append(pod.create())
            pod_then = [f"addr add {c.pod_ip(n)}/24 dev eth0",
                        f"route add default via {c.gateway_pod_ip}"]
            if self.ipv6:
                pod_then += [f"addr add {c.pod_ip6(n)}/64 dev eth0 nodad",
                             f"route add default via {c.gateway_pod_ip6}"]
            veth_pair(gw, f"vpod{n}", pod, "eth0", a_then=[f"link set vpod{n} master cni0"],
                      b_then=pod_then)
        return c

    def _nat_router(self, c: ClusterNet) -> None:
        """A router namespace between the gateway and the underlay that masquerades the
        gateway and forwards the tunnel port to it, as a cloud NAT gateway would."""
        i = c.index
        router = Namespace(f"{self.prefix}-nat{i}").create()
        self.routers.append(router)
        router.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        veth_pair(router, "eth0", self.hub, f"nat{i}",
                  a_then=[f"addr add {c.public_ip}/24 dev eth0"],
                  b_then=[f"link set nat{i} master br0"])
        veth_pair(router, "inside", c.gateway, "eth0",
                  a_then=[f"addr add 198.19.{i}.1/24 dev inside"],
                  b_then=[f"addr add {c.underlay_ip}/24 dev eth0",
                          f"route add default via 198.19.{i}.1"])
        rules = f"""
table ip wgcable_lab_nat {{
    chain prerouting {{
        type nat hook prerouting priority dstnat;
        iifname "eth0" udp dport {TUNNEL_PORT} dnat to {c.underlay_ip}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat;
        oifname "eth0" masquerade
    }}
}}
"""
        router.run("nft", "-f", "-", input=rules)

    def destroy(self) -> None:
        """Delete every namespace with our prefix, including ones a crashed run left."""
        delete_namespaces([n for n in list_namespaces() if n.startswith(f"{self.prefix}-")])
