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
from wgcable.wgctrl import Client, Device, Peer


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


def run(args: argparse.Namespace) -> int:
    if args.connections:
        try:
            return show_connections(args.state_dir, args.json)
        except FileNotFoundError:
            print(f"wgcable show: no agent status in {args.state_dir} (is the agent running?)",
                  file=sys.stderr)
            return 1
    now = datetime.now(UTC)
    with Client() as client:
        devices = [client.device(args.device)] if args.device else client.devices()
    if args.json:
        doc: Any = device_json(devices[0], now) if args.device else [
            device_json(d, now) for d in devices
        ]
        print(json.dumps(doc, indent=2))
    else:
        print("\n\n".join(device_text(d, now) for d in devices))
    return 0
