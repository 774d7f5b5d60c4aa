"""The kernel side of the WireGuard driver, in memory: the device (over wgctrl's
MemoryBackend), `ip` (routes and rules) and our nftables table. Every write is recorded, so
tests can check everything that was ever installed, not only what is left at the end."""

from __future__ import annotations

import ipaddress
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wgcable.cable.types import Endpoint
from wgcable.cable.wireguard.config import WireGuardConfig
from wgcable.cable.wireguard.driver import WireGuardDriver
from wgcable.routing.table import RouteTable
from wgcable.wgctrl import BackendKind, Client, IPNetwork
from wgcable.wgctrl.memory import MemoryBackend

DEVICE = "subwg0"


class FakeDevice:
    """What the driver uses of WireGuardDevice."""

    kind = BackendKind.USERSPACE

    def __init__(self, mem: MemoryBackend) -> None:
        self.mem = mem
        self.client = Client([mem])
        self.up = False
        self.mtu: int | None = None

    def ensure(self) -> bool:
        if DEVICE in self.mem.devices:
            return False
        self.mem.add(DEVICE)
        return True

    def alive(self) -> bool:
        return DEVICE in self.mem.devices

    def is_up(self) -> bool:
        return self.up

    def set_up(self, mtu: int | None) -> None:
        self.up, self.mtu = True, mtu

    def wait_gone(self, timeout: float, stop: threading.Event) -> None:
        stop.wait(timeout)

    def stop_starting(self) -> None:
        pass

    def delete(self) -> None:
        self.mem.devices.pop(DEVICE, None)

    def close(self) -> None:
        pass


class FakeIP:
    """What RouteTable and the driver use of IPRoute: one namespace's routes and rules."""

    def __init__(self, addresses: Sequence[tuple[str, str, int]]) -> None:
        self._addresses = list(addresses)
        self.routes: dict[tuple[str, str], dict[str, Any]] = {}  # (table, dst) -> route
        self.rules: set[tuple[str, int, str]] = set()  # (family, priority, table)
        self.added: list[IPNetwork] = []  # every destination ever added or replaced

    def addresses(self) -> list[tuple[str, str, int]]:
        return list(self._addresses)

    def link(self, name: str) -> dict[str, Any] | None:
        return {"ifname": name, "mtu": 1500}

    def json(self, *args: str, check: bool = True) -> list[dict[str, Any]]:
        fam = args[0]
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
            return [{"priority": p, "table": t} for f, p, t in self.rules if f == fam]
        raise AssertionError(f"unexpected ip -j {args}")

    def run(self, *args: str, check: bool = True) -> str:
        fam, what, verb = args[0], args[1], args[2]
        assert what == "rule", args
        rule = (fam, int(args[4]), args[6])
        if verb == "add":
            self.rules.add(rule)
        elif verb == "del":
            self.rules.discard(rule)
        elif verb != "flush":
            raise AssertionError(f"unexpected ip {args}")
        return ""

    def batch(self, commands: Sequence[str], force: bool = False) -> None:
        for line in commands:
            words = line.split()
            assert words[0] == "route", line
            dst = str(ipaddress.ip_network(words[2]))
            spec = dict(zip(words[3::2], words[4::2], strict=True))
            if words[1] == "replace":
                self.added.append(ipaddress.ip_network(dst))
                route: dict[str, Any] = {"dev": spec["dev"], "type": "unicast"}
                if "src" in spec:
                    route["prefsrc"] = spec["src"]
                self.routes[(spec["table"], dst)] = route
            elif words[1] == "del":
                self.routes.pop((spec["table"], dst), None)
            else:
                raise AssertionError(f"unexpected ip {line}")


class FakeNft:
    """What the driver uses of NftTable."""

    name = f"wgcable_{DEVICE}"

    def __init__(self) -> None:
        self.body: str | None = None
        self.written: list[str] = []

    def apply(self, body: str) -> None:
        self.body = body
        self.written.append(body)

    def remove(self) -> None:
        self.body = None

    def exists(self) -> bool:
        return self.body is not None


def fake_driver(local: Endpoint, state_dir: Path,
                addresses: Sequence[tuple[str, str, int]]) -> WireGuardDriver:
    """A real WireGuardDriver whose device, routes and nftables table are the fakes above
    (not yet initialised)."""
    # No nameservers of the machine running the tests: they would refuse remote subnets.
    driver = WireGuardDriver(local, WireGuardConfig(state_dir=str(state_dir),
                                                    resolv_conf=os.devnull))
    ip = FakeIP(addresses)
    driver.device = FakeDevice(MemoryBackend())  # type: ignore[assignment]
    driver.ip = ip  # type: ignore[assignment]
    driver.table = RouteTable(ip, driver.cfg.table, driver.cfg.rule_priority)  # type: ignore[arg-type]
    driver.nft = FakeNft()  # type: ignore[assignment]
    return driver
