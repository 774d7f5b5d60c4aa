"""The gateway agent's settings, each declared once, as a field of `AgentConfig`.

A declaration (``setting(...)``) carries the flag, the environment variable, the YAML key
(the flag's name in snake_case unless given), the type (the field's annotation, which mypy
checks against the parser's result), the parser, the default and the help. Everything else
is generated from the declarations: the argparse flags (`add_arguments`), the loading from
flags, environment and YAML (`wgcable.agent.config`), and the settings tables of
``--help``, the loader's docstring and the README (``python -m wgcable.agent.settings_table``).

To add a setting, add one field here (and, if it must reach the driver, pass it on in
`AgentConfig.driver_config`).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar, dataclass_transform

from wgcable.agent import values as v
from wgcable.agent.values import DETECT, REQUIRED, IPAddress, IPNetwork, LogLevel, Unset
from wgcable.cable.types import Endpoint, cable_name_for, gateway_object_name
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
from wgcable.engine.paths import NATT_DISCOVERY_DEFAULT_PORT
from wgcable.ha.lease import LeaseTiming
from wgcable.store.open import DEFAULT_NAMESPACE, DEFAULT_STORE_TIMEOUT, StoreSpec
from wgcable.wgctrl import Key

T = TypeVar("T")

CONFIG_FLAG = "--config"
CONFIG_ENV = "WGCABLE_CONFIG"
BACKENDS: tuple[BackendChoice, ...] = ("auto", "kernel", "userspace")

# How a setting takes its value on the command line: "value" (--flag X), "switch" (--flag and
# --no-flag) or "list" (comma-separated, and the flag may repeat).
Kind = Literal["value", "switch", "list"]
Group = Literal["gateway", "high availability", "cable driver"]  # the --help section, in this order
GROUPS: tuple[Group, ...] = ("gateway", "high availability", "cable driver")


@dataclass(frozen=True, slots=True, kw_only=True)
class Setting:
    """One declared setting, as the parser, the loader and the tables read it."""

    name: str  # AgentConfig's attribute
    flag: str
    env: str
    key: str  # the YAML key, also the argparse dest
    parse: Callable[[object], object]  # raw value -> typed value; raises Invalid
    help: str
    metavar: str
    kind: Kind
    group: Group
    default: object  # the value when unset (as a factory makes it), REQUIRED or DETECT
    # Makes the value when unset afresh (a list must not be shared between configs).
    default_factory: Callable[[], object] | None
    auto: str  # a word that means "as if unset" ("" for none)
    # An empty value is a value, not "unset" (the environment's; flags and YAML always
    # are): Submariner's CE_IPSEC_PSK, which its envconfig reads so.
    empty: bool
    shows: str  # the default as --help and the tables show it

    def unset_value(self) -> object:
        """The value of this setting when it is not set: its default, REQUIRED or DETECT."""
        return self.default if self.default_factory is None else self.default_factory()


_METADATA = "wgcable.setting"


def setting(flag: str, env: str, parse: Callable[[object], T], help: str, *,
            metavar: str = "", kind: Kind = "value", group: Group = "gateway",
            default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING,
            unset: Unset | None = None, auto: str = "", shows: str | None = None,
            key: str = "", empty: bool = False) -> T:
    """Declare a setting: an `AgentConfig` field (``default``/``default_factory`` as for
    ``dataclasses.field``). ``unset`` says what the loader makes of an unset setting if not
    its default: REQUIRED (refused; the case when there is no default) or DETECT (found on
    the host). ``auto``: a word that asks for the unset behaviour explicitly. ``shows``: the
    default in words, when its value alone would not say it. ``empty``: an empty environment
    variable is a value, not unset."""
    if unset is not None:
        fallback: object = unset
    elif default is not dataclasses.MISSING:
        fallback = default
    elif default_factory is not dataclasses.MISSING:
        fallback = default_factory()  # for the tables; the loader calls the factory anew
    else:
        fallback = REQUIRED
    if shows is None:
        shows = _shown(fallback)
    declared = Setting(
        name="",  # the field's name: filled in by _declared()
        flag=flag, env=env, key=key or flag.removeprefix("--").replace("-", "_"),
        parse=parse, help=help, metavar=metavar, kind=kind, group=group,
        default=fallback, auto=auto, shows=shows, empty=empty,
        default_factory=None if unset is not None or default_factory is dataclasses.MISSING
        else default_factory)
    # A Field object stands in for the default, as dataclasses.field()'s own typing has it.
    field: T = dataclasses.field(default=default, default_factory=default_factory,
                                 metadata={_METADATA: declared})
    return field


def _shown(default: object) -> str:
    if default is REQUIRED:
        return "required"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float):
        return f"{default:g}"
    if default is None or default == []:
        return "none"
    if isinstance(default, Unset):
        raise TypeError("a detected setting must say how (shows=...)")
    return str(default)


@dataclass_transform(frozen_default=True, kw_only_default=True,
                     field_specifiers=(setting, dataclasses.field))
def _settings_dataclass(cls: type[T]) -> type[T]:
    """A frozen keyword-only dataclass whose ``setting(...)`` fields are settings."""
    return dataclasses.dataclass(frozen=True, slots=True, kw_only=True)(cls)


# --- The settings ------------------------------------------------------------------------


@_settings_dataclass
class AgentConfig:
    """The agent's settings, resolved and checked (by `wgcable.agent.config.load_config`)."""

    store: str = setting(
        "--store", "WGCABLE_STORE", v.text,
        "endpoint store shared by gateways: a directory, or kubernetes",
        metavar="DIR|kubernetes")
    kubeconfig: str | None = setting(
        "--kubeconfig", "KUBECONFIG", v.text,
        "kubeconfig of the broker API server (kubernetes store)",
        metavar="FILE", default=None, shows="the in-cluster service account")
    namespace: str = setting(
        "--namespace", "BROKER_K8S_REMOTENAMESPACE", v.namespace,
        "broker namespace of Endpoints and Gateways (kubernetes store)",
        metavar="NS", default=DEFAULT_NAMESPACE)
    store_timeout: float = setting(
        "--store-timeout", "WGCABLE_STORE_TIMEOUT", v.seconds,
        "seconds a store request may take before it counts as failed", metavar="S",
        default=DEFAULT_STORE_TIMEOUT)
    create_store: bool = setting(
        "--create-store", "WGCABLE_CREATE_STORE", v.boolean,
        "create a directory store that does not exist", kind="switch", default=False)
    cluster_id: str = setting(
        "--cluster-id", "SUBMARINER_CLUSTERID", v.cluster_id,
        "this cluster's ID, a DNS label", metavar="ID")
    cluster_cidrs: list[IPNetwork] = setting(
        "--cluster-cidr", "SUBMARINER_CLUSTERCIDR", v.cidrs, "pod CIDRs, one or more",
        metavar="CIDR[,CIDR]", kind="list")
    service_cidrs: list[IPNetwork] = setting(
        "--service-cidr", "SUBMARINER_SERVICECIDR", v.cidrs, "service CIDRs",
        metavar="CIDR[,CIDR]", kind="list", default_factory=list)
    private_ip: IPAddress = setting(
        "--private-ip", "WGCABLE_PRIVATE_IP", v.endpoint_address, "this gateway's address",
        metavar="IP", unset=DETECT, shows="detected")
    public_ip: IPAddress | None = setting(
        "--public-ip", "WGCABLE_PUBLIC_IP", v.endpoint_address,
        "its address seen through NAT", metavar="IP", default=None)
    nat_enabled: bool = setting(
        "--nat", "SUBMARINER_NATENABLED", v.boolean, "a NAT sits between gateways",
        kind="switch", default=False)
    hostname: str = setting(
        "--hostname", "WGCABLE_HOSTNAME", v.hostname, "this gateway's name",
        metavar="NAME", unset=DETECT, shows="the host's name")
    health_check_ip: IPAddress | None = setting(
        "--health-check-ip", "WGCABLE_HEALTH_CHECK_IP", v.health_check_ip,
        "address remote gateways ping: auto, none or an IP",
        metavar="IP", default=None, unset=DETECT, auto="auto", shows="auto")
    state_dir: str = setting(
        "--state-dir", "WGCABLE_STATE_DIR", v.text, "where the key and status live",
        metavar="DIR", default=DEFAULT_STATE_DIR)
    metrics_port: int = setting(
        "--metrics-port", "WGCABLE_METRICS_PORT", v.metrics_port,
        "Prometheus metrics port, 0 for none", metavar="PORT", default=0)
    metrics_address: IPAddress = setting(
        "--metrics-address", "WGCABLE_METRICS_ADDRESS", v.address, "metrics listen address",
        metavar="ADDR", default=ipaddress.IPv4Address("127.0.0.1"))
    log_level: LogLevel = setting(
        "--log-level", "WGCABLE_LOG_LEVEL", v.choice(v.LOG_LEVELS),
        ", ".join(v.LOG_LEVELS), metavar="LEVEL", default="info")
    resync_interval: float = setting(
        "--resync-interval", "WGCABLE_RESYNC_INTERVAL", v.seconds,
        "seconds between full reconciles", metavar="S", default=30.0)
    status_interval: float = setting(
        "--status-interval", "WGCABLE_STATUS_INTERVAL", v.seconds,
        "seconds between status updates", metavar="S",
        default=5.0)  # Submariner refreshes gateway status every 5 s

    ha: str = setting(
        "--ha", "WGCABLE_HA", v.choice(("lease", "off")),
        "lease: elect one active gateway per cluster; off: every agent is active",
        metavar="MODE", group="high availability", default="lease")
    lease_kubeconfig: str | None = setting(
        "--lease-kubeconfig", "WGCABLE_LEASE_KUBECONFIG", v.text,
        "kubeconfig of the API server holding the lease (kubernetes store)",
        metavar="FILE", group="high availability", default=None,
        shows="the in-cluster service account")
    lease_namespace: str = setting(
        "--lease-namespace", "WGCABLE_LEASE_NAMESPACE", v.namespace,
        "namespace of the lease (kubernetes store)", metavar="NS",
        group="high availability", default="submariner-operator")
    lease_name: str = setting(
        "--lease-name", "WGCABLE_LEASE_NAME", v.text,
        "the lease's name", metavar="NAME", group="high availability", default=None,
        shows="submariner-gateway-lock; the cluster ID in a directory store")
    # Measured (docs/benchmarks.md, "ha"): a renew takes ~1 ms on a file and a few ms on
    # an idle API server, 100s of ms on a loaded one; 4 s leaves room for several retries
    # of a slow one, and 6 s of lease makes a failover take about 7 s (Submariner's: 15+).
    lease_duration: float = setting(
        "--lease-duration", "LEADERSHIP_LEASEDURATION", v.seconds,
        "seconds a lease lasts unrenewed before another gateway may take it", metavar="S",
        group="high availability", default=6.0)
    lease_renew_deadline: float = setting(
        "--lease-renew-deadline", "LEADERSHIP_RENEWDEADLINE", v.seconds,
        "seconds after which an active gateway that could not renew stops acting",
        metavar="S", group="high availability", default=4.0)
    lease_retry: float = setting(
        "--lease-retry", "LEADERSHIP_RETRYPERIOD", v.seconds,
        "seconds between tries to renew or take the lease", metavar="S",
        group="high availability", default=1.0)

    cable_driver: str = setting(
        "--cable-driver", "SUBMARINER_CABLEDRIVER", v.cable_driver, "cable driver",
        metavar="NAME", group="cable driver", default="wireguard")
    device: str = setting(
        "--device", "WGCABLE_DEVICE", v.device, "WireGuard device",
        metavar="NAME", group="cable driver", default=DEFAULT_DEVICE)
    port: int = setting(
        "--port", "CE_IPSEC_NATTPORT", v.port, "tunnel UDP port",
        metavar="PORT", group="cable driver", default=DEFAULT_PORT)
    natt_discovery_port: int = setting(
        "--natt-discovery-port", "WGCABLE_NATT_DISCOVERY_PORT", v.optional_port,
        "NAT discovery UDP port (Submariner's), 0 for none: remotes' addresses are then "
        "chosen by the static rule", metavar="PORT", group="cable driver",
        default=NATT_DISCOVERY_DEFAULT_PORT)
    keepalive: int = setting(
        "--keepalive", "WGCABLE_KEEPALIVE", v.keepalive, "persistent keepalive, seconds",
        metavar="S", group="cable driver", default=DEFAULT_KEEPALIVE)
    table: int = setting(
        "--table", "WGCABLE_TABLE", v.table, "route table",
        metavar="N", group="cable driver", default=DEFAULT_TABLE)
    rule_priority: int = setting(
        "--rule-priority", "WGCABLE_RULE_PRIORITY", v.rule_priority, "ip rule priority",
        metavar="N", group="cable driver", default=DEFAULT_RULE_PRIORITY)
    mtu: int | None = setting(
        "--mtu", "WGCABLE_MTU", v.mtu, "device MTU, or auto: derived from the underlay",
        metavar="N", group="cable driver", default=None, shows="auto")
    psk_file: str | None = setting(
        "--psk-file", "WGCABLE_PSK_FILE", v.text, "preshared key file (a raw key, as `wg genpsk` "
        "prints it)", metavar="FILE", group="cable driver", default=None)
    # Submariner's: the key is the text's SHA-256, so that its gateways and ours form cables.
    # Parsed into the key at once: the text itself is kept nowhere.
    psk: Key | None = setting(
        "--psk", "CE_IPSEC_PSK", v.psk_text,
        "preshared key text, as Submariner's (the key is its SHA-256; an empty variable is "
        "an empty text); a flag shows in ps: prefer the variable or the YAML file",
        metavar="TEXT", group="cable driver", default=None, empty=True)
    allow_default_psk: bool = setting(
        "--allow-default-psk", "WGCABLE_ALLOW_DEFAULT_PSK", v.boolean,
        "accept Submariner's default preshared key (of 'default psk' or an empty text), "
        "which anyone can compute; without --psk or --psk-file, use it",
        kind="switch", group="cable driver", default=False)
    backend: BackendChoice = setting(
        "--backend", "WGCABLE_BACKEND", v.choice(BACKENDS), ", ".join(BACKENDS),
        metavar="NAME", group="cable driver", default="auto")
    snat_exemption: bool = setting(
        "--snat-exemption", "WGCABLE_SNAT_EXEMPTION", v.boolean,
        "keep pod addresses on traffic to remote clusters (no CNI masquerade)",
        kind="switch", group="cable driver", default=True)
    mss_clamp: bool = setting(
        "--mss-clamp", "WGCABLE_MSS_CLAMP", v.boolean, "clamp TCP MSS to the tunnel's MTU",
        kind="switch", group="cable driver", default=True)
    protected_cidrs: list[IPNetwork] = setting(
        "--protected-cidrs", "WGCABLE_PROTECTED_CIDRS", v.cidrs,
        "networks no remote cluster's subnets may overlap",
        metavar="CIDR[,CIDR]", kind="list", group="cable driver", default_factory=list)

    # Not a setting: the YAML file read, if any (for the start-up log).
    config_file: str | None = dataclasses.field(default=None)

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

    def lease_timing(self) -> LeaseTiming:
        return LeaseTiming(self.lease_duration, self.lease_renew_deadline, self.lease_retry)

    def lease_holder(self) -> str:
        """This candidate's identity in the lease (Submariner's form)."""
        return f"{self.hostname}-submariner-gateway"

    def gateway_name(self) -> str:
        """The Gateway object's name: the cluster's ID and the host's name, so that
        clusters whose nodes share a host name do not write each other's."""
        return gateway_object_name(self.cluster_id, self.hostname)

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
            preshared_key=self.psk,
            allow_default_psk=self.allow_default_psk,
            table=self.table,
            rule_priority=self.rule_priority,
            mtu=self.mtu,
            backend=self.backend,
            snat_exemption=self.snat_exemption,
            mss_clamp=self.mss_clamp,
            # Status judges silence in keepalive intervals: it must use the same interval.
            thresholds=StatusThresholds(keepalive=float(self.keepalive)),
        )


