"""`wgcable diagnose`: the judgement of facts (pure), the line and JSON forms, the masquerade
analysis of an nft ruleset, the clock skew verdict."""

from __future__ import annotations

import argparse
import ipaddress
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from wgcable.agent.statusfile import AgentStatus
from wgcable.cable.types import Endpoint, GatewayStatus, HAStatus
from wgcable.cli.main import build_parser
from wgcable.diagnose import checks, masquerade
from wgcable.diagnose.broker import clock_skew
from wgcable.diagnose.checks import AgentFacts, DeviceFacts, KeyFileFacts, Remote
from wgcable.diagnose.probes import Discovery, payload_size, pmtu, udp_reachable
from wgcable.diagnose.result import CHECKS, Level, Result, exit_code, fail, passed, warn

NOW = 1_000_000.0
R2 = Remote("cluster2", "KEY2", ("10.2.0.0/16", "10.102.0.0/16"), "10.2.0.1", "198.18.0.2",
            5871, 4490, "cable2", "198.18.0.2")


def status(age: float = 1.0, pid: int = 42) -> AgentStatus:
    gw = GatewayStatus(local_endpoint=Endpoint(cluster_id="cluster1"),
                       ha_status=HAStatus.ACTIVE)
    return AgentStatus(gw, {}, NOW - age, pid)


def running() -> AgentFacts:
    return AgentFacts(status(), running=True)


def stopped() -> AgentFacts:
    return AgentFacts(status(30), running=False)


# --- the forms --------------------------------------------------------------------------------


def test_diagnose_line_has_level_check_detail_and_fix() -> None:
    assert fail("routes", "no route", "start it").line() == "FAIL  routes  no route  fix: start it"
    assert passed("routes", "fine").line() == "PASS  routes  fine"
    assert warn("mtu", "x", "y").to_json() == {"check": "mtu", "status": "warn", "detail": "x",
                                               "fix": "y"}


def test_diagnose_line_escapes_a_remote_s_text() -> None:
    line = fail("udp-port", "cluster\x1b[2J\nevil: unreachable", "fix\nit").line()
    assert "\n" not in line
    assert "\x1b" not in line


def test_diagnose_exit_code_fails_only_on_a_failure() -> None:
    assert exit_code([passed("a", ""), warn("b", "", "")]) == 0
    assert exit_code([passed("a", ""), fail("b", "", "")]) == 1


def test_diagnose_cli_takes_the_agent_s_flags_and_refuses_an_unknown_check() -> None:
    args = build_parser(["diagnose"]).parse_args(
        ["diagnose", "--cluster-id", "east", "--store", "/x", "--check", "mtu", "--json"])
    assert isinstance(args, argparse.Namespace)
    assert (args.cluster_id, args.check, args.json) == ("east", ["mtu"], True)
    with pytest.raises(SystemExit):
        build_parser(["diagnose"]).parse_args(["diagnose", "--check", "bogus"])
    assert len(set(CHECKS)) == len(CHECKS)


# --- the agent, the device, the key file --------------------------------------------------------


def test_diagnose_agent_not_running_fails_with_how_to_start_it() -> None:
    r = checks.agent(stopped(), NOW)
    assert r.level is Level.FAIL
    assert "pid 42" in r.detail
    assert "not running" in r.detail
    assert checks.agent(running(), NOW).level is Level.PASS
    assert checks.agent(AgentFacts(status(60), running=True), NOW).level is Level.WARN
    assert checks.agent(AgentFacts(None, "no such file"), NOW).level is Level.FAIL


def test_diagnose_device_gone_with_its_daemon_says_the_agent_restarts_it() -> None:
    facts = DeviceFacts("subwg0", present=False, daemon_pid=77, daemon_running=False)
    r = checks.device(facts, running())
    assert r.level is Level.FAIL
    assert "wireguard-go (pid 77) is not running" in r.detail
    assert "starts wireguard-go again" in r.fix
    assert "start the agent" in checks.device(facts, stopped()).fix
    up = DeviceFacts("subwg0", present=True, up=True, mtu=1420, kind="kernel")
    assert checks.device(up, running()).level is Level.PASS


def test_diagnose_wireguard_prefers_the_kernel_else_names_wireguard_go() -> None:
    assert "kernel module" in checks.wireguard(True, None, "", "kernel").detail
    r = checks.wireguard(False, "/usr/bin/wireguard-go", "v0.0.2022", None)
    assert r.level is Level.PASS
    assert "v0.0.2022" in r.detail
    assert checks.wireguard(False, None, "", None).level is Level.FAIL


