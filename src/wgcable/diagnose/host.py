"""Reading the gateway's live state for diagnose: the agent's status, the device, routes,
rules, the nftables ruleset, sysctls and the key file. Reads only; changes nothing."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

from wgcable.agent.statusfile import read_status_file
from wgcable.cable.types import ConnectionStatus
from wgcable.cable.wireguard.desired import PUBLIC_KEY
from wgcable.cable.wireguard.userspace import process_running
from wgcable.diagnose.checks import AgentFacts, DeviceFacts, KeyFileFacts, Remote
from wgcable.natdiscovery.types import BACKEND_CONFIG_KEY as NATT_PORT_KEY
from wgcable.routing import hostnat
from wgcable.wgctrl import Client
from wgcable.wgctrl.errors import DeviceNotFoundError, WgError
from wgcable.wgctrl.types import Device

UDP_PORT_KEY = "udp-port"
_TIMEOUT = 10


def _run(*argv: str) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=_TIMEOUT,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None


def _json(*argv: str) -> Any:
    p = _run(*argv)
    if p is None or p.returncode != 0:
        return None
    try:
        return json.loads(p.stdout or "null")
    except ValueError:
        return None


def read_agent(state_dir: str) -> AgentFacts:
    try:
        st = read_status_file(state_dir)
    except (OSError, ValueError) as e:
        return AgentFacts(None, f"{Path(state_dir) / 'status.json'}: "
                          f"{getattr(e, 'strerror', None) or e}")
    return AgentFacts(st, running=st.pid > 0 and process_running(st.pid))


def _port(text: str | None) -> int:
    return int(text) if text and text.isdigit() and 0 < int(text) < 65536 else 0


def expected_remotes(facts: AgentFacts, on_device: set[str]) -> list[Remote]:
    """The remotes the agent last reported with a cable: connected or connecting, or in
    error with a peer on the device (``on_device``: public keys), as a stale handshake is.
    A refused endpoint is in error with no peer, and needs none."""
    if facts.status is None:
        return []
    out = []
    for c in facts.status.gateway.connections:
        ep = c.endpoint
        key = ep.backend_config.get(PUBLIC_KEY, "")
        if c.status not in (ConnectionStatus.CONNECTED, ConnectionStatus.CONNECTING) and not (
                c.status is ConnectionStatus.ERROR and key in on_device):
            continue
        out.append(Remote(
            cluster_id=ep.cluster_id, public_key=key,
            subnets=tuple(ep.subnets), health_check_ip=ep.health_check_ip,
            address=c.using_ip or ep.gateway_ip(),
            udp_port=_port(ep.backend_config.get(UDP_PORT_KEY)),
            natt_port=_port(ep.backend_config.get(NATT_PORT_KEY)), cable_name=ep.cable_name,
            private_ip=ep.private_ip, public_ip=ep.public_ip, nat_enabled=ep.nat_enabled))
    return out


def wireguard_impl() -> tuple[bool, str | None, str]:
    """(kernel module loaded, wireguard-go's path, its version)."""
    kernel = Path("/sys/module/wireguard").exists()
    go = shutil.which("wireguard-go")
    version = ""
    if go:
        p = _run(go, "--version")
        lines = (p.stdout or p.stderr).strip().splitlines() if p is not None else []
        version = lines[0].removeprefix("wireguard-go ") if lines else ""
    return kernel, go, version


def read_device(name: str, state_dir: str) -> tuple[DeviceFacts, Device | None]:
    pidfile = Path(state_dir) / f"{name}.wireguard-go.pid"
    pid = 0
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().strip() or 0)
    facts = DeviceFacts(name, present=False, daemon_pid=pid,
                        daemon_running=pid > 0 and process_running(pid, "wireguard-go"))
    link = _json("ip", "-j", "link", "show", "dev", name)
    if not link:
        return facts, None
    facts.present = True
    facts.up = "UP" in (link[0].get("flags") or [])
    facts.mtu = int(link[0].get("mtu") or 0)
    try:
        with Client() as client:
            dev = client.device(name)
    except DeviceNotFoundError:
        facts.error = "a link of that name, but no WireGuard device answers for it"
        return facts, None
    except (WgError, OSError) as e:
        facts.error = str(e)
        return facts, None
    facts.kind = dev.kind.value
    return facts, dev


def read_key_file(path: Path) -> KeyFileFacts:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return KeyFileFacts(str(path), exists=False)
    return KeyFileFacts(str(path), True, st.st_mode, st.st_uid,
                        symlink=stat.S_ISLNK(st.st_mode), regular=stat.S_ISREG(st.st_mode))


def routed(table: int, device: str) -> set[str]:
    """Destinations in ``table`` whose route goes through ``device`` (both families)."""
    out: set[str] = set()
    for family in ("-4", "-6"):
        for r in _json("ip", "-j", family, "route", "show", "table", str(table)) or []:
            if isinstance(r, dict) and r.get("dev") == device and r.get("dst"):
                dst = str(r["dst"])
                out.add(dst if "/" in dst else f"{dst}/{32 if family == '-4' else 128}")
    return out


def rule_families(table: int) -> set[int]:
    out = set()
    for family, version in (("-4", 4), ("-6", 6)):
        for r in _json("ip", "-j", "-N", family, "rule", "show") or []:
            if isinstance(r, dict) and str(r.get("table")) == str(table):
                out.add(version)
    return out


def ruleset() -> tuple[list[Any] | None, str]:
    """(``nft -j list ruleset`` items, ""), or (None, why it cannot be read)."""
    if shutil.which("nft") is None:
        return None, "nft is not installed"
    p = _run("nft", "-j", "list", "ruleset")
    if p is None or p.returncode != 0:
        return None, f"nft -j list ruleset: {p.stderr.strip() if p else 'did not run'}"
    try:
        doc = json.loads(p.stdout or "{}")
    except ValueError:
        return None, "nft -j list ruleset: not JSON"
    items = doc.get("nftables") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        return None, "nft -j list ruleset: no ruleset in its output"
    return [i for i in items if isinstance(i, dict)], ""


def legacy_nat() -> bool:
    """Whether legacy iptables has a ``nat`` table in this namespace (as the agent reads
    it)."""
    legacy = hostnat.LegacyNat(None)
    try:
        legacy.reopen()
        return legacy.present()
    finally:
        legacy.close()


def _sysctl(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def rp_filters(interfaces: list[str]) -> dict[str, int]:
    """The effective IPv4 rp_filter of each interface that exists: the greater of its own
    and ``all``'s (the kernel's rule)."""
    base = "/proc/sys/net/ipv4/conf"
    every = _sysctl(f"{base}/all/rp_filter") or 0
    out = {}
    for name in interfaces:
        own = _sysctl(f"{base}/{name}/rp_filter")
        if own is not None:
            out[name] = max(own, every)
    return out
