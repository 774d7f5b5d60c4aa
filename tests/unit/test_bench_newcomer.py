"""The benchmark's printed table (issue 21): the recovery section's rows are named as a
reader would name them, not by their keys, and its progress lines go to stderr, so that
stdout holds the table alone."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, ModuleType]:
    monkeypatch.syspath_prepend(str(ROOT))  # `bench` is a folder of the repository
    from bench import recovery_bench, run
    return recovery_bench, run


def test_newcomer_recovery_rows_are_named_not_raw_keys(
        bench: tuple[ModuleType, ModuleType]) -> None:
    recovery_bench, run = bench
    rows = run.rows_of(recovery_bench.result_of([0.08, 0.1, 0.09], [0.09, 0.12, 0.1]))
    assert [(r["metric"], r["unit"], round(r["value"])) for r in rows] == [
        ("wireguard-go SIGKILLed -> device, peers, routes, rules back", "ms", 90),
        ("wireguard-go SIGKILLed -> first ping reply", "ms", 100),
    ]
    assert [r.get("note") for r in rows] == ["max 100 ms over 3 kills",
                                             "max 120 ms over 3 kills"]
    text = run.table({"recovery": {"rows": rows}})
    assert "_s" not in text  # no state_median_s, traffic_max_s, ...


def test_newcomer_recovery_progress_goes_to_stderr(
        bench: tuple[ModuleType, ModuleType], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    recovery_bench, _ = bench

    class FakeLab:
        def all_connected(self) -> bool:
            return True

    class FakePinger:
        def __init__(self, lab: Any) -> None:
            pass

        def stop(self) -> None:
            pass

    @contextlib.contextmanager
    def fake_lab(root: str) -> Iterator[FakeLab]:
        yield FakeLab()

    # The section's own loop, around a lab and kills that are not made here.
    monkeypatch.setattr(recovery_bench, "_lab", fake_lab)
    monkeypatch.setattr(recovery_bench, "_Pinger", FakePinger)
    monkeypatch.setattr(recovery_bench, "_one_kill", lambda lab, pinger, timeout: (0.08, 0.09))
    result = recovery_bench.run(1)
    out, err = capsys.readouterr()
    assert out == ""
    assert "kill 1: state back" in err
    assert len(result["rows"]) == 2