@pytest.mark.parametrize(("facts", "words"), [
    (KeyFileFacts("/s/subwg0.key", True, 0o100644, 0), "mode 0644"),
    (KeyFileFacts("/s/subwg0.key", True, 0o100600, 1000), "uid 1000"),
    (KeyFileFacts("/s/subwg0.key", True, 0o120777, 0, symlink=True), "a symlink"),
    (KeyFileFacts("/s/subwg0.key", False), "does not exist"),
], ids=["mode", "owner", "symlink", "missing"])
def test_diagnose_key_file_wrong(facts: KeyFileFacts, words: str) -> None:
    r = checks.key_file(facts, 0)
    assert r.level is Level.FAIL
    assert words in r.detail
    assert r.fix


def test_diagnose_key_file_never_reads_the_key() -> None:
    r = checks.key_file(KeyFileFacts("/s/subwg0.key", True, 0o100600, 0), 0)
    assert r.level is Level.PASS
    assert r.detail == "/s/subwg0.key mode 0600, ours"


# --- the tunnel ---------------------------------------------------------------------------------


def test_diagnose_peers_routes_rule_name_what_is_missing() -> None:
    r = checks.peers([R2], set(), True, running())
    assert r.level is Level.FAIL
    assert "cluster2" in r.detail
    assert "restores it" in r.fix
    assert checks.peers([R2], {"KEY2"}, True, running()).level is Level.PASS
    r = checks.routes([R2], {"10.2.0.0/16"}, "subwg0", 220, stopped())
    assert r.level is Level.FAIL
    assert "10.102.0.0/16 (cluster2)" in r.detail
    assert "10.2.0.0/16 (" not in r.detail
    assert checks.routes([R2], {"10.2.0.0/16", "10.102.0.0/16"}, "subwg0", 220,
                         running()).level is Level.PASS
    assert checks.rule(set(), {4}, 220, 220, running()).level is Level.FAIL
    assert checks.rule({4}, {4}, 220, 220, running()).level is Level.PASS


def test_diagnose_handshake_never_or_older_than_130_s_is_stale() -> None:
    now = datetime(2026, 12, 2, tzinfo=UTC)
    r3 = Remote("cluster3", "KEY3", ("10.3.0.0/16",))
    r4 = Remote("cluster4", "KEY4", ("10.4.0.0/16",))
    results = checks.handshakes([R2, r3, r4], {
        "KEY2": None, "KEY3": now - timedelta(seconds=200), "KEY4": now - timedelta(seconds=5)},
        now)
    assert [(r.level, r.detail.split(":")[0]) for r in results] == [
        (Level.FAIL, "cluster2"), (Level.FAIL, "cluster3"), (Level.PASS, "cluster4")]
    assert "no handshake ever" in results[0].detail
    assert "200 s ago" in results[1].detail
    # A remote without a peer is the peers check's to name.
    assert checks.handshakes([R2], {}, now) == []


def test_diagnose_rp_filter_strict_on_the_vxlan_device_fails() -> None:
    r = checks.rp_filter({"subwg0": 1, "vx-submariner": 1}, "subwg0")
    assert r.level is Level.FAIL
    assert "vx-submariner" in r.detail
    assert "rp_filter=2" in r.fix
    assert checks.rp_filter({"subwg0": 1, "vx-submariner": 2}, "subwg0").level is Level.PASS
    assert checks.rp_filter({"subwg0": 0}, "subwg0").level is Level.PASS
    # A passive candidate's node is a worker: its VXLAN device only sends.
    assert checks.rp_filter({"subwg0": 1, "vx-submariner": 1}, "subwg0",
                            active=False).level is Level.PASS


def test_diagnose_subnet_overlap_names_both_clusters() -> None:
    r = checks.subnet_overlaps([("cluster1", ["10.1.0.0/16"]), ("cluster2", ["10.2.0.0/16"]),
                                ("cluster0", ["10.2.128.0/17"])])
    assert r.level is Level.FAIL
    assert "cluster0 10.2.128.0/17 overlaps cluster2 10.2.0.0/16" in r.detail
    ok = checks.subnet_overlaps([("a", ["10.1.0.0/16", "10.1.0.0/16"]), ("b", ["fd00::/48"])])
    assert ok.level is Level.PASS  # a cluster's own subnets may repeat
    assert "2 clusters" in ok.detail


def test_diagnose_store_unreadable_or_reported_by_the_agent() -> None:
    assert checks.store(checks.StoreFacts("directory /s", False, "gone")).level is Level.FAIL
    reported = checks.StoreFacts("directory /s", True, endpoints=2,
                                 agent_reports="store unavailable: x")
    assert checks.store(reported).level is Level.FAIL
    bad = checks.StoreFacts("directory /s", True, endpoints=1, bad_entries=["e: bad"])
    assert checks.store(bad).level is Level.WARN


