"""`wgcable diagnose` in a lab: every fault the fault tests inject (test_fault.py,
test_fault_snat_restart.py) and a few more is injected, diagnose runs on the gateway as an
operator would run it (its namespaces, the agent's flags), and the failing check is named.

One lab serves every test (module scope): each test heals what it broke. Faults the agent
repairs within seconds are injected with the agent stopped, which is also a fault diagnose
must name. The lab has two nodes per cluster, so that the route agent's VXLAN device (whose
rp_filter matters) exists on the gateways.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from wgcable.lab.lab import GatewayState, Lab
from wgcable.lab.netns import Namespace, list_namespaces
from wgcable.routeagent.vtep import DEFAULT_DEVICE as VXLAN
from wgcable.wgctrl import Key

from .labtools import endpoint_json, on_gateway, print_agent_logs, wait_for, write_atomic
from .test_fault import DEADLINE, _not_a_directory, daemon_pid, intact, remote_keys

pytestmark = [pytest.mark.netns, pytest.mark.fault]

DEVICE = "subwg0"
NFT_TABLE = f"wgcable_{DEVICE}"
Checks = dict[str, list[dict[str, Any]]]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    root = tmp_path_factory.mktemp("diagnose-labs")
    lab = Lab.up(f"dg{os.getpid() % 10000}", 2, root=str(root), snat=True, nodes=2,
                 agent_args=["--backend", "userspace"])
    try:
        wait_for(lab.all_connected, 30, "all cables connected")
        # The route agents on the gateways have loosened their VXLAN device's rp_filter.
        wait_for(lambda: all(vxlan_rp_filter(gw) == "2" for gw in lab.state.gateways), 30,
                 "the route agents to loosen rp_filter on the gateways")
        yield lab
    finally:
        print_agent_logs(lab)
        assert lab.down() == []
        assert not [n for n in list_namespaces() if n.startswith(f"{lab.state.prefix}-")]


def vxlan_rp_filter(gw: GatewayState) -> str:
    p = subprocess.run(Namespace(gw.gateway_ns).cmd(
        "cat", f"/proc/sys/net/ipv4/conf/{VXLAN}/rp_filter"), capture_output=True, text=True,
        check=False)
    return p.stdout.strip()


def diagnose(lab: Lab, gw: GatewayState, *only: str) -> tuple[int, Checks]:
    """`wgcable diagnose --json` on the gateway, with its agent's flags (``only``: these
    checks): (exit code, the results by check name)."""
    argv = [a if a != "agent" else "diagnose" for a in lab.agent_argv(gw)]
    argv += [f"--check={c}" for c in only]
    p = subprocess.run(lab.gateway_cmd(gw, *argv, "--json"), capture_output=True, text=True,
                       timeout=60, check=False)
    assert p.stdout, p.stderr
    by_check: Checks = {}
    for c in json.loads(p.stdout)["checks"]:
        by_check.setdefault(c["check"], []).append(c)
    return p.returncode, by_check


def failing(checks: Checks) -> set[str]:
    return {name for name, rs in checks.items() if any(r["status"] == "fail" for r in rs)}


def fails(checks: Checks, name: str, *words: str) -> dict[str, Any]:
    """The failure of check ``name`` whose detail names every one of ``words``."""
    for r in checks.get(name, []):
        if r["status"] == "fail" and all(w in r["detail"] for w in words):
            assert r["fix"], r
            return r
    raise AssertionError(f"no failing {name} check naming {words}: {checks.get(name)}")


def healed(lab: Lab, keys: set[str]) -> None:
    gw1 = lab.gateway(1)
    wait_for(lambda: intact(lab, gw1, keys) and lab.all_connected(), DEADLINE,
             "gateway 1 intact and every cable connected")


# --- a healthy lab ------------------------------------------------------------------------


def test_diagnose_lab_every_gateway_passes(lab: Lab) -> None:
    p = subprocess.run([sys.executable, "-m", "wgcable", "diagnose", "--lab", lab.state.name,
                        "--lab-root", lab.state.root], capture_output=True, text=True,
                       timeout=120, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert [ln for ln in lines if ln.startswith("== ")] == ["== cluster1", "== cluster2"]
    results = [ln for ln in lines if not ln.startswith("== ")]
    assert results
    assert all(ln.startswith(("PASS  ", "WARN  ")) for ln in results), p.stdout
    for check in ("agent", "wireguard", "device", "key-file", "peers", "handshake", "routes",
                  "rule", "nft-table", "mss-clamp", "masquerade", "rp-filter", "udp-port",
                  "mtu", "store", "subnet-overlap"):
        assert sum(ln.split("  ")[1] == check for ln in results) >= 2, check
    # The lab's CNI masquerades; our exemption comes first and covers it.
    assert "our exemption (priority 90) comes first" in p.stdout
    for gw in lab.state.gateways:  # the key file is checked, never shown
        secret = (lab.state_dir(gw) / f"{DEVICE}.key").read_text().strip()
        assert secret
        assert secret not in p.stdout + p.stderr


# --- faults the agent repairs: injected while it is down ------------------------------------


def test_diagnose_names_each_fault_while_the_agent_is_down(lab: Lab) -> None:
    """The agent SIGKILLed (test_fault's agent kill), then, one after the other: a stale
    handshake, routes flushed, the rule deleted, a peer removed, the SNAT exemption set
    emptied (what test_fault_snat_restart guards against), our nft table deleted,
    wireguard-go killed. Each diagnose run names the fault just injected."""
    gw1, gw2 = lab.gateway(1), lab.gateway(2)
    keys = remote_keys(lab, 1)
    lab.stop_agent(1, signal.SIGKILL)
    block = ("table inet dg_block {\n chain input {\n type filter hook input priority 0\n"
             " udp dport 5871 drop\n }\n}\n")
    try:
        rc, checks = diagnose(lab, gw1)
        assert rc == 1
        assert failing(checks) == {"agent"}, checks
        assert "start `wgcable agent`" in fails(checks, "agent", "not running")["fix"]

        # Stale handshake: cluster2 drops our tunnel packets, and our peer starts afresh.
        Namespace(gw2.gateway_ns).run("nft", "-f", "-", input=block)
        [key] = keys
        peer = on_gateway(lab, gw1, "wg", "showconf", DEVICE).split("[Peer]")[1]
        allowed = next(ln.split("=", 1)[1].strip() for ln in peer.splitlines()
                       if ln.startswith("AllowedIPs"))
        on_gateway(lab, gw1, "wg", "set", DEVICE, "peer", key, "remove")
        on_gateway(lab, gw1, "wg", "set", DEVICE, "peer", key, "allowed-ips",
                   allowed.replace(" ", ""), "endpoint", f"{gw2.private_ip}:5871",
                   "persistent-keepalive", "10")
        rc, checks = diagnose(lab, gw1, "handshake", "udp-port")
        fails(checks, "handshake", "cluster2", "no handshake ever")
        # Its gateway still answers NAT discovery: the tunnel's port is what is blocked.
        fails(checks, "udp-port", "cluster2", "answers NAT discovery")
        Namespace(gw2.gateway_ns).run("nft", "delete", "table", "inet", "dg_block")

        # Each step's own check (and not the probes: after the routes, none answers).
        steps: list[tuple[list[str], str, tuple[str, ...]]] = [
            (["ip", "route", "flush", "table", "220"], "routes", ("10.2.0.0/16",)),
            (["ip", "rule", "del", "priority", "220"], "rule", ("table 220",)),
            (["wg", "set", DEVICE, "peer", key, "remove"], "peers", ("cluster2",)),
            (["nft", "flush", "set", "inet", NFT_TABLE, "remote4"], "masquerade",
             ("wgcable_lab_snat", "10.2.0.0/16", "not in our exemption set")),
            (["nft", "delete", "table", "inet", NFT_TABLE], "nft-table", ("missing",)),
        ]
        for argv, check, words in steps:
            on_gateway(lab, gw1, *argv)
            rc, checks = diagnose(lab, gw1, check, "mss-clamp")
            assert rc == 1
            assert "it restores it" in fails(checks, check, *words)["fix"], check
        fails(checks, "mss-clamp", "table is missing")

        os.kill(daemon_pid(lab, gw1), signal.SIGKILL)
        wait_for(lambda: not on_gateway(lab, gw1, "ip", "-br", "link", "show", "type", "tun"),
                 DEADLINE, "the device to vanish with its daemon")
        rc, checks = diagnose(lab, gw1, "device", "peers")
        fails(checks, "device", "no WireGuard device", "wireguard-go", "not running")
    finally:
        subprocess.run(Namespace(gw2.gateway_ns).cmd("nft", "delete", "table", "inet",
                                                     "dg_block"), capture_output=True,
                       check=False)
        lab.start_agent(1)
    healed(lab, keys)


# --- faults the agent only reports ------------------------------------------------------------


def test_diagnose_names_the_store_unavailable(lab: Lab) -> None:
    """Its endpoints directory replaced by a file (test_fault's other variant, the directory
    moved away, is undone at once by the agents: they publish their Endpoints again)."""
    repair = _not_a_directory(lab.store_dir / "endpoints")
    try:
        rc, checks = diagnose(lab, lab.gateway(1), "store")
    finally:
        repair()
    assert rc == 1
    fails(checks, "store", "Not a directory", "endpoints")


def test_diagnose_names_a_second_cluster_claiming_a_subnet(lab: Lab) -> None:
    subnet = lab.gateway(2).subnets[0]
    intruder = lab.store_dir / "endpoints" / "cluster0-cable.json"
    write_atomic(intruder, endpoint_json("cluster0", subnet,
                                         Key.generate().public_key().base64(), "198.18.0.50"))
    try:
        rc, checks = diagnose(lab, lab.gateway(1), "subnet-overlap")
    finally:
        intruder.unlink()
    assert rc == 1
    fails(checks, "subnet-overlap", "cluster0", "cluster2", subnet)


def test_diagnose_names_a_cni_masquerade_before_our_exemption(lab: Lab) -> None:
    gw1 = lab.gateway(1)
    early = ("table ip dg_early_snat {\n chain postrouting {\n type nat hook postrouting "
             "priority srcnat - 20\n ip saddr 10.1.0.0/16 masquerade\n }\n}\n")
    Namespace(gw1.gateway_ns).run("nft", "-f", "-", input=early)
    try:
        rc, checks = diagnose(lab, gw1, "masquerade")
    finally:
        Namespace(gw1.gateway_ns).run("nft", "delete", "table", "ip", "dg_early_snat")
    assert rc == 1
    fails(checks, "masquerade", "dg_early_snat", "priority 80", "not after ours (90)")


def test_diagnose_names_a_key_file_open_to_others(lab: Lab) -> None:
    key = lab.state_dir(lab.gateway(1)) / f"{DEVICE}.key"
    key.chmod(0o644)
    try:
        rc, checks = diagnose(lab, lab.gateway(1), "key-file")
    finally:
        key.chmod(0o600)
    assert rc == 1
    assert "chmod 600" in fails(checks, "key-file", "mode 0644")["fix"]


def test_diagnose_names_strict_rp_filter_on_the_vxlan_device(lab: Lab) -> None:
    gw1 = lab.gateway(1)
    lab.stop_route_agent(1, 0)  # it would loosen it again
    sysctl = f"net.ipv4.conf.{VXLAN}.rp_filter"
    try:
        Namespace(gw1.gateway_ns).run("sysctl", "-qw", f"{sysctl}=1")
        rc, checks = diagnose(lab, gw1, "rp-filter")
    finally:
        Namespace(gw1.gateway_ns).run("sysctl", "-qw", f"{sysctl}=2")
        lab.start_route_agent(1, 0)
    assert vxlan_rp_filter(gw1) == "2"
    assert rc == 1
    assert "rp_filter=2" in fails(checks, "rp-filter", VXLAN, "strict")["fix"]


def test_diagnose_names_an_underlay_mtu_below_the_tunnel_s(lab: Lab) -> None:
    """cluster2's underlay link takes 1400 bytes: full-size tunnel packets are dropped, small
    ones pass (a PMTU black hole)."""
    gw2 = Namespace(lab.gateway(2).gateway_ns)
    gw2.run("ip", "link", "set", "eth0", "mtu", "1400")
    try:
        rc, checks = diagnose(lab, lab.gateway(1), "mtu", "udp-port")
    finally:
        gw2.run("ip", "link", "set", "eth0", "mtu", "1500")
    assert rc == 1
    assert "--mtu" in fails(checks, "mtu", "cluster2", "DF")["fix"]
    assert "udp-port" not in failing(checks)  # small packets do pass
