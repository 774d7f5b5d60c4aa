"""NAT discovery in the lab: three clusters whose Endpoints make the static rule choose a
dead address, and discovery choosing the live one, so that every pair pings.

Cluster 2 sits behind a NAT router (the lab's ``--nat``: every second cluster); 1 and 3 are
on the flat underlay. What each publishes:

- cluster 1: ``nat_enabled`` with a public IP that answers too (an extra address on its
  gateway): the static rule takes the public one, discovery prefers the private one;
- cluster 2: ``nat_enabled`` false although only its public IP (the router's, which
  forwards the tunnel and discovery ports) is reachable: the static rule takes the private
  IP, behind the NAT, which nobody outside can reach;
- cluster 3: ``nat_enabled`` with a public IP that nothing answers on: the static rule
  takes a dead address.

Without discovery, clusters 2 and 3 would be reachable by nobody.
"""

from __future__ import annotations

import pytest

from wgcable.lab.lab import Lab
from wgcable.lab.netns import Namespace

from .labtools import MakeLab, connection, unreachable_pairs, wait_for

ANSWERING_PUBLIC = "198.18.0.201"  # put on gateway 1 as a second address
DEAD_PUBLIC = "198.18.0.203"  # nothing in the lab has it


@pytest.mark.netns
def test_natdiscovery_lab_chooses_right_where_the_static_rule_is_wrong(
        make_userspace_lab: MakeLab) -> None:
    lab: Lab = make_userspace_lab(3, nat=True, connected=False, cluster_args={
        1: ["--nat", "--public-ip", ANSWERING_PUBLIC],
        2: ["--no-nat"],
        3: ["--nat", "--public-ip", DEAD_PUBLIC],
    })
    Namespace(lab.gateway(1).gateway_ns).ip(f"addr add {ANSWERING_PUBLIC}/16 dev eth0")
    gw2 = lab.gateway(2)
    assert gw2.nat
    assert gw2.public_ip == "198.18.0.102"
    wait_for(lab.all_connected, 30, "all cables connected")
    # (at, remote): (address used, NAT in the path). Cluster 2's own router masquerades
    # its probes: the responders see another source, and say so.
    expected = {
        (1, "cluster2"): ("198.18.0.102", True),
        (1, "cluster3"): ("198.18.0.3", False),
        (2, "cluster1"): ("198.18.0.1", True),
        (2, "cluster3"): ("198.18.0.3", True),
        (3, "cluster1"): ("198.18.0.1", False),
        (3, "cluster2"): ("198.18.0.102", True),
    }

    def discovered() -> bool:
        # Gateways that could reach the other connect before discovery has answered (the
        # other's handshake taught them its address); the status follows within ~1 s.
        conns = [connection(lab, at, remote) for at, remote in expected]
        return all(c is not None and "path discovered" in c.status_message for c in conns)

    wait_for(discovered, 10, "every path discovered")
    for (at, remote), (ip, nat) in expected.items():
        c = connection(lab, at, remote)
        assert c is not None, (at, remote)
        assert (c.using_ip, c.using_nat) == (ip, nat), (at, remote, c.status_message)
    assert unreachable_pairs(lab) == []  # one ping each, no retry
