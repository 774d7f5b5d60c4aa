"""`wgcable join` and `wgcable broker`, without an API server: the settings are checked
with errors naming the option and value, the manifests carry the cluster's values and its
credentials only in the Secret, the broker-info file is a 0600 secret."""

from __future__ import annotations

import base64
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from wgcable.cli.main import main
from wgcable.deploy.brokerinfo import BrokerInfo, BrokerInfoError
from wgcable.deploy.manifests import (
    JoinError,
    examples,
    join_manifests,
    parse_settings,
    uninstall_manifests,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.secret-token-value"  # noqa: S105 - a test value
PSK = "c2VjcmV0LXBzay10ZXh0LXZhbHVl"


def _info(cluster: str = "east") -> BrokerInfo:
    return BrokerInfo("https://198.18.0.250:6443", base64.b64encode(b"CA PEM").decode(),
                      "submariner-k8s-broker", cluster, TOKEN, PSK)


def _env(doc: dict[str, Any], container: str = "containers") -> dict[str, Any]:
    [c] = doc["spec"]["template"]["spec"][container]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def test_join_renders_the_cluster_s_values_and_credentials_only_in_the_secret() -> None:
    s = parse_settings(cluster_id="east", cluster_cidrs=["10.1.0.0/16,fd00:1::/48"],
                       service_cidrs=["10.101.0.0/16"], image="registry.example/wgcable:1")
    docs = join_manifests(_info(), s)
    kinds = [d["kind"] for d in docs]
    assert kinds == ["Namespace", "Secret", "ServiceAccount", "ServiceAccount", "Role",
                     "RoleBinding", "DaemonSet", "DaemonSet"]
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    gateway = _env(by_name["DaemonSet", "wgcable-gateway"])
    assert gateway["SUBMARINER_CLUSTERID"] == "east"
    assert gateway["SUBMARINER_CLUSTERCIDR"] == "10.1.0.0/16,fd00:1::/48"
    assert gateway["SUBMARINER_SERVICECIDR"] == "10.101.0.0/16"
    assert gateway["KUBECONFIG"] == "/etc/wgcable/broker/kubeconfig"
    assert gateway["CE_IPSEC_PSK"] == {"secretKeyRef": {"name": "wgcable-broker", "key": "psk"}}
    assert _env(by_name["DaemonSet", "wgcable-route-agent"])["SUBMARINER_CLUSTERID"] == "east"
    secret = by_name["Secret", "wgcable-broker"]
    kubeconfig = yaml.safe_load(base64.b64decode(secret["data"]["kubeconfig"]))
    assert kubeconfig["users"][0]["user"]["token"] == TOKEN
    assert kubeconfig["contexts"][0]["context"]["namespace"] == "submariner-k8s-broker"
    assert base64.b64decode(secret["data"]["psk"]).decode() == PSK
    # The credentials are nowhere but in the Secret, and only encoded there.
    others = yaml.safe_dump_all([d for d in docs if d["kind"] != "Secret"])
    assert TOKEN not in others
    assert PSK not in others
    assert TOKEN not in repr(_info())
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "submariner-operator"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"cluster_id": "East"}, "--cluster-id: 'East' is not a DNS-1123 label"),
    ({"cluster_id": "a" * 64}, "--cluster-id: 'aaaa"),
    ({"cluster_cidrs": ["10.1.0.0"]}, "--cluster-cidr: '10.1.0.0' is not a CIDR"),
    ({"cluster_cidrs": ["10.1.0.1/16"]}, "--cluster-cidr: '10.1.0.1/16' has host bits set"),
    ({"cluster_cidrs": []}, "--cluster-cidr: at least one pod CIDR is required"),
    ({"service_cidrs": ["10.1.128.0/20"]},
     "--cluster-cidr/--service-cidr: '10.1.0.0/16' overlaps '10.1.128.0/20'"),
    ({"namespace": "Sub_Op"}, "--namespace: 'Sub_Op' is not a namespace name"),
    ({"image": "wgcable:1 ; rm"}, "--image: 'wgcable:1 ; rm' is not an image reference"),
    ({"port": 0}, "--port: 0 is out of range"),
])
def test_join_refuses_bad_settings_naming_the_option(kwargs: dict[str, Any],
                                                      message: str) -> None:
    args: dict[str, Any] = {"cluster_id": "east", "cluster_cidrs": ["10.1.0.0/16"], **kwargs}
    with pytest.raises(JoinError) as info:
        parse_settings(**args)
    assert message in str(info.value)


