"""`wgcable show --connections` shows what remotes published, refused ones included: their
text must not reach the terminal as escape sequences or forged lines (issue 15)."""

from __future__ import annotations

import time

from wgcable.agent.statusfile import AgentStatus
from wgcable.cable.types import Connection, ConnectionStatus, Endpoint, GatewayStatus
from wgcable.cli.connections import render


def test_hostile_connection_text_is_escaped_and_cut() -> None:
    ep = Endpoint(cluster_id="c2\nc9  fake-row  connected", hostname="gw\x1b]0;owned\x07",
                  subnets=["10.2.0.0/16", "x" * 5000], private_ip="198.18.0.2%x\r",
                  backend="wireguard\u202e")
    conn = Connection(endpoint=ep, status=ConnectionStatus.ERROR,
                      status_message="refused\nerrors:\n  c3: forged")
    status = AgentStatus(gateway=GatewayStatus(local_endpoint=Endpoint(cluster_id="c1"),
                                               connections=[conn]),
                         transfer={}, updated=time.time(), pid=1)
    out = render(status, time.time())
    assert "\x1b" not in out
    assert "\r" not in out
    assert "\u202e" not in out
    # Header, one row, a blank line, "errors:" and one problem line: nothing forged.
    assert len(out.splitlines()) == 5, out
    assert max(len(line) for line in out.splitlines()) < 1000
