"""Network namespaces and userspace WireGuard daemons inside them.

Everything here is created inside namespaces that we name ourselves, never in the root
namespace, and processes are ended by the PID we started, never by name.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from wgcable.cable.wireguard.userspace import WireGuardGoProcess
from wgcable.netlink import rtnl
from wgcable.netlink.netns import call_in_netns
from wgcable.netlink.socket import NETLINK_ROUTE, NetlinkSocket
from wgcable.wgctrl import Client
from wgcable.wgctrl.kernel import KernelBackend
from wgcable.wgctrl.uapi import UAPIBackend


class LabError(RuntimeError):
    pass


def _run(
    cmd: Sequence[str], check: bool = True, timeout: float = 30, input: str | None = None
) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                       input=input)
    if check and p.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def list_namespaces() -> list[str]:
    return [line.split()[0] for line in _run(["ip", "netns", "list"]).splitlines() if line]


def delete_namespaces(names: Sequence[str]) -> None:
    """Deletes these namespaces in one ``ip -batch`` (one process, not one per name);
    ``-force`` goes on past a name that is already gone."""
    if names:
        _run(["ip", "-force", "-batch", "-"], check=False,
             input="".join(f"netns del {n}\n" for n in names))
        left = set(names) & set(list_namespaces())
        if left:
            raise LabError(f"namespaces not deleted: {', '.join(sorted(left))}")


class Namespace:
    """A named network namespace (``ip netns``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def create(self) -> Namespace:
        _run(["ip", "netns", "add", self.name])
        self.ip("link set lo up")
        return self

    def ip(self, *commands: str, timeout: float = 30) -> str:
        """``ip`` commands in this namespace, in order, in one process (``ip -n NS -batch``):
        a lab is hundreds of them, and under the test VM's emulation each process start
        costs a fraction of a second. Stops at the first that fails, naming it."""
        if len(commands) == 1:
            return _run(["ip", "-n", self.name, *commands[0].split()], timeout=timeout)
        return _run(["ip", "-n", self.name, "-batch", "-"], timeout=timeout,
                    input="".join(f"{c}\n" for c in commands))

    def delete(self) -> None:
        if self.name in list_namespaces():
            _run(["ip", "netns", "del", self.name])

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(
        self, *args: str, check: bool = True, timeout: float = 30, input: str | None = None
    ) -> str:
        return _run(self.cmd(*args), check=check, timeout=timeout, input=input)

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"


def veth_pair(a: Namespace, a_if: str, b: Namespace, b_if: str,
              a_then: Sequence[str] = (), b_then: Sequence[str] = (),
              mtu: int | None = None) -> None:
    """A veth pair with one end in each namespace, both up. Made inside ``a``: never in root.
    ``a_then`` and ``b_then``: more ``ip`` commands for each side, in the same process.
    ``mtu``: both ends' MTU (None: the kernel's default, 1500)."""
    m = f" mtu {mtu}" if mtu is not None else ""
    a.ip(f"link add {a_if}{m} type veth peer name {b_if}{m} netns {b.name}",
         f"link set {a_if} up", *a_then)
    b.ip(f"link set {b_if} up", *b_then)


class LabDevice:
    """What tests need of a WireGuard device, whichever kind backs it."""

    ns: Namespace
    ifname: str
    kind: str

    def exec_cmd(self, *args: str) -> list[str]:
        """A command line that runs where the device is (its namespaces)."""
        raise NotImplementedError

    def run(self, *args: str, check: bool = True, input: str | None = None) -> str:
        p = subprocess.run(
            self.exec_cmd(*args), capture_output=True, text=True, input=input, timeout=30,
            check=False,
        )
        if check and p.returncode != 0:
            raise LabError(f"{' '.join(args)}: exit {p.returncode}: {p.stderr.strip()}")
        return p.stdout

    def client(self) -> Client:
        raise NotImplementedError

    def stop(self, timeout: float = 5) -> None:
        raise NotImplementedError


class WireGuardGo(LabDevice):
    """A wireguard-go daemon for one device inside a namespace, in its own mount namespace
    (the driver's own daemon management, used directly)."""

    def __init__(self, ns: Namespace, ifname: str, binary: str = "wireguard-go") -> None:
        self.ns = ns
        self.ifname = ifname
        self.kind = "userspace"
        self.daemon = WireGuardGoProcess(ifname, ns.name, binary)
        self.daemon.start()

    @property
    def pid(self) -> int:
        if self.daemon.pid is None:
            raise LabError(f"wireguard-go for {self.ifname} is not running")
        return self.daemon.pid

    @property
    def socket_dir(self) -> str:
        return self.daemon.socket_dirs[0]

    def wait_ready(self, timeout: float = 10) -> WireGuardGo:
        return self  # start() already waited for the socket

    def client(self) -> Client:
        return Client([UAPIBackend([self.socket_dir])])

    def exec_cmd(self, *args: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-m", "-n", *args]

    def stop(self, timeout: float = 5) -> None:
        self.daemon.stop(timeout)


class KernelWireGuard(LabDevice):
    """A kernel WireGuard link in a namespace, created over rtnetlink (as the driver does).

    Offers the same surface as :class:`WireGuardGo`, so one test body serves both."""

    kind = "kernel"

    def __init__(self, ns: Namespace, ifname: str) -> None:
        self.ns = ns
        self.ifname = ifname
        with self._rtnl() as s:
            rtnl.create_link(ifname, "wireguard", s)

    def _rtnl(self) -> NetlinkSocket:
        return call_in_netns(self.ns.name, lambda: NetlinkSocket(NETLINK_ROUTE))

    def wait_ready(self, timeout: float = 10) -> KernelWireGuard:
        return self

    def client(self) -> Client:
        backend = KernelBackend.open(self.ns.name)
        if backend is None:
            raise LabError("this kernel has no wireguard netlink family")
        return Client([backend])

    def exec_cmd(self, *args: str) -> list[str]:
        return self.ns.cmd(*args)

    def stop(self, timeout: float = 5) -> None:
        with self._rtnl() as s:
            if rtnl.get_link(self.ifname, s) is not None:
                rtnl.delete_link(self.ifname, s)
