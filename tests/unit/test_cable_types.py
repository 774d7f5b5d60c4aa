"""Submariner API shapes: real objects parse, wrong JSON types are named, JSON round trips."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgcable.cable import (
    Connection,
    ConnectionStatus,
    Endpoint,
    EndpointFormatError,
    GatewayStatus,
    HAStatus,
    LatencyRTT,
    NATEndpointInfo,
    cable_name_for,
)
from wgcable.safetext import safe

REMOTE_KEY = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="

# `kubectl get endpoints.submariner.io -n submariner-operator -o json`, one item, as a
# gateway running the WireGuard driver publishes it (plus a field from some future version).
ENDPOINT_OBJECT: dict[str, Any] = {
    "apiVersion": "submariner.io/v1",
    "kind": "Endpoint",
    "metadata": {
        "creationTimestamp": "2026-03-02T10:15:42Z",
        "generation": 1,
        "labels": {"submariner-io/clusterID": "cluster2"},
        "name": "cluster2-submariner-cable-cluster2-172-18-0-7",
        "namespace": "submariner-operator",
        "resourceVersion": "48213",
        "uid": "5b0e8f0c-2c1d-4a51-9f53-8f2d2b1e7a10",
    },
    "spec": {
        "backend": "wireguard",
        "backend_config": {
            "interface-name": "submariner",
            "natt-discovery-port": "4490",
            "preferred-server": "false",
            "public-ip": "ipv4:1.2.3.4",
            "publicKey": REMOTE_KEY,
            "udp-port": "4500",
        },
        "cable_name": "submariner-cable-cluster2-172-18-0-7",
        "cluster_id": "cluster2",
        "healthCheckIP": "10.130.0.1",
        "hostname": "cluster2-worker",
        "nat_enabled": False,
        "private_ip": "172.18.0.7",
        "public_ip": "1.2.3.4",
        "subnets": ["100.2.0.0/16", "10.130.0.0/16"],
        "someFutureField": {"anything": [1, 2, 3]},
    },
}

LOCAL_SPEC: dict[str, Any] = {
    "backend": "wireguard",
    "backend_config": {
        "publicKey": "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=",
        "udp-port": "4500",
    },
    "cable_name": "submariner-cable-cluster1-172-18-0-4",
    "cluster_id": "cluster1",
    "healthCheckIP": "10.129.0.1",
    "hostname": "cluster1-worker",
    "nat_enabled": False,
    "private_ip": "172.18.0.4",
    "public_ip": "",
    "subnets": ["100.1.0.0/16", "10.129.0.0/16"],
}

# `kubectl get gateways.submariner.io -o json`, one item: the gateway of cluster1.
GATEWAY_OBJECT: dict[str, Any] = {
    "apiVersion": "submariner.io/v1",
    "kind": "Gateway",
    "metadata": {"name": "cluster1-worker", "namespace": "submariner-operator"},
    "status": {
        "connections": [
            {
                "endpoint": ENDPOINT_OBJECT["spec"],
                "latencyRTT": {
                    "average": "1.349ms",
                    "last": "1.234ms",
                    "max": "2.1ms",
                    "min": "850µs",
                    "stdDev": "312.5us",
                },
                "status": "connected",
                "statusMessage": "",
                "usingIP": "172.18.0.7",
            }
        ],
        "haStatus": "active",
        "localEndpoint": LOCAL_SPEC,
        "statusFailure": "",
        "version": "v0.18.0",
    },
}


# --- Endpoint ---


def test_real_endpoint_object_parses() -> None:
    ep = Endpoint.from_json(ENDPOINT_OBJECT)
    assert ep.cluster_id == "cluster2"
    assert ep.cable_name == "submariner-cable-cluster2-172-18-0-7"
    assert ep.health_check_ip == "10.130.0.1"
    assert ep.hostname == "cluster2-worker"
    assert ep.subnets == ["100.2.0.0/16", "10.130.0.0/16"]
    assert ep.private_ip == "172.18.0.7"
    assert ep.public_ip == "1.2.3.4"
    assert ep.nat_enabled is False
    assert ep.backend == "wireguard"
    assert ep.backend_config["publicKey"] == REMOTE_KEY
    assert ep.backend_config["udp-port"] == "4500"
    assert ep.private_ips == []


def test_names_follow_submariner() -> None:
    ep = Endpoint.from_json(ENDPOINT_OBJECT)
    assert ep.object_name() == ENDPOINT_OBJECT["metadata"]["name"]
    assert cable_name_for(ep.cluster_id, ep.private_ip) == ep.cable_name
    assert cable_name_for("c1", "fd00::1:7") == "submariner-cable-c1-fd00--1-7"


def test_bare_spec_and_whole_object_agree() -> None:
    assert Endpoint.from_json(ENDPOINT_OBJECT["spec"]) == Endpoint.from_json(ENDPOINT_OBJECT)


def test_gateway_ip_prefers_public() -> None:
    ep = Endpoint.from_json(ENDPOINT_OBJECT)
    assert ep.gateway_ip() == "1.2.3.4"
    ep.public_ip = ""
    assert ep.gateway_ip() == "172.18.0.7"


def test_to_json_keeps_go_names_and_omissions() -> None:
    ep = Endpoint(cluster_id="c1", cable_name="cab", private_ip="10.0.0.1")
    assert ep.to_json() == {
        "cluster_id": "c1",
        "cable_name": "cab",
        "hostname": "",
        "subnets": [],
        "private_ip": "10.0.0.1",
        "public_ip": "",
        "nat_enabled": False,
        "backend": "",
    }
    full = Endpoint(
        cluster_id="c1",
        health_check_ip="10.1.0.1",
        backend_config={"udp-port": "4500"},
        private_ips=["10.0.0.1", "fd00::1"],
        public_ips=["1.2.3.4"],
        health_check_ips=["10.1.0.1"],
    ).to_json()
    assert full["healthCheckIP"] == "10.1.0.1"
    assert full["backend_config"] == {"udp-port": "4500"}
    assert full["private_ips"] == ["10.0.0.1", "fd00::1"]
    assert full["public_ips"] == ["1.2.3.4"]
    assert full["healthCheckIPs"] == ["10.1.0.1"]


def test_to_json_does_not_alias() -> None:
    ep = Endpoint(cluster_id="c1", subnets=["10.0.0.0/16"], backend_config={"a": "b"})
    out = ep.to_json()
    out["subnets"].append("x")
    out["backend_config"]["c"] = "d"
    assert ep.subnets == ["10.0.0.0/16"]
    assert ep.backend_config == {"a": "b"}


def test_null_values_read_as_go_zero_values() -> None:
    spec = {"cluster_id": "c1", "subnets": None, "backend_config": None, "nat_enabled": None}
    assert Endpoint.from_json(spec) == Endpoint(cluster_id="c1")


def test_to_k8s_object_round_trips() -> None:
    ep = Endpoint.from_json(ENDPOINT_OBJECT)
    obj = ep.to_k8s_object("submariner-operator")
    assert obj["apiVersion"] == "submariner.io/v1"
    assert obj["kind"] == "Endpoint"
    assert obj["metadata"] == {
        "name": "cluster2-submariner-cable-cluster2-172-18-0-7",
        "namespace": "submariner-operator",
    }
    assert Endpoint.from_json(obj) == ep
    assert "namespace" not in ep.to_k8s_object(None)["metadata"]


@pytest.mark.parametrize(
    ("key", "value", "field", "shown"),
    [
        ("subnets", "10.0.0.0/16", "subnets", "10.0.0.0/16"),
        ("subnets", ["10.0.0.0/16", 5], "subnets[1]", 5),
        ("nat_enabled", "true", "nat_enabled", "true"),
        ("nat_enabled", 1, "nat_enabled", 1),
        ("backend_config", {"udp-port": 4500}, "backend_config.udp-port", 4500),
        ("backend_config", ["udp-port"], "backend_config", ["udp-port"]),
        ("cluster_id", 7, "cluster_id", 7),
        ("cluster_id", None, "cluster_id", None),
        ("hostname", 3, "hostname", 3),
        ("private_ip", ["172.18.0.7"], "private_ip", ["172.18.0.7"]),
        ("private_ips", "172.18.0.7", "private_ips", "172.18.0.7"),
        ("healthCheckIPs", [None], "healthCheckIPs[0]", None),
    ],
)
def test_wrong_types_name_field_and_value(
    key: str, value: object, field: str, shown: object
) -> None:
    spec = {**ENDPOINT_OBJECT["spec"], key: value}
    with pytest.raises(EndpointFormatError, match=re.escape(f"{field}={safe(shown)}")) as bare:
        Endpoint.from_json(spec)
    assert bare.value.field == field
    # Inside a whole object the path says where the spec was.
    whole = {**ENDPOINT_OBJECT, "spec": spec}
    with pytest.raises(EndpointFormatError, match=re.escape(f"spec.{field}={safe(shown)}")):
        Endpoint.from_json(whole)


def test_missing_cluster_id_is_an_error() -> None:
    spec = {k: v for k, v in ENDPOINT_OBJECT["spec"].items() if k != "cluster_id"}
    with pytest.raises(EndpointFormatError, match="cluster_id=None: required"):
        Endpoint.from_json(spec)


def test_format_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="expected a JSON object"):
        Endpoint.from_json(["not", "an", "object"])


def test_wrong_kind_is_refused() -> None:
    obj = {**ENDPOINT_OBJECT, "kind": "Gateway"}
    with pytest.raises(EndpointFormatError, match="kind='Gateway'"):
        Endpoint.from_json(obj)


def test_object_without_spec_is_refused() -> None:
    obj = {k: v for k, v in ENDPOINT_OBJECT.items() if k != "spec"}
    with pytest.raises(EndpointFormatError, match="spec=None"):
        Endpoint.from_json(obj)


# --- Connection and GatewayStatus ---


def test_real_gateway_object_parses() -> None:
    gw = GatewayStatus.from_json(GATEWAY_OBJECT)
    assert gw.version == "v0.18.0"
    assert gw.ha_status is HAStatus.ACTIVE
    assert gw.local_endpoint.cluster_id == "cluster1"
    assert gw.local_endpoint.gateway_ip() == "172.18.0.4"
    assert len(gw.connections) == 1
    conn = gw.connections[0]
    assert conn.status is ConnectionStatus.CONNECTED
    assert conn.endpoint == Endpoint.from_json(ENDPOINT_OBJECT)
    assert conn.using_ip == "172.18.0.7"
    assert conn.using_nat is False
    assert conn.latency_rtt == LatencyRTT(
        last=0.001234, min=0.00085, average=0.001349, max=0.0021, std_dev=0.0003125
    )


def test_bare_gateway_status_parses() -> None:
    assert GatewayStatus.from_json(GATEWAY_OBJECT["status"]) == GatewayStatus.from_json(
        GATEWAY_OBJECT
    )


def test_latency_json_is_go_durations() -> None:
    rtt = LatencyRTT(last=0.001234, min=0.00085, average=0.0015, max=1.5, std_dev=0.0)
    assert rtt.to_json() == {
        "last": "1.234ms",
        "min": "850µs",
        "average": "1.5ms",
        "max": "1.5s",
        "stdDev": "0s",
    }


def test_latency_missing_keys_are_zero() -> None:
    assert LatencyRTT.from_json({"last": "1ms"}) == LatencyRTT(last=0.001)


def test_connection_json_omits_like_go() -> None:
    ep = Endpoint(cluster_id="c2")
    out = Connection(endpoint=ep, status=ConnectionStatus.CONNECTING).to_json()
    assert out == {"status": "connecting", "statusMessage": "", "endpoint": ep.to_json()}
    full = Connection(
        endpoint=ep, using_ip="1.2.3.4", using_nat=True, latency_rtt=LatencyRTT()
    ).to_json()
    assert full["usingIP"] == "1.2.3.4"
    assert full["usingNAT"] is True
    assert full["latencyRTT"]["last"] == "0s"


def test_byte_counters_stay_out_of_json() -> None:
    conn = Connection(endpoint=Endpoint(cluster_id="c2"), rx_bytes=10, tx_bytes=20)
    out = conn.to_json()
    assert "rx_bytes" not in out
    assert "tx_bytes" not in out
    assert Connection.from_json(out) == conn  # counters do not take part in equality


def test_empty_status_reads_as_none() -> None:
    conn = Connection.from_json({"status": "", "endpoint": {"cluster_id": "c2"}})
    assert conn.status is ConnectionStatus.NONE
    assert conn.to_json()["status"] == "none"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"status": "up"}, "status='up': expected one of connected, connecting, error, none"),
        ({"usingNAT": "no"}, "usingNAT='no'"),
        ({"latencyRTT": {"last": "1.2 ms"}}, "latencyRTT.last='1.2 ms': not a Go duration"),
        ({"latencyRTT": {"min": 5}}, "latencyRTT.min=5"),
        ({"latencyRTT": "1ms"}, "latencyRTT='1ms'"),
        ({"endpoint": None}, "endpoint=None: required"),
        ({"endpoint": {"cluster_id": "c2", "subnets": "x"}}, "endpoint.subnets='x'"),
    ],
)
def test_connection_errors_name_the_path(change: dict[str, Any], message: str) -> None:
    data = {"status": "connected", "endpoint": {"cluster_id": "c2"}, **change}
    with pytest.raises(EndpointFormatError, match=re.escape(message)):
        Connection.from_json(data)


def test_gateway_errors_name_the_path() -> None:
    obj = copy.deepcopy(GATEWAY_OBJECT)
    obj["status"]["connections"][0]["endpoint"]["nat_enabled"] = "false"
    with pytest.raises(
        EndpointFormatError, match=re.escape("status.connections[0].endpoint.nat_enabled='false'")
    ):
        GatewayStatus.from_json(obj)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"haStatus": "leader"}, "haStatus='leader'"),
        ({"connections": {}}, "connections=<dict of 0>"),
        ({"localEndpoint": None}, "localEndpoint=None"),
    ],
)
def test_gateway_status_errors(change: dict[str, Any], message: str) -> None:
    data = {**GATEWAY_OBJECT["status"], **change}
    with pytest.raises(EndpointFormatError, match=re.escape(message)):
        GatewayStatus.from_json(data)


def test_nat_endpoint_info_carries_the_choice() -> None:
    ep = Endpoint.from_json(ENDPOINT_OBJECT)
    info = NATEndpointInfo(endpoint=ep, use_ip="172.18.0.7", use_nat=False)
    assert info.endpoint.backend_config["publicKey"] == REMOTE_KEY
    assert info.use_ip == "172.18.0.7"


# --- round trips ---

texts = st.text(max_size=20)
str_lists = st.lists(texts, max_size=4)
endpoints = st.builds(
    Endpoint,
    cluster_id=texts,
    cable_name=texts,
    health_check_ip=texts,
    hostname=texts,
    subnets=str_lists,
    private_ip=texts,
    public_ip=texts,
    nat_enabled=st.booleans(),
    backend=texts,
    backend_config=st.dictionaries(texts, texts, max_size=4),
    private_ips=str_lists,
    public_ips=str_lists,
    health_check_ips=str_lists,
)
# Whole nanoseconds within 2**22 s, which float seconds hold exactly.
durations = st.integers(min_value=-(2**22) * 10**9, max_value=2**22 * 10**9).map(
    lambda ns: ns / 10**9
)
latencies = st.builds(
    LatencyRTT, last=durations, min=durations, average=durations, max=durations, std_dev=durations
)
connections = st.builds(
    Connection,
    endpoint=endpoints,
    status=st.sampled_from(ConnectionStatus),
    status_message=texts,
    using_ip=texts,
    using_nat=st.booleans(),
    latency_rtt=st.none() | latencies,
    rx_bytes=st.integers(min_value=0),
    tx_bytes=st.integers(min_value=0),
)
gateways = st.builds(
    GatewayStatus,
    local_endpoint=endpoints,
    version=texts,
    ha_status=st.sampled_from(HAStatus),
    status_failure=texts,
    connections=st.lists(connections, max_size=3),
)


def _through_json_text(data: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(json.dumps(data))
    return result


@given(endpoints)
def test_endpoint_round_trip(ep: Endpoint) -> None:
    assert Endpoint.from_json(ep.to_json()) == ep
    assert Endpoint.from_json(_through_json_text(ep.to_k8s_object("ns"))) == ep


@given(latencies)
def test_latency_round_trip(rtt: LatencyRTT) -> None:
    assert LatencyRTT.from_json(_through_json_text(rtt.to_json())) == rtt


@given(connections)
def test_connection_round_trip(conn: Connection) -> None:
    assert Connection.from_json(_through_json_text(conn.to_json())) == conn


@given(gateways)
def test_gateway_status_round_trip(gw: GatewayStatus) -> None:
    assert GatewayStatus.from_json(_through_json_text(gw.to_json())) == gw
