"""Control plane and status read cost: the real driver against `wg` + `ip -batch`.

One network namespace ``wgbc-<pid>`` holds both sides, so they share the kernel, the
namespace's routing tables and the machine's load at the same moment:

- the driver side: a ``WireGuardDriver`` acting in that namespace (its own wireguard-go for
  ``subwg0``, routes in table 220 with rule 220, its nftables table), exactly as the agent
  runs it; the namespace has an underlay ``eth0`` (198.18.0.1/24, a veth whose peer stays
  inside) and a pod bridge ``cni0`` (10.1.0.1/24) so that the driver finds its MTU and
  route source;
- the floor: a second wireguard-go for ``wgfloor0`` in the same namespace, configured with
  ``wg setconf`` (the same peers: key, endpoint, keepalive 10, two allowed IPs each) and
  ``ip -batch`` (the same 2N routes, with ``src``, in table 221, plus the rule).

N remote clusters each have two /24s (10.10-13.x.0/24 pods, 10.110-113.x.0/24 services) and
an endpoint in 198.18.128.0/17 that nothing answers (no handshake ever completes).

Measured per N (median and p90 of ``repeat`` rounds after one untimed warm-up):

- connect N from empty: ``connect_to_endpoint`` for every cluster inside one
  ``driver.batch()`` (validation, one UAPI set, the routes in one round of netlink
  messages, the nftables table through libnftables);
  floor: ``wg setconf`` + ``ip -batch``;
- change one endpoint among N: ``connect_to_endpoint`` with a new IP for one cluster
  (outside a batch: read the device, send the delta, re-read the route table); floor:
  ``wg set <dev> peer K endpoint E``;
- remove N: ``disconnect_from_endpoint`` for all in one batch; floor: ``wg setconf`` with no
  peers + ``ip -batch`` of the route deletions and the rule;
- status read (section ``status``): ``driver.get_connections()`` and the wgctrl
  ``device()`` under it, against ``wg show <dev> dump``.

Every ``wg`` figure includes starting ``nsenter`` and ``wg`` (wireguard-go's socket lives in
its private mount namespace), every ``ip`` figure starting ``ip``; the driver starts no
process for its routes, rules or nftables table (where libnftables is installed).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.common import plain_log_axes, row, run, signals_held, summary, timed_ms
from bench.wgctrl_bench import Sandbox, wg_conf, write_secret
from wgcable.cable.types import Endpoint, NATEndpointInfo
from wgcable.cable.wireguard.config import WireGuardConfig
from wgcable.cable.wireguard.driver import WireGuardDriver
from wgcable.lab.netns import Namespace
from wgcable.routing import nftables
from wgcable.wgctrl import Key, Peer, UDPAddr

PREFIX = "wgbc-"
DEVICE = "subwg0"
FLOOR_DEV = "wgfloor0"
FLOOR_TABLE = 221
LOCAL_SUBNETS = ["10.1.0.0/16", "10.101.0.0/16"]
LOCAL_SRC = "10.1.0.1"
PORT = 4500
KEEPALIVE = 10  # the driver's default
MTU = 1440  # what the driver derives from the 1500-byte underlay
MAX_N = 1000
CHANGES_PER_ROUND = 3


def remote_endpoint(i: int, key: str, ip: str | None = None) -> Endpoint:
    return Endpoint(
        cluster_id=f"c{i}", cable_name=f"submariner-cable-c{i}", hostname=f"c{i}-gw",
        subnets=[f"10.{10 + i // 256}.{i % 256}.0/24", f"10.{110 + i // 256}.{i % 256}.0/24"],
        private_ip=ip or f"198.18.{128 + i // 250}.{i % 250 + 1}", backend="wireguard",
        backend_config={"publicKey": key, "udp-port": str(PORT)})


def info(ep: Endpoint) -> NATEndpointInfo:
    return NATEndpointInfo(endpoint=ep, use_ip=ep.private_ip, use_nat=False)


class ControlPlane:
    """The namespace, the driver and the floor device; :meth:`close` removes them all."""

    def __init__(self) -> None:
        self.ns = Namespace(f"{PREFIX}{os.getpid()}")
        self.tmp = tempfile.mkdtemp(prefix=PREFIX)
        self.driver: WireGuardDriver | None = None
        self.floor: Sandbox | None = None
        self.keys = [Key.generate().public_key().base64() for _ in range(MAX_N)]
        self.endpoints = [remote_endpoint(i, k) for i, k in enumerate(self.keys)]
        self._serial = 0
        self._conf_n = -1

    def start(self) -> None:
        self.ns.create()
        # No dummy module here: the underlay is a veth pair with both ends inside, the pod
        # network a bridge, as in the lab.
        self.ns.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        self.ns.run("ip", "link", "add", "cni0", "type", "bridge")
        for dev, addr in (("eth0", "198.18.0.1/24"), ("cni0", f"{LOCAL_SRC}/24")):
            self.ns.run("ip", "addr", "add", addr, "dev", dev)
        for dev in ("eth0", "eth0p", "cni0"):
            self.ns.run("ip", "link", "set", dev, "up")
        local = Endpoint(
            cluster_id="local", cable_name="submariner-cable-local", hostname="gw",
            subnets=list(LOCAL_SUBNETS), private_ip="198.18.0.1", backend="wireguard",
            backend_config={"udp-port": str(PORT)})
        cfg = WireGuardConfig(device=DEVICE, netns=self.ns.name, backend="userspace",
                              state_dir=os.path.join(self.tmp, "state"))
        self.driver = WireGuardDriver(local, cfg)  # recorded first: close() cleans up after it
        self.driver.init()
        self.driver.mark_synced()  # no earlier state to adopt: removals take effect at once
        self.floor = Sandbox(netns=self.ns.name, dev=FLOOR_DEV)
        self.floor.start()
        self.floor_key = Key.generate()
        write_secret(self.path("empty.conf"), wg_conf([], self.floor_key, PORT + 1))
        self.wg("setconf", FLOOR_DEV, self.path("empty.conf"))
        self.ns.run("ip", "link", "set", FLOOR_DEV, "mtu", str(MTU), "up")

    def close(self) -> None:
        with signals_held():
            try:
                if self.driver is not None:
                    self.driver.cleanup(remove_key=True)
            finally:
                self.driver = None
                if self.floor is not None:
                    self.floor.close()  # by PID; removes only its temp dir, not our netns
                    self.floor = None
                self.ns.delete()
                shutil.rmtree(self.tmp, ignore_errors=True)

    # --- helpers -----------------------------------------------------------------------

    def path(self, name: str) -> str:
        return os.path.join(self.tmp, name)

    def d(self) -> WireGuardDriver:
        assert self.driver is not None
        return self.driver

    def wg(self, *args: str) -> str:
        assert self.floor is not None
        return run(self.floor.wg(*args))

    def driver_wg(self, *args: str) -> list[str]:
        pid = self.d().device.daemon.pid
        return ["nsenter", "-t", str(pid), "-m", "-n", "wg", *args]

    def ip_batch(self, name: str) -> str:
        return run(["ip", "-n", self.ns.name, "-batch", self.path(name)])

    def prepare_floor(self, n: int) -> None:
        """The floor's input files for N clusters: setconf file, route batches."""
        if self._conf_n == n:
            return
        if os.path.exists(self.path("peers.conf")):
            os.unlink(self.path("peers.conf"))  # write_secret makes a new file
        peers = [
            Peer(public_key=Key.from_base64(ep.backend_config["publicKey"]),
                 endpoint=UDPAddr(ipaddress.IPv4Address(ep.private_ip), PORT),
                 persistent_keepalive=KEEPALIVE,
                 allowed_ips=[ipaddress.IPv4Network(s) for s in ep.subnets])
            for ep in self.endpoints[:n]
        ]
        write_secret(self.path("peers.conf"), wg_conf(peers, self.floor_key, PORT + 1))
        routes = [s for ep in self.endpoints[:n] for s in ep.subnets]
        with open(self.path("add.batch"), "w") as f:
            for s in routes:
                f.write(f"route replace {s} dev {FLOOR_DEV} table {FLOOR_TABLE} "
                        f"src {LOCAL_SRC}\n")
            f.write(f"rule add priority {FLOOR_TABLE} table {FLOOR_TABLE}\n")
        with open(self.path("del.batch"), "w") as f:
            for s in routes:
                f.write(f"route del {s} dev {FLOOR_DEV} table {FLOOR_TABLE}\n")
            f.write(f"rule del priority {FLOOR_TABLE} table {FLOOR_TABLE}\n")
        rules = nftables.Rules(
            device=FLOOR_DEV, local=tuple(ipaddress.ip_network(s) for s in LOCAL_SUBNETS),
            remote=tuple(ipaddress.ip_network(s) for s in routes))
        body = nftables.render(rules)
        with open(self.path("nft.txt"), "w") as f:
            f.write(nftables.transaction(nftables.table_name(FLOOR_DEV), body))
        self._conf_n = n

    # --- the driver side ----------------------------------------------------------------

    def connect(self, n: int) -> None:
        d = self.d()
        with d.batch():
            for ep in self.endpoints[:n]:
                d.connect_to_endpoint(info(ep))

    def disconnect(self, n: int) -> None:
        d = self.d()
        with d.batch():
            for ep in self.endpoints[:n]:
                d.disconnect_from_endpoint(ep)

    def change_one(self, n: int) -> None:
        self._serial += 1
        i = (self._serial * 7919) % n
        s = self._serial % 60000
        ep = remote_endpoint(i, self.keys[i], f"198.19.{s // 250}.{s % 250 + 1}")
        self.endpoints[i] = ep
        self.d().connect_to_endpoint(info(ep))

    def check(self, n: int, where: str) -> None:
        """The driver's device and table 220 hold what N clusters need (not timed)."""
        peers = run(self.driver_wg("show", DEVICE, "peers")).split()
        routes = self.ns.run("ip", "route", "show", "table", "220").splitlines()
        if len(peers) != n or len(routes) != 2 * n:
            raise RuntimeError(f"{where}: {len(peers)} peers and {len(routes)} routes, "
                               f"expected {n} and {2 * n}")

    # --- the floor ----------------------------------------------------------------------

    def floor_apply(self) -> tuple[float, float]:
        t_wg, _ = timed_ms(self.wg, "setconf", FLOOR_DEV, self.path("peers.conf"))
        t_ip, _ = timed_ms(self.ip_batch, "add.batch")
        return t_wg, t_ip

    def floor_change_one(self, n: int) -> float:
        self._serial += 1
        i = (self._serial * 7919) % n
        s = self._serial % 60000
        t, _ = timed_ms(self.wg, "set", FLOOR_DEV, "peer", self.keys[i], "endpoint",
                        f"198.19.{s // 250}.{s % 250 + 1}:{PORT}")
        return t

    def floor_remove(self) -> tuple[float, float]:
        t_wg, _ = timed_ms(self.wg, "setconf", FLOOR_DEV, self.path("empty.conf"))
        t_ip, _ = timed_ms(self.ip_batch, "del.batch")
        return t_wg, t_ip

    def floor_nft(self) -> float:
        t, _ = timed_ms(run, ["ip", "netns", "exec", self.ns.name, "nft", "-f",
                               self.path("nft.txt")])
        return t

    def floor_check(self, n: int) -> None:
        peers = self.wg("show", FLOOR_DEV, "peers").split()
        routes = self.ns.run("ip", "route", "show", "table", str(FLOOR_TABLE)).splitlines()
        if len(peers) != n or len(routes) != 2 * n:
            raise RuntimeError(f"floor: {len(peers)} peers and {len(routes)} routes, "
                               f"expected {n} and {2 * n}")


