"""The shipped alert rules (deploy/prometheus-rules.yaml) and Grafana dashboard
(deploy/grafana-dashboard.json): promtool checks and unit-tests the rules (every alert firing
and not firing: tests/alerts/prometheus-rules-test.yaml), the dashboard's queries parse, and
both read only metrics the agent exports. A real Prometheus scraping a lab's agents is in
tests/integration/test_alerts_lab.py."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from promql_names import metric_names
from wgcable.engine.metrics import EXPORTED

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus-rules.yaml"
RULE_TESTS = ROOT / "tests" / "alerts" / "prometheus-rules-test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
# What Grafana puts in a query before Prometheus sees it.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$cluster": ".*"}

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool missing (scripts/install-test.sh installs Debian's prometheus)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60,
                          check=False)


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def dashboard_queries() -> list[str]:
    """Every panel's query as Prometheus receives it (Grafana's variables filled in)."""
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for panel in doc["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for var, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value)
            out.append(expr)
    return out


@needs_promtool
def test_alerts_rules_pass_promtool_check() -> None:
    p = promtool("check", "rules", str(RULES))
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"SUCCESS: {len(rules())} rules found" in p.stdout


@needs_promtool
def test_alerts_rules_unit_tests_pass() -> None:
    p = promtool("test", "rules", str(RULE_TESTS))
    assert p.returncode == 0, p.stdout + p.stderr


@needs_promtool
def test_alerts_rule_tests_fail_on_a_changed_threshold(tmp_path: Path) -> None:
    """The unit tests bite: the same tests against rules with one threshold moved fail."""
    (tmp_path / "deploy").mkdir()
    (tmp_path / "tests" / "alerts").mkdir(parents=True)
    text = RULES.read_text()
    assert text.count("submariner_connection_latency_seconds > 0.5") == 1
    (tmp_path / "deploy" / RULES.name).write_text(
        text.replace("submariner_connection_latency_seconds > 0.5",
                     "submariner_connection_latency_seconds > 0.7"))
    copy = tmp_path / "tests" / "alerts" / RULE_TESTS.name
    copy.write_text(RULE_TESTS.read_text())
    p = promtool("test", "rules", str(copy))
    assert p.returncode != 0
    assert "WgcableRTTHigh" in p.stdout + p.stderr


def test_alerts_every_rule_is_tested_firing_and_not_firing() -> None:
    names = [r["alert"] for r in rules()]
    assert sorted(names) == sorted({
        "WgcableCableDown", "WgcableHandshakeStale", "WgcableRTTHigh",
        "WgcableEndpointRefused", "WgcableStoreUnavailable", "WgcableNoActiveGateway"})
    firing: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert set(names) - firing == set(), "never tested firing"
    assert set(names) - silent == set(), "never tested silent"


def test_alerts_rules_have_production_durations_severity_and_text() -> None:
    for r in rules():
        assert r["for"] in ("1m", "2m", "5m"), r["alert"]
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["annotations"]["summary"], r["alert"]
        assert r["annotations"]["description"], r["alert"]


def test_alerts_rules_read_only_exported_metrics() -> None:
    for r in rules():
        used = metric_names(r["expr"])
        assert used, r["alert"]
        assert used <= set(EXPORTED), f"{r['alert']}: {sorted(used - set(EXPORTED))}"


def test_alerts_dashboard_is_json_with_a_query_per_panel() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"]
    assert doc["title"]
    assert doc["panels"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        assert panel["targets"], panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_alerts_dashboard_reads_only_exported_metrics() -> None:
    doc = json.loads(DASHBOARD.read_text())
    used: set[str] = set()
    for expr in dashboard_queries():
        names = metric_names(expr)
        assert names, expr
        used |= names
    for var in doc["templating"]["list"]:
        if var["type"] == "query":  # label_values(<metric>, <label>)
            used.add(var["definition"].removeprefix("label_values(").split(",")[0].strip())
    assert used <= set(EXPORTED), sorted(used - set(EXPORTED))
    # Every exported metric has a panel.
    assert used == set(EXPORTED), sorted(set(EXPORTED) - used)


@needs_promtool
def test_alerts_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule's expression."""
    recording = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": expr}
        for i, expr in enumerate(dashboard_queries())]}]}
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(recording))
    p = promtool("check", "rules", str(path))
    assert p.returncode == 0, p.stdout + p.stderr


def test_alerts_promql_names_finds_metrics_not_functions_or_labels() -> None:
    assert metric_names(
        'max by (local_cluster) (rate(x_total{status=~"a|b"}[5m] offset 1m)) '
        'unless on (local_cluster) (y == 1) and time() - z > 1e3') == {"x_total", "y", "z"}
