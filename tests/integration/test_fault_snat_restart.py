"""An agent restarted while the store cannot be read keeps its SNAT exemption.

The new agent adopts the peers and routes an earlier one left, and keeps them until a
reconcile succeeds. Its nftables table must keep the remote CIDRs too: written empty, new
flows from the pods would be masqueraded by the CNI-like rule (`--snat` lab) and reach the
remote pod from the gateway's address, or not at all.
"""

from __future__ import annotations

import signal

import pytest

from wgcable.lab.lab import Lab

from .labtools import MakeLab, wait_for
from .test_fault import DEADLINE, _not_a_directory, intact, remote_keys
from .test_lab import _our_table, _peer_seen_by

pytestmark = [pytest.mark.netns, pytest.mark.fault]


def _restarted_without_store(lab: Lab, which: int, old_pid: int) -> bool:
    st = lab.status(which)
    return (st is not None and st.pid != old_pid
            and "store unavailable" in st.gateway.status_failure)


def test_fault_snat_restart_during_store_outage_keeps_pod_addresses(
        make_userspace_lab: MakeLab) -> None:
    lab = make_userspace_lab(2, snat=True)
    gw1 = lab.gateway(1)
    keys = remote_keys(lab, 1)
    assert _peer_seen_by(lab, 1, 2) == ("10.1.0.2", "hi")
    repair = _not_a_directory(lab.store_dir / "endpoints")
    try:
        old_pid = gw1.agent_pid
        lab.stop_agent(1, signal.SIGTERM)
        lab.start_agent(1)
        wait_for(lambda: _restarted_without_store(lab, 1, old_pid), DEADLINE,
                 "the new agent to report the store unavailable")
        assert intact(lab, lab.gateway(1), keys)
        assert "10.2.0.0/16" in _our_table(lab, 1)
        # A new flow, after the restart: the remote pod sees our pod's own address.
        assert _peer_seen_by(lab, 1, 2) == ("10.1.0.2", "hi")
    finally:
        repair()
    wait_for(lambda: (s := lab.status(1)) is not None
             and "store unavailable" not in s.gateway.status_failure, DEADLINE,
             "the agent to read the store again")
    assert _peer_seen_by(lab, 1, 2) == ("10.1.0.2", "hi")
