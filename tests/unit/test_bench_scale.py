"""The scale benchmark's reading of the API server's counters: "no list calls at steady
state" rests on it, so it must count LISTs, keep other groups out, and tell an open watch
from a finished request."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def sample(name: str, group: str, resource: str, verb: str, value: int,
           subresource: str = "", code: str = "200") -> str:
    labels = (f'code="{code}",component="apiserver",' if name.endswith("total") else
              'component="apiserver",')
    labels += (f'group="{group}",resource="{resource}",scope="namespace",'
               f'subresource="{subresource}",verb="{verb}",version="v1"')
    return f"{name}{{{labels}}} {value}"


TOTAL, OPEN = "apiserver_request_total", "apiserver_longrunning_gauge"
METRICS = "\n".join([
    "# TYPE apiserver_request_total counter",
    sample(TOTAL, "submariner.io", "gateways", "PATCH", 12, subresource="status"),
    sample(TOTAL, "submariner.io", "endpoints", "LIST", 2),
    sample(TOTAL, "submariner.io", "endpoints", "LIST", 1, code="404"),
    sample(TOTAL, "coordination.k8s.io", "leases", "PUT", 40),
    sample(OPEN, "submariner.io", "endpoints", "WATCH", 1),
    sample(OPEN, "", "pods", "WATCH", 3),
]) + "\n"


@pytest.fixture
def scale(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT))  # `bench` is a folder of the repository
    from bench import scale_bench
    return scale_bench


def test_api_requests_counts_our_group_by_verb_and_resource(scale: ModuleType) -> None:
    assert scale.api_requests(METRICS) == {
        "PATCH gateways/status": 12.0,
        "LIST endpoints": 3.0,  # every answer counts, a 404 too
        "open WATCH endpoints": 1.0,
    }


def test_the_rows_name_the_list_calls_and_compare_with_the_driver(scale: ModuleType) -> None:
    level = {"n": 1000, "write_s": 4.0, "apply_ms": 1600.0, "apply_cpu_s": 1.0,
             "apply_cpu_pct": 60.0, "peak_rss_mib": 70.0,
             "steady": {"cpu_mean": 5.0, "cpu_max": 20.0, "rss_mean": 75.0},
             "change_ms": {"median": 100.0, "p90": 120.0, "min": 90.0, "max": 130.0},
             "requests_per_min": {"PATCH gateways/status": 12.0, "LIST endpoints": 2.0},
             "open_requests": {"WATCH endpoints": 1.0}}
    rows = scale.rows({"store": "kubernetes", "levels": [level],
                       "floor_ms": {"1000": {"median": 800.0}}})
    applied = next(r for r in rows if r["metric"].startswith("all N"))
    assert (applied["value"], applied["floor"]) == (1600.0, 800.0)
    api = next(r for r in rows if r["metric"].startswith("API requests"))
    assert api["value"] == 14.0
    assert "LIST 2" in api["note"]
    assert "WATCH endpoints 1" in api["note"]
