"""`wgcable show --connections`: the running agent's cables, like `subctl show connections`."""

from __future__ import annotations

import json
import time
from typing import Any

from wgcable.agent.statusfile import AgentStatus, read_status_file
from wgcable.cable.godur import format_duration
from wgcable.cable.types import Connection
from wgcable.cli.format import bytes_human

STALE_AFTER = 15.0  # Submariner's rule for a gateway status that is no longer refreshed


def _rtt(c: Connection) -> str:
    return format_duration(c.latency_rtt.average) if c.latency_rtt else ""


def _cell(text: str, limit: int = 64) -> str:
    """A remote's text as it may reach a terminal: control characters (escape sequences,
    newlines) escaped, long values cut. A refused endpoint is shown as it was published."""
    safe = text if text.isprintable() else repr(text)[1:-1]
    return safe if len(safe) <= limit else f"{safe[:limit]}...({len(text)} chars)"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def render(status: AgentStatus, now: float) -> str:
    head = ["GATEWAY", "CLUSTER", "REMOTE IP", "NAT", "CABLE DRIVER", "SUBNETS", "STATUS",
            "RTT avg.", "TRANSFER (rx/tx)"]
    rows = [head]
    for c in status.gateway.connections:
        ep = c.endpoint
        rows.append([
            _cell(ep.hostname), _cell(ep.cluster_id), _cell(c.using_ip or ep.gateway_ip()),
            "yes" if c.using_nat else "no", _cell(ep.backend or ""),
            _cell(", ".join(ep.subnets), 200), c.status.value, _rtt(c),
            f"{bytes_human(c.rx_bytes)} / {bytes_human(c.tx_bytes)}",
        ])
    out = [table(rows)] if len(rows) > 1 else ["no connections"]
    problems = [f"{_cell(c.endpoint.cluster_id)}: {_cell(c.status_message, 400)}"
                for c in status.gateway.connections if c.status.value == "error"]
    if problems:
        out.append("\nerrors:\n  " + "\n  ".join(problems))
    if status.gateway.status_failure:
        out.append(f"\nstore problems: {_cell(status.gateway.status_failure, 2000)}")
    age = now - status.updated
    if age > STALE_AFTER:
        out.append(f"\nwarning: this status is {age:.0f} s old; is the agent running?")
    return "\n".join(out)


def as_json(status: AgentStatus, now: float) -> dict[str, Any]:
    doc = status.gateway.to_json()
    doc["updatedSecondsAgo"] = round(now - status.updated, 3)
    for c, cj in zip(status.gateway.connections, doc.get("connections", []), strict=True):
        cj["rxBytes"], cj["txBytes"] = c.rx_bytes, c.tx_bytes
    return doc


def show_connections(state_dir: str, as_json_output: bool) -> int:
    status = read_status_file(state_dir)
    now = time.time()
    if as_json_output:
        print(json.dumps(as_json(status, now), indent=2))
    else:
        print(render(status, now))
    return 0
