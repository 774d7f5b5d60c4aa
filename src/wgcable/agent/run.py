"""The gateway agent's life: start the driver, publish, reconcile, report; stop cleanly.

SIGTERM and SIGINT stop the agent but leave the device, peers and routes in place, and our
endpoint published: a restarted agent adopts them, so a restart drops no traffic. An active
gateway keeps its lease too: restarted within the lease's duration, it is still the active
one (no failover). SIGUSR1 hands the lease over to another candidate (`wgcable handover`).
SIGUSR2 rotates the key pair (`wgcable rotate-key`): the device switches, then the new
public key is published; no packet is lost.
`wgcable cleanup` is the way to remove everything.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from wgcable import __version__
from wgcable.agent.config import AgentConfig
from wgcable.agent.statusfile import STATUS_FILE, write_status_file
from wgcable.cable import new_driver
from wgcable.cable.types import Endpoint, GatewayStatus
from wgcable.cable.wireguard import WireGuardDriver
from wgcable.engine.engine import Engine
from wgcable.engine.health import HealthChecker
from wgcable.engine.metrics import GatewayMetricsState, serve_metrics
from wgcable.engine.paths import NATT_DISCOVERY_PORT
from wgcable.engine.plan import static_rule
from wgcable.ha.elector import Elector, Role
from wgcable.ha.open import open_lease
from wgcable.natdiscovery import NATDiscovery, Target
from wgcable.store.open import open_store

log = logging.getLogger("wgcable.agent")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def run_agent(cfg: AgentConfig, stop: threading.Event | None = None) -> int:
    stop = stop or threading.Event()
    local = cfg.local_endpoint()
    store = open_store(cfg.store_spec())  # first: a bad kubeconfig must not touch the host
    # The broker's address is protected: no remote subnet may route it into a tunnel.
    driver = new_driver(cfg.cable_driver, local,
                        config=cfg.driver_config(broker=store.server_addresses()))
    driver.init()  # adds publicKey and interface-name to the local endpoint
    elector = None
    if cfg.ha == "lease":
        lease = open_lease(cfg.store_spec(), cfg.cluster_id, name=cfg.lease_name,
                           kubeconfig=cfg.lease_kubeconfig, namespace=cfg.lease_namespace)
        elector = Elector(lease, cfg.lease_holder(), cfg.lease_timing())
        # Before the engine starts: a restarted active gateway is active at once.
        elector.step()
        log.info("gateway lease %s: %s", lease.describe(), elector.role)
    health = HealthChecker(
        source_ip=str(cfg.health_check_ip) if cfg.health_check_ip else None)
    engine_ref: list[Engine] = []

    def paths_changed() -> None:  # discovery may answer before the engine exists
        if engine_ref:
            engine_ref[0].paths_changed()

    discovery = start_discovery(cfg, local, paths_changed)

    def on_status(status: GatewayStatus) -> None:
        write_status_file(cfg.state_dir, status)

    engine = Engine(
        local, driver, store, hostname=cfg.gateway_name(), health=health, elector=elector,
        resync_interval=cfg.resync_interval, status_interval=cfg.status_interval,
        on_status=on_status, version=__version__, store_timeout=cfg.store_timeout,
        discovery=discovery,
    )
    engine_ref.append(engine)

    if elector is not None:
        # From now on, before the engine starts: a handover during its start is reported
        # (the status says passive at once) and acted on.
        elector.on_change = lambda _role: engine.role_changed()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping, tunnels stay up", signal.Signals(signum).name)
        stop.set()

    def on_handover(_signum: int, _frame: FrameType | None) -> None:
        if elector is None or elector.role is not Role.ACTIVE:
            log.info("SIGUSR1: not the active gateway, nothing to hand over")
            return
        # Not in the handler itself: it may write to an API server.
        threading.Thread(target=elector.hand_over, name="handover", daemon=True).start()

    def on_rotate(_signum: int, _frame: FrameType | None) -> None:
        log.info("SIGUSR2: rotating the key pair")
        engine.request_key_rotation()  # done on the engine's thread, which owns the driver

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGUSR1, on_handover)
        signal.signal(signal.SIGUSR2, on_rotate)

    metrics = None
    if cfg.metrics_port:
        def state() -> GatewayMetricsState:
            status, refused = engine.status_and_refused()
            return GatewayMetricsState.for_local(
                local, driver.name, status.connections, dict(engine.established),
                store_problem=engine.store_problem, active=engine.role is Role.ACTIVE,
                refused=refused)
        metrics = serve_metrics(state, str(cfg.metrics_address), cfg.metrics_port)
        log.info("metrics on http://%s:%d/metrics", cfg.metrics_address, metrics.port)

    engine.start()
    if elector is not None:
        elector.start(stop)
    log.info("agent for cluster %s running on the %s: endpoint %s, %d remote(s) connected",
             cfg.cluster_id, cfg.store_spec().describe(), local.object_name(),
             len(engine.status.connections))
    try:
        # Not one long wait: a signal the kernel gives to another thread does not wake the
        # main thread, where Python runs its handler (a handover was lost so). Waking every
        # 0.1 s runs it within that.
        while not stop.wait(0.1):
            pass
    finally:
        if elector is not None:
            elector.wake()  # its loop ends; the lease is kept (a restart is no failover)
        store.close()  # first: it ends a watch blocked on the API server's stream at once
        engine.stop()
        if discovery is not None:
            discovery.close()
        close = getattr(driver, "close", None)
        if callable(close):
            close()
        if metrics is not None:
            metrics.stop()
        if elector is not None and elector.role is Role.ACTIVE:
            # A last renewal on the way out: a restart (a rolling update) then has the
            # lease's whole duration to come back before a standby takes over.
            elector.step()
    return 0


def start_discovery(cfg: AgentConfig, local: Endpoint, on_change: Callable[[], None]
                    ) -> NATDiscovery | None:
    """NAT discovery's responder and prober on ``--natt-discovery-port``, its port added to
    our Endpoint; None when it is off or its port cannot be had (the static rule then picks
    remotes' addresses, and remotes' probes of us go unanswered, as with a Submariner
    gateway without it)."""
    if not cfg.natt_discovery_port:
        return None

    def static(t: Target) -> tuple[str, bool]:
        return static_rule(local.public_ip, t.private_ip, t.public_ip, t.nat_enabled)

    discovery = NATDiscovery(
        cluster_id=local.cluster_id, endpoint_id=local.cable_name,
        port=cfg.natt_discovery_port,
        # Our own addresses, not the published public one: a probe sent to that is what
        # the responder reports as destination NAT (a NAT forwarded it), as Submariner's.
        local_ips=list(dict.fromkeys(ip for ip in (local.private_ip, *local.private_ips)
                                     if ip)),
        on_change=on_change, static_rule=static)
    try:
        discovery.start()
    except OSError as e:
        log.warning("NAT discovery on UDP port %d is off: %s; remote addresses are chosen by "
                    "the static rule", cfg.natt_discovery_port, e)
        discovery.close()
        return None
    local.backend_config[NATT_DISCOVERY_PORT] = str(discovery.port)
    log.info("NAT discovery on UDP port %d", discovery.port)
    return discovery


def cleanup(cfg: AgentConfig, remove_key: bool) -> int:
    """Remove everything the agent made: device, peers, routes, rules, daemon, our endpoint
    and status; and the key pair when asked."""
    local = cfg.local_endpoint()
    # The store first: a mistyped one is refused before anything is removed; and cleanup
    # creates no store.
    store = open_store(cfg.store_spec(), create=False)
    try:
        driver = new_driver(cfg.cable_driver, local, config=cfg.driver_config())
        if remove_key and isinstance(driver, WireGuardDriver):
            driver.cleanup(remove_key=True)
        else:
            driver.cleanup()
        store.withdraw(local)
        remove_status = getattr(store, "remove_status", None)
        if callable(remove_status):
            remove_status(cfg.gateway_name())
    finally:
        store.close()
    status = Path(cfg.state_dir) / STATUS_FILE
    status.unlink(missing_ok=True)
    # A route agent on this node (the default device, the same state directory) too.
    from wgcable.routeagent.agent import remove as remove_route_agent
    from wgcable.routeagent.vtep import DEFAULT_DEVICE as ROUTE_AGENT_DEVICE

    remove_route_agent(ROUTE_AGENT_DEVICE, cfg.state_dir)
    log.info("removed the device, routes, rules and endpoint of cluster %s", cfg.cluster_id)
    return 0
