"""Prometheus metrics of the gateway, with Submariner's metric names and labels.

A collector, not module-level gauges: every scrape asks a provider for the current state and
reports exactly that, so a connection that is gone disappears from the next scrape (no stale
series to delete by hand, no global registry shared between tests or engines).
"""

from __future__ import annotations

import collections
import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from wgcable.cable.types import Connection, Endpoint

log = logging.getLogger(__name__)

CABLE_LABELS = (
    "cable_driver",
    "local_cluster",
    "local_hostname",
    "local_endpoint_ip",
    "remote_cluster",
    "remote_hostname",
    "remote_endpoint_ip",
)
SHORT_LABELS = ("cable_driver", "status")

RX_BYTES = "submariner_gateway_rx_bytes"
TX_BYTES = "submariner_gateway_tx_bytes"
CONNECTIONS = "submariner_connections"
CONNECTIONS_SHORT = "submariner_connections_short"
ESTABLISHED = "submariner_connection_established_timestamp"
LATENCY = "submariner_connection_latency_seconds"
# Ours: Submariner has no gauge for the broker, and an alert on a hung one needs it.
STORE_AVAILABLE = "wgcable_store_available"
STORE_LABELS = ("local_cluster", "local_hostname")
# Ours too: Submariner says haStatus in the Gateway object only; "no active gateway in a
# cluster" is an alert on sum by (local_cluster) of it.
GATEWAY_ACTIVE = "wgcable_gateway_active"
# Ours, per cable: Submariner has no metric of a refused Endpoint (its connection is just
# "error", as a dead cable's is) nor of handshakes, and the alerts need both.
ENDPOINT_REFUSED = "wgcable_endpoint_refused"
LAST_HANDSHAKE = "wgcable_connection_last_handshake_timestamp_seconds"

# Help texts as Submariner has them, so dashboards and docs read the same.
_HELP = {
    RX_BYTES: "Count of bytes received (by cable driver and cable)",
    TX_BYTES: "Count of bytes transmitted (by cable driver and cable)",
    CONNECTIONS: "Number of connections and corresponding status (by cable driver and cable)",
    CONNECTIONS_SHORT: "Summary of connections and corresponding status without cable information",
    ESTABLISHED: "Timestamp of last successful connection established (by cable driver and cable)",
    LATENCY: "Connection latency in seconds (last RTT, by cable driver and cable)",
    STORE_AVAILABLE: "1 while the endpoint store answers, 0 while the gateway status "
                     "reports a store problem (its statusFailure says which)",
    GATEWAY_ACTIVE: "1 while this gateway is its cluster's active one (Gateway haStatus "
                    "active), 0 while it is passive",
    ENDPOINT_REFUSED: "1 while the remote cluster's latest Endpoint is refused (the "
                      "connection's statusMessage says why), else 0 (by cable driver and cable)",
    LAST_HANDSHAKE: "Timestamp of the last WireGuard handshake with the remote gateway, "
                    "absent before the first (by cable driver and cable)",
}

# Every metric name the agent exports: the dashboard and the alert rules use no other.
EXPORTED = tuple(_HELP)


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayMetricsState:
    """What one scrape reports: the local gateway and its current connections."""

    cable_driver: str
    local_cluster: str
    local_hostname: str
    local_endpoint_ip: str
    connections: Sequence[Connection] = ()
    # Remote cluster ID -> epoch seconds the connection was established (connected ones only).
    established: Mapping[str, float] = field(default_factory=dict)
    store_problem: str = ""  # why the store is unusable, as in the last status; "" if fine
    active: bool = True  # haStatus: active (a passive candidate has no connections)
    refused: frozenset[str] = frozenset()  # remote clusters whose latest Endpoint was refused

    @classmethod
    def for_local(
        cls,
        local: Endpoint,
        cable_driver: str,
        connections: Sequence[Connection] = (),
        established: Mapping[str, float] | None = None,
        *,
        endpoint_ip: str | None = None,
        store_problem: str = "",
        active: bool = True,
        refused: frozenset[str] = frozenset(),
    ) -> GatewayMetricsState:
        """From the local Endpoint; the IP defaults to its public IP, else its private IP
        (Submariner labels with the public IP)."""
        return cls(
            cable_driver=cable_driver,
            local_cluster=local.cluster_id,
            local_hostname=local.hostname,
            local_endpoint_ip=endpoint_ip if endpoint_ip is not None else local.gateway_ip(),
            connections=connections,
            established=established or {},
            store_problem=store_problem,
            active=active,
            refused=refused,
        )


# Returns None when there is nothing to report (e.g. not started yet, or a passive gateway).
MetricsProvider = Callable[[], GatewayMetricsState | None]