def test_join_refuses_another_cluster_s_broker_info() -> None:
    s = parse_settings(cluster_id="west", cluster_cidrs=["10.2.0.0/16"])
    with pytest.raises(JoinError, match="--cluster-id: 'west', but the broker info file is "
                       "cluster 'east'"):
        join_manifests(_info("east"), s)


def test_join_broker_info_is_written_0600_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "broker-info-east.yaml"
    _info().write(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert BrokerInfo.read(path) == _info()
    doc = yaml.safe_load(path.read_text())
    del doc["token"]
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(BrokerInfoError, match="field 'token' is missing"):
        BrokerInfo.read(path)
    path.write_text(yaml.safe_dump(_info().to_dict() | {"server": "http://x\n:80"}))
    with pytest.raises(BrokerInfoError, match=r"field 'server' is not an https:// URL: "
                       r"'http://x\\n:80'"):
        BrokerInfo.read(path)


def test_join_cli_writes_0600_and_reports_errors(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    info = tmp_path / "east.yaml"
    _info().write(info)
    out = tmp_path / "east-manifests.yaml"
    assert main(["join", str(info), "--cluster-cidr", "10.1.0.0/16", "-o", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [d["kind"] for d in yaml.safe_load_all(out.read_text())][-1] == "DaemonSet"
    assert main(["join", str(info), "--cluster-cidr", "10.1.0.0/16", "--uninstall"]) == 0
    cleanup = list(yaml.safe_load_all(capsys.readouterr().out))
    assert TOKEN not in yaml.safe_dump_all(cleanup)
    assert main(["join", str(info), "--cluster-id", "east", "--cluster-cidr", "10.1.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--cluster-cidr: '10.1.0.0' is not a CIDR" in err
    assert TOKEN not in err
    assert main(["join", str(tmp_path / "nope.yaml"), "--cluster-cidr", "10.1.0.0/16"]) == 2
    assert "No such file" in capsys.readouterr().err


def test_join_broker_cli_refuses_bad_gateways_before_any_call(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kubeconfig = str(tmp_path / "none")  # never read: the arguments are refused first
    assert main(["broker", "init", "--kubeconfig", kubeconfig, "--clusters", "east",
                 "--gateway", "east:gw1=not-an-ip"]) == 2
    assert "--gateway: 'east:gw1=not-an-ip' is not ID:HOST=IP" in capsys.readouterr().err
    assert main(["broker", "init", "--kubeconfig", kubeconfig, "--clusters", "east",
                 "--gateway", "west:gw1=198.18.0.2"]) == 2
    assert "cluster 'west' is not in --clusters" in capsys.readouterr().err
    assert main(["broker", "add-cluster", "East", "--kubeconfig", kubeconfig]) == 2
    assert "CLUSTER-ID: 'East' is not a DNS-1123 label" in capsys.readouterr().err


def test_join_uninstall_runs_cleanup_on_every_node_with_the_agents_settings() -> None:
    s = parse_settings(cluster_id="east", cluster_cidrs=["10.1.0.0/16"])
    gw, nodes = uninstall_manifests(s, "submariner-k8s-broker")
    gw_pod, node_pod = gw["spec"]["template"]["spec"], nodes["spec"]["template"]["spec"]
    assert gw_pod["initContainers"][0]["args"] == ["cleanup"]
    assert gw_pod["nodeSelector"] == {"submariner.io/gateway": "true"}
    assert node_pod["initContainers"][0]["args"] == ["route-agent", "--cleanup"]
    assert "NotIn" in yaml.safe_dump(node_pod["affinity"])
    join = {d["metadata"]["name"]: d for d in join_manifests(_info(), s)}
    # The cleanup sees what the agent saw: same settings, same host paths, same Secret.
    assert _env(gw, "initContainers") == _env(join["wgcable-gateway"])
    assert gw_pod["volumes"] == join["wgcable-gateway"]["spec"]["template"]["spec"]["volumes"]


def test_join_examples_in_deploy_match_the_code() -> None:
    for name, text in examples().items():
        assert (DEPLOY / name).read_text() == text, (
            f"deploy/{name} is stale: python -m wgcable.deploy.manifests deploy")


def test_join_a_cluster_without_gateways_gets_no_name_scoped_rule() -> None:
    # RBAC reads an empty resourceNames as every name: such a rule would open everyone's.
    from wgcable.store.crds import cluster_rbac, own_rules

    assert own_rules([], []) == []
    role = cluster_rbac("north", {}, "submariner-k8s-broker",
                        {"kind": "ServiceAccount", "name": "n", "namespace": "x"})[0]
    assert role["rules"] == []
