"""The route agent's resources for ``wgcable.reconcile``: its VXLAN device, the device's
FDB and neighbour entries, and rp_filter where it must be loosened. (Its routes and its
nftables table are the routing layer's resources, on its device.)

Ownership: the device carries the alias ``ALIAS``; a device of that name without it (for
example Submariner's own ``vx-submariner``) is never changed or removed. FDB and neighbour
entries are ours when they are permanent entries on our device. rp_filter is only ever
loosened (strict -> loose), and the value found is recorded in the state directory, so
that cleanup puts it back; it is written through rtnetlink (CAP_NET_ADMIN), not /proc/sys.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import subprocess
from collections.abc import Collection, Mapping
from pathlib import Path

from wgcable.netlink import rtnl
from wgcable.netlink.message import NetlinkError
from wgcable.routeagent.state import LINK, VxlanLink
from wgcable.routeagent.vtep import VTEP6_NET, VTEP_PREFIX
from wgcable.routing.iproute import IPRoute, RoutingError
from wgcable.wgctrl import IPAddress

log = logging.getLogger(__name__)

ALIAS = "wgcable-route-agent"


class NotOursError(RuntimeError):
    pass


def _bridge(*args: str, check: bool = True) -> str:
    p = subprocess.run(["bridge", *args], capture_output=True, text=True, timeout=30,
                       check=False)
    if check and p.returncode != 0:
        raise RoutingError(f"bridge {' '.join(args)}: {p.stderr.strip() or p.returncode}")
    return p.stdout


class VxlanResource:
    """``{"vxlan": VxlanLink}``: our VXLAN device. The tunnel's own parameters (VNI, port,
    source, underlay device) cannot change on a live device: a change of those re-creates
    it (a node's IP changed). Everything else (MTU, MAC, addresses) changes in place: a
    new gateway never re-creates it."""

    name = "vxlan"

    def __init__(self, ip: IPRoute, device: str) -> None:
        self.ip = ip
        self.device = device

    def _link(self) -> dict[str, object] | None:
        found = self.ip.json("-d", "link", "show", "dev", self.device, check=False)
        return found[0] if found else None

    def read(self) -> dict[str, VxlanLink]:
        link = self._link()
        if link is None:
            return {}
        info = link.get("linkinfo")
        data = info.get("info_data", {}) if isinstance(info, dict) else {}
        if not isinstance(info, dict) or info.get("info_kind") != "vxlan" or \
                link.get("ifalias") != ALIAS:
            raise NotOursError(f"device {self.device!r} exists and is not the route agent's "
                               f"(kind {info.get('info_kind') if isinstance(info, dict) else '?'}"
                               f", alias {link.get('ifalias')!r}): remove it or choose "
                               "another --device")
        v4 = v6 = None
        for a in self.ip.json("addr", "show", "dev", self.device, check=False)[0:1]:
            for addr in a.get("addr_info", []):
                ip = ipaddress.ip_address(addr["local"])
                if ip.version == 4 and addr.get("prefixlen") == VTEP_PREFIX:
                    v4 = ip
                elif ip.version == 6 and ip in VTEP6_NET:
                    v6 = ip
        if v4 is None:
            return {}  # no address: treated as absent, and set up again in place below
        flags = link.get("flags", [])
        up = isinstance(flags, list) and "UP" in flags
        return {LINK: VxlanLink(
            vni=int(data.get("id", 0)), port=int(data.get("port", 0)),
            local=ipaddress.ip_address(str(data["local"])) if data.get("local")
            else ipaddress.IPv4Address(0),
            underlay=str(data.get("link", "")),
            mtu=int(str(link.get("mtu", 0))) if up else 0,
            mac=str(link.get("address", "")), vtep=v4, vtep6=v6)}

    def write(self, have: Mapping[str, VxlanLink], want: Mapping[str, VxlanLink], *,
              trusted: bool, changed: Collection[str] | None = None) -> int:
        w, h = want[LINK], have.get(LINK)
        dev = self.device
        cmds: list[str] = []
        exists = self._link() is not None
        if exists and h is not None and (h.vni, h.port, h.local, h.underlay) != \
                (w.vni, w.port, w.local, w.underlay):
            log.info("device %s: tunnel parameters changed; re-creating it", dev)
            cmds.append(f"link del {dev}")
            exists, h = False, None
        if not exists:
            cmds.append(f"link add {dev} type vxlan id {w.vni} dstport {w.port} local "
                        f"{w.local} dev {w.underlay} nolearning")
        if h is None or h.mac != w.mac or h.mtu != w.mtu:
            cmds.append(f"link set {dev} alias {ALIAS} address {w.mac} mtu {w.mtu} up")
        if h is None or h.vtep != w.vtep:
            cmds.append(f"addr replace {w.vtep}/{VTEP_PREFIX} dev {dev}")
        if w.vtep6 is not None and (h is None or h.vtep6 != w.vtep6):
            cmds.append(f"addr replace {w.vtep6}/{VTEP6_NET.prefixlen} dev {dev} nodad")
        self.ip.batch(cmds)
        return len(cmds)

    def holds(self, want: Mapping[str, VxlanLink], *, exactly: bool) -> bool:
        link = self._link()
        flags = link.get("flags", []) if link else []
        return link is not None and isinstance(flags, list) and "UP" in flags

    def remove(self) -> bool:
        """Delete the device if it is ours (its FDB, neighbour entries and routes go with
        it); True if it was there."""
        try:
            if not self.read() and self._link() is None:
                return False
        except NotOursError as e:
            log.warning("%s; left alone", e)
            return False
        self.ip.run("link", "del", self.device)
        return True


class FdbResource:
    """``{MAC: destination node IP}``: the permanent FDB entries of our device."""

    name = "fdb"

    def __init__(self, device: str) -> None:
        self.device = device

    def read(self) -> dict[str, IPAddress]:
        out = _bridge("-j", "fdb", "show", "dev", self.device, check=False)
        entries = json.loads(out) if out.strip() else []
        return {str(e["mac"]): ipaddress.ip_address(e["dst"]) for e in entries
                if isinstance(e, dict) and e.get("dst") and e.get("state") == "permanent"}

    def write(self, have: Mapping[str, IPAddress], want: Mapping[str, IPAddress], *,
              trusted: bool, changed: Collection[str] | None = None) -> int:
        n = 0
        for mac, dst in want.items():
            if have.get(mac) != dst:
                if mac in have:  # another destination for this MAC: that entry goes first
                    _bridge("fdb", "del", mac, "dev", self.device, "dst", str(have[mac]),
                            "self", check=False)
                _bridge("fdb", "append", mac, "dev", self.device, "dst", str(dst), "self",
                        "permanent")
                n += 1
        for mac, dst in have.items():
            if mac not in want:
                _bridge("fdb", "del", mac, "dev", self.device, "dst", str(dst), "self",
                        check=not trusted)
                n += 1
        return n

    def holds(self, want: Mapping[str, IPAddress], *, exactly: bool) -> bool:
        have = self.read()
        return have == dict(want) if exactly else all(have.get(k) == v
                                                       for k, v in want.items())


class NeighResource:
    """``{VTEP address: MAC}``: the permanent neighbour entries of our device."""

    name = "neighbours"

    def __init__(self, ip: IPRoute, device: str) -> None:
        self.ip = ip
        self.device = device

    def read(self) -> dict[IPAddress, str]:
        out: dict[IPAddress, str] = {}
        for fam in ("-4", "-6"):
            for e in self.ip.json(fam, "neigh", "show", "dev", self.device, "nud",
                                  "permanent", check=False):
                if e.get("lladdr"):
                    out[ipaddress.ip_address(e["dst"])] = str(e["lladdr"])
        return out

    def write(self, have: Mapping[IPAddress, str], want: Mapping[IPAddress, str], *,
              trusted: bool, changed: Collection[IPAddress] | None = None) -> int:
        cmds = [f"neigh replace {a} lladdr {mac} dev {self.device} nud permanent"
                for a, mac in want.items() if have.get(a) != mac]
        cmds += [f"neigh del {a} dev {self.device}" for a in have if a not in want]
        self.ip.batch(cmds)
        return len(cmds)

    def holds(self, want: Mapping[IPAddress, str], *, exactly: bool) -> bool:
        have = self.read()
        return have == dict(want) if exactly else all(have.get(k) == v
                                                       for k, v in want.items())


class RpFilterResource:
    """``{interface: 2}``: rp_filter loose where it is strict. A value of 0 (off) or 2 is
    already as loose as needed and is left as it is; the original strict value is recorded
    in ``record`` for cleanup."""

    name = "rp_filter"

    def __init__(self, record: Path) -> None:
        self.record = record

    @staticmethod
    def _path(ifname: str) -> Path:
        return Path("/proc/sys/net/ipv4/conf") / ifname / "rp_filter"

    @staticmethod
    def _set(ifname: str, value: int) -> None:
        # Through rtnetlink, not /proc/sys: that is read-only in a container that is not
        # privileged, and CAP_NET_ADMIN is all this takes.
        rtnl.set_ipv4_conf(ifname, rtnl.IPV4_DEVCONF_RP_FILTER, value)

    def _get(self, ifname: str) -> int | None:
        try:
            return int(self._path(ifname).read_text().strip())
        except (OSError, ValueError):
            return None  # no such interface (yet)

    def read(self) -> dict[str, int]:
        return {}  # reads per interface happen in write: only the wanted ones matter

    def write(self, have: Mapping[str, int], want: Mapping[str, int], *,
              trusted: bool, changed: Collection[str] | None = None) -> int:
        n = 0
        for ifname, value in want.items():
            if self._get(ifname) == 1 and value == 2:
                self._remember(ifname, 1)
                self._set(ifname, 2)
                log.info("rp_filter on %s: strict -> loose (replies come back on another "
                         "interface than the routes name)", ifname)
                n += 1
        return n

    def holds(self, want: Mapping[str, int], *, exactly: bool) -> bool:
        return all(self._get(i) != 1 for i in want)

    def _remember(self, ifname: str, value: int) -> None:
        found = self.restore_values()
        found.setdefault(ifname, value)
        self.record.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(found))
        tmp.replace(self.record)

    def restore_values(self) -> dict[str, int]:
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(self.record.read_text())
            if isinstance(data, dict):
                return {str(k): int(v) for k, v in data.items()}
        return {}

    def restore(self) -> None:
        """Put back what we loosened (cleanup)."""
        for ifname, value in self.restore_values().items():
            if self._get(ifname) == 2:
                with contextlib.suppress(OSError, NetlinkError):
                    self._set(ifname, value)
        self.record.unlink(missing_ok=True)