def _declared(cls: type) -> tuple[Setting, ...]:
    return tuple(dataclasses.replace(f.metadata[_METADATA], name=f.name)
                 for f in dataclasses.fields(cls) if _METADATA in f.metadata)


SETTINGS = _declared(AgentConfig)  # in declaration order: the order of --help and the tables
BY_KEY = {s.key: s for s in SETTINGS}


# --- Generated: the argparse flags -------------------------------------------------------


def _help(s: Setting) -> str:
    default = "required" if s.default is REQUIRED else f"default: {s.shows}"
    # argparse %-formats help strings: a literal % must be doubled.
    return f"{s.help} ({default})\nenv {s.env}, YAML {s.key}".replace("%", "%%")


class _HelpFormatter(argparse.HelpFormatter):
    """Keeps a flag's help lines apart (what it is; where else it can be set), so that the
    environment variable and YAML key line up under each flag instead of breaking mid-name."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        lines: list[str] = []
        for part in text.splitlines():  # (a loop: super() does not work in a comprehension)
            lines.extend(super()._split_lines(part, width))
        return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the agent's flags. Every flag defaults to None so that an unset flag lets the
    environment or the config file speak; values are checked by the loader."""
    parser.formatter_class = _HelpFormatter
    parser.add_argument(CONFIG_FLAG, metavar="FILE",
                        help=f"YAML settings file\nenv {CONFIG_ENV}")
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for s in SETTINGS:
        group = groups[s.group]
        if s.kind == "switch":
            group.add_argument(s.flag, dest=s.key, action=argparse.BooleanOptionalAction,
                               default=None, help=_help(s))
        elif s.kind == "list":  # repeatable as well as comma-separated
            group.add_argument(s.flag, dest=s.key, action="append", metavar=s.metavar,
                               help=_help(s))
        else:
            group.add_argument(s.flag, dest=s.key, metavar=s.metavar, help=_help(s))
    if parser.epilog is None:
        parser.epilog = (
            "Each setting comes from its flag, else its environment variable, else its key "
            f"in the YAML file ({CONFIG_FLAG}), else its default; an empty variable or a "
            "YAML null counts as unset. Lists are comma-separated (flags may also repeat, "
            "YAML may give a list); booleans are true/false, yes/no or 1/0. "
            "CE_IPSEC_PSK is the exception: set but empty, it is an empty text, as in "
            "Submariner.")


