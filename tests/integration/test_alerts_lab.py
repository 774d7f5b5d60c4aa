"""The shipped alert rules against real agents: a lab of three clusters, a real Prometheus
in a namespace of its own on the lab's underlay scraping every gateway's metrics, and the
faults of test_fault.py. Each fault must fire its alert, as Prometheus's HTTP API reports it.

The rules are deploy/prometheus-rules.yaml with every `for:` made 0s (nothing else changed):
the production durations are minutes. Scrapes and rule evaluations are 1 s apart. The
handshake-stale alert needs over 3 minutes without a handshake: promtool tests it
(tests/alerts/); here it must stay silent on live cables. One lab and one Prometheus serve
every test of this module, in order; each test puts back what it broke.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from promql_names import metric_names
from slowness import scaled
from wgcable.cable.wireguard.userspace import process_running
from wgcable.engine.metrics import EXPORTED
from wgcable.lab.lab import METRICS_PORT, Lab
from wgcable.lab.netns import Namespace, veth_pair
from wgcable.lab.process import stop_pid
from wgcable.netlink.netns import call_in_netns
from wgcable.wgctrl import Key

from .labtools import endpoint_json, print_agent_logs, wait_for, write_atomic

pytestmark = [pytest.mark.netns, pytest.mark.fault]

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus-rules.yaml"
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
PROM_IP = "198.18.0.240"  # on the lab's underlay (198.18.0.0/16), next to the gateways
PROM_PORT = 9090
DEADLINE = 20.0  # generous: an alert that takes this long is broken, not slow
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$cluster": ".*"}


@dataclass
class Prometheus:
    ns: Namespace
    pid: int
    log: Path

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{PROM_PORT}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)

        def fetch() -> Any:
            with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - our own
                return json.loads(reply.read())

        return call_in_netns(self.ns.name, fetch)

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def firing(self, alertname: str, **labels: str) -> list[dict[str, str]]:
        """The labels of each firing alert of that name whose labels include ``labels``."""
        alerts = self.get("/api/v1/alerts")["data"]["alerts"]
        return [a["labels"] for a in alerts
                if a["state"] == "firing" and a["labels"]["alertname"] == alertname
                and all(a["labels"].get(k) == v for k, v in labels.items())]

    def wait_evaluated(self) -> None:
        """Until the rules have been evaluated from now on."""
        def last() -> float:
            [group] = self.get("/api/v1/rules")["data"]["groups"]
            # RFC 3339 with nanoseconds: microseconds are what fromisoformat takes.
            stamp = re.sub(r"(\.\d{6})\d*", r"\1", group["lastEvaluation"])
            return datetime.fromisoformat(stamp).timestamp()

        now = time.time()
        wait_for(lambda: last() > now, DEADLINE, "a rule evaluation")

    def all_firing(self) -> list[dict[str, str]]:
        alerts = self.get("/api/v1/alerts")["data"]["alerts"]
        return [a["labels"] for a in alerts if a["state"] == "firing"]

    def wait_firing(self, alertname: str, **labels: str) -> float:
        took = wait_for(lambda: self.firing(alertname, **labels), DEADLINE,
                        f"{alertname} {labels} to fire")
        print(f"{alertname} {labels}: firing after {took:.2f} s")
        return took


def fast_rules(dst: Path) -> None:
    """The shipped rules with every `for:` 0s, and nothing else changed."""
    text, n = re.subn(r"^(\s+for: )\S+$", r"\g<1>0s", RULES.read_text(), flags=re.MULTILINE)
    assert n == RULES.read_text().count("alert: ")
    dst.write_text(text)


def start_prometheus(ns: Namespace, workdir: Path, targets: list[str]) -> Prometheus:
    rules = workdir / "rules.yaml"
    fast_rules(rules)
    config = workdir / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                   "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "wgcable",
                            "static_configs": [{"targets": targets}]}],
    }))
    log = workdir / "prometheus.log"
    with open(log, "wb") as out:
        p = subprocess.Popen(
            ns.cmd("prometheus", f"--config.file={config}",
                   f"--storage.tsdb.path={workdir / 'data'}",
                   f"--web.listen-address=127.0.0.1:{PROM_PORT}"),
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    prom = Prometheus(ns, p.pid, log)

    def ready() -> bool:
        try:
            return prom.get("/api/v1/status/buildinfo")["status"] == "success"
        except OSError:
            assert p.poll() is None, log.read_text()[-2000:]
            return False

    took = wait_for(ready, DEADLINE, "Prometheus to answer")
    print(f"Prometheus up after {took:.2f} s")
    return prom


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Prometheus]]:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus missing (scripts/install-test.sh installs Debian's)")
    workdir = tmp_path_factory.mktemp("alerts")
    ns = Namespace(f"wgct-{os.getpid()}-prom")
    prom: Prometheus | None = None
    lab: Lab | None = None
    try:
        # Prometheus first: it starts scraping about 5 s after its start (its discovery
        # manager's throttle), time the lab takes to come up. Until the lab's underlay is
        # plugged in below, its scrapes fail.
        ns.create()
        name = f"al{os.getpid() % 10000}"
        targets = [f"198.18.0.{i}:{METRICS_PORT}" for i in (1, 2, 3)]
        prom = start_prometheus(ns, workdir, targets)
        # Each agent serves its metrics on its underlay address (the node's IP, as in a
        # cluster), where the Prometheus namespace reaches it.
        lab = Lab.up(name, 3, root=str(workdir / "labs"), agent_args=["--backend", "userspace"],
                     cluster_args={i: ["--metrics-address", f"198.18.0.{i}"] for i in (1, 2, 3)})
        assert targets == [f"{gw.private_ip}:{METRICS_PORT}" for gw in lab.state.gateways]
        veth_pair(ns, "eth0", Namespace(f"{lab.state.prefix}-hub"), "prom",
                  a_then=[f"addr add {PROM_IP}/16 dev eth0"],
                  b_then=["link set prom master br0"])
        wait_for(lab.all_connected, 30, "all cables connected")
        yield lab, prom
    finally:
        problems: list[str] = []  # asserted after everything is removed
        if prom is not None:
            stop_pid(prom.pid, ("prometheus",))
            if process_running(prom.pid, "prometheus"):
                problems.append(f"prometheus {prom.pid} still runs")
            print("--- prometheus log (last 20 lines)",
                  *prom.log.read_text(errors="replace").splitlines()[-20:], sep="\n")
        ns.delete()
        if lab is not None:
            print_agent_logs(lab)
            problems += lab.down()
        assert problems == []


def test_alerts_lab_healthy_silent_and_every_metric_and_panel_answers(
        monitored: tuple[Lab, Prometheus]) -> None:
    lab, prom = monitored
    gateways = len(lab.state.gateways)
    seen: list[object] = []  # the last look, for the failure message

    def scraped() -> bool:
        up = prom.query('up{job="wgcable"} == 1')
        cables = prom.query('submariner_connections{status="connected"}')
        names = {r["metric"]["__name__"] for r in
                 prom.query('{__name__=~"submariner_.+|wgcable_.+"}')}
        seen[:] = [len(up), len(cables), sorted(set(EXPORTED) - names)]
        return len(up) == gateways and len(cables) == gateways * (gateways - 1) \
            and names == set(EXPORTED)

    # Every metric the rules and the dashboard may name comes out of the real agents.
    try:
        took = wait_for(scraped, DEADLINE, "every gateway, cable and exported metric scraped")
    except AssertionError as e:
        raise AssertionError(f"{e} (targets up, connected cables, metrics missing: {seen}; "
                             f"targets: {prom.get('/api/v1/targets')['data']})") from None
    print(f"every metric scraped after {took:.2f} s")
    prom.wait_evaluated()  # the rules saw what was just scraped
    assert prom.all_firing() == []
    # Each panel's query runs on the real data; all but the refused panel's ("> 0") have
    # some once rate() has two samples.
    doc = json.loads(DASHBOARD.read_text())
    for panel in doc["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for var, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value)
            assert metric_names(expr) <= set(EXPORTED)
            if panel["title"] == "Refused endpoints":
                assert prom.query(expr) == []
            else:
                wait_for(lambda e=expr: prom.query(e), DEADLINE,
                         f"panel {panel['title']!r}: {expr}")


def test_alerts_lab_endpoint_refused_fires_not_cable_down(
        monitored: tuple[Lab, Prometheus]) -> None:
    """test_fault's intruder: a second cluster claiming cluster2's subnet."""
    lab, prom = monitored
    subnet = lab.gateway(2).subnets[0]
    intruder = lab.store_dir / "endpoints" / "cluster0-cable.json"
    write_atomic(intruder, endpoint_json("cluster0", subnet,
                                         Key.generate().public_key().base64(), "198.18.0.50"))
    try:
        prom.wait_firing("WgcableEndpointRefused", local_cluster="cluster1",
                         remote_cluster="cluster0")
        prom.wait_firing("WgcableEndpointRefused", local_cluster="cluster3",
                         remote_cluster="cluster0")
        # Its connection is "error", but it is a refusal, not a cable that broke.
        assert prom.query('submariner_connections{remote_cluster="cluster0",status="error"}')
        assert prom.firing("WgcableCableDown") == []
    finally:
        intruder.unlink()
    wait_for(lambda: not prom.firing("WgcableEndpointRefused"), DEADLINE,
             "the refusal to clear once the intruder is gone")


def test_alerts_lab_rtt_high_fires_while_a_remote_daemon_stalls(
        monitored: tuple[Lab, Prometheus]) -> None:
    """No netem in every kernel: cluster3's wireguard-go is stopped 1.5 s at a time, so the
    health check's echoes through it wait in its queues (the daemon of a starved node)."""
    lab, prom = monitored
    daemon = int((lab.state_dir(lab.gateway(3)) / "subwg0.wireguard-go.pid").read_text())
    assert process_running(daemon, "wireguard-go")
    deadline = time.monotonic() + scaled(DEADLINE)
    try:
        while not prom.firing("WgcableRTTHigh", local_cluster="cluster1",
                              remote_cluster="cluster3"):
            assert time.monotonic() < deadline, "WgcableRTTHigh did not fire"
            os.kill(daemon, signal.SIGSTOP)
            time.sleep(1.5)
            os.kill(daemon, signal.SIGCONT)
            time.sleep(0.05)
    finally:
        os.kill(daemon, signal.SIGCONT)
    rtt = prom.query('submariner_connection_latency_seconds{local_cluster="cluster1",'
                     'remote_cluster="cluster3"}')
    print(f"WgcableRTTHigh fired; RTT cluster1 -> cluster3 now {rtt[0]['value'][1]} s")
    wait_for(lambda: not prom.firing("WgcableRTTHigh"), DEADLINE,
             "the RTT alert to clear once the daemon runs")
    # A stalled daemon is not a dead one: the same one runs on.
    assert int((lab.state_dir(lab.gateway(3)) / "subwg0.wireguard-go.pid").read_text()) == daemon
    assert process_running(daemon, "wireguard-go")


