"""A thin, typed layer over routing: routes and policy rules over rtnetlink (our own
``wgcable.netlink``), the rest through iproute2 (`ip -j` to read, `ip -batch` to write).

Routes and rules are read and written in this process: a dump of a table, and many route
changes sent together (``NetlinkSocket.batch``: a thousand routes in one round of
datagrams, no ``ip`` process to start). Addresses reach the kernel as packed bytes and the
device as its ifindex. ``netns`` acts in that namespace (a socket opened there; `ip -n`),
so nothing of ours lands in the caller's namespace. ``close`` releases the socket.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from wgcable.netlink import message as nlmsg
from wgcable.netlink import route as nlroute
from wgcable.netlink import rtnl
from wgcable.netlink.message import NetlinkError
from wgcable.netlink.netns import call_in_netns
from wgcable.netlink.routewatch import RouteWatch
from wgcable.netlink.socket import NETLINK_ROUTE, NetlinkSocket

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# (dst, dev, src or "", protocol, gateway or ""), as `ip -N -j route show` prints them
RouteRow = tuple[str, str, str, str, str]


class RoutingError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class RouteOp:
    """One route change: ``verb`` is "add" (fails on a destination that exists),
    "replace" or "del" (matches the device and protocol named)."""

    verb: str
    dst: _Network
    dev: str
    table: int
    protocol: int
    src: _Address | None = None
    via: _Address | None = None

    def text(self) -> str:
        """As an ``ip -batch`` line (for messages and tests)."""
        s = f"route {self.verb} {self.dst} dev {self.dev} table {self.table} " \
            f"proto {self.protocol}"
        if self.via is not None:
            family = "inet " if self.via.version != self.dst.version else ""
            s += f" via {family}{self.via} onlink"
        return s + (f" src {self.src}" if self.src else "")


def _version(family: str) -> int:
    if family not in ("-4", "-6"):
        raise ValueError(f"address family {family!r} is not -4 or -6")
    return 4 if family == "-4" else 6


class IPRoute:
    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._sock: NetlinkSocket | None = None
        self._lock = threading.Lock()  # one request at a time on the socket
        self._ifnames: dict[int, str] = {}
        self._watch: RouteWatch | None = None
        self._dirty: dict[int, bool] = {}  # per table asked about: changed since asked

    # --- rtnetlink: routes and rules ---------------------------------------------------

    def _rtnl(self) -> NetlinkSocket:
        if self._sock is None:
            sock = call_in_netns(self.netns, lambda: NetlinkSocket(NETLINK_ROUTE))
            sock.strict_dumps()
            self._sock = sock
        return self._sock

    def close(self) -> None:
        """Close the netlink socket (it holds its namespace); a later call opens another."""
        with self._lock:
            sock, self._sock = self._sock, None
            self._ifnames = {}
            if sock is not None:
                sock.close()
            watch, self._watch = self._watch, None
            self._dirty = {}
            if watch is not None:
                watch.close()

    def _names(self, s: NetlinkSocket, indexes: set[int]) -> dict[int, str]:
        """Link names by ifindex, remembered: the kernel never gives an index to another
        link while the namespace lives (a re-created device has a new one). Only a
        rename would go unseen, and none of ours is ever renamed."""
        for index in indexes - self._ifnames.keys():
            link = rtnl.get_link_by_index(index, s)
            if link is None:
                return {i: self._ifnames.get(i, f"if{i}") for i in indexes}  # gone meanwhile
            self._ifnames[index] = link.name
        return self._ifnames

    def routes_unchanged(self, table: int) -> bool:
        """True when no route of ``table`` was added, changed or deleted since the last
        call (by anyone, us included); False the first time, or when notifications were
        lost. Call it before a read, so that a change during the read shows next time."""
        with self._lock:
            if self._watch is None:
                self._watch = call_in_netns(self.netns, RouteWatch)
            changed = self._watch.changed()
            # Per table asked about: another table's caller still needs what it missed.
            for t in self._dirty:
                self._dirty[t] = self._dirty[t] or changed is None or t in changed
            dirty = self._dirty.get(table, True)
            self._dirty[table] = False
            return not dirty

    def read_routes(self, family: str, table: int) -> list[RouteRow]:
        """Every unicast route but the default in ``table``, whoever owns it, as rows; a
        family the host does not have reads as empty."""
        fam = nlroute.family_of(_version(family))
        with self._lock:
            s = self._rtnl()
            try:
                parts = s.dump_raw(nlroute.RTM_GETROUTE,
                                   nlroute.encode_dump_routes(fam, table))
            except NetlinkError as e:
                if e.errno in (errno.EAFNOSUPPORT, errno.ENOENT):
                    return []
                raise RoutingError(f"reading table {table}: {e}") from e
            found = nlroute.route_rows(parts, fam, table)
            names = self._names(s, {r[2] for r in found})
        full = 32 if fam == nlroute.AF_INET else 128
        ntop = socket.inet_ntop
        return [(ntop(fam, dst) if dst_len == full else f"{ntop(fam, dst)}/{dst_len}",
                 names[oif], ntop(fam, src) if src else "", str(proto),
                 ntop(gw_fam or fam, gw) if gw else "")
                for dst, dst_len, oif, src, proto, gw, gw_fam in found]

    def change_routes(self, ops: Sequence[RouteOp], force: bool = False) -> None:
        """Apply many route changes in one round. Each is applied on its own; without
        ``force`` a failure raises RoutingError naming the first that failed (the others
        were still applied). A change on a device that does not exist fails so too (a
        deletion there has nothing left to delete)."""
        if not ops:
            return
        with self._lock:
            s = self._rtnl()
            index: dict[str, int | None] = {}
            for dev in {op.dev for op in ops}:
                link = rtnl.get_link(dev, s)
                index[dev] = link.index if link is not None else None
            requests, sent = [], []
            failed: list[str] = []
            for op in ops:
                oif = index[op.dev]
                if oif is None:
                    if op.verb != nlroute.DELETE:
                        failed.append(f"{op.text()}: device {op.dev!r} not found")
                    continue
                requests.append(nlroute.encode_route(op.verb, op.dst, oif, op.table,
                                                     op.protocol, op.src, op.via))
                sent.append(op)
            results = s.batch(requests)
        failed += [f"{op.text()}: {err.strerror}" for op, err in zip(sent, results, strict=True)
                   if err is not None]
        if failed and not force:
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise RoutingError(f"route change failed: {failed[0]}{more}")

    def read_rules(self, family: str) -> list[tuple[int, int, int]]:
        """(priority, table, protocol) of every rule of the family."""
        fam = nlroute.family_of(_version(family))
        with self._lock:
            try:
                replies = self._rtnl().request(nlroute.RTM_GETRULE,
                                               nlroute.encode_dump_rules(fam), dump=True)
            except NetlinkError as e:
                if e.errno == errno.EAFNOSUPPORT:
                    return []
                raise RoutingError(f"reading the {family} rules: {e}") from e
        found = (nlroute.parse_rule(m.payload) for m in replies
                 if m.type == nlroute.RTM_NEWRULE)
        return [(r.priority, r.table, r.protocol) for r in found if r.family == fam]

    def add_rule(self, family: str, priority: int, table: int, protocol: int) -> None:
        self._rule(nlroute.RTM_NEWRULE, family, priority, table, protocol)

    def del_rule(self, family: str, priority: int, table: int, protocol: int | None) -> None:
        """Delete one rule to ``table`` at ``priority`` (of ``protocol``, unless None)."""
        self._rule(nlroute.RTM_DELRULE, family, priority, table, protocol)

    def _rule(self, msg_type: int, family: str, priority: int, table: int,
              protocol: int | None) -> None:
        fam = nlroute.family_of(_version(family))
        flags = 0
        if msg_type == nlroute.RTM_NEWRULE:
            flags = nlmsg.NLM_F_CREATE | nlmsg.NLM_F_EXCL
        with self._lock:
            try:
                self._rtnl().request(msg_type, nlroute.encode_rule(fam, priority, table,
                                                                   protocol), flags)
            except NetlinkError as e:
                verb = "add" if msg_type == nlroute.RTM_NEWRULE else "del"
                raise RoutingError(f"ip {family} rule {verb} priority {priority} table "
                                   f"{table}: {e.strerror}") from e

    # --- iproute2 ----------------------------------------------------------------------

    def _base(self) -> list[str]:
        return ["ip", "-n", self.netns] if self.netns else ["ip"]

    def run(self, *args: str, check: bool = True) -> str:
        p = subprocess.run(
            [*self._base(), *args], capture_output=True, text=True, timeout=30, check=False
        )
        if check and p.returncode != 0:
            raise RoutingError(f"ip {' '.join(args)}: {p.stderr.strip() or p.returncode}")
        return p.stdout

    def json(self, *args: str, check: bool = True) -> list[dict[str, Any]]:
        """Parsed `ip -j` output; with ``check`` False a failure reads as nothing. Numbers
        stay numbers (``-N``): a route's protocol is compared as a number, whatever names
        /etc/iproute2 gives."""
        p = subprocess.run(
            [*self._base(), "-j", "-N", *args], capture_output=True, text=True, timeout=30,
            check=False,
        )
        if p.returncode != 0:
            if check:
                raise RoutingError(f"ip -j {' '.join(args)}: {p.stderr.strip()}")
            return []
        data = json.loads(p.stdout) if p.stdout.strip() else []
        return data if isinstance(data, list) else []

    def batch(self, commands: Sequence[str], force: bool = False) -> None:
        """Run many commands in one process. ``force``: go on past failures (for removal)."""
        if not commands:
            return
        # One command per line: a newline (or other control character) inside one would
        # make a second command out of its rest.
        if bad := next((c for c in commands if not c.isprintable()), None):
            raise RoutingError(f"ip -batch: refused a command with a control character: "
                               f"{bad[:80]!r}")
        args = [*self._base(), *(["-force"] if force else []), "-batch", "-"]
        p = subprocess.run(
            args, input="\n".join(commands) + "\n", capture_output=True, text=True,
            timeout=60, check=False,
        )
        if p.returncode != 0 and not force:
            raise RoutingError(f"ip -batch: {p.stderr.strip()}")

    def link(self, name: str) -> dict[str, Any] | None:
        p = subprocess.run(
            [*self._base(), "-j", "link", "show", "dev", name],
            capture_output=True, text=True, timeout=30, check=False,
        )
        if p.returncode != 0:
            return None
        data = json.loads(p.stdout)
        return data[0] if data else None

    def addresses(self) -> list[tuple[str, str, int]]:
        """(interface, address, prefix length) of every address in the namespace."""
        out = []
        for link in self.json("addr", "show"):
            for a in link.get("addr_info", []):
                out.append((str(link.get("ifname")), str(a["local"]), int(a["prefixlen"])))
        return out

    def ipv6_enabled(self, device: str) -> bool:
        """Whether IPv6 works on ``device`` here: not with IPv6 off in the kernel
        (``ipv6.disable=1``: no /proc/sys/net/ipv6), nor with ``disable_ipv6`` set on the
        device (the kernel refuses routes through it). A device not there yet gets the
        namespace's default."""
        def read() -> bool:
            conf = "/proc/sys/net/ipv6/conf"
            for name in (device, "default"):
                try:
                    with open(os.path.join(conf, name, "disable_ipv6")) as f:
                        return f.read().strip() == "0"
                except FileNotFoundError:
                    continue
            return False
        return call_in_netns(self.netns, read)