# --- the probes' verdicts -----------------------------------------------------------------------


def test_diagnose_udp_port_tells_a_blocked_tunnel_port_from_an_unreachable_gateway() -> None:
    answered = Discovery(True, "private 198.18.0.2 answered in 3 ms")
    silent = Discovery(False, "no answer in 1.5 s")
    assert udp_reachable(R2, True, answered).level is Level.PASS
    blocked = udp_reachable(R2, False, answered)
    assert blocked.level is Level.FAIL
    assert "answers NAT discovery" in blocked.detail
    gone = udp_reachable(R2, False, silent)
    assert gone.level is Level.FAIL
    assert "unreachable" in gone.detail


def test_diagnose_mtu_fails_when_only_small_packets_pass() -> None:
    assert pmtu(R2, 1420, True, True).level is Level.PASS
    r = pmtu(R2, 1420, True, False)
    assert r.level is Level.FAIL
    assert "1480 bytes" in r.detail
    assert pmtu(R2, 1420, False, False).level is Level.WARN
    assert payload_size(1420, False) == 1392
    assert payload_size(1420, True) == 1372


def test_diagnose_clock_skew() -> None:
    assert clock_skew(1.0).level is Level.PASS
    assert clock_skew(-8.0).level is Level.WARN
    r = clock_skew(40.0)
    assert r.level is Level.FAIL
    assert "40.0 s ahead" in r.detail


# --- masquerade ---------------------------------------------------------------------------------


def _ruleset(chain_prio: int, expr: list[Any], family: str = "ip",
             ours: bool = True, remote: list[Any] | None = None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = [
        {"table": {"family": family, "name": "cni"}},
        {"chain": {"family": family, "table": "cni", "name": "post", "type": "nat",
                   "hook": "postrouting", "prio": chain_prio}},
        {"rule": {"family": family, "table": "cni", "chain": "post", "expr": expr}},
    ]
    if ours:
        items += [
            {"set": {"family": "inet", "table": "wgcable_subwg0", "name": "remote4",
                     "elem": remote if remote is not None else
                     [{"prefix": {"addr": "10.2.0.0", "len": 16}}]}},
            {"chain": {"family": "inet", "table": "wgcable_subwg0", "name": "postrouting",
                       "type": "nat", "hook": "postrouting", "prio": 90}},
            {"rule": {"family": "inet", "table": "wgcable_subwg0", "chain": "postrouting",
                      "expr": [{"snat": {"addr": {"payload": {"protocol": "ip",
                                                               "field": "saddr"}}}}]}},
        ]
    return items


def _match(field: str, op: str, right: Any) -> dict[str, Any]:
    return {"match": {"op": op, "left": {"payload": {"protocol": "ip", "field": field}},
                      "right": right}}


LOCAL = [ipaddress.ip_network("10.1.0.0/16")]
REMOTE = [ipaddress.ip_network("10.2.0.0/16")]
PODS = {"set": [{"prefix": {"addr": "10.1.0.0", "len": 16}}]}
CNI_RULE = [_match("saddr", "==", PODS), _match("daddr", "!=", PODS), {"masquerade": None}]


def _verdict(items: list[dict[str, Any]], exemption: bool = True) -> Result:
    hits = masquerade.nat_hits(items, LOCAL, REMOTE, "wgcable_subwg0")
    prio = masquerade.our_priority(items, "wgcable_subwg0")
    exempt = [ipaddress.ip_network("10.2.0.0/16")] if any(
        "set" in i and i["set"].get("elem") for i in items) else []
    return masquerade.check(hits, exemption, prio, exempt, "the agent restores it")


def test_diagnose_masquerade_after_ours_is_covered() -> None:
    r = _verdict(_ruleset(100, CNI_RULE))
    assert r.level is Level.PASS
    assert "covers it" in r.detail


def test_diagnose_masquerade_before_ours_is_not_covered() -> None:
    r = _verdict(_ruleset(80, CNI_RULE))
    assert r.level is Level.FAIL
    assert "ip cni chain post (priority 80)" in r.detail
    assert "not after ours (90)" in r.detail


def test_diagnose_masquerade_with_an_empty_exemption_set_is_not_covered() -> None:
    r = _verdict(_ruleset(100, CNI_RULE, remote=[]))
    assert r.level is Level.FAIL
    assert "10.2.0.0/16 is not in our exemption set" in r.detail
    assert r.fix == "the agent restores it"


def test_diagnose_masquerade_without_our_table_or_exemption() -> None:
    assert "missing" in _verdict(_ruleset(100, CNI_RULE, ours=False)).detail
    off = _verdict(_ruleset(100, CNI_RULE), exemption=False)
    assert off.level is Level.FAIL
    assert "--no-snat-exemption" in off.detail


@pytest.mark.parametrize("expr", [
    [_match("daddr", "!=", {"set": [{"prefix": {"addr": "10.0.0.0", "len": 8}}]}),
     {"masquerade": None}],
    [_match("saddr", "==", {"prefix": {"addr": "192.168.0.0", "len": 16}}),
     {"masquerade": None}],
    [_match("saddr", "==", PODS), {"counter": None}],
    [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}},
                "right": "fd00::/8"}}, {"masquerade": None}],
    [_match("saddr", "==", PODS),
     {"snat": {"family": "ip", "addr": {"payload": {"protocol": "ip", "field": "saddr"}}}}],
], ids=["cluster-wide-exempt", "other-sources", "no-nat", "ipv6-only", "null-binding"])
def test_diagnose_masquerade_rules_that_never_hit_cross_cluster_traffic(
        expr: list[Any]) -> None:
    assert masquerade.nat_hits(_ruleset(80, expr), LOCAL, REMOTE, "wgcable_subwg0") == []