# --- Generated: the tables ---------------------------------------------------------------


class Row(NamedTuple):
    flag: str
    env: str
    key: str
    default: str
    help: str


def rows() -> Iterator[Row]:
    """One row per setting, --config first."""
    yield Row(CONFIG_FLAG, CONFIG_ENV, "(none)", "no file", "YAML settings file")
    for s in SETTINGS:
        flag = f"{s.flag} / --no-{s.flag.removeprefix('--')}" if s.kind == "switch" else s.flag
        yield Row(flag, s.env, s.key, s.shows, s.help)


def text_table() -> str:
    """The settings as a reStructuredText simple table (for the loader's docstring)."""
    header = Row("flag", "environment variable", "YAML key", "default", "")
    body = list(rows())
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(4)]
    rule = "  ".join("=" * w for w in widths)

    def line(r: Row) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths, strict=True)).rstrip()

    return "\n".join([rule, line(header), rule, *map(line, body), rule]) + "\n"


def markdown_table() -> str:
    """The settings as a Markdown table (for the README)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| Flag | Environment variable | YAML key | Default | Meaning |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows():
        key = cell(r.key) if r.key == "(none)" else f"`{cell(r.key)}`"
        flag = " / ".join(f"`{f}`" for f in r.flag.split(" / "))
        lines.append(f"| {flag} | `{cell(r.env)}` | {key} | {cell(r.default)} "
                     f"| {cell(r.help)} |")
    return "\n".join(lines) + "\n"
