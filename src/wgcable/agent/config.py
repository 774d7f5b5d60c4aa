"""Loading the gateway agent's settings (`wgcable agent`): flags, environment, a YAML file.

Each setting is taken from, in order: its flag, its environment variable, its key in the YAML
config file (``--config FILE`` or ``WGCABLE_CONFIG``), its default. Environment variables use
Submariner's names where Submariner has the setting, so a gateway pod's environment works
unchanged; the others are ``WGCABLE_<NAME>``. An empty environment variable counts as unset
(manifests often template empty values), and so does a YAML ``null``; but ``CE_IPSEC_PSK``
set to the empty text is the empty text, as Submariner reads it (``cable/wireguard/psk.py``).

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

The settings, as declared in `wgcable.agent.settings` (this table is generated from them):

"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import json
import socket
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wgcable.agent.settings import (
    BY_KEY,
    CONFIG_ENV,
    CONFIG_FLAG,
    SETTINGS,
    AgentConfig,
    Setting,
    add_arguments,
    text_table,
)
from wgcable.agent.values import (
    DETECT,
    REQUIRED,
    Invalid,
    IPAddress,
    IPNetwork,
    Unset,
    endpoint_address,
    hostname,
)
from wgcable.cable.wireguard import psk
from wgcable.ha.lease import LeaseTiming
from wgcable.store.open import KUBERNETES

# The docstring's table of settings comes from their declarations, so it cannot drift.
__doc__ = f"{__doc__}{text_table()}"

__all__ = [
    "AgentConfig",
    "ConfigError",
    "IPAddress",
    "IPNetwork",
    "add_arguments",
    "address_in",
    "detect_address_in",
    "detect_private_ip",
    "from_namespace",
    "load_config",
    "private_ip_from",
]

# The name tests/unit/test_agent_config.py checks the docstring's table against.
_SETTINGS = SETTINGS


class ConfigError(ValueError):
    """The agent's settings are unusable; ``problems`` has one message per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# --- Where each value comes from ---------------------------------------------------------


@dataclass(slots=True)
class _ConfigFile:
    path: str | None = None
    settings: dict[str, object] = field(default_factory=dict)


def _read_config_file(ns: argparse.Namespace, env: Mapping[str, str],
                      problems: list[str]) -> _ConfigFile:
    path: str | None = getattr(ns, "config", None)
    label = CONFIG_FLAG
    if path is None and env.get(CONFIG_ENV, "").strip():
        path, label = env[CONFIG_ENV].strip(), f"{CONFIG_FLAG} ({CONFIG_ENV})"
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
        if isinstance(key, str) and key in BY_KEY:
            settings[key] = value
            continue
        close = difflib.get_close_matches(str(key).replace("-", "_"), BY_KEY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"{label}: unknown key {key!r} in {path!r}{hint}")
    return _ConfigFile(path, settings)


def _yaml_reason(error: yaml.YAMLError) -> str:
    # The default text spans several lines; one line with the position is clearer.
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(error).replace("\n", " ")


_BY_NAME = {s.name: s for s in SETTINGS}


class _Resolver:
    """Picks each setting's winning source, parses it, and collects problems. Settings are
    named by their `AgentConfig` attribute."""

    def __init__(self, ns: argparse.Namespace, env: Mapping[str, str], file: _ConfigFile,
                 problems: list[str]) -> None:
        self.ns = ns
        self.env = env
        self.file = file
        self.problems = problems
        self.failed: set[str] = set()  # settings whose value was wrong (already reported)

    def _source(self, s: Setting) -> tuple[str, object] | None:
        flag_value = getattr(self.ns, s.key, None)
        if isinstance(flag_value, list):  # a repeated flag: show it as one comma list
            return s.flag, ",".join(flag_value)
        if flag_value is not None:
            return s.flag, flag_value
        env_value = self.env.get(s.env)
        if env_value is not None and (env_value.strip() or s.empty):
            return f"{s.flag} ({s.env})", env_value
        file_value = self.file.settings.get(s.key)
        if file_value is not None:
            return f"{s.flag} ({s.key} in {self.file.path})", file_value
        return None

    def label(self, name: str) -> str:
        s = _BY_NAME[name]
        source = self._source(s)
        return s.flag if source is None else source[0]

    def value(self, s: Setting) -> object:
        """The setting's parsed value; its unset value (maybe REQUIRED or DETECT) when unset
        or wrong."""
        source = self._source(s)
        if source is None:
            return s.unset_value()
        label, raw = source
        if s.auto and isinstance(raw, str) and raw.strip().lower() == s.auto:
            return s.unset_value()
        value = self.parse(s.name, label, s.parse, raw)
        return s.unset_value() if value is _WRONG else value

    def parse(self, name: str, label: str, parse: Callable[[object], object],
              raw: object) -> object:
        """``parse(raw)``, or _WRONG after reporting why not."""
        try:
            return parse(raw)
        except Invalid as e:
            self.failed.add(name)
            self.problems.extend(f"{label}: {m}" for m in e.messages)
            return _WRONG

    def problem(self, name: str, message: str) -> None:
        self.failed.add(name)
        self.problems.append(f"{self.label(name)}: {message}")

    def require(self, s: Setting, present: bool) -> None:
        if present or s.name in self.failed:
            return
        source = self._source(s)
        if source is not None:  # given, but nothing in it: a lone ',' or []
            self.problem(s.name, f"{source[1]!r} has no CIDR in it")
            return
        self.problem(s.name, f"required: set {s.flag}, {s.env} or {s.key} in the config file")