@contextmanager
def control_plane() -> Iterator[ControlPlane]:
    cp = ControlPlane()
    try:
        cp.start()
        yield cp
    finally:
        cp.close()


def counts(quick: bool) -> list[int]:
    return [10, 100] if quick else [10, 100, 1000]


# --- section: control -------------------------------------------------------------------------


def run_control(repeat: int, quick: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"levels": {}}
    rows = []
    with control_plane() as cp:
        for n in counts(quick):
            cp.prepare_floor(n)
            s: dict[str, list[float]] = {k: [] for k in (
                "connect", "change", "remove", "floor_wg", "floor_ip", "floor", "floor_nft",
                "floor_change", "floor_remove")}
            for r in range(repeat + 1):  # round 0: untimed warm-up, and checks
                t_conn, _ = timed_ms(cp.connect, n)
                if r == 0:
                    cp.check(n, f"after connecting {n}")
                t_change = [timed_ms(cp.change_one, n)[0] for _ in range(CHANGES_PER_ROUND)]
                t_rm, _ = timed_ms(cp.disconnect, n)
                if r == 0:
                    cp.check(0, f"after removing {n}")
                f_wg, f_ip = cp.floor_apply()
                if r == 0:
                    cp.floor_check(n)
                f_change = [cp.floor_change_one(n) for _ in range(CHANGES_PER_ROUND)]
                f_nft = cp.floor_nft()
                fr_wg, fr_ip = cp.floor_remove()
                if r == 0:
                    cp.floor_check(0)
                    continue
                s["connect"].append(t_conn)
                s["change"] += t_change
                s["remove"].append(t_rm)
                s["floor_wg"].append(f_wg)
                s["floor_ip"].append(f_ip)
                s["floor"].append(f_wg + f_ip)
                s["floor_nft"].append(f_nft)
                s["floor_change"] += f_change
                s["floor_remove"].append(fr_wg + fr_ip)
            lv = {k: summary(v) for k, v in s.items()}
            out["levels"][str(n)] = lv
            floor = "wg setconf + ip -batch"
            rows += [
                row("connect N clusters from empty", "wgcable driver, one batch()", n,
                    lv["connect"]["median"], "ms", p90=lv["connect"]["p90"],
                    floor=lv["floor"]["median"], floor_impl=floor,
                    note=f"floor: wg {lv['floor_wg']['median']:.1f} + ip "
                         f"{lv['floor_ip']['median']:.1f} ms; nft -f of the same table "
                         f"{lv['floor_nft']['median']:.1f} ms more"),
                row("change one endpoint among N", "wgcable connect_to_endpoint", n,
                    lv["change"]["median"], "ms", p90=lv["change"]["p90"],
                    floor=lv["floor_change"]["median"], floor_impl="wg set peer endpoint"),
                row("remove N clusters", "wgcable driver, one batch()", n,
                    lv["remove"]["median"], "ms", p90=lv["remove"]["p90"],
                    floor=lv["floor_remove"]["median"], floor_impl=floor),
            ]
    out["rows"] = rows
    return out


