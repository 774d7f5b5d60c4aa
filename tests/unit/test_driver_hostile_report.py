"""A refused endpoint is still reported (an error connection), but within bounds: its text
is the remote's, and a status object is written to the broker, the status file and
``/metrics`` every few seconds (issue 15). The kernel side is faked."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from fake_kernel import fake_driver

from wgcable.cable.types import ConnectionStatus, Endpoint, NATEndpointInfo
from wgcable.cable.wireguard.desired import EndpointRejectedError
from wgcable.wgctrl import Key


def test_hostile_refused_endpoint_is_reported_bounded(tmp_path: Path) -> None:
    local = Endpoint(cluster_id="cluster1", cable_name="cable", subnets=["10.1.0.0/16"],
                     private_ip="198.18.0.1", backend="wireguard")
    d = fake_driver(local, tmp_path, [("eth0", "198.18.0.1", 24)])
    d.init()
    try:
        key = base64.b64encode(Key.generate().public_key().raw).decode()
        huge = "h" * 100_000
        ep = Endpoint(cluster_id="cluster2", cable_name=huge, hostname=huge,
                      subnets=["10.2.0.0/16"] * 5000, private_ip="2001:db8::9%" + huge,
                      backend="wireguard", backend_config={"publicKey": key, "x": huge})
        with pytest.raises(EndpointRejectedError):
            d.connect_to_endpoint(NATEndpointInfo(endpoint=ep, use_ip=ep.private_ip))
        [conn] = d.get_connections()
        assert conn.status == ConnectionStatus.ERROR
        assert conn.using_ip == ""  # not an address: none reported
        assert len(json.dumps(conn.to_json())) < 20_000
        assert conn.endpoint.cluster_id == "cluster2"
    finally:
        d.close()
