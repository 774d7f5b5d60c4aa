"""`wgcable show [DEVICE] [--json]`: any WireGuard device, kernel or userspace."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

from wgcable.cable.wireguard.config import DEFAULT_STATE_DIR
from wgcable.cli.connections import show_connections
from wgcable.cli.format import age_human, bytes_human
from wgcable.netlink import rtnl
from wgcable.wgctrl import Client, Device, Peer
from wgcable.wgctrl.errors import DeviceNotFoundError, WgError
from wgcable.wgctrl.uapi import UAPIBackend

# Where wireguard-go puts its socket, seen from inside another process's mount namespace.
# /run, not /var/run: that symlink is absolute and would resolve against our own root.
SOCKET_DIR = "run/wireguard"
# A TUN link named so is taken for ours (a wireguard-go device) even with no socket found,
# so that its absence is explained rather than the device left out.
WG_TUN_PREFIXES = ("subwg", "wg")


def register(sub: Any) -> None:
    p = sub.add_parser("show", help="show WireGuard devices and their peers")
    p.add_argument("device", nargs="?", help="one device (default: all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--connections", action="store_true",
                   help="the running agent's connections (cluster, gateway, IP, status, RTT)")
    p.add_argument("--state-dir", default=os.environ.get("WGCABLE_STATE_DIR", DEFAULT_STATE_DIR),
                   help="the agent's state directory (default: %(default)s)")
    p.set_defaults(handler=run)


def peer_json(p: Peer, now: datetime) -> dict[str, Any]:
    hs = p.last_handshake
    return {
        "public_key": p.public_key.base64(),
        "preshared_key": p.preshared_key is not None,  # whether set; never the key
        "endpoint": str(p.endpoint) if p.endpoint else None,
        "allowed_ips": [str(n) for n in p.allowed_ips],
        "latest_handshake": hs.timestamp() if hs else None,
        "handshake_age_seconds": round((now - hs).total_seconds(), 3) if hs else None,
        "rx_bytes": p.rx_bytes,
        "tx_bytes": p.tx_bytes,
        "persistent_keepalive": p.persistent_keepalive,
    }


def device_json(d: Device, now: datetime) -> dict[str, Any]:
    return {
        "name": d.name,
        "backend": d.kind.value,
        "public_key": d.public_key.base64() if d.public_key else None,
        "listen_port": d.listen_port,
        "fwmark": d.fwmark,
        "peers": [peer_json(p, now) for p in d.peers],
    }


def device_text(d: Device, now: datetime) -> str:
    lines = [f"interface: {d.name}", f"  backend: {d.kind.value}"]
    if d.public_key:
        lines.append(f"  public key: {d.public_key.base64()}")
    if d.private_key:
        lines.append("  private key: (hidden)")
    if d.listen_port:
        lines.append(f"  listening port: {d.listen_port}")
    if d.fwmark:
        lines.append(f"  fwmark: 0x{d.fwmark:x}")
    # Like wg(8): peers with the most recent handshake first.
    epoch = datetime.fromtimestamp(0, UTC)
    for p in sorted(d.peers, key=lambda p: p.last_handshake or epoch, reverse=True):
        lines += ["", f"peer: {p.public_key.base64()}"]
        if p.preshared_key:
            lines.append("  preshared key: (hidden)")
        if p.endpoint:
            lines.append(f"  endpoint: {p.endpoint}")
        lines.append(f"  allowed ips: {', '.join(map(str, p.allowed_ips)) or '(none)'}")
        if p.last_handshake:
            age = (now - p.last_handshake).total_seconds()
            lines.append(f"  latest handshake: {age_human(age)}")
        if p.rx_bytes or p.tx_bytes:
            lines.append(
                f"  transfer: {bytes_human(p.rx_bytes)} received, {bytes_human(p.tx_bytes)} sent"
            )
        if p.persistent_keepalive:
            lines.append(f"  persistent keepalive: every {p.persistent_keepalive} seconds")
    return "\n".join(lines)


def _pids_in_our_netns() -> list[int]:
    """Processes in our network namespace, wireguard-go ones first (the likeliest to see
    a device's socket; any process in the daemon's mount namespace does)."""
    try:
        ours = os.stat("/proc/self/ns/net")
    except OSError:
        return []
    found: list[tuple[bool, int]] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
            if (st.st_dev, st.st_ino) != (ours.st_dev, ours.st_ino):
                continue
            with open(f"/proc/{entry.name}/comm") as f:
                comm = f.read().strip()
        except OSError:  # gone meanwhile, or not ours to look at
            continue
        found.append((comm != "wireguard-go", int(entry.name)))
    return [pid for _, pid in sorted(found)]


def _socket_dir(name: str, pids: list[int]) -> str | None:
    """The first of these processes' views of the socket directory holding ``name``'s."""
    for pid in pids:
        d = f"/proc/{pid}/root/{SOCKET_DIR}"
        if os.path.exists(f"{d}/{name}.sock"):
            return d
    return None


def hidden_devices(known: set[str]) -> tuple[list[Device], dict[str, str]]:
    """WireGuard devices of this network namespace that the client did not see: a
    wireguard-go whose socket is in a mount namespace of its own (as the lab's are), found
    through /proc/<pid>/root of a process in our network namespace. Returns those devices,
    and for every other link that looks like WireGuard, why it cannot be read."""
    try:
        links = rtnl.list_links()
    except OSError:
        return [], {}  # no netlink here: nothing more can be found
    wanted = [link for link in links if link.name not in known
              and (link.kind == "wireguard"
                   or (link.kind == "tun" and link.name.startswith(WG_TUN_PREFIXES)))]
    if not wanted:
        return [], {}
    pids = _pids_in_our_netns()
    devices: list[Device] = []
    problems: dict[str, str] = {}
    for link in wanted:
        sock_dir = _socket_dir(link.name, pids)
        if sock_dir is not None:
            try:
                devices.append(UAPIBackend([sock_dir]).device(link.name))
            except (WgError, OSError) as e:
                problems[link.name] = f"its socket {sock_dir}/{link.name}.sock: {e}"
        elif link.kind == "wireguard":
            problems[link.name] = ("a kernel WireGuard link, but this kernel's wireguard "
                                   "netlink family did not answer")
        else:
            problems[link.name] = ("a TUN link, but no process in this network namespace "
                                   f"has a wireguard-go socket /{SOCKET_DIR}/{link.name}.sock "
                                   "in its mount namespace")
    return devices, problems


def run(args: argparse.Namespace) -> int:
    if args.connections:
        try:
            return show_connections(args.state_dir, args.json)
        except FileNotFoundError:
            print(f"wgcable show: no agent status in {args.state_dir} (is the agent running?)",
                  file=sys.stderr)
            return 1
    now = datetime.now(UTC)
    missing: DeviceNotFoundError | None = None
    with Client() as client:
        if args.device:
            try:
                devices = [client.device(args.device)]
            except DeviceNotFoundError as e:
                devices, missing = [], e
        else:
            devices = client.devices()
    problems: dict[str, str] = {}
    if args.device is None or missing is not None:
        # What the client cannot see from here: a daemon's socket in another mount
        # namespace (`ip netns exec GW wgcable show` on a lab gateway), or why not.
        hidden, problems = hidden_devices({d.name for d in devices})
        devices += [d for d in hidden if args.device in (None, d.name)]
        problems = {n: p for n, p in problems.items() if args.device in (None, n)}
    if missing is not None and not devices:
        if args.device in problems:
            raise WgError(f"{args.device}: cannot be read: {problems[args.device]}")
        raise missing
    if args.json:
        doc: Any = device_json(devices[0], now) if args.device else [
            device_json(d, now) for d in devices
        ]
        print(json.dumps(doc, indent=2))
    elif devices:
        print("\n\n".join(device_text(d, now) for d in devices))
    elif not problems:
        print("no WireGuard devices")
    for name, problem in sorted(problems.items()):
        print(f"wgcable show: {name}: cannot be read: {problem}", file=sys.stderr)
    return 1 if problems else 0
