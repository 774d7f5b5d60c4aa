"""Configuration of the gateway agent (`wgcable agent`): flags, environment, a YAML file.

Each setting is taken from, in order: its flag, its environment variable, its key in the YAML
config file (``--config FILE`` or ``WGCABLE_CONFIG``), its default. Environment variables use
Submariner's names where Submariner has the setting, so a gateway pod's environment works
unchanged; the others are ``WGCABLE_<NAME>``. An empty environment variable counts as unset
(manifests often template empty values), and so does a YAML ``null``.

==================  ========================  ===============  ============================
flag                environment variable      YAML key         default
==================  ========================  ===============  ============================
--config            WGCABLE_CONFIG            (none)           no file
--store             WGCABLE_STORE             store            required
--kubeconfig        KUBECONFIG                kubeconfig       in-cluster service account
--namespace         BROKER_K8S_REMOTENAMESPACE namespace       submariner-k8s-broker
--store-timeout     WGCABLE_STORE_TIMEOUT     store_timeout    10 (seconds)
--create-store      WGCABLE_CREATE_STORE      create_store     false
--cluster-id        SUBMARINER_CLUSTERID      cluster_id       required
--cluster-cidr      SUBMARINER_CLUSTERCIDR    cluster_cidr     required (one or more)
--service-cidr      SUBMARINER_SERVICECIDR    service_cidr     none
--private-ip        WGCABLE_PRIVATE_IP        private_ip       detected (see below)
--public-ip         WGCABLE_PUBLIC_IP         public_ip        none
--nat / --no-nat    SUBMARINER_NATENABLED     nat              false
--hostname          WGCABLE_HOSTNAME          hostname         socket.gethostname()
--health-check-ip   WGCABLE_HEALTH_CHECK_IP   health_check_ip  auto (see below)
--state-dir         WGCABLE_STATE_DIR         state_dir        /var/lib/wgcable
--metrics-port      WGCABLE_METRICS_PORT      metrics_port     0: no metrics endpoint
--metrics-address   WGCABLE_METRICS_ADDRESS   metrics_address  127.0.0.1
--log-level         WGCABLE_LOG_LEVEL         log_level        info
--resync-interval   WGCABLE_RESYNC_INTERVAL   resync_interval  30 (seconds)
--status-interval   WGCABLE_STATUS_INTERVAL   status_interval  5 (seconds)
--cable-driver      SUBMARINER_CABLEDRIVER    cable_driver     wireguard
--device            WGCABLE_DEVICE            device           subwg0
--port              CE_IPSEC_NATTPORT         port             5871
--keepalive         WGCABLE_KEEPALIVE         keepalive        10 (seconds)
--table             WGCABLE_TABLE             table            220
--rule-priority     WGCABLE_RULE_PRIORITY     rule_priority    220
--mtu               WGCABLE_MTU               mtu              auto: the driver derives it
--psk-file          WGCABLE_PSK_FILE          psk_file         none
--backend           WGCABLE_BACKEND           backend          auto (kernel, userspace)
--snat-exemption    WGCABLE_SNAT_EXEMPTION    snat_exemption   true
--mss-clamp         WGCABLE_MSS_CLAMP         mss_clamp        true
--protected-cidrs   WGCABLE_PROTECTED_CIDRS   protected_cidrs  none
==================  ========================  ===============  ============================

The store is a directory shared by the gateways of one machine, or ``kubernetes``: the
``submariner.io/v1`` Endpoints and Gateways in ``--namespace`` of the API server that
``--kubeconfig`` names (the pod's service account without one). Both are ignored for a
directory store. A store request that takes longer than ``--store-timeout`` is given up
and reported in the gateway status. A directory store that does not exist is created only
with ``--create-store``, or when it is an absolute path under /var/lib/wgcable or
/run/wgcable; otherwise the agent refuses to start (a mistyped ``kubernetes`` would
quietly become a directory).

Values: CIDR lists are comma-separated (flags may also repeat; YAML may give a list);
booleans are true/false, yes/no or 1/0 in any case, and their flags have a ``--no-`` form
(``--no-snat-exemption``). The SNAT exemption keeps pod addresses on traffic to remote
clusters whatever the CNI's masquerade rules say; MSS clamping lowers TCP's MSS to the
tunnel's MTU; both live in the driver's own nftables table. No remote cluster's subnet may
overlap a protected CIDR (nor, always, the host's directly connected networks, its
nameservers or the broker's address): rule 220 would send that traffic into the tunnel.
The private IP, when not given, is the source address of the default route, else the host's
first global IPv4 address. The health
check IP ``auto`` is the host's address inside a cluster CIDR (the CNI interface's, as in
Submariner), else none; ``none`` publishes none. Detection only reads ``ip -j`` output.

Loading never creates anything; every problem is collected, then raised as one ConfigError.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import json
import math
import re
import socket
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from wgcable.cable import driver_names
from wgcable.cable.types import Endpoint, cable_name_for
from wgcable.cable.wireguard.config import (
    DEFAULT_DEVICE,
    DEFAULT_KEEPALIVE,
    DEFAULT_RULE_PRIORITY,
    DEFAULT_STATE_DIR,
    DEFAULT_TABLE,
    BackendChoice,
    WireGuardConfig,
)
from wgcable.cable.wireguard.desired import DEFAULT_PORT, UDP_PORT
from wgcable.cable.wireguard.status import StatusThresholds
from wgcable.store.open import DEFAULT_NAMESPACE, DEFAULT_STORE_TIMEOUT, KUBERNETES, StoreSpec

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LogLevel = Literal["debug", "info", "warning", "error"]

DEFAULT_CABLE_DRIVER = "wireguard"
DEFAULT_METRICS_ADDRESS = "127.0.0.1"
DEFAULT_RESYNC_INTERVAL = 30.0
DEFAULT_STATUS_INTERVAL = 5.0  # Submariner refreshes gateway status every 5 s
CONFIG_ENV = "WGCABLE_CONFIG"
_METRICS_IP: IPAddress = ipaddress.IPv4Address(DEFAULT_METRICS_ADDRESS)

_BACKENDS: tuple[BackendChoice, ...] = ("auto", "kernel", "userspace")
_LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
# Tables 253-255 are the kernel's default, main and local tables.
_RESERVED_TABLES = {253: "default", 254: "main", 255: "local"}

T = TypeVar("T")


class ConfigError(ValueError):
    """The agent's settings are unusable; ``problems`` has one message per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    store: str  # a directory, or "kubernetes"
    cluster_id: str
    cluster_cidrs: list[IPNetwork]
    service_cidrs: list[IPNetwork] = field(default_factory=list)
    private_ip: IPAddress
    public_ip: IPAddress | None = None
    nat_enabled: bool = False
    hostname: str
    health_check_ip: IPAddress | None = None
    state_dir: str = DEFAULT_STATE_DIR
    metrics_port: int = 0  # 0: no metrics endpoint
    metrics_address: IPAddress = _METRICS_IP
    log_level: LogLevel = "info"
    resync_interval: float = DEFAULT_RESYNC_INTERVAL
    status_interval: float = DEFAULT_STATUS_INTERVAL
    cable_driver: str = DEFAULT_CABLE_DRIVER
    device: str = DEFAULT_DEVICE
    port: int = DEFAULT_PORT
    keepalive: int = DEFAULT_KEEPALIVE
    table: int = DEFAULT_TABLE
    rule_priority: int = DEFAULT_RULE_PRIORITY
    mtu: int | None = None  # None: the driver derives it from the underlay
    psk_file: str | None = None
    backend: BackendChoice = "auto"
    snat_exemption: bool = True
    mss_clamp: bool = True
    protected_cidrs: list[IPNetwork] = field(default_factory=list)
    config_file: str | None = None  # the YAML file read, if any (for the startup log)
    kubeconfig: str | None = None  # None: the in-cluster service account
    namespace: str = DEFAULT_NAMESPACE
    store_timeout: float = DEFAULT_STORE_TIMEOUT
    create_store: bool = False

    def store_spec(self) -> StoreSpec:
        return StoreSpec(self.store, kubeconfig=self.kubeconfig, namespace=self.namespace,
                         timeout=self.store_timeout, create=self.create_store)

    def local_endpoint(self) -> Endpoint:
        """The Endpoint this gateway publishes (a new object each call: drivers add to it)."""
        private_ip = str(self.private_ip)
        return Endpoint(
            cluster_id=self.cluster_id,
            cable_name=cable_name_for(self.cluster_id, private_ip),
            hostname=self.hostname,
            subnets=[str(n) for n in [*self.cluster_cidrs, *self.service_cidrs]],
            private_ip=private_ip,
            public_ip=str(self.public_ip) if self.public_ip else "",
            nat_enabled=self.nat_enabled,
            backend=self.cable_driver,
            backend_config={UDP_PORT: str(self.port)},
            health_check_ip=str(self.health_check_ip) if self.health_check_ip else "",
        )

    def driver_config(self, broker: Sequence[IPAddress] = ()) -> WireGuardConfig:
        """The driver's settings; ``broker``: the store server's addresses, which no remote
        subnet may cover either."""
        protected = [*((n, f"the protected CIDR {n}") for n in self.protected_cidrs),
                     *((ipaddress.ip_network(a), f"the broker's address {a}") for a in broker)]
        return WireGuardConfig(
            protected=tuple(protected),
            device=self.device,
            port=self.port,
            keepalive=self.keepalive,
            state_dir=self.state_dir,
            preshared_key_file=self.psk_file,
            table=self.table,
            rule_priority=self.rule_priority,
            mtu=self.mtu,
            backend=self.backend,
            snat_exemption=self.snat_exemption,
            mss_clamp=self.mss_clamp,
            # Status judges silence in keepalive intervals: it must use the same interval.
            thresholds=StatusThresholds(keepalive=float(self.keepalive)),
        )