def remote_endpoint_ip(c: Connection) -> str:
    """Submariner's label is the remote public IP; without one, the IP we actually use."""
    return c.endpoint.public_ip or c.using_ip or c.endpoint.private_ip


class GatewayCollector(Collector):
    """Yields Submariner's gateway gauges from the provider's state at scrape time."""

    def __init__(self, provider: MetricsProvider) -> None:
        self.provider = provider

    def describe(self) -> Iterable[Metric]:
        # Names only, so registering does not call the provider.
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        state = self.provider()
        if state is None:
            return []
        families = self._families()
        rx, tx, conns, short, established, latency, store, active, refused, handshake = families
        store.add_metric([state.local_cluster, state.local_hostname],
                         0.0 if state.store_problem else 1.0)
        active.add_metric([state.local_cluster, state.local_hostname],
                          1.0 if state.active else 0.0)
        counts: collections.Counter[str] = collections.Counter()
        seen: set[str] = set()
        for c in state.connections:
            cluster = c.endpoint.cluster_id
            if cluster in seen:  # one cable per cluster; a duplicate would repeat a series
                log.debug("metrics: second connection for cluster %s skipped", cluster)
                continue
            seen.add(cluster)
            labels = [
                state.cable_driver,
                state.local_cluster,
                state.local_hostname,
                state.local_endpoint_ip,
                cluster,
                c.endpoint.hostname,
                remote_endpoint_ip(c),
            ]
            status = str(c.status)
            rx.add_metric(labels, float(c.rx_bytes))
            tx.add_metric(labels, float(c.tx_bytes))
            conns.add_metric([*labels, status], 1.0)
            counts[status] += 1
            if cluster in state.established:
                established.add_metric(labels, float(state.established[cluster]))
            if c.latency_rtt is not None:
                latency.add_metric(labels, c.latency_rtt.last)
            refused.add_metric(labels, 1.0 if cluster in state.refused else 0.0)
            if c.last_handshake is not None:
                handshake.add_metric(labels, c.last_handshake)
        for status, n in sorted(counts.items()):
            short.add_metric([state.cable_driver, status], float(n))
        return families

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        def gauge(name: str, labels: Sequence[str] = CABLE_LABELS) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, _HELP[name], labels=labels)

        return [
            gauge(RX_BYTES),
            gauge(TX_BYTES),
            gauge(CONNECTIONS, (*CABLE_LABELS, "status")),
            gauge(CONNECTIONS_SHORT, SHORT_LABELS),
            gauge(ESTABLISHED),
            gauge(LATENCY),
            gauge(STORE_AVAILABLE, STORE_LABELS),
            gauge(GATEWAY_ACTIVE, STORE_LABELS),
            gauge(ENDPOINT_REFUSED),
            gauge(LAST_HANDSHAKE),
        ]


def make_registry(provider: MetricsProvider) -> CollectorRegistry:
    """A registry of its own holding only the gateway collector (never the global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(provider))
    return registry


@dataclass(frozen=True, slots=True)
class MetricsServer:
    """A running metrics endpoint: ``port`` is the bound one (useful after port 0);
    calling it (or ``stop()``) shuts the server down and frees the port."""

    address: str
    port: int
    registry: CollectorRegistry
    _stop: Callable[[], None]

    def stop(self) -> None:
        self._stop()

    def __call__(self) -> None:
        self._stop()


def exposure_warning(address: str) -> str | None:
    """Why binding the metrics to ``address`` is risky, or None. The endpoint has no
    authentication, and a gateway runs on the host network: an unspecified address also
    listens on the addresses that remote clusters reach through the tunnel."""
    try:
        unspecified = ipaddress.ip_address(address).is_unspecified
    except ValueError:
        unspecified = address == ""  # "" is how socketserver spells "every address"
    if not unspecified:
        return None
    return (f"metrics listen on every address of this host ({address or '*'}), without "
            "authentication, remote clusters' tunnels included; set --metrics-address to "
            "the node's IP (what Prometheus scrapes) or 127.0.0.1")


def serve_metrics(provider: MetricsProvider, address: str, port: int) -> MetricsServer:
    """Serve the provider's metrics over HTTP on ``address:port`` (port 0: any free port)."""
    if (warning := exposure_warning(address)) is not None:
        log.warning("%s", warning)
    registry = make_registry(provider)
    server, thread = start_http_server(port, addr=address, registry=registry)
    bound = int(server.server_address[1])
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if stopped:
            return
        stopped = True
        server.shutdown()
        server.server_close()  # shutdown() alone keeps the port bound
        thread.join(timeout=5)

    log.info("serving metrics on %s:%d", address, bound)
    return MetricsServer(address, bound, registry, stop)

