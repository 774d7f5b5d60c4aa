"""Issue 16: the lab's "all connected" implies that every pair pings, at once, with no retry.

One 3-cluster lab with ``--nat`` (cluster 2 behind a NAT router). Each round makes every
cable new: all three gateways rotate their key pair at the same moment (SIGUSR2), so that
every remote replaces every peer and all of them handshake at once, crossings included;
the round waits for the lab's "all connected" with the new keys, then sends one ping per
ordered pair of clusters, all six at once, and every one must be answered.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from wgcable.cable.remote import PUBLIC_KEY
from wgcable.lab.lab import Lab

from .labtools import MakeLab, wait_for

ROUNDS = 50


def _own_key(lab: Lab, i: int) -> str:
    st = lab.status(i)
    return "" if st is None else st.gateway.local_endpoint.backend_config.get(PUBLIC_KEY, "")


def _evidence(lab: Lab, bad: list[tuple[int, int]]) -> str:
    out = []
    for i in sorted({x for pair in bad for x in pair}):
        st = lab.status(i)
        if st is not None:
            out += [f"gw{i} status: {c.endpoint.cluster_id} {c.status.value} "
                    f"({c.status_message})" for c in st.gateway.connections]
        for cmd in (("ip", "route", "show", "table", "220"), ("wg", "show", "subwg0")):
            done = subprocess.run(lab.gateway_cmd(lab.gateway(i), *cmd), capture_output=True,
                                  text=True, check=False)
            out.append(f"gw{i}$ {' '.join(cmd)}\n{done.stdout}{done.stderr}")
    return "\n".join(out)


@pytest.mark.netns
def test_connected_implies_every_pair_pings_50_rounds_nat(make_userspace_lab: MakeLab) -> None:
    # Statuses every 0.2 s: a round waits for the status files, not for the tunnels.
    lab: Lab = make_userspace_lab(3, nat=True, cluster_args={
        i: ["--status-interval", "0.2"] for i in (1, 2, 3)})
    assert lab.gateway(2).nat
    pairs = [(a, b) for a in (1, 2, 3) for b in (1, 2, 3) if a != b]
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(pairs)) as pool:
        for r in range(ROUNDS):
            old = {i: _own_key(lab, i) for i in (1, 2, 3)}
            for i in (1, 2, 3):
                os.kill(lab.gateway(i).agent_pid, signal.SIGUSR2)
            # The lab's "all connected" counts a connection only with the key its remote
            # publishes now: a status from before the round cannot pass.
            def rotated(old: dict[int, str] = old) -> bool:
                return all(_own_key(lab, i) not in ("", old[i]) for i in (1, 2, 3))

            wait_for(lambda: rotated() and lab.all_connected(), 30, f"all connected in round {r}")
            # One echo each, no retry: 2 s is a ping's own patience in every lab test.
            rtts = list(pool.map(lambda ab: lab.ping(*ab, timeout=2), pairs))
            bad = [ab for ab, rtt in zip(pairs, rtts, strict=True) if rtt is None]
            assert not bad, f"round {r}: all connected, but {bad} did not ping\n" + \
                _evidence(lab, bad)
    print(f"{ROUNDS} rounds in {time.monotonic() - t0:.1f} s")