def test_alerts_lab_store_unavailable_fires(monitored: tuple[Lab, Prometheus]) -> None:
    """test_fault's store whose endpoints directory went away."""
    lab, prom = monitored
    endpoints = lab.store_dir / "endpoints"
    away = endpoints.with_name(".endpoints-away")
    endpoints.rename(away)
    try:
        for i in (1, 2, 3):
            prom.wait_firing("WgcableStoreUnavailable", local_cluster=f"cluster{i}")
    finally:
        away.rename(endpoints)
    wait_for(lambda: not prom.firing("WgcableStoreUnavailable"), DEADLINE,
             "the store alert to clear once the store is back")


def test_alerts_lab_cable_down_and_no_active_gateway_fire(
        monitored: tuple[Lab, Prometheus]) -> None:
    """Cluster2's gateway dies: its agent and its wireguard-go are killed. The others'
    cables to it go down, and cluster2 has no active gateway any more. Last: it is not
    brought back."""
    lab, prom = monitored
    gw2 = lab.gateway(2)
    daemon = int((lab.state_dir(gw2) / "subwg0.wireguard-go.pid").read_text())
    lab.stop_agent(2, signal.SIGKILL)  # first: a live agent would restart its daemon
    stop_pid(daemon, ("wireguard-go",))
    prom.wait_firing("WgcableNoActiveGateway", local_cluster="cluster2")
    prom.wait_firing("WgcableCableDown", local_cluster="cluster1", remote_cluster="cluster2")
    prom.wait_firing("WgcableCableDown", local_cluster="cluster3", remote_cluster="cluster2")
    # Nothing else: cluster1 and cluster3 still have their gateways and their cable.
    assert {(a["alertname"], a.get("local_cluster"), a.get("remote_cluster"))
            for a in prom.all_firing()} == {
        ("WgcableNoActiveGateway", "cluster2", None),
        ("WgcableCableDown", "cluster1", "cluster2"),
        ("WgcableCableDown", "cluster3", "cluster2"),
    }
