"""The kernel side of the WireGuard driver, in memory: the device (over wgctrl's
MemoryBackend), `ip` (routes and rules) and our nftables table. Every write is recorded, so
tests can check everything that was ever installed, not only what is left at the end."""

from __future__ import annotations

import ipaddress
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

from wgcable.cable.types import Endpoint
from wgcable.cable.wireguard.config import WireGuardConfig
from wgcable.cable.wireguard.driver import WireGuardDriver
from wgcable.routing.iproute import RouteOp, RoutingError
from wgcable.routing.table import RouteTable
from wgcable.wgctrl import BackendKind, Client, IPNetwork
from wgcable.wgctrl.memory import MemoryBackend

DEVICE = "subwg0"


class FakeDevice:
    """What the driver uses of WireGuardDevice."""

    kind = BackendKind.USERSPACE

    def __init__(self, mem: MemoryBackend, name: str = DEVICE) -> None:
        self.mem = mem
        self.name = name
        self.client = Client([mem])
        self.up = False
        self.mtu: int | None = None

    def ensure(self) -> bool:
        if self.name in self.mem.devices:
            return False
        self.mem.add(self.name)
        return True

    def alive(self) -> bool:
        return self.name in self.mem.devices

    def is_up(self) -> bool:
        return self.up

    def link(self) -> SimpleNamespace:
        return SimpleNamespace(mtu=self.mtu or 1420, is_up=self.up)

    def set_up(self, mtu: int | None) -> None:
        self.up, self.mtu = True, mtu

    def wait_gone(self, timeout: float, stop: threading.Event,
                  wake_fd: int | None = None) -> None:
        stop.wait(timeout)

    def stop_starting(self) -> None:
        pass

    def delete(self) -> None:
        self.mem.devices.pop(self.name, None)

    def close(self) -> None:
        pass


class NetlinkOverIpState:
    """What RouteTable uses (IPRoute's netlink calls), over a fake's `ip`-shaped state: its
    ``json``, ``run`` and ``batch``. Shared by the fakes here and in test_driver_delta."""

    def json(self, *args: str, check: bool = True) -> list[dict[str, Any]]:
        raise NotImplementedError

    def run(self, *args: str, check: bool = True) -> str:
        raise NotImplementedError

    def batch(self, commands: Sequence[str], force: bool = False) -> None:
        raise NotImplementedError

    _PROTOS: ClassVar[dict[str, int]] = {"kernel": 2, "boot": 3, "static": 4}

    def read_routes(self, family: str, table: int) -> list[tuple[str, str, str, str, str]]:
        rows = []
        for r in self.json(family, "route", "show", "table", str(table), check=False):
            dst, dev = r.get("dst"), r.get("dev")
            if not dst or not dev or r.get("type", "unicast") != "unicast" or dst == "default":
                continue
            rows.append((str(dst), str(dev), str(r.get("prefsrc") or ""),
                         str(r.get("protocol", "")), str(r.get("gateway") or "")))
        return rows

    def routes_unchanged(self, table: int) -> bool:
        return False  # no notifications here: every check reads

    def change_routes(self, ops: Sequence[RouteOp], force: bool = False) -> None:
        self.batch([op.text() for op in ops], force)

    def read_rules(self, family: str) -> list[tuple[int, int, int]]:
        return [(int(r["priority"]), int(r["table"]),
                 self._PROTOS.get(str(r["protocol"])) or int(r["protocol"]))
                for r in self.json(family, "rule", "show")]

    def add_rule(self, family: str, priority: int, table: int, protocol: int) -> None:
        self.run(family, "rule", "add", "priority", str(priority), "table", str(table),
                 "protocol", str(protocol))

    def del_rule(self, family: str, priority: int, table: int, protocol: int | None) -> None:
        self.run(family, "rule", "del", "priority", str(priority), "table", str(table),
                 *(("protocol", str(protocol)) if protocol is not None else ()))

    def close(self) -> None:
        pass


