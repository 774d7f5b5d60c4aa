"""Where the unauthenticated metrics endpoint listens: loopback by default, never every
address of a host-network gateway without a warning, and the node's IP in the DaemonSet."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from wgcable.cable.types import Endpoint
from wgcable.engine import metrics
from wgcable.engine.metrics import GatewayMetricsState, serve_metrics

DAEMONSET = Path(__file__).resolve().parents[2] / "deploy" / "daemonset.yaml"


def _state() -> GatewayMetricsState:
    return GatewayMetricsState.for_local(Endpoint(cluster_id="c", private_ip="10.0.0.9"), "wg")


class _FakeServer:
    server_address = ("", 9898)

    def shutdown(self) -> None:
        pass

    def server_close(self) -> None:
        pass


@pytest.mark.parametrize("address", ["0.0.0.0", "::", ""])  # noqa: S104 - what is checked
def test_hostile_unspecified_metrics_address_warns(
    address: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    bound: list[str] = []

    def fake_start(port: int, addr: str, registry: Any) -> tuple[_FakeServer, Any]:
        bound.append(addr)  # nothing listens: the test must not open the host's ports
        return _FakeServer(), type("T", (), {"join": lambda self, timeout=None: None})()

    monkeypatch.setattr(metrics, "start_http_server", fake_start)
    with caplog.at_level(logging.WARNING, logger="wgcable.engine.metrics"):
        serve_metrics(_state, address, 9898).stop()
    assert bound == [address]
    assert "every address" in caplog.text
    assert "--metrics-address" in caplog.text


def test_metrics_on_loopback_listen_there_only_and_do_not_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="wgcable.engine.metrics"):
        server = serve_metrics(_state, "127.0.0.1", 0)
    try:
        assert caplog.text == ""
        assert server.address == "127.0.0.1"
    finally:
        server.stop()


def test_hostile_daemonset_metrics_listen_on_the_node_ip_only() -> None:
    """A host-network pod: the node's IP is what Prometheus and the readiness probe reach;
    0.0.0.0 would also answer remote clusters through the tunnel, 127.0.0.1 neither."""
    ds = yaml.safe_load(DAEMONSET.read_text())
    [agent] = ds["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in agent["env"]}
    setting = env["WGCABLE_METRICS_ADDRESS"]
    assert "value" not in setting, f"a fixed metrics address: {setting['value']}"
    assert setting["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert ds["spec"]["template"]["spec"]["hostNetwork"] is True