def plot_control(result: dict[str, Any], ax: Any) -> None:
    levels = result["levels"]
    ns = sorted(int(n) for n in levels)

    def series(key: str) -> list[float]:
        return [levels[str(n)][key]["median"] for n in ns]

    ax.plot(ns, series("connect"), "o-", color="C0", label="wgcable: connect N")
    ax.plot(ns, series("floor"), "o--", color="C0", alpha=0.6,
            label="floor: wg setconf + ip -batch")
    ax.plot(ns, series("change"), "s-", color="C1", label="wgcable: change 1 endpoint")
    ax.plot(ns, series("floor_change"), "s--", color="C1", alpha=0.6, label="floor: wg set")
    ax.plot(ns, series("remove"), "^-", color="C2", label="wgcable: remove N")
    plain_log_axes(ax)
    ax.set_xlabel("remote clusters N (2 subnets each)")
    ax.set_ylabel("ms (median)")
    ax.set_title("Control plane: driver vs wg + ip floor")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)


# --- section: status --------------------------------------------------------------------------


def run_status(repeat: int, quick: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"levels": {}}
    rows = []
    reps = max(repeat, 3)
    with control_plane() as cp:
        d = cp.d()
        for n in counts(quick):
            cp.connect(n)
            cp.check(n, f"status: after connecting {n}")
            s: dict[str, list[float]] = {"get_connections": [], "device": [], "wg_dump": []}
            dump = cp.driver_wg("show", DEVICE, "dump")
            for r in range(reps + 1):
                t_conn, conns = timed_ms(d.get_connections)
                t_dev, dev = timed_ms(d.device.client.device, DEVICE)
                t_wg, text = timed_ms(run, dump)
                if len(conns) != n or len(dev.peers) != n or text.count("\n") != n + 1:
                    raise RuntimeError(f"status: read {len(conns)}, {len(dev.peers)} and "
                                       f"{text.count(chr(10)) - 1} peers, expected {n}")
                if r:
                    s["get_connections"].append(t_conn)
                    s["device"].append(t_dev)
                    s["wg_dump"].append(t_wg)
            cp.disconnect(n)
            lv = {k: summary(v) for k, v in s.items()}
            out["levels"][str(n)] = lv
            rows += [
                row("status read of N peers", "wgcable get_connections()", n,
                    lv["get_connections"]["median"], "ms", p90=lv["get_connections"]["p90"],
                    floor=lv["wg_dump"]["median"], floor_impl="wg show dump"),
                row("status read of N peers", "  of which wgctrl device()", n,
                    lv["device"]["median"], "ms", p90=lv["device"]["p90"],
                    floor=lv["wg_dump"]["median"], floor_impl="wg show dump"),
            ]
    out["rows"] = rows
    return out


def plot_status(result: dict[str, Any], ax: Any) -> None:
    levels = result["levels"]
    ns = sorted(int(n) for n in levels)
    for key, label, style in (("get_connections", "wgcable get_connections()", "o-"),
                              ("device", "wgctrl device() (UAPI get + parse)", "s-"),
                              ("wg_dump", "floor: nsenter wg show dump", "o--")):
        ax.plot(ns, [levels[str(n)][key]["median"] for n in ns], style, label=label)
    plain_log_axes(ax)
    ax.set_xlabel("peers N")
    ax.set_ylabel("ms (median)")
    ax.set_title("Status read cost")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
