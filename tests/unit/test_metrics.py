"""Gateway metrics: Submariner's names and labels, current state only, and the HTTP endpoint."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from wgcable.cable.types import Connection, ConnectionStatus, Endpoint, LatencyRTT
from wgcable.engine.metrics import (
    CABLE_LABELS,
    EXPORTED,
    GatewayMetricsState,
    make_registry,
    serve_metrics,
)

Samples = dict[str, list[tuple[dict[str, str], float]]]

LOCAL = Endpoint(
    cluster_id="cluster1", hostname="gw1", private_ip="10.0.0.1", public_ip="203.0.113.1"
)


def _conn(
    cluster: str,
    status: ConnectionStatus,
    *,
    public_ip: str = "",
    using_ip: str = "",
    rx: int = 0,
    tx: int = 0,
    latency: LatencyRTT | None = None,
    handshake: float | None = None,
) -> Connection:
    ep = Endpoint(cluster_id=cluster, hostname=f"gw-{cluster}", private_ip="172.18.0.7",
                  public_ip=public_ip)
    return Connection(endpoint=ep, status=status, using_ip=using_ip, rx_bytes=rx, tx_bytes=tx,
                      latency_rtt=latency, last_handshake=handshake)


def _scrape(registry: CollectorRegistry) -> Samples:
    text = generate_latest(registry).decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def _cable(remote: str, hostname: str, remote_ip: str) -> dict[str, str]:
    return {
        "cable_driver": "wireguard",
        "local_cluster": "cluster1",
        "local_hostname": "gw1",
        "local_endpoint_ip": "203.0.113.1",
        "remote_cluster": remote,
        "remote_hostname": hostname,
        "remote_endpoint_ip": remote_ip,
    }


class State:
    """A mutable provider, as the engine would publish its last status."""

    def __init__(self) -> None:
        self.calls = 0
        self.connections = [
            _conn("cluster2", ConnectionStatus.CONNECTED, public_ip="198.51.100.2", rx=1000,
                  tx=2000, latency=LatencyRTT(last=0.0015, min=0.001, average=0.002, max=0.004),
                  handshake=1767225601.5),
            _conn("cluster3", ConnectionStatus.CONNECTING, using_ip="172.18.0.7", rx=5),
            _conn("cluster4", ConnectionStatus.CONNECTED, public_ip="198.51.100.4"),
        ]
        self.established = {"cluster2": 1767225600.0, "cluster4": 1767225700.0, "gone": 1.0}
        self.active = True

    def __call__(self) -> GatewayMetricsState | None:
        self.calls += 1
        if not self.active:
            return None
        return GatewayMetricsState.for_local(
            LOCAL, "wireguard", list(self.connections), dict(self.established)
        )


@pytest.fixture
def state() -> State:
    return State()


def test_names_labels_and_values(state: State) -> None:
    s = _scrape(make_registry(state))
    c2 = _cable("cluster2", "gw-cluster2", "198.51.100.2")
    c3 = _cable("cluster3", "gw-cluster3", "172.18.0.7")  # no public IP: the IP in use
    c4 = _cable("cluster4", "gw-cluster4", "198.51.100.4")
    assert s["submariner_gateway_rx_bytes"] == [(c2, 1000.0), (c3, 5.0), (c4, 0.0)]
    assert s["submariner_gateway_tx_bytes"] == [(c2, 2000.0), (c3, 0.0), (c4, 0.0)]
    assert s["submariner_connections"] == [
        ({**c2, "status": "connected"}, 1.0),
        ({**c3, "status": "connecting"}, 1.0),
        ({**c4, "status": "connected"}, 1.0),
    ]
    assert s["submariner_connections_short"] == [
        ({"cable_driver": "wireguard", "status": "connected"}, 2.0),
        ({"cable_driver": "wireguard", "status": "connecting"}, 1.0),
    ]
    # Established only for current connections that have a timestamp ("gone" has no cable).
    assert s["submariner_connection_established_timestamp"] == [
        (c2, 1767225600.0), (c4, 1767225700.0)]
    # Latency (the last RTT) only where known.
    assert s["submariner_connection_latency_seconds"] == [(c2, 0.0015)]


def test_exactly_submariners_metrics_and_labels(state: State) -> None:
    s = _scrape(make_registry(state))
    assert set(s) == {
        "submariner_gateway_rx_bytes",
        "submariner_gateway_tx_bytes",
        "submariner_connections",
        "submariner_connections_short",
        "submariner_connection_established_timestamp",
        "submariner_connection_latency_seconds",
        # Ours: Submariner has none for the broker, nor haStatus outside the Gateway object,
        # nor refused Endpoints or handshakes.
        "wgcable_store_available",
        "wgcable_gateway_active",
        "wgcable_endpoint_refused",
        "wgcable_connection_last_handshake_timestamp_seconds",
    }
    assert set(s) == set(EXPORTED)
    for name, samples in s.items():
        for labels, _ in samples:
            if name in ("wgcable_store_available", "wgcable_gateway_active"):
                assert set(labels) == {"local_cluster", "local_hostname"}
            elif name == "submariner_connections_short":
                assert set(labels) == {"cable_driver", "status"}
            elif name == "submariner_connections":
                assert set(labels) == {*CABLE_LABELS, "status"}
            else:
                assert set(labels) == set(CABLE_LABELS)


def test_gauges_with_help_text(state: State) -> None:
    text = generate_latest(make_registry(state)).decode()
    assert "# TYPE submariner_connections gauge" in text
    assert ("# HELP submariner_connections_short Summary of connections and corresponding "
            "status without cable information") in text


def test_removed_connection_is_gone_on_next_scrape(state: State) -> None:
    registry = make_registry(state)
    assert len(_scrape(registry)["submariner_connections"]) == 3
    state.connections = [c for c in state.connections if c.endpoint.cluster_id != "cluster2"]
    s = _scrape(registry)
    for name, samples in s.items():
        assert all(labels.get("remote_cluster") != "cluster2" for labels, _ in samples), name
    assert "submariner_connection_latency_seconds" not in s  # its only series went with it
    assert s["submariner_connections_short"] == [
        ({"cable_driver": "wireguard", "status": "connected"}, 1.0),
        ({"cable_driver": "wireguard", "status": "connecting"}, 1.0),
    ]
    # A status change replaces the series rather than adding one.
    state.connections[0].status = ConnectionStatus.CONNECTED
    s = _scrape(registry)
    assert [labels["status"] for labels, _ in s["submariner_connections"]] == [
        "connected", "connected"]
    assert s["submariner_connections_short"] == [
        ({"cable_driver": "wireguard", "status": "connected"}, 2.0)]


def test_nothing_to_report(state: State) -> None:
    state.active = False
    assert _scrape(make_registry(state)) == {}
    state.active = True
    state.connections = []
    assert set(_scrape(make_registry(state))) == {"wgcable_store_available",
                                                  "wgcable_gateway_active"}


def test_registering_does_not_call_the_provider(state: State) -> None:
    make_registry(state)
    assert state.calls == 0


def test_duplicate_cluster_reported_once(state: State) -> None:
    state.connections.append(_conn("cluster2", ConnectionStatus.ERROR))
    s = _scrape(make_registry(state))
    assert [labels["remote_cluster"] for labels, _ in s["submariner_connections"]] == [
        "cluster2", "cluster3", "cluster4"]


def test_local_endpoint_ip_defaults_to_public_then_private() -> None:
    assert GatewayMetricsState.for_local(LOCAL, "wg").local_endpoint_ip == "203.0.113.1"
    private_only = Endpoint(cluster_id="c", private_ip="10.0.0.9")
    assert GatewayMetricsState.for_local(private_only, "wg").local_endpoint_ip == "10.0.0.9"
    chosen = GatewayMetricsState.for_local(LOCAL, "wg", endpoint_ip="10.0.0.1")
    assert chosen.local_endpoint_ip == "10.0.0.1"


def test_http_server_answers_and_stops(state: State) -> None:
    server = serve_metrics(state, "127.0.0.1", 0)
    try:
        assert server.port > 0
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.status == 200
            body = resp.read().decode()
        assert 'submariner_connections{cable_driver="wireguard"' in body
        assert "python_gc_objects_collected_total" not in body  # own registry, not the global
    finally:
        server()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)
    server.stop()  # stopping twice is harmless


def test_hung_store_shows_in_the_store_gauge() -> None:
    labels = {"local_cluster": "cluster1", "local_hostname": "gw1"}
    fine = GatewayMetricsState.for_local(LOCAL, "wireguard")
    assert _scrape(make_registry(lambda: fine))["wgcable_store_available"] == [(labels, 1.0)]
    hung = GatewayMetricsState.for_local(
        LOCAL, "wireguard", store_problem="store unavailable: writing the gateway status has "
        "not returned after 12 s")
    assert _scrape(make_registry(lambda: hung))["wgcable_store_available"] == [(labels, 0.0)]


def test_failover_passive_gateway_says_so_in_the_active_gauge() -> None:
    labels = {"local_cluster": "cluster1", "local_hostname": "gw1"}
    active = GatewayMetricsState.for_local(LOCAL, "wireguard")
    assert _scrape(make_registry(lambda: active))["wgcable_gateway_active"] == [(labels, 1.0)]
    passive = GatewayMetricsState.for_local(LOCAL, "wireguard", active=False)
    assert _scrape(make_registry(lambda: passive))["wgcable_gateway_active"] == [(labels, 0.0)]


def test_alerts_refused_endpoint_and_last_handshake_per_cable() -> None:
    """What the alert rules need beyond Submariner's names: which remote's Endpoint is
    refused (its connection is "error" as a dead cable's is) and when the last handshake was."""
    conns = [
        _conn("cluster2", ConnectionStatus.CONNECTED, public_ip="198.51.100.2",
              handshake=1767225601.5),
        _conn("cluster0", ConnectionStatus.ERROR, using_ip="172.18.0.7"),  # refused: no peer
    ]
    st = GatewayMetricsState.for_local(LOCAL, "wireguard", conns, refused=frozenset({"cluster0"}))
    s = _scrape(make_registry(lambda: st))
    c2 = _cable("cluster2", "gw-cluster2", "198.51.100.2")
    c0 = _cable("cluster0", "gw-cluster0", "172.18.0.7")
    assert s["wgcable_endpoint_refused"] == [(c2, 0.0), (c0, 1.0)]
    assert s["wgcable_connection_last_handshake_timestamp_seconds"] == [(c2, 1767225601.5)]
    # A refused cluster that is no connection (not reported) makes no series.
    st = GatewayMetricsState.for_local(LOCAL, "wireguard", conns[:1],
                                       refused=frozenset({"cluster0"}))
    assert _scrape(make_registry(lambda: st))["wgcable_endpoint_refused"] == [(c2, 0.0)]
