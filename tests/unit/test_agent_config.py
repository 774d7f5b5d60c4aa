"""Agent configuration: precedence, every validation message, YAML, detection, the endpoint."""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from wgcable.agent import config as agent_config
from wgcable.agent.config import (
    AgentConfig,
    ConfigError,
    IPNetwork,
    add_arguments,
    address_in,
    from_namespace,
    load_config,
    private_ip_from,
)
from wgcable.cable.types import Endpoint
from wgcable.cable.wireguard.config import WireGuardConfig
from wgcable.cable.wireguard.status import StatusThresholds

REQUIRED = ["--store", "/srv/store", "--cluster-id", "east", "--cluster-cidr", "10.10.0.0/16"]
DETECTED = "192.0.2.10"


def _no_health_ip(_: Sequence[IPNetwork]) -> str | None:
    return None


def load(
    argv: list[str],
    env: dict[str, str] | None = None,
    *,
    detect_ip: Callable[[], str | None] = lambda: DETECTED,
    detect_health_check_ip: Callable[[Sequence[IPNetwork]], str | None] = _no_health_ip,
) -> AgentConfig:
    return load_config(argv, env or {}, detect_ip=detect_ip,
                       detect_health_check_ip=detect_health_check_ip)


def problems(argv: list[str], env: dict[str, str] | None = None, **kw: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(argv, env, **kw)
    return info.value.problems


def without(argv: list[str], flag: str) -> list[str]:
    """``argv`` less ``flag`` and its value."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == flag:
            next(args)
        else:
            out.append(arg)
    return out


def write_yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return str(path)


# --- Defaults and precedence ---


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "gw-1.example")
    cfg = load(REQUIRED)
    assert cfg.port == 5871
    assert cfg.device == "subwg0"
    assert cfg.table == 220
    assert cfg.rule_priority == 220
    assert cfg.keepalive == 10
    assert cfg.mtu is None
    assert cfg.backend == "auto"
    assert cfg.cable_driver == "wireguard"
    assert cfg.metrics_port == 0
    assert cfg.metrics_address == ipaddress.ip_address("127.0.0.1")
    assert cfg.log_level == "info"
    assert cfg.resync_interval == 30.0
    assert cfg.status_interval == 5.0
    assert cfg.state_dir == "/var/lib/wgcable"
    assert cfg.nat_enabled is False
    assert cfg.public_ip is None
    assert cfg.psk_file is None
    assert cfg.health_check_ip is None
    assert cfg.service_cidrs == []
    assert cfg.hostname == "gw-1.example"
    assert cfg.private_ip == ipaddress.ip_address(DETECTED)
    assert cfg.config_file is None
    assert cfg.snat_exemption is True
    assert cfg.mss_clamp is True


# (flag, environment variable, YAML key, three distinct valid values, attribute, parsed)
PRECEDENCE_CASES = [
    ("--cluster-id", "SUBMARINER_CLUSTERID", "cluster_id", ("a", "b", "c"), "cluster_id", str),
    ("--port", "CE_IPSEC_NATTPORT", "port", ("1001", "1002", "1003"), "port", int),
    ("--device", "WGCABLE_DEVICE", "device", ("wga", "wgb", "wgc"), "device", str),
    ("--store", "WGCABLE_STORE", "store", ("/a", "/b", "/c"), "store", str),
    ("--log-level", "WGCABLE_LOG_LEVEL", "log_level", ("debug", "warning", "error"),
     "log_level", str),
]


@pytest.mark.parametrize(("flag", "env_name", "key", "values", "attr", "kind"),
                         PRECEDENCE_CASES, ids=[c[0] for c in PRECEDENCE_CASES])
def test_flag_beats_env_beats_yaml(tmp_path: Path, flag: str, env_name: str, key: str,
                                   values: tuple[str, str, str], attr: str,
                                   kind: Callable[[str], object]) -> None:
    from_flag, from_env, from_yaml = values
    config = write_yaml(tmp_path, f"{key}: '{from_yaml}'\n")
    env = {env_name: from_env}
    assert getattr(load([*REQUIRED, "--config", config, flag, from_flag], env), attr) == \
        kind(from_flag)
    base = without(REQUIRED, flag)  # let the environment and the YAML file speak
    assert getattr(load([*base, "--config", config], env), attr) == kind(from_env)
    assert getattr(load([*base, "--config", config]), attr) == kind(from_yaml)


def test_empty_env_var_counts_as_unset(tmp_path: Path) -> None:
    config = write_yaml(tmp_path, "cluster_id: west\n")
    cfg = load(["--store", "/s", "--cluster-cidr", "10.0.0.0/8", "--config", config],
               {"SUBMARINER_CLUSTERID": "  "})
    assert cfg.cluster_id == "west"


def test_port_from_submariner_env() -> None:
    assert load(REQUIRED, {"CE_IPSEC_NATTPORT": "4500"}).port == 4500


def test_every_setting_has_its_env_var() -> None:
    env = {
        "WGCABLE_STORE": "/store",
        "SUBMARINER_CLUSTERID": "west",
        "SUBMARINER_CLUSTERCIDR": "10.1.0.0/16",
        "SUBMARINER_SERVICECIDR": "10.97.0.0/16",
        "WGCABLE_PRIVATE_IP": "198.51.100.1",
        "WGCABLE_PUBLIC_IP": "203.0.113.1",
        "SUBMARINER_NATENABLED": "yes",
        "WGCABLE_HOSTNAME": "gw",
        "WGCABLE_HEALTH_CHECK_IP": "10.1.0.1",
        "WGCABLE_STATE_DIR": "/state",
        "WGCABLE_METRICS_PORT": "9090",
        "WGCABLE_METRICS_ADDRESS": "::",
        "WGCABLE_LOG_LEVEL": "DEBUG",
        "WGCABLE_RESYNC_INTERVAL": "60",
        "WGCABLE_STATUS_INTERVAL": "2.5",
        "SUBMARINER_CABLEDRIVER": "wireguard",
        "WGCABLE_DEVICE": "wg7",
        "CE_IPSEC_NATTPORT": "4500",
        "WGCABLE_KEEPALIVE": "25",
        "WGCABLE_TABLE": "1000",
        "WGCABLE_RULE_PRIORITY": "100",
        "WGCABLE_MTU": "1380",
        "WGCABLE_BACKEND": "userspace",
    }
    cfg = load([], env, detect_ip=lambda: pytest.fail("private IP was given"))
    assert cfg == AgentConfig(
        store="/store",
        cluster_id="west",
        cluster_cidrs=[ipaddress.ip_network("10.1.0.0/16")],
        service_cidrs=[ipaddress.ip_network("10.97.0.0/16")],
        private_ip=ipaddress.ip_address("198.51.100.1"),
        public_ip=ipaddress.ip_address("203.0.113.1"),
        nat_enabled=True,
        hostname="gw",
        health_check_ip=ipaddress.ip_address("10.1.0.1"),
        state_dir="/state",
        metrics_port=9090,
        metrics_address=ipaddress.ip_address("::"),
        log_level="debug",
        resync_interval=60.0,
        status_interval=2.5,
        cable_driver="wireguard",
        device="wg7",
        port=4500,
        keepalive=25,
        table=1000,
        rule_priority=100,
        mtu=1380,
        backend="userspace",
    )


def test_docstring_table_lists_every_setting() -> None:
    doc = agent_config.__doc__ or ""
    for s in agent_config._SETTINGS:
        row = next((line for line in doc.splitlines() if line.startswith(s.flag + " ")), "")
        assert s.env in row, s.flag
        assert s.key in row, s.flag


# --- Validation messages ---


@pytest.mark.parametrize(("argv", "env", "message"), [
    ([], {"SUBMARINER_CLUSTERCIDR": "10.0.0.0/33"},
     "--cluster-cidr (SUBMARINER_CLUSTERCIDR): '10.0.0.0/33' is not a CIDR"),
    (["--cluster-cidr", "10.0.0.1/8"], {},
     "--cluster-cidr: '10.0.0.1/8' has host bits set (the network is 10.0.0.0/8)"),
    (["--cluster-cidr", "10.0.0.1"], {}, "--cluster-cidr: '10.0.0.1' is not a CIDR"),
    (["--cluster-cidr", ","], {}, "--cluster-cidr: ',' has no CIDR in it"),
    (["--service-cidr", "nope"], {}, "--service-cidr: 'nope' is not a CIDR"),
    (["--cluster-id", "East_1"], {},
     "--cluster-id: 'East_1' is not a DNS-1123 label "
     "(lowercase letters, digits and '-', at most 63)"),
    (["--cluster-id", "x" * 64], {},
     f"--cluster-id: '{'x' * 64}' is not a DNS-1123 label "
     "(lowercase letters, digits and '-', at most 63)"),
    (["--cluster-id=-east"], {},
     "--cluster-id: '-east' is not a DNS-1123 label "
     "(lowercase letters, digits and '-', at most 63)"),
    (["--private-ip", "10.0.0"], {}, "--private-ip: '10.0.0' is not an IP address"),
    ([], {"WGCABLE_PUBLIC_IP": "::"},
     "--public-ip (WGCABLE_PUBLIC_IP): '::' is not a unicast address"),
    (["--health-check-ip", "224.0.0.1"], {},
     "--health-check-ip: '224.0.0.1' is not a unicast address"),
    (["--metrics-address", "localhost"], {},
     "--metrics-address: 'localhost' is not an IP address"),
    (["--port", "0"], {}, "--port: '0' is out of range (1-65535)"),
    ([], {"CE_IPSEC_NATTPORT": "65536"},
     "--port (CE_IPSEC_NATTPORT): '65536' is out of range (1-65535)"),
    (["--port", "51820/udp"], {}, "--port: '51820/udp' is not a whole number"),
    (["--metrics-port", "-1"], {}, "--metrics-port: '-1' is out of range (0-65535)"),
    (["--keepalive", "0"], {}, "--keepalive: '0' is out of range (1-65535)"),
    (["--mtu", "1279"], {}, "--mtu: '1279' is out of range (1280-65535)"),
    (["--mtu", "65536"], {}, "--mtu: '65536' is out of range (1280-65535)"),
    (["--table", "0"], {}, "--table: '0' is out of range (1-4294967295)"),
    (["--table", "4294967296"], {}, "--table: '4294967296' is out of range (1-4294967295)"),
    (["--table", "253"], {}, "--table: '253' is the kernel's default table"),
    (["--table", "254"], {}, "--table: '254' is the kernel's main table"),
    (["--table", "255"], {}, "--table: '255' is the kernel's local table"),
    (["--rule-priority", "0"], {}, "--rule-priority: '0' is out of range (1-32765)"),
    (["--rule-priority", "32766"], {}, "--rule-priority: '32766' is out of range (1-32765)"),
    (["--device", "a" * 16], {},
     f"--device: '{'a' * 16}' is not a network device name "
     "(1-15 characters, no '/', ':' or whitespace)"),
    (["--device", "wg/0"], {},
     "--device: 'wg/0' is not a network device name "
     "(1-15 characters, no '/', ':' or whitespace)"),
    (["--device", "wg 0"], {},
     "--device: 'wg 0' is not a network device name "
     "(1-15 characters, no '/', ':' or whitespace)"),
    (["--device", ""], {}, "--device: '' is empty"),
    (["--backend", "ebpf"], {}, "--backend: 'ebpf' is not one of auto, kernel, userspace"),
    (["--log-level", "trace"], {},
     "--log-level: 'trace' is not one of debug, info, warning, error"),
    ([], {"SUBMARINER_CABLEDRIVER": "libreswan"},
     "--cable-driver (SUBMARINER_CABLEDRIVER): 'libreswan' is not one of wireguard"),
    ([], {"SUBMARINER_NATENABLED": "enabled"},
     "--nat (SUBMARINER_NATENABLED): 'enabled' is not a boolean (true/false, yes/no, 1/0)"),
    (["--resync-interval", "0"], {},
     "--resync-interval: '0' is not a positive number of seconds"),
    (["--status-interval", "inf"], {},
     "--status-interval: 'inf' is not a positive number of seconds"),
    (["--status-interval", "5s"], {},
     "--status-interval: '5s' is not a positive number of seconds"),
    (["--hostname", "gw/1"], {}, "--hostname: 'gw/1' is not a host name"),
    (["--psk-file", "/nonexistent/psk"], {},
     "--psk-file: '/nonexistent/psk' does not exist"),
])
def test_validation_message(argv: list[str], env: dict[str, str], message: str) -> None:
    # The required settings, each overridable by the case: a later flag wins, and the
    # cluster CIDR comes from the environment so that a --cluster-cidr flag replaces it.
    base = ["--store", "/s", "--cluster-id", "east"]
    assert problems([*base, *argv], {"SUBMARINER_CLUSTERCIDR": "10.10.0.0/16", **env}) == \
        [message]


def test_psk_file_must_be_a_file(tmp_path: Path) -> None:
    assert problems([*REQUIRED, "--psk-file", str(tmp_path)]) == \
        [f"--psk-file: {str(tmp_path)!r} is not a file"]


def test_psk_file_that_exists(tmp_path: Path) -> None:
    psk = tmp_path / "psk"
    psk.write_text("x")
    assert load([*REQUIRED, "--psk-file", str(psk)]).psk_file == str(psk)


def test_required_settings() -> None:
    assert problems([]) == [
        "--store: required: set --store, WGCABLE_STORE or store in the config file",
        "--cluster-id: required: set --cluster-id, SUBMARINER_CLUSTERID or cluster_id "
        "in the config file",
        "--cluster-cidr: required: set --cluster-cidr, SUBMARINER_CLUSTERCIDR or "
        "cluster_cidr in the config file",
    ]


def test_cluster_and_service_cidrs_must_not_overlap() -> None:
    env = {"SUBMARINER_SERVICECIDR": "10.96.0.0/12,10.10.128.0/17"}
    assert problems(REQUIRED, env) == [
        "--cluster-cidr: '10.10.0.0/16' overlaps '10.10.128.0/17' of "
        "--service-cidr (SUBMARINER_SERVICECIDR)",
    ]


def test_ipv4_and_ipv6_cidrs_never_overlap() -> None:
    cfg = load([*REQUIRED, "--service-cidr", "fd00::/8"])
    assert cfg.service_cidrs == [ipaddress.ip_network("fd00::/8")]


def test_all_problems_are_reported_together() -> None:
    env = {"SUBMARINER_CLUSTERCIDR": "10.0.0.0/33", "WGCABLE_TABLE": "254"}
    found = problems(["--cluster-id", "BAD", "--port", "99999", "--mtu", "9"], env,
                     detect_ip=lambda: None)
    assert found == [
        "--cluster-id: 'BAD' is not a DNS-1123 label "
        "(lowercase letters, digits and '-', at most 63)",
        "--cluster-cidr (SUBMARINER_CLUSTERCIDR): '10.0.0.0/33' is not a CIDR",
        "--port: '99999' is out of range (1-65535)",
        "--table (WGCABLE_TABLE): '254' is the kernel's main table",
        "--mtu: '9' is out of range (1280-65535)",
        "--store: required: set --store, WGCABLE_STORE or store in the config file",
        "--private-ip: not set and no address could be detected; set --private-ip, "
        "WGCABLE_PRIVATE_IP or private_ip in the config file",
    ]


def test_every_bad_cidr_in_a_list_is_reported() -> None:
    assert problems(["--store", "/s", "--cluster-id", "east",
                     "--cluster-cidr", "10.0.0.0/33,10.1.0.0/16,bad"]) == [
        "--cluster-cidr: '10.0.0.0/33' is not a CIDR",
        "--cluster-cidr: 'bad' is not a CIDR",
    ]


def test_config_error_message_has_one_line_per_problem() -> None:
    with pytest.raises(ConfigError) as info:
        load([])
    assert str(info.value).splitlines() == info.value.problems


# --- Value forms ---


@pytest.mark.parametrize(("text", "expected"), [
    ("true", True), ("TRUE", True), ("Yes", True), ("1", True),
    ("false", False), ("False", False), ("NO", False), ("0", False),
])
def test_booleans(text: str, expected: bool) -> None:
    assert load(REQUIRED, {"SUBMARINER_NATENABLED": text}).nat_enabled is expected


@pytest.mark.parametrize("text", ["on", "2", "y", "enabled"])
def test_other_booleans_are_errors(text: str) -> None:
    assert problems(REQUIRED, {"SUBMARINER_NATENABLED": text}) == [
        f"--nat (SUBMARINER_NATENABLED): {text!r} is not a boolean (true/false, yes/no, 1/0)",
    ]


def test_nat_flags_beat_env() -> None:
    assert load([*REQUIRED, "--no-nat"], {"SUBMARINER_NATENABLED": "true"}).nat_enabled is False
    assert load([*REQUIRED, "--nat"], {"SUBMARINER_NATENABLED": "false"}).nat_enabled is True


@pytest.mark.parametrize(("flag", "env_name", "key", "attr"), [
    ("snat-exemption", "WGCABLE_SNAT_EXEMPTION", "snat_exemption", "snat_exemption"),
    ("mss-clamp", "WGCABLE_MSS_CLAMP", "mss_clamp", "mss_clamp"),
])
def test_nftables_switches(tmp_path: Path, flag: str, env_name: str, key: str,
                           attr: str) -> None:
    assert getattr(load([*REQUIRED, f"--no-{flag}"]), attr) is False
    assert getattr(load([*REQUIRED, f"--no-{flag}"], {env_name: "true"}), attr) is False
    assert getattr(load([*REQUIRED, f"--{flag}"], {env_name: "no"}), attr) is True
    assert getattr(load(REQUIRED, {env_name: "0"}), attr) is False
    config = write_yaml(tmp_path, f"{key}: false\n")
    assert getattr(load([*REQUIRED, "--config", config]), attr) is False
    assert getattr(load([*REQUIRED, "--config", config], {env_name: "yes"}), attr) is True
    assert problems([*REQUIRED], {env_name: "maybe"}) == [
        f"--{flag} ({env_name}): 'maybe' is not a boolean (true/false, yes/no, 1/0)",
    ]
    cfg = load([*REQUIRED, f"--no-{flag}"])
    assert getattr(cfg.driver_config(), attr) is False


def test_comma_lists_and_repeated_flags() -> None:
    cfg = load([*REQUIRED, "--cluster-cidr", "10.11.0.0/16, 10.12.0.0/16",
                "--service-cidr", "10.96.0.0/16", "--service-cidr", "10.97.0.0/16,"])
    assert [str(n) for n in cfg.cluster_cidrs] == ["10.10.0.0/16", "10.11.0.0/16",
                                                   "10.12.0.0/16"]
    assert [str(n) for n in cfg.service_cidrs] == ["10.96.0.0/16", "10.97.0.0/16"]


def test_env_comma_list() -> None:
    cfg = load(["--store", "/s", "--cluster-id", "east"],
               {"SUBMARINER_CLUSTERCIDR": "10.0.0.0/16,fd10::/64"})
    assert cfg.cluster_cidrs == [ipaddress.ip_network("10.0.0.0/16"),
                                 ipaddress.ip_network("fd10::/64")]


def test_mtu_auto_is_none() -> None:
    assert load([*REQUIRED, "--mtu", "auto"]).mtu is None
    assert load([*REQUIRED, "--mtu", "1380"]).mtu == 1380


def test_case_insensitive_choices() -> None:
    cfg = load([*REQUIRED, "--backend", "Kernel", "--log-level", "WARNING"])
    assert cfg.backend == "kernel"
    assert cfg.log_level == "warning"


# --- The YAML file ---


def test_yaml_file_sets_everything(tmp_path: Path) -> None:
    config = write_yaml(tmp_path, """\
store: /srv/store
cluster_id: east
cluster_cidr: [10.10.0.0/16, 10.11.0.0/16]
service_cidr: 10.96.0.0/16,10.97.0.0/16
private_ip: 198.51.100.7
nat: true
port: 4500
keepalive: 15
mtu: auto
resync_interval: 0.5
backend: userspace
""")
    cfg = load(["--config", config], detect_ip=lambda: pytest.fail("private IP was given"))
    assert [str(n) for n in cfg.cluster_cidrs] == ["10.10.0.0/16", "10.11.0.0/16"]
    assert [str(n) for n in cfg.service_cidrs] == ["10.96.0.0/16", "10.97.0.0/16"]
    assert cfg.private_ip == ipaddress.ip_address("198.51.100.7")
    assert cfg.nat_enabled is True
    assert cfg.port == 4500
    assert cfg.keepalive == 15
    assert cfg.mtu is None
    assert cfg.resync_interval == 0.5
    assert cfg.backend == "userspace"
    assert cfg.config_file == config


def test_yaml_file_from_env(tmp_path: Path) -> None:
    config = write_yaml(tmp_path, "device: wgenv\n")
    cfg = load(REQUIRED, {"WGCABLE_CONFIG": config})
    assert cfg.device == "wgenv"


def test_yaml_null_and_empty_file_set_nothing(tmp_path: Path) -> None:
    assert load([*REQUIRED, "--config", write_yaml(tmp_path, "mtu:\nport: null\n")]).port == 5871
    assert load([*REQUIRED, "--config", write_yaml(tmp_path, "")]).device == "subwg0"


def test_yaml_value_errors_name_the_key_and_file(tmp_path: Path) -> None:
    config = write_yaml(tmp_path, "port: true\ncluster_cidr: [10.0.0.0/8, 7]\n"
                                  "keepalive: '99999'\nnat: maybe\n")
    assert problems(["--store", "/s", "--cluster-id", "east", "--config", config]) == [
        f"--cluster-cidr (cluster_cidr in {config}): 7 is not a string (quote it in YAML)",
        f"--nat (nat in {config}): 'maybe' is not a boolean (true/false, yes/no, 1/0)",
        f"--port (port in {config}): True is not a whole number",
        f"--keepalive (keepalive in {config}): '99999' is out of range (1-65535)",
    ]


def test_yaml_number_where_a_string_is_expected(tmp_path: Path) -> None:
    config = write_yaml(tmp_path, "cluster_id: 123\n")
    assert problems(["--store", "/s", "--cluster-cidr", "10.0.0.0/8", "--config", config]) == [
        f"--cluster-id (cluster_id in {config}): 123 is not a string (quote it in YAML)",
    ]


def test_yaml_unknown_key(tmp_path: Path) -> None:
    config = write_yaml(tmp_path, "cluster-id: east\nbogus: 1\n")
    assert problems([*REQUIRED, "--config", config]) == [
        f"--config: unknown key 'cluster-id' in {config!r} (did you mean 'cluster_id'?)",
        f"--config: unknown key 'bogus' in {config!r}",
    ]


def test_yaml_missing_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "absent.yaml")
    assert problems(REQUIRED, {"WGCABLE_CONFIG": missing}) == [
        f"--config (WGCABLE_CONFIG): cannot read {missing!r}: No such file or directory",
    ]


def test_yaml_not_a_mapping(tmp_path: Path) -> None:
    config = write_yaml(tmp_path, "- cluster_id: east\n")
    assert problems([*REQUIRED, "--config", config]) == [
        f"--config: {config!r} must be a mapping of settings, not a list",
    ]


def test_yaml_syntax_error(tmp_path: Path) -> None:
    config = write_yaml(tmp_path, "port: [5871\n")
    found = problems([*REQUIRED, "--config", config])
    assert len(found) == 1
    assert found[0].startswith(f"--config: {config!r} is not valid YAML: ")
    assert "(line 2, column 1)" in found[0]


def test_bad_yaml_file_does_not_hide_other_problems(tmp_path: Path) -> None:
    assert problems(["--config", str(tmp_path / "absent.yaml"), "--port", "0",
                     *REQUIRED]) == [
        f"--config: cannot read {str(tmp_path / 'absent.yaml')!r}: No such file or directory",
        "--port: '0' is out of range (1-65535)",
    ]


# --- Address detection ---


def test_detected_private_ip_is_used_only_when_not_given() -> None:
    calls: list[int] = []

    def detect() -> str | None:
        calls.append(1)
        return "198.51.100.9"

    assert load(REQUIRED, detect_ip=detect).private_ip == ipaddress.ip_address("198.51.100.9")
    assert load([*REQUIRED, "--private-ip", "192.0.2.1"], detect_ip=detect).private_ip == \
        ipaddress.ip_address("192.0.2.1")
    assert calls == [1]


def test_no_detection_after_a_bad_private_ip() -> None:
    found = problems([*REQUIRED, "--private-ip", "x"],
                     detect_ip=lambda: pytest.fail("should not detect"))
    assert found == ["--private-ip: 'x' is not an IP address"]


def test_undetectable_private_ip() -> None:
    assert problems(REQUIRED, detect_ip=lambda: None) == [
        "--private-ip: not set and no address could be detected; set --private-ip, "
        "WGCABLE_PRIVATE_IP or private_ip in the config file",
    ]


def test_health_check_ip_auto_looks_inside_cluster_cidrs() -> None:
    seen: list[Sequence[IPNetwork]] = []

    def detect(networks: Sequence[IPNetwork]) -> str | None:
        seen.append(networks)
        return "10.10.3.1"

    cfg = load(REQUIRED, detect_health_check_ip=detect)
    assert cfg.health_check_ip == ipaddress.ip_address("10.10.3.1")
    assert seen == [[ipaddress.ip_network("10.10.0.0/16")]]


def test_health_check_ip_none_and_explicit() -> None:
    def detect(_: Sequence[IPNetwork]) -> str | None:
        pytest.fail("should not detect")

    assert load([*REQUIRED, "--health-check-ip", "none"],
                detect_health_check_ip=detect).health_check_ip is None
    assert load([*REQUIRED, "--health-check-ip", "10.10.0.5"],
                detect_health_check_ip=detect).health_check_ip == \
        ipaddress.ip_address("10.10.0.5")


def test_default_hostname_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "bad_host")
    assert problems(REQUIRED) == ["--hostname (the host's name): 'bad_host' is not a host name"]


LINKS: list[dict[str, Any]] = [
    {"ifname": "lo", "flags": ["LOOPBACK", "UP"], "addr_info": [
        {"family": "inet", "local": "127.0.0.1", "scope": "host"},
        {"family": "inet", "local": "127.0.0.2", "scope": "global"}]},
    {"ifname": "eth0", "flags": ["UP"], "addr_info": [
        {"family": "inet6", "local": "fd00::2", "scope": "global"},
        {"family": "inet6", "local": "fe80::1", "scope": "link"},
        {"family": "inet", "local": "192.0.2.2", "scope": "global"}]},
    {"ifname": "eth1", "flags": ["UP"], "addr_info": [
        {"family": "inet", "local": "198.51.100.2", "scope": "global"}]},
    {"ifname": "cni0", "flags": ["UP"], "addr_info": [
        {"family": "inet", "local": "10.10.0.1", "scope": "global"}]},
]


@pytest.mark.parametrize(("routes", "expected"), [
    ([{"dst": "default", "gateway": "198.51.100.1", "dev": "eth1", "prefsrc": "198.51.100.3"}],
     "198.51.100.3"),
    ([{"dst": "default", "gateway": "198.51.100.1", "dev": "eth1"}], "198.51.100.2"),
    ([], "192.0.2.2"),  # no default route: first global IPv4, loopback skipped
    ([{"dst": "default", "dev": "ppp9"}], "192.0.2.2"),  # its device has no address here
])
def test_private_ip_from(routes: list[dict[str, Any]], expected: str) -> None:
    assert private_ip_from(routes, LINKS) == expected


def test_private_ip_from_nothing() -> None:
    assert private_ip_from([], LINKS[:1]) is None
    assert private_ip_from(["junk"], [None, {"addr_info": None}]) is None


def test_address_in() -> None:
    assert address_in(LINKS, [ipaddress.ip_network("10.10.0.0/16")]) == "10.10.0.1"
    assert address_in(LINKS, [ipaddress.ip_network("fd00::/8")]) == "fd00::2"
    assert address_in(LINKS, [ipaddress.ip_network("10.99.0.0/16")]) is None


# --- What the config produces ---


def test_local_endpoint() -> None:
    cfg = load([*REQUIRED, "--service-cidr", "10.96.0.0/16", "--private-ip", "172.18.0.7",
                "--public-ip", "203.0.113.7", "--nat", "--hostname", "gw-east",
                "--port", "4500", "--health-check-ip", "10.10.0.1"])
    endpoint = cfg.local_endpoint()
    assert endpoint == Endpoint(
        cluster_id="east",
        cable_name="submariner-cable-east-172-18-0-7",
        hostname="gw-east",
        subnets=["10.10.0.0/16", "10.96.0.0/16"],
        private_ip="172.18.0.7",
        public_ip="203.0.113.7",
        nat_enabled=True,
        backend="wireguard",
        backend_config={"udp-port": "4500"},
        health_check_ip="10.10.0.1",
    )
    assert json.loads(json.dumps(endpoint.to_json())) == {
        "cluster_id": "east",
        "cable_name": "submariner-cable-east-172-18-0-7",
        "healthCheckIP": "10.10.0.1",
        "hostname": "gw-east",
        "subnets": ["10.10.0.0/16", "10.96.0.0/16"],
        "private_ip": "172.18.0.7",
        "public_ip": "203.0.113.7",
        "nat_enabled": True,
        "backend": "wireguard",
        "backend_config": {"udp-port": "4500"},
    }


def test_local_endpoint_without_public_ip_and_fresh_each_call() -> None:
    cfg = load([*REQUIRED, "--hostname", "gw"])
    first = cfg.local_endpoint()
    assert first.public_ip == ""
    assert first.health_check_ip == ""
    first.backend_config["publicKey"] = "x"  # drivers add to it: must not leak into the next
    assert cfg.local_endpoint().backend_config == {"udp-port": "5871"}


def test_driver_config() -> None:
    cfg = load([*REQUIRED, "--device", "wg9", "--keepalive", "20", "--table", "300",
                "--rule-priority", "300", "--mtu", "1400", "--backend", "kernel",
                "--state-dir", "/st", "--port", "4501"])
    assert cfg.driver_config() == WireGuardConfig(
        device="wg9", port=4501, keepalive=20, state_dir="/st", preshared_key_file=None,
        table=300, rule_priority=300, mtu=1400, backend="kernel",
        thresholds=StatusThresholds(keepalive=20.0),
    )


def test_loading_creates_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = tmp_path / "store"
    load(["--store", str(store), "--cluster-id", "east", "--cluster-cidr", "10.0.0.0/8",
          "--state-dir", str(state)])
    assert list(tmp_path.iterdir()) == []


def test_add_arguments_fits_a_subcommand() -> None:
    # How the CLI module builds it: the agent's dests must not clash with the main parser's.
    parser = argparse.ArgumentParser(prog="wgcable")
    sub = parser.add_subparsers(dest="command")
    add_arguments(sub.add_parser("agent"))
    ns = parser.parse_args(["agent", *REQUIRED, "--port", "6000"])
    cfg = from_namespace(ns, {}, detect_ip=lambda: DETECTED,
                         detect_health_check_ip=_no_health_ip)
    assert ns.command == "agent"
    assert cfg.port == 6000


# --- The Kubernetes store ---


def test_kubernetes_store_settings(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\n")
    argv = [*without(REQUIRED, "--store"), "--store", "kubernetes"]
    cfg = load([*argv, "--kubeconfig", str(kubeconfig)],
               {"BROKER_K8S_REMOTENAMESPACE": "broker-ns"})
    spec = cfg.store_spec()
    assert spec.is_kubernetes
    assert (spec.kubeconfig, spec.namespace) == (str(kubeconfig), "broker-ns")
    # Defaults: Submariner's broker namespace, the in-cluster service account.
    spec = load(argv).store_spec()
    assert (spec.kubeconfig, spec.namespace) == (None, "submariner-k8s-broker")
    assert "in-cluster" in spec.describe()
    # KUBECONFIG, as for kubectl.
    assert load(argv, {"KUBECONFIG": str(kubeconfig)}).kubeconfig == str(kubeconfig)


def test_kubernetes_store_problems(tmp_path: Path) -> None:
    argv = [*without(REQUIRED, "--store"), "--store", "kubernetes"]
    found = problems([*argv, "--kubeconfig", str(tmp_path / "nope"), "--namespace", "Bad_NS"])
    assert any(p.startswith("--kubeconfig: ") and "does not exist" in p for p in found)
    assert any(p.startswith("--namespace: 'Bad_NS'") for p in found)


def test_a_directory_store_ignores_kubernetes_settings(tmp_path: Path) -> None:
    # KUBECONFIG is often set in a shell for kubectl: it must not break a directory store.
    cfg = load(REQUIRED, {"KUBECONFIG": str(tmp_path / "absent")})
    assert not cfg.store_spec().is_kubernetes
    assert cfg.store_spec().describe() == "directory /srv/store"


@pytest.mark.parametrize(("flag", "value"), [
    ("--private-ip", "fe80::1%eth0"),
    ("--public-ip", "2001:db8::1%x\npublic_key=00\nremove=true"),
    ("--health-check-ip", "fd00::1%lo"),
    ("--cluster-cidr", "fd00:1::%x/64"),
    ("--protected-cidrs", "fd00:9::%lo/64"),
])
def test_injection_zoned_local_addresses_are_refused(flag: str, value: str) -> None:
    """Our own addresses are published to every other gateway: never with a zone."""
    argv = [*without(REQUIRED, flag), flag, value] if flag in REQUIRED else [*REQUIRED, flag,
                                                                               value]
    found = problems(argv)
    assert any("zone" in p for p in found), found