class FakeIP(NetlinkOverIpState):
    """What RouteTable and the driver use of IPRoute: one namespace's routes and rules.
    Routes are keyed by (table, destination) as the kernel keys them: a replace takes over
    whoever's route holds the destination, an add fails on it, a delete matches the device
    and protocol it names."""

    def __init__(self, addresses: Sequence[tuple[str, str, int]]) -> None:
        self._addresses = list(addresses)
        self.routes: dict[tuple[str, str], dict[str, Any]] = {}  # (table, dst) -> route
        self.rules: set[tuple[str, int, str, str]] = set()  # (family, priority, table, proto)
        self.added: list[IPNetwork] = []  # every destination ever added or replaced
        self.ipv6 = True  # False: as on a host booted with ipv6.disable=1
        self.fail_rules = False  # `ip rule add` fails

    def addresses(self) -> list[tuple[str, str, int]]:
        return list(self._addresses)

    def link(self, name: str) -> dict[str, Any] | None:
        return {"ifname": name, "mtu": 1500}

    def ipv6_enabled(self, device: str) -> bool:
        return self.ipv6

    def _family(self, fam: str) -> None:
        if fam == "-6" and not self.ipv6:
            raise RoutingError("ip -6: Address family not supported by protocol")

    def json(self, *args: str, check: bool = True) -> list[dict[str, Any]]:
        fam = args[0]
        self._family(fam)
        if args[1:3] == ("route", "show"):
            table = args[4]
            v = 6 if fam == "-6" else 4
            out = []
            for (t, dst), r in self.routes.items():
                net = ipaddress.ip_network(dst)
                if t == table and net.version == v:
                    shown = "default" if net.prefixlen == 0 else dst  # as `ip -j` shows it
                    out.append({**r, "dst": shown})
            return out
        if args[1:3] == ("rule", "show"):
            return [{"priority": p, "table": t, "protocol": proto}
                    for f, p, t, proto in self.rules if f == fam]
        raise AssertionError(f"unexpected ip -j {args}")

    def run(self, *args: str, check: bool = True) -> str:
        fam, what, verb = args[0], args[1], args[2]
        self._family(fam)
        opts = dict(zip(args[3::2], args[4::2], strict=True))
        if (what, verb) == ("route", "flush"):  # every route of the table, whoever's
            v = 6 if fam == "-6" else 4
            for key in [k for k in self.routes if k[0] == opts["table"]
                        and ipaddress.ip_network(k[1]).version == v]:
                del self.routes[key]
            return ""
        assert what == "rule", args
        rule = (fam, int(opts["priority"]), opts["table"], opts.get("protocol", "boot"))
        if verb == "add":
            if self.fail_rules:
                raise RoutingError("ip rule add: Operation not permitted")
            self.rules.add(rule)
        elif verb == "del":  # without a protocol, the first rule of any protocol
            match = [r for r in sorted(self.rules) if r[:3] == rule[:3]
                     and ("protocol" not in opts or r[3] == rule[3])]
            if not match:
                raise RoutingError("ip rule del: No such file or directory")
            self.rules.discard(match[0])
        else:
            raise AssertionError(f"unexpected ip {args}")
        return ""

    def batch(self, commands: Sequence[str], force: bool = False) -> None:
        for line in commands:
            words = line.split()
            assert words[0] == "route", line
            dst = str(ipaddress.ip_network(words[2]))
            spec = dict(zip(words[3::2], words[4::2], strict=True))
            key = (spec["table"], dst)
            have = self.routes.get(key)
            if words[1] in ("replace", "add"):
                if words[1] == "add" and have is not None:
                    if force:
                        continue
                    raise RoutingError(f"ip -batch: {line}: File exists")
                self.added.append(ipaddress.ip_network(dst))
                route: dict[str, Any] = {"dev": spec["dev"], "type": "unicast",
                                         "protocol": spec.get("proto", "boot")}
                if "src" in spec:
                    route["prefsrc"] = spec["src"]
                self.routes[key] = route
            elif words[1] == "del":
                if have is None or have["dev"] != spec["dev"] or \
                        have["protocol"] != spec.get("proto", have["protocol"]):
                    if force:
                        continue
                    raise RoutingError(f"ip -batch: {line}: No such process")
                del self.routes[key]
            else:
                raise AssertionError(f"unexpected ip {line}")




def nft_sets(body: str) -> dict[str, set[str]]:
    """The sets of a rendered nft table and their elements, as NftTable.sets() reads them."""
    found: dict[str, set[str]] = {}
    for name, inner in re.findall(r"\tset (\w+) \{\n(.*?)\n\t\}", body, re.S):
        m = re.search(r"elements = \{ (.*) \}", inner)
        found[name] = set(m.group(1).split(", ")) if m else set()
    return found


class FakeNft:
    """What the driver uses of NftTable."""

    name = f"wgcable_{DEVICE}"

    def __init__(self) -> None:
        self.body: str | None = None
        self.written: list[str] = []

    def apply(self, body: str) -> None:
        self.body = body
        self.written.append(body)

    def close(self) -> None:
        pass

    def remove(self) -> None:
        self.body = None

    def exists(self) -> bool:
        return self.body is not None

    def sets(self) -> dict[str, set[str]] | None:
        return None if self.body is None else nft_sets(self.body)

    def chains(self, family: str | None = None) -> list[dict[str, Any]]:
        return []  # no other table: no NAT on this host

    def has_chain(self, name: str) -> bool:
        return self.body is not None and f"chain {name} {{" in self.body


def fake_driver(local: Endpoint, state_dir: Path,
                addresses: Sequence[tuple[str, str, int]], *, device: str = DEVICE,
                ip: FakeIP | None = None) -> WireGuardDriver:
    """A real WireGuardDriver whose device, routes and nftables table are the fakes above
    (not yet initialised); ``ip``: a namespace shared with another driver."""
    # No nameservers of the machine running the tests: they would refuse remote subnets.
    driver = WireGuardDriver(local, WireGuardConfig(state_dir=str(state_dir), device=device,
                                                    resolv_conf=os.devnull))
    ip = ip or FakeIP(addresses)
    driver.device = FakeDevice(MemoryBackend(), device)  # type: ignore[assignment]
    driver.ip = ip  # type: ignore[assignment]
    driver.table = RouteTable(ip, driver.cfg.table, driver.cfg.rule_priority,  # type: ignore[arg-type]
                              device)
    driver.nft = FakeNft()  # type: ignore[assignment]
    return driver
