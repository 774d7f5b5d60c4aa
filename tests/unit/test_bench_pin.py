"""The dataplane bench's pinning: which CPUs, and every thread of a daemon moved."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
TWO_CPUS = len(os.sched_getaffinity(0)) >= 2
pytestmark = pytest.mark.skipif(not TWO_CPUS, reason="needs two CPUs to pin to")


@pytest.fixture
def dp(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT))  # `bench` is a folder of the repository
    from bench import dataplane_bench
    return dataplane_bench


def test_pinned_cpus_are_two_of_ours_unless_turned_off(
        dp: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dp.PIN_ENV, raising=False)
    got = dp.pinned_cpus()
    assert got is not None
    assert got[0] != got[1]
    assert set(got) <= os.sched_getaffinity(0)
    monkeypatch.setenv(dp.PIN_ENV, "0")
    assert dp.pinned_cpus() is None
    assert dp.taskset(None) == []
    assert dp.taskset(1) == ["taskset", "-c", "1"]


def test_pin_process_moves_every_thread(dp: ModuleType) -> None:
    # A child with a second thread: both must end up on the one CPU.
    code = ("import threading, time, sys\n"
            "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
            "print('up', flush=True); time.sleep(30)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "up"
        cpu = sorted(os.sched_getaffinity(0))[1]
        dp.pin_process(child.pid, cpu)
        tids = os.listdir(f"/proc/{child.pid}/task")
        assert len(tids) == 2
        assert all(os.sched_getaffinity(int(t)) == {cpu} for t in tids)
    finally:
        child.kill()  # ours, by PID
        child.wait(5)