_WRONG = object()  # a value that did not parse


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
    values: dict[str, Any] = {s.name: r.value(s) for s in SETTINGS}

    for s in SETTINGS:
        if s.default is REQUIRED:
            r.require(s, not isinstance(values[s.name], Unset) and bool(values[s.name]))

    # Checks across settings, or of the host.
    store, kubeconfig = values["store"], values["kubeconfig"]
    if store == KUBERNETES and kubeconfig is not None and not Path(kubeconfig).is_file():
        missing = not Path(kubeconfig).exists()
        r.problem("kubeconfig",
                  f"{kubeconfig!r} {'does not exist' if missing else 'is not a file'}")
    cluster_cidrs: list[IPNetwork] = values["cluster_cidrs"]
    if isinstance(cluster_cidrs, Unset):
        cluster_cidrs = []
    for c in cluster_cidrs:
        for s in values["service_cidrs"]:
            if c.overlaps(s):
                r.problem("cluster_cidrs",
                          f"'{c}' overlaps '{s}' of {r.label('service_cidrs')}")
    try:
        LeaseTiming(values["lease_duration"], values["lease_renew_deadline"],
                    values["lease_retry"])
    except (ValueError, TypeError) as e:
        if not {"lease_duration", "lease_renew_deadline", "lease_retry"} & r.failed:
            r.problem("lease_renew_deadline", str(e))
    lease_kubeconfig = values["lease_kubeconfig"]
    if lease_kubeconfig is not None and not Path(lease_kubeconfig).is_file():
        r.problem("lease_kubeconfig", f"{lease_kubeconfig!r} is not a file")
    psk_file = values["psk_file"]
    if psk_file is not None and not Path(psk_file).is_file():
        missing = not Path(psk_file).exists()
        r.problem("psk_file", f"{psk_file!r} {'does not exist' if missing else 'is not a file'}")
    _check_psk(values, r)

    # The settings left to detection (DETECT), unless their value was wrong.
    if values["hostname"] is DETECT and "hostname" not in r.failed:
        values["hostname"] = r.parse("hostname", f"{_flag('hostname')} (the host's name)",
                                     hostname, socket.gethostname())

    if values["private_ip"] is DETECT and "private_ip" not in r.failed:
        detected = detect_ip()
        if detected is None:
            s = _BY_NAME["private_ip"]
            r.problem("private_ip", "not set and no address could be detected; set "
                      f"{s.flag}, {s.env} or {s.key} in the config file")
        else:
            values["private_ip"] = r.parse("private_ip", f"{_flag('private_ip')} (detected)",
                                           endpoint_address, detected)

    if values["health_check_ip"] is DETECT:
        values["health_check_ip"] = None
        if cluster_cidrs and "health_check_ip" not in r.failed:
            found = detect_health_check_ip(cluster_cidrs)
            if found is not None:
                values["health_check_ip"] = r.parse(
                    "health_check_ip", f"{_flag('health_check_ip')} (detected)",
                    endpoint_address, found)

    if problems:
        raise ConfigError(problems)
    undetected = [name for name, value in values.items() if isinstance(value, Unset)]
    if undetected:  # a setting declared DETECT that nothing above detects: our bug
        raise RuntimeError(f"no detection for the setting(s) {', '.join(undetected)}")
    return AgentConfig(**values, config_file=file.path)


def _check_psk(values: dict[str, Any], r: _Resolver) -> None:
    """One preshared key at most; Submariner's default (of an unset --psk, with
    --allow-default-psk) or a known one refused unless allowed. No message shows the text."""
    key, allowed = values["psk"], values["allow_default_psk"]
    if "psk" in r.failed:
        return
    if key is not None and values["psk_file"] is not None:
        r.problem("psk", f"cannot be used with {r.label('psk_file')}: give one preshared "
                  "key, a text or a file")
    elif key is None and values["psk_file"] is None and allowed is True:
        # As Submariner without CE_IPSEC_PSK: the key of "default psk" (warned of by the
        # driver). Without --allow-default-psk an unset --psk means no preshared key.
        values["psk"] = psk.from_text(None)
    elif key is not None and (why := psk.why_weak(key, allow_default=allowed is True)):
        r.problem("psk", f"refused: {why}")


def _flag(name: str) -> str:
    return _BY_NAME[name].flag


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