# --- The settings: flag, environment variable, YAML key ---------------------------------


@dataclass(frozen=True, slots=True)
class _Setting:
    flag: str
    env: str
    metavar: str
    help: str
    default: str | None  # as shown in --help; None: required
    driver: bool = False  # shown under the cable driver's options

    @property
    def key(self) -> str:
        """The YAML key and argparse dest: the flag in snake_case."""
        return self.flag.removeprefix("--").replace("-", "_")


_SETTINGS = (
    _Setting("--store", "WGCABLE_STORE", "DIR|kubernetes",
             "endpoint store shared by gateways: a directory, or kubernetes", None),
    _Setting("--kubeconfig", "KUBECONFIG", "FILE",
             "kubeconfig of the broker API server (kubernetes store)",
             "the in-cluster service account"),
    _Setting("--namespace", "BROKER_K8S_REMOTENAMESPACE", "NS",
             "broker namespace of Endpoints and Gateways (kubernetes store)",
             DEFAULT_NAMESPACE),
    _Setting("--store-timeout", "WGCABLE_STORE_TIMEOUT", "S",
             "seconds a store request may take before it counts as failed",
             f"{DEFAULT_STORE_TIMEOUT:g}"),
    _Setting("--create-store", "WGCABLE_CREATE_STORE", "",
             "create a directory store that does not exist", "no"),
    _Setting("--cluster-id", "SUBMARINER_CLUSTERID", "ID", "this cluster's ID, a DNS label",
             None),
    _Setting("--cluster-cidr", "SUBMARINER_CLUSTERCIDR", "CIDR[,CIDR]", "pod CIDRs",
             None),
    _Setting("--service-cidr", "SUBMARINER_SERVICECIDR", "CIDR[,CIDR]", "service CIDRs",
             "none"),
    _Setting("--private-ip", "WGCABLE_PRIVATE_IP", "IP", "this gateway's address",
             "detected"),
    _Setting("--public-ip", "WGCABLE_PUBLIC_IP", "IP", "its address seen through NAT",
             "none"),
    _Setting("--nat", "SUBMARINER_NATENABLED", "", "a NAT sits between gateways", "no"),
    _Setting("--hostname", "WGCABLE_HOSTNAME", "NAME", "this gateway's name",
             "the host's name"),
    _Setting("--health-check-ip", "WGCABLE_HEALTH_CHECK_IP", "IP",
             "address remote gateways ping: auto, none or an IP", "auto"),
    _Setting("--state-dir", "WGCABLE_STATE_DIR", "DIR", "where the key and status live",
             DEFAULT_STATE_DIR),
    _Setting("--metrics-port", "WGCABLE_METRICS_PORT", "PORT",
             "Prometheus metrics port, 0 for none", "0"),
    _Setting("--metrics-address", "WGCABLE_METRICS_ADDRESS", "ADDR", "metrics listen address",
             DEFAULT_METRICS_ADDRESS),
    _Setting("--log-level", "WGCABLE_LOG_LEVEL", "LEVEL", ", ".join(_LOG_LEVELS), "info"),
    _Setting("--resync-interval", "WGCABLE_RESYNC_INTERVAL", "S",
             "seconds between full reconciles", f"{DEFAULT_RESYNC_INTERVAL:g}"),
    _Setting("--status-interval", "WGCABLE_STATUS_INTERVAL", "S",
             "seconds between status updates", f"{DEFAULT_STATUS_INTERVAL:g}"),
    _Setting("--cable-driver", "SUBMARINER_CABLEDRIVER", "NAME", "cable driver",
             DEFAULT_CABLE_DRIVER, driver=True),
    _Setting("--device", "WGCABLE_DEVICE", "NAME", "WireGuard device", DEFAULT_DEVICE,
             driver=True),
    _Setting("--port", "CE_IPSEC_NATTPORT", "PORT", "tunnel UDP port", str(DEFAULT_PORT),
             driver=True),
    _Setting("--keepalive", "WGCABLE_KEEPALIVE", "S", "persistent keepalive, seconds",
             str(DEFAULT_KEEPALIVE), driver=True),
    _Setting("--table", "WGCABLE_TABLE", "N", "route table", str(DEFAULT_TABLE), driver=True),
    _Setting("--rule-priority", "WGCABLE_RULE_PRIORITY", "N", "ip rule priority",
             str(DEFAULT_RULE_PRIORITY), driver=True),
    _Setting("--mtu", "WGCABLE_MTU", "N", "device MTU", "auto", driver=True),
    _Setting("--psk-file", "WGCABLE_PSK_FILE", "FILE", "preshared key file", "none",
             driver=True),
    _Setting("--backend", "WGCABLE_BACKEND", "NAME", ", ".join(_BACKENDS), "auto",
             driver=True),
    _Setting("--snat-exemption", "WGCABLE_SNAT_EXEMPTION", "",
             "keep pod addresses on traffic to remote clusters (no CNI masquerade)", "yes",
             driver=True),
    _Setting("--mss-clamp", "WGCABLE_MSS_CLAMP", "", "clamp TCP MSS to the tunnel's MTU",
             "yes", driver=True),
    _Setting("--protected-cidrs", "WGCABLE_PROTECTED_CIDRS", "CIDR[,CIDR]",
             "networks no remote cluster's subnets may overlap", "none", driver=True),
)
_BY_KEY = {s.key: s for s in _SETTINGS}
_LIST_KEYS = {"cluster_cidr", "service_cidr", "protected_cidrs"}
_BOOL_KEYS = {"nat", "snat_exemption", "mss_clamp", "create_store"}  # flags with a --no- form


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the agent's flags. Every flag defaults to None so that an unset flag lets the
    environment or the config file speak; values are checked by ``from_namespace``."""
    parser.add_argument("--config", metavar="FILE", help=f"YAML settings file [{CONFIG_ENV}]")
    groups = {
        False: parser.add_argument_group("gateway"),
        True: parser.add_argument_group("cable driver"),
    }
    for s in _SETTINGS:
        group = groups[s.driver]
        default = "required" if s.default is None else f"default: {s.default}"
        text = f"{s.help} ({default}) [{s.env}]"
        if s.key in _BOOL_KEYS:
            group.add_argument(s.flag, dest=s.key, action=argparse.BooleanOptionalAction,
                               default=None, help=text)
        elif s.key in _LIST_KEYS:  # repeatable as well as comma-separated
            group.add_argument(s.flag, dest=s.key, action="append", metavar=s.metavar,
                               help=text)
        else:
            group.add_argument(s.flag, dest=s.key, metavar=s.metavar, help=text)


# --- Value parsers: raw value (flag/env string, or any YAML value) -> typed value ---------


class _Invalid(ValueError):
    """A value is wrong; one message per problem, each starting with the offending value."""

    def __init__(self, *messages: str) -> None:
        self.messages = list(messages)
        super().__init__("; ".join(messages))


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"{value!r} is not a string (quote it in YAML)")
    text = value.strip()
    if not text:
        raise _Invalid(f"{value!r} is empty")
    return text


def _integer(low: int, high: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        # bool is an int to Python, but `port: true` is surely a mistake.
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):
            number = int(value)
        else:
            raise _Invalid(f"{value!r} is not a whole number")
        if not low <= number <= high:
            raise _Invalid(f"{value!r} is out of range ({low}-{high})")
        return number

    return parse


_port = _integer(1, 65535)
_keepalive = _integer(1, 65535)
_metrics_port = _integer(0, 65535)  # 0 turns the metrics endpoint off
_rule_priority = _integer(1, 32765)  # 0, 32766 and 32767 are the kernel's own rules
_mtu_number = _integer(1280, 65535)  # 1280: the IPv6 minimum


def _table(value: object) -> int:
    number = _integer(1, 2**32 - 1)(value)
    if number in _RESERVED_TABLES:
        raise _Invalid(f"{value!r} is the kernel's {_RESERVED_TABLES[number]} table")
    return number


def _mtu(value: object) -> int | None:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    return _mtu_number(value)


def _seconds(value: object) -> float:
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or number <= 0:
        raise _Invalid(f"{value!r} is not a positive number of seconds")
    return number


_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise _Invalid(f"{value!r} is not a boolean (true/false, yes/no, 1/0)")


def _choice(options: Sequence[T]) -> Callable[[object], T]:
    def parse(value: object) -> T:
        text = _text(value).lower()
        for option in options:
            if option == text:
                return option
        raise _Invalid(f"{value!r} is not one of {', '.join(map(str, options))}")

    return parse


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?")


def _dns_label(what: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = _text(value)
        if len(text) > 63 or not _DNS_LABEL.fullmatch(text):
            raise _Invalid(f"{value!r} is not {what}"
                           "(lowercase letters, digits and '-', at most 63)")
        return text

    return parse


_cluster_id = _dns_label("a DNS-1123 label ")
_namespace = _dns_label("a namespace name, a DNS-1123 label ")


def _hostname(value: object) -> str:
    # Checked because stores name files after it: a '/' must never get through.
    text = _text(value)
    labels = text.split(".")
    if len(text) > 253 or not all(len(x) <= 63 and _HOST_LABEL.fullmatch(x) for x in labels):
        raise _Invalid(f"{value!r} is not a host name")
    return text


def _device(value: object) -> str:
    # The kernel's dev_valid_name(): below IFNAMSIZ (16), no '/', ':' or space, not . or ..
    text = _text(value)
    if len(text) > 15 or text in (".", "..") or re.search(r"[/:\s]", text):
        raise _Invalid(f"{value!r} is not a network device name "
                       "(1-15 characters, no '/', ':' or whitespace)")
    return text


def _address(value: object) -> IPAddress:
    text = _text(value)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise _Invalid(f"{value!r} is not an IP address") from None


def _endpoint_address(value: object) -> IPAddress:
    """An address other gateways can aim at."""
    if isinstance(value, str) and "%" in value:  # a zone is free text: it would be published
        raise _Invalid(f"{value!r} has a zone ('%'); give the address alone")
    address = _address(value)
    if address.is_unspecified or address.is_multicast:
        raise _Invalid(f"{value!r} is not a unicast address")
    return address


_HealthChoice = IPAddress | Literal["auto", "none"]


def _health_check_ip(value: object) -> _HealthChoice:
    if isinstance(value, str) and value.strip().lower() in ("auto", "none"):
        return "auto" if value.strip().lower() == "auto" else "none"
    return _endpoint_address(value)


def _items(value: object) -> Iterator[str]:
    """Comma-separated strings, alone or in a list (repeated flags, YAML lists)."""
    values = value if isinstance(value, list) else [value]
    for item in values:
        if not isinstance(item, str):
            raise _Invalid(f"{item!r} is not a string (quote it in YAML)")
        yield from (x.strip() for x in item.split(",") if x.strip())


def _cidrs(value: object) -> list[IPNetwork]:
    networks: list[IPNetwork] = []
    problems: list[str] = []
    for item in _items(value):
        if "/" not in item:  # ip_network() would take a bare address as a /32
            problems.append(f"{item!r} is not a CIDR")
            continue
        if "%" in item:
            problems.append(f"{item!r} has a zone ('%'); give the network alone")
            continue
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError:
            try:
                network = ipaddress.ip_network(item, strict=False)
            except ValueError:
                problems.append(f"{item!r} is not a CIDR")
            else:
                problems.append(f"{item!r} has host bits set (the network is {network})")
    if problems:
        raise _Invalid(*problems)
    return networks


# --- Where each value comes from ---------------------------------------------------------


@dataclass(slots=True)
class _ConfigFile:
    path: str | None = None
    settings: dict[str, object] = field(default_factory=dict)


def _read_config_file(ns: argparse.Namespace, env: Mapping[str, str],
                      problems: list[str]) -> _ConfigFile:
    path: str | None = getattr(ns, "config", None)
    label = "--config"
    if path is None and env.get(CONFIG_ENV, "").strip():
        path, label = env[CONFIG_ENV].strip(), f"--config ({CONFIG_ENV})"
    if path is None:
        return _ConfigFile()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        problems.append(f"{label}: cannot read {path!r}: {e.strerror or e}")
        return _ConfigFile(path)
    except UnicodeDecodeError:
        problems.append(f"{label}: cannot read {path!r}: not UTF-8 text")
        return _ConfigFile(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        problems.append(f"{label}: {path!r} is not valid YAML: {_yaml_reason(e)}")
        return _ConfigFile(path)
    if data is None:  # an empty file sets nothing
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{label}: {path!r} must be a mapping of settings, "
                        f"not a {type(data).__name__}")
        return _ConfigFile(path)
    settings: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(key, str) and key in _BY_KEY:
            settings[key] = value
            continue
        close = difflib.get_close_matches(str(key).replace("-", "_"), _BY_KEY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"{label}: unknown key {key!r} in {path!r}{hint}")
    return _ConfigFile(path, settings)


def _yaml_reason(error: yaml.YAMLError) -> str:
    # The default text spans several lines; one line with the position is clearer.
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(error).replace("\n", " ")


class _Resolver:
    """Picks each setting's winning source, parses it, and collects problems."""

    def __init__(self, ns: argparse.Namespace, env: Mapping[str, str], file: _ConfigFile,
                 problems: list[str]) -> None:
        self.ns = ns
        self.env = env
        self.file = file
        self.problems = problems
        self.failed: set[str] = set()  # keys whose value was wrong (already reported)

    def _source(self, key: str) -> tuple[str, object] | None:
        s = _BY_KEY[key]
        flag_value = getattr(self.ns, key, None)
        if isinstance(flag_value, list):  # a repeated flag: show it as one comma list
            return s.flag, ",".join(flag_value)
        if flag_value is not None:
            return s.flag, flag_value
        env_value = self.env.get(s.env, "")
        if env_value.strip():
            return f"{s.flag} ({s.env})", env_value
        file_value = self.file.settings.get(key)
        if file_value is not None:
            return f"{s.flag} ({key} in {self.file.path})", file_value
        return None

    def label(self, key: str) -> str:
        source = self._source(key)
        return _BY_KEY[key].flag if source is None else source[0]

    def get(self, key: str, parse: Callable[[object], T], default: T) -> T:
        source = self._source(key)
        if source is None:
            return default
        label, raw = source
        value = self.parse(key, label, parse, raw)
        return default if value is None else value

    def parse(self, key: str, label: str, parse: Callable[[object], T], raw: object) -> T | None:
        try:
            return parse(raw)
        except _Invalid as e:
            self.failed.add(key)
            self.problems.extend(f"{label}: {m}" for m in e.messages)
            return None

    def problem(self, key: str, message: str) -> None:
        self.failed.add(key)
        self.problems.append(f"{self.label(key)}: {message}")

    def require(self, key: str, present: bool) -> None:
        if present or key in self.failed:
            return
        source = self._source(key)
        if source is not None:  # given, but nothing in it: a lone ',' or []
            self.problem(key, f"{source[1]!r} has no CIDR in it")
            return
        s = _BY_KEY[key]
        self.problem(key, f"required: set {s.flag}, {s.env} or {key} in the config file")


