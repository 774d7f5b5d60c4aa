"""The running agent's status, kept in its state directory for `wgcable show --connections`.

Submariner's Gateway status has no byte counters; we add them beside it, with the time of
writing so that a reader can tell a stale file (agent stopped) from a live one.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wgcable.cable.types import GatewayStatus
from wgcable.store.directory import atomic_write

STATUS_FILE = "status.json"


@dataclass(slots=True)
class AgentStatus:
    gateway: GatewayStatus
    transfer: dict[str, tuple[int, int]]  # cluster -> (rx, tx) bytes
    updated: float  # epoch seconds
    pid: int


def write_status_file(state_dir: str | os.PathLike[str], status: GatewayStatus) -> None:
    doc: dict[str, Any] = {
        "updated": time.time(),
        "pid": os.getpid(),
        "gateway": status.to_json(),
        "transfer": {c.endpoint.cluster_id: {"rx": c.rx_bytes, "tx": c.tx_bytes}
                     for c in status.connections},
    }
    # A new temp file (O_EXCL, random name), never a predictable name that a planted link
    # could redirect; 0644: it holds what the gateway status publishes anyway.
    atomic_write(Path(state_dir), STATUS_FILE, json.dumps(doc, indent=1).encode())


def read_status_file(state_dir: str | os.PathLike[str]) -> AgentStatus:
    """Raises FileNotFoundError when no agent ever ran with this state directory, and
    ValueError when the file is damaged."""
    doc = json.loads((Path(state_dir) / STATUS_FILE).read_text())
    if not isinstance(doc, dict):
        raise ValueError("status file: not an object")
    gw = GatewayStatus.from_json(doc.get("gateway"))
    transfer = {
        str(cid): (int(v.get("rx", 0)), int(v.get("tx", 0)))
        for cid, v in (doc.get("transfer") or {}).items() if isinstance(v, dict)
    }
    for c in gw.connections:
        c.rx_bytes, c.tx_bytes = transfer.get(c.endpoint.cluster_id, (0, 0))
    return AgentStatus(gw, transfer, float(doc.get("updated", 0)), int(doc.get("pid", 0)))
