"""Every check of one gateway, from the agent's own settings, in the order they are shown."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from wgcable.agent.settings import AgentConfig
from wgcable.cable.types import HAStatus
from wgcable.cable.wireguard.identity import key_path
from wgcable.diagnose import checks, host, masquerade, probes
from wgcable.diagnose.checks import AgentFacts, Remote, StoreFacts
from wgcable.diagnose.result import Result, fail, passed, warn
from wgcable.routeagent.vtep import DEFAULT_DEVICE as VXLAN_DEVICE
from wgcable.routing import hostnat
from wgcable.routing.iproute import IPRoute
from wgcable.routing.nftables import NftTable, networks, table_name
from wgcable.store.base import StoreUnavailableError
from wgcable.store.open import open_store
from wgcable.wgctrl.types import Device

_PROBES = frozenset({"udp-port", "mtu"})
_STORE = frozenset({"store", "subnet-overlap", "broker", "clock-skew", "rbac"})


def diagnose(cfg: AgentConfig, only: frozenset[str] | None = None) -> list[Result]:
    """Every check, or those named in ``only`` (the probes and the store are only asked
    when one of theirs is wanted: they take the most time)."""
    a = host.read_agent(cfg.state_dir)
    out = [checks.agent(a, time.time())]
    dfacts, dev = host.read_device(cfg.device, cfg.state_dir)
    kernel, go, go_version = host.wireguard_impl()
    out.append(checks.wireguard(kernel, go, go_version, dfacts.kind or None))
    out.append(checks.device(dfacts, a))
    out.append(checks.key_file(host.read_key_file(key_path(cfg.state_dir, cfg.device)),
                               os.geteuid()))
    remotes = host.expected_remotes(a, {p.public_key.base64() for p in dev.peers} if dev
                                    else set())
    out += _tunnel(cfg, a, remotes, dev)
    out += _nftables(cfg, a, remotes)
    active = a.status is None or a.status.gateway.ha_status == HAStatus.ACTIVE
    out.append(checks.rp_filter(host.rp_filters([cfg.device, VXLAN_DEVICE]), cfg.device,
                                active))
    if dev is not None and dfacts.up and (only is None or only & _PROBES):
        out += _probes(cfg, remotes, dfacts.mtu)
    if only is None or only & _STORE:
        out += _store(cfg, a)
    return out if only is None else [r for r in out if r.check in only]


def _tunnel(cfg: AgentConfig, a: AgentFacts, remotes: list[Remote],
            dev: Device | None) -> list[Result]:
    on_device = {p.public_key.base64(): p for p in dev.peers} if dev else {}
    out = [checks.peers(remotes, set(on_device), dev is not None, a)]
    out += checks.handshakes(remotes, {k: p.last_handshake for k, p in on_device.items()},
                             datetime.now(UTC))
    # Where IPv6 is off on the device the driver routes a remote's IPv4 subnets only.
    if not IPRoute().ipv6_enabled(cfg.device):
        remotes = [dataclasses.replace(r, subnets=tuple(s for s in r.subnets if ":" not in s))
                   for r in remotes]
    out.append(checks.routes(remotes, host.routed(cfg.table, cfg.device), cfg.device,
                             cfg.table, a))
    needed: set[int] = {ipaddress.ip_network(s, strict=False).version
                        for r in remotes for s in r.subnets}
    out.append(checks.rule(host.rule_families(cfg.table), needed, cfg.table,
                           cfg.rule_priority, a))
    return out


def _nftables(cfg: AgentConfig, a: AgentFacts, remotes: list[Remote]) -> list[Result]:
    items, why = host.ruleset()
    name = table_name(cfg.device)
    enabled = cfg.snat_exemption or cfg.mss_clamp
    if items is None:
        return [fail(c, f"cannot read the nftables ruleset: {why}",
                     "run diagnose as root where the agent runs, with nftables installed")
                for c in ("nft-table", "mss-clamp", "masquerade")]
    present = any(isinstance(i.get("table"), dict) and i["table"].get("family") == "inet"
                  and i["table"].get("name") == name for i in items)
    sets = NftTable(cfg.device).sets() if present else None
    exempt = networks(e for n, elems in (sets or {}).items() if n.startswith("remote")
                      for e in elems)
    remote_nets = [ipaddress.ip_network(n, strict=False) for r in remotes for n in r.subnets]
    missing = [str(n) for n in remote_nets
               if not any(n.version == e.version and n.subnet_of(e)  # type: ignore[arg-type]
                          for e in exempt)] if cfg.snat_exemption and present else []
    clamps = any(isinstance(r := i.get("rule"), dict) and r.get("table") == name
                 and "maxseg" in str(r.get("expr")) for i in items)
    hits = masquerade.nat_hits(items, list(cfg.cluster_cidrs), remote_nets, name)
    host_nat = hostnat.found((i["chain"] for i in items if isinstance(i.get("chain"), dict)),
                             host.legacy_nat())
    return [
        checks.nft_table(enabled, present, name, missing, a),
        checks.mss_clamp(cfg.mss_clamp, present, clamps, a),
        masquerade.check(hits, cfg.snat_exemption, masquerade.our_priority(items, name)
                         if present else None, exempt, a.repairs, host_nat),
    ]


def _probes(cfg: AgentConfig, remotes: list[Remote], mtu: int) -> list[Result]:
    if not remotes:
        return [passed("udp-port", "no remote gateway to probe")]
    if shutil.which("ping") is None:
        return [warn(c, "not probed: ping is not installed", "install iputils-ping")
                for c in ("udp-port", "mtu")]

    local = cfg.local_endpoint()

    def big(r: Remote) -> bool:
        v6 = ":" in r.health_check_ip
        return probes.ping(r.health_check_ip, size=probes.payload_size(mtu, v6))

    # Every probe of every remote at once: an unreachable remote costs its timeouts once.
    with ThreadPoolExecutor(max_workers=min(24, 3 * len(remotes))) as pool:
        found = [(r,
                  pool.submit(probes.ping, r.health_check_ip) if r.health_check_ip else None,
                  pool.submit(big, r) if r.health_check_ip else None,
                  pool.submit(probes.nat_discovery, r, local.cluster_id, local.cable_name))
                 for r in remotes]
        done = [(r, bool(s and s.result()), bool(b and b.result()), d.result())
                for r, s, b, d in found]
    return ([probes.udp_reachable(r, small, d) for r, small, _, d in done]
            + [probes.pmtu(r, mtu, small, small and large) for r, small, large, _ in done])


def _store(cfg: AgentConfig, a: AgentFacts) -> list[Result]:
    spec = cfg.store_spec()
    facts = StoreFacts(spec.describe(), readable=False,
                       agent_reports=a.status.gateway.status_failure if a.status else "")
    endpoints: list[tuple[str, list[str]]] = []
    try:
        store = open_store(spec, create=False)
        try:
            snap = store.snapshot()
        finally:
            store.close()
    except (StoreUnavailableError, OSError) as e:
        facts.error = str(e)
    else:
        facts.readable = True
        facts.endpoints = len(snap.endpoints)
        facts.bad_entries = list(snap.errors.values())
        endpoints = [(ep.cluster_id, list(ep.subnets)) for ep in snap.endpoints.values()]
    if not any(c == cfg.cluster_id for c, _ in endpoints):
        ours = cfg.local_endpoint()
        endpoints.insert(0, (ours.cluster_id, ours.subnets))
    out = [checks.store(facts)]
    if facts.readable:
        out.append(checks.subnet_overlaps(endpoints))
    if spec.is_kubernetes:
        out += _broker(cfg)
    return out


def _broker(cfg: AgentConfig) -> list[Result]:
    try:
        from wgcable.diagnose import broker
        from wgcable.store.kubernetes import load_api_client
    except ImportError as e:  # the client is an optional dependency
        return [fail("broker", f"the kubernetes Python package is missing: {e}",
                     "pip install 'wgcable[kubernetes]'")]
    try:
        api_client = load_api_client(cfg.kubeconfig)
    except StoreUnavailableError as e:
        return [fail("broker", str(e), "give a readable kubeconfig (--kubeconfig)")]
    try:
        return broker.checks(api_client, cfg.namespace, cfg.local_endpoint(),
                             cfg.gateway_name(), cfg.store_timeout)
    finally:
        api_client.close()
