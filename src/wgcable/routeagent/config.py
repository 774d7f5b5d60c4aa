"""Settings of the route agent (`wgcable route-agent`): each declared once, as a flag with
its environment variable and default. Environment variables use Submariner's names where
Submariner has the setting (a route agent pod's environment works unchanged); an empty one
counts as unset."""

from __future__ import annotations

import argparse
import ipaddress
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from wgcable.agent import values as v
from wgcable.agent.config import detect_private_ip
from wgcable.cable.remote import parse_cluster_id
from wgcable.cable.wireguard.config import DEFAULT_STATE_DIR
from wgcable.routeagent import vtep
from wgcable.routeagent.agent import RouteAgentConfig
from wgcable.routeagent.state import Settings
from wgcable.store.open import DEFAULT_NAMESPACE, StoreSpec


class ConfigError(ValueError):
    pass


def _device(text: str) -> str:
    if not 0 < len(text) < 16 or not all(c.isalnum() or c in "-_." for c in text):
        raise ValueError("must be 1-15 letters, digits, '-', '_' or '.'")
    return text


def _seconds(value: object) -> float:
    number = v.seconds(value)
    if number >= 86400:
        raise v.Invalid(f"{value!r} is a day or more")
    return number


def _ipv4(text: str) -> str:
    if not isinstance(ipaddress.ip_address(text), ipaddress.IPv4Address):
        raise ValueError("must be an IPv4 address (the VXLAN underlay is IPv4)")
    return text


@dataclass(frozen=True, slots=True)
class Flag:
    flag: str
    env: str
    parse: Callable[[Any], object]
    default: str | None  # None: required; "": detected (``shows`` says how)
    help: str
    shows: str = ""


FLAGS: tuple[Flag, ...] = (
    Flag("--store", "WGCABLE_STORE", str, None,
         "the gateway agents' store: a directory, or 'kubernetes'"),
    Flag("--kubeconfig", "KUBECONFIG", str, "", "broker kubeconfig (kubernetes store)",
         "the in-cluster service account"),
    Flag("--namespace", "BROKER_K8S_REMOTENAMESPACE", str, DEFAULT_NAMESPACE,
         "broker namespace (kubernetes store)"),
    Flag("--cluster-id", "SUBMARINER_CLUSTERID", parse_cluster_id, None, "this cluster's ID"),
    Flag("--node-ip", "WGCABLE_NODE_IP", _ipv4, "",
         "this node's IPv4 address, the VXLAN's source", "the default route's source"),
    Flag("--hostname", "WGCABLE_HOSTNAME", str, "", "this node's name", "the host's name"),
    Flag("--device", "WGCABLE_VXLAN_DEVICE", _device, vtep.DEFAULT_DEVICE,
         "the VXLAN device"),
    Flag("--vni", "WGCABLE_VXLAN_VNI", v.integer(1, (1 << 24) - 1), str(vtep.DEFAULT_VNI),
         "VXLAN network identifier"),
    Flag("--vxlan-port", "WGCABLE_VXLAN_PORT", v.port, str(vtep.DEFAULT_PORT), "VXLAN UDP port"),
    Flag("--state-dir", "WGCABLE_STATE_DIR", str, DEFAULT_STATE_DIR,
         "status file and the rp_filter values it changed"),
    Flag("--resync-interval", "WGCABLE_RESYNC_INTERVAL", _seconds, "30",
         "seconds between full checks of everything it owns"),
    Flag("--check-interval", "WGCABLE_CHECK_INTERVAL", _seconds, "5",
         "seconds between cheap checks that put back what someone else removed"),
    Flag("--log-level", "WGCABLE_LOG_LEVEL", str.lower, "info", "debug, info, warning, error"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    for f in FLAGS:
        shown = "required" if f.default is None else (f.default or f.shows)
        p.add_argument(f.flag, help=f"{f.help} (env {f.env}; default: {shown})")
    p.add_argument("--cleanup", action="store_true",
                   help="remove the device, routes, nftables table and rp_filter changes "
                   "this node's route agent made, and exit")


def load(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[RouteAgentConfig,
                                                                     StoreSpec, str]:
    """(config, store, log level); ConfigError names every bad or missing setting."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for f in FLAGS:
        dest = f.flag[2:].replace("-", "_")
        raw = getattr(args, dest, None)
        if raw is None:
            raw = env.get(f.env) or None
        if raw is None:
            if f.default is None:
                problems.append(f"{f.flag} (or {f.env}) is required")
                continue
            raw = f.default
        try:
            values[dest] = f.parse(raw) if raw != "" else ""
        except ValueError as e:
            problems.append(f"{f.flag}={raw!r}: {e}")
    if not problems and not values["node_ip"]:
        detected = detect_private_ip()
        if detected is None:
            problems.append("--node-ip: none given and none detected (no default route and "
                            "no global IPv4 address)")
        else:
            values["node_ip"] = detected
    if problems:
        raise ConfigError("; ".join(problems))
    cfg = RouteAgentConfig(
        cluster_id=values["cluster_id"],
        node_ip=ipaddress.ip_address(values["node_ip"]),
        hostname=values["hostname"] or socket.gethostname(),
        state_dir=values["state_dir"],
        settings=Settings(values["device"], values["vni"], values["vxlan_port"]),
        resync_interval=values["resync_interval"],
        check_interval=values["check_interval"],
    )
    spec = StoreSpec(values["store"], values["kubeconfig"] or None, values["namespace"])
    return cfg, spec, values["log_level"]