# --- Host address detection (reads `ip -j`; sends and routes nothing) --------------------


def _ip_json(*args: str) -> list[Any]:
    """``ip -j ARGS`` output; [] when ip is missing or fails: detection then finds nothing."""
    try:
        done = subprocess.run(["ip", "-j", *args], capture_output=True, text=True,
                              timeout=5, check=True)
        data = json.loads(done.stdout or "[]")
    except (OSError, subprocess.SubprocessError, ValueError):
        return []
    return data if isinstance(data, list) else []


def _addresses(link: object, *, ipv4_only: bool) -> Iterator[str]:
    """A link's global-scope addresses, loopback excluded."""
    if not isinstance(link, Mapping) or "LOOPBACK" in (link.get("flags") or []):
        return
    for info in link.get("addr_info") or []:
        if not isinstance(info, Mapping) or info.get("scope") != "global":
            continue
        if ipv4_only and info.get("family") != "inet":
            continue
        local = info.get("local")
        if isinstance(local, str) and local:
            yield local


def private_ip_from(routes: Sequence[Any], links: Sequence[Any]) -> str | None:
    """The default route's source address (its ``prefsrc``, else its device's first global
    IPv4 address), else the first global IPv4 address of any non-loopback link.
    ``routes`` is ``ip -j route show default``, ``links`` is ``ip -j addr``."""
    for route in routes:
        if not isinstance(route, Mapping):
            continue
        prefsrc = route.get("prefsrc")
        if isinstance(prefsrc, str) and prefsrc:
            return prefsrc
        for link in links:
            if isinstance(link, Mapping) and link.get("ifname") == route.get("dev"):
                for address in _addresses(link, ipv4_only=True):
                    return address
    for link in links:
        for address in _addresses(link, ipv4_only=True):
            return address
    return None