def test_diagnose_masquerade_iptables_nft_targets_and_named_sets_count() -> None:
    xt = [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "eth0"}},
          {"xt": {"type": "target", "name": "MASQUERADE"}}]
    assert len(masquerade.nat_hits(_ruleset(80, xt), LOCAL, REMOTE, "wgcable_subwg0")) == 1
    to_node = [_match("saddr", "==", PODS), {"snat": {"family": "ip", "addr": "198.18.0.1"}}]
    assert len(masquerade.nat_hits(_ruleset(80, to_node), LOCAL, REMOTE,
                                   "wgcable_subwg0")) == 1
    named = _ruleset(80, [_match("saddr", "==", "@pods"), {"masquerade": None}])
    named.append({"set": {"family": "ip", "table": "cni", "name": "pods",
                          "elem": [{"prefix": {"addr": "10.1.0.0", "len": 16}}]}})
    assert len(masquerade.nat_hits(named, LOCAL, REMOTE, "wgcable_subwg0")) == 1
    other = _ruleset(80, [_match("saddr", "==", "@pods"), {"masquerade": None}])
    other.append({"set": {"family": "ip", "table": "cni", "name": "pods",
                          "elem": ["192.168.1.1"]}})
    assert masquerade.nat_hits(other, LOCAL, REMOTE, "wgcable_subwg0") == []


def test_diagnose_json_round_trip() -> None:
    doc = json.loads(json.dumps([fail("mtu", "d", "f").to_json()]))
    assert doc == [{"check": "mtu", "status": "fail", "detail": "d", "fix": "f"}]


def test_diagnose_lab_that_does_not_exist_is_named(tmp_path: Any,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from wgcable.cli.main import main

    assert main(["diagnose", "--lab", "nosuchlab", "--lab-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "lab 'nosuchlab'" in err
    assert "no lab" in err


def test_diagnose_bad_settings_name_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from wgcable.cli.main import main

    assert main(["diagnose", "--store", "/x", "--cluster-id", "Bad_ID",
                 "--cluster-cidr", "10.1.0.0/16", "--private-ip", "198.18.0.1"]) == 2
    assert "--cluster-id" in capsys.readouterr().err


def test_diagnose_expects_a_cable_in_error_only_when_its_peer_is_installed() -> None:
    from wgcable.cable.types import Connection, ConnectionStatus
    from wgcable.diagnose.host import expected_remotes

    def conn(cluster: str, state: ConnectionStatus) -> Connection:
        return Connection(status=state, endpoint=Endpoint(
            cluster_id=cluster, subnets=[f"10.{cluster[-1]}.0.0/16"], private_ip="198.18.0.9",
            backend_config={"publicKey": f"KEY{cluster[-1]}", "udp-port": "5871",
                            "natt-discovery-port": "4490"}))

    st = status()
    st.gateway.connections = [conn("cluster2", ConnectionStatus.CONNECTED),
                              conn("cluster3", ConnectionStatus.ERROR),  # stale handshake
                              conn("cluster4", ConnectionStatus.ERROR)]  # refused
    remotes = expected_remotes(AgentFacts(st, running=True), {"KEY2", "KEY3"})
    assert [r.cluster_id for r in remotes] == ["cluster2", "cluster3"]
    assert (remotes[0].udp_port, remotes[0].natt_port, remotes[0].address) == (
        5871, 4490, "198.18.0.9")