def address_in(links: Sequence[Any], networks: Sequence[IPNetwork]) -> str | None:
    """The first host address (from ``ip -j addr``) inside one of ``networks``."""
    for link in links:
        for address in _addresses(link, ipv4_only=False):
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                continue
            if any(ip in n for n in networks):
                return address
    return None


def detect_private_ip() -> str | None:
    return private_ip_from(_ip_json("route", "show", "default"), _ip_json("addr"))


def detect_address_in(networks: Sequence[IPNetwork]) -> str | None:
    return address_in(_ip_json("addr"), networks)


# --- Loading -----------------------------------------------------------------------------


def from_namespace(
    ns: argparse.Namespace,
    env: Mapping[str, str],
    *,
    detect_ip: Callable[[], str | None] = detect_private_ip,
    detect_health_check_ip: Callable[[Sequence[IPNetwork]], str | None] = detect_address_in,
) -> AgentConfig:
    """Resolve every setting (flag, environment, config file, default) and check them all.
    Raises ConfigError listing every problem found."""
    problems: list[str] = []
    file = _read_config_file(ns, env, problems)
    r = _Resolver(ns, env, file, problems)

    store = r.get("store", _text, "")
    kubeconfig = r.get("kubeconfig", _text, None)
    namespace = r.get("namespace", _namespace, DEFAULT_NAMESPACE)
    store_timeout = r.get("store_timeout", _seconds, DEFAULT_STORE_TIMEOUT)
    create_store = r.get("create_store", _boolean, False)
    cluster_id = r.get("cluster_id", _cluster_id, "")
    cluster_cidrs: list[IPNetwork] = r.get("cluster_cidr", _cidrs, [])
    service_cidrs: list[IPNetwork] = r.get("service_cidr", _cidrs, [])
    private_ip: IPAddress | None = r.get("private_ip", _endpoint_address, None)
    public_ip: IPAddress | None = r.get("public_ip", _endpoint_address, None)
    nat_enabled = r.get("nat", _boolean, False)
    hostname = r.get("hostname", _hostname, "")
    health_choice: _HealthChoice = r.get("health_check_ip", _health_check_ip, "auto")
    state_dir = r.get("state_dir", _text, DEFAULT_STATE_DIR)
    metrics_port = r.get("metrics_port", _metrics_port, 0)
    metrics_address: IPAddress = r.get("metrics_address", _address, _METRICS_IP)
    log_level: LogLevel = r.get("log_level", _choice(_LOG_LEVELS), "info")
    resync_interval = r.get("resync_interval", _seconds, DEFAULT_RESYNC_INTERVAL)
    status_interval = r.get("status_interval", _seconds, DEFAULT_STATUS_INTERVAL)
    # Read now, not at import: drivers may register after this module is loaded.
    cable_driver = r.get("cable_driver", _choice(driver_names()), DEFAULT_CABLE_DRIVER)
    device = r.get("device", _device, DEFAULT_DEVICE)
    port = r.get("port", _port, DEFAULT_PORT)
    keepalive = r.get("keepalive", _keepalive, DEFAULT_KEEPALIVE)
    table = r.get("table", _table, DEFAULT_TABLE)
    rule_priority = r.get("rule_priority", _rule_priority, DEFAULT_RULE_PRIORITY)
    mtu = r.get("mtu", _mtu, None)
    psk_file = r.get("psk_file", _text, None)
    backend: BackendChoice = r.get("backend", _choice(_BACKENDS), "auto")
    snat_exemption = r.get("snat_exemption", _boolean, True)
    mss_clamp = r.get("mss_clamp", _boolean, True)
    protected_cidrs: list[IPNetwork] = r.get("protected_cidrs", _cidrs, [])

    r.require("store", bool(store))
    if store == KUBERNETES and kubeconfig is not None and not Path(kubeconfig).is_file():
        missing = not Path(kubeconfig).exists()
        r.problem("kubeconfig",
                  f"{kubeconfig!r} {'does not exist' if missing else 'is not a file'}")
    r.require("cluster_id", bool(cluster_id))
    r.require("cluster_cidr", bool(cluster_cidrs))
    for c in cluster_cidrs:
        for s in service_cidrs:
            if c.overlaps(s):
                r.problem("cluster_cidr", f"'{c}' overlaps '{s}' of {r.label('service_cidr')}")

    if psk_file is not None and not Path(psk_file).is_file():
        missing = not Path(psk_file).exists()
        r.problem("psk_file", f"{psk_file!r} {'does not exist' if missing else 'is not a file'}")

    if not hostname and "hostname" not in r.failed:
        hostname = r.parse("hostname", "--hostname (the host's name)", _hostname,
                           socket.gethostname()) or ""

    if private_ip is None and "private_ip" not in r.failed:
        detected = detect_ip()
        if detected is None:
            r.problem("private_ip", "not set and no address could be detected; set "
                      "--private-ip, WGCABLE_PRIVATE_IP or private_ip in the config file")
        else:
            private_ip = r.parse("private_ip", "--private-ip (detected)", _endpoint_address,
                                 detected)

    health_check_ip: IPAddress | None = None
    if health_choice == "auto":
        if cluster_cidrs:
            found = detect_health_check_ip(cluster_cidrs)
            if found is not None:
                health_check_ip = r.parse("health_check_ip", "--health-check-ip (detected)",
                                          _endpoint_address, found)
    elif health_choice != "none":
        health_check_ip = health_choice

    if problems or private_ip is None:  # (private_ip is never None without a problem)
        raise ConfigError(problems)
    return AgentConfig(
        store=store,
        cluster_id=cluster_id,
        cluster_cidrs=cluster_cidrs,
        service_cidrs=service_cidrs,
        private_ip=private_ip,
        public_ip=public_ip,
        nat_enabled=nat_enabled,
        hostname=hostname,
        health_check_ip=health_check_ip,
        state_dir=state_dir,
        metrics_port=metrics_port,
        metrics_address=metrics_address,
        log_level=log_level,
        resync_interval=resync_interval,
        status_interval=status_interval,
        cable_driver=cable_driver,
        device=device,
        port=port,
        keepalive=keepalive,
        table=table,
        rule_priority=rule_priority,
        mtu=mtu,
        psk_file=psk_file,
        backend=backend,
        snat_exemption=snat_exemption,
        mss_clamp=mss_clamp,
        protected_cidrs=protected_cidrs,
        config_file=file.path,
        kubeconfig=kubeconfig,
        namespace=namespace,
        store_timeout=store_timeout,
        create_store=create_store,
    )


def load_config(
    argv: list[str] | None,
    env: Mapping[str, str],
    *,
    detect_ip: Callable[[], str | None] = detect_private_ip,
    detect_health_check_ip: Callable[[Sequence[IPNetwork]], str | None] = detect_address_in,
) -> AgentConfig:
    """Parse ``argv`` (None: ``sys.argv[1:]``) as `wgcable agent`'s flags, then resolve."""
    parser = argparse.ArgumentParser(prog="wgcable agent")
    add_arguments(parser)
    ns = parser.parse_args(argv)
    return from_namespace(ns, env, detect_ip=detect_ip,
                          detect_health_check_ip=detect_health_check_ip)
